"""Backends: twin modules with the same file and function names (``numpy``, ``jax``, ``torch``).

Nothing here imports a framework; ``linrec.get_backend(name)`` imports one on demand.
"""
