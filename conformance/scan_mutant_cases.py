"""Scan cases added because the mutation check (``python -m linrec.tools.mutants``) found laws no case checked.

Each case here kills at least one mutant of ``benchmarks/results/mutation.md`` that every other case let
through; the mutant is named in the case's doc.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, Outcome
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many
from linrec.spec import reference

__all__ = ["cases"]


def _fold_combine(a: np.ndarray, b: np.ndarray, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h_t = A_t h_{-1} + B_t`` with ``(A_t, B_t)`` the left fold of ``reference.combine`` over steps 0..t.

    Shapes: ``a``, ``b`` ``(B, T, *S)``; ``h0`` ``(B, *S)``; returns ``(h (B, T, *S), final (B, *S))``.
    """
    acc = (np.ones_like(h0), np.zeros_like(h0))  # the identity map h -> 1 h + 0
    h = np.zeros(b.shape, b.dtype)
    for t in range(b.shape[1]):
        acc = reference.combine(acc, (a[:, t], b[:, t]))
        h[:, t] = acc[0] * h0 + acc[1]
    return h, h[:, -1]


def _combine_case(method: str):
    def run(backend: ModuleType) -> Outcome:
        rng = np.random.default_rng(13)
        outcomes = []
        for dtype in ("float64", "complex128"):
            shape = (2, 9, 3)
            a = rng.uniform(-1.2, 1.2, shape)
            b = rng.standard_normal(shape)
            h0 = rng.standard_normal((2, 3))
            if dtype == "complex128":
                a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
                b = b + 1j * rng.standard_normal(shape)
                h0 = h0 + 1j * rng.standard_normal((2, 3))
            if method == "log":  # the log method's domain: positive reals
                if dtype != "float64":
                    continue
                a, b, h0 = np.abs(a) + 0.05, np.abs(b) + 0.05, np.abs(h0) + 0.05
            want_h, want_final = _fold_combine(a, b, h0)
            h, final = backend.linear_scan(as_backend(backend, a), as_backend(backend, b),
                                           initial_state=as_backend(backend, h0), method=method)
            outcomes += [compare(f"h ({dtype})", as_numpy(backend, h), want_h, dtype, method=method, length=9),
                         compare(f"final_state ({dtype})", as_numpy(backend, final), want_final, dtype,
                                 method=method, length=9)]
        return compare_many(outcomes)

    return run


def cases(backend: ModuleType) -> list[Case]:
    """One case per method of ``backend``."""
    return [
        Case(
            id=f"scan/mutant/combine-fold-equals-scan[{method}]",
            property="combine-fold-equals-scan",
            doc="Folding the spec's combine (§6) over the steps gives the scan: h_t = A_t h_{-1} + B_t "
                "(kills the mutants ref-combine-swap and ref-combine-add, which no other case reaches).",
            fn=_combine_case(method),
        )
        for method in getattr(backend, "METHODS", ("auto",))
    ]
