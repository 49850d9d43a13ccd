"""The conformance suite, shipped so anyone can hold their own backend to the spec.

    from linrec.conformance import run, to_text
    print(to_text(run(["numpy", "my_pkg.my_backend"])))

or ``linrec conformance --backend my_pkg.my_backend``. See ``case.py`` for the backend protocol.
"""

from linrec.conformance.case import Case, CaseFailure, Outcome
from linrec.conformance.report import to_json, to_text
from linrec.conformance.runner import BackendReport, CaseResult, collect, load_xfails, run, run_backend

__all__ = [
    "BackendReport",
    "Case",
    "CaseFailure",
    "CaseResult",
    "Outcome",
    "collect",
    "load_xfails",
    "run",
    "run_backend",
    "to_json",
    "to_text",
]
