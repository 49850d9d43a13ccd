"""The specification: normative pages (``*.md``), the NumPy reference, tolerances and shared checks.

Read ``recurrence.md`` first; ``linrec.spec.reference`` is the code it points to.
"""
