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


#: ``(per-step shape of a, state shape)`` pairs where ``a`` broadcasts over a *leading* state axis; the
#: property strategies only draw ``a`` broadcast over the last axis (``(*S[:-1], 1)``).
_LEADING_BROADCASTS = (((1,), (5,)), ((1, 3), (2, 3)), ((1, 1), (2, 3)), ((2, 1, 4), (2, 3, 4)))


def _broadcast_gradient_case(method: str):
    def run(backend: ModuleType) -> Outcome:
        rng = np.random.default_rng(29)
        outcomes = []
        for a_state, state in _LEADING_BROADCASTS:
            n, t = 2, 6
            a = rng.uniform(0.3, 1.1, (n, t, *a_state))
            b = rng.uniform(0.2, 1.0, (n, t, *state))
            h0 = rng.uniform(0.2, 1.0, (n, *state))
            ct_h, ct_f = rng.standard_normal(b.shape), rng.standard_normal(h0.shape)
            if method != "log":  # signs too, where the method's domain allows them
                a, b = a * rng.choice([-1.0, 1.0], a.shape), b - 0.6
            got = backend.linear_scan_vjp(*(as_backend(backend, x) for x in (a, b, ct_h, ct_f)),
                                          initial_state=as_backend(backend, h0), method=method)
            want = reference.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0)
            outcomes += [compare(f"{name} (a {a_state}, state {state})", as_numpy(backend, g), w, "float64",
                                 method=method, length=t, grad=True)
                         for name, g, w in zip(("a_bar", "b_bar", "initial_state_bar"), got, want)]
        return compare_many(outcomes)

    return run


def _complex_gradient_case(method: str):
    def run(backend: ModuleType) -> Outcome:
        rng = np.random.default_rng(31)
        n, t, state = 2, 7, (4,)

        def draw(*shape):
            return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

        a = 0.9 * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, t, *state)))  # a full complex decay per element
        b, h0, ct_h, ct_f = draw(n, t, *state), draw(n, *state), draw(n, t, *state), draw(n, *state)
        got = backend.linear_scan_vjp(*(as_backend(backend, x) for x in (a, b, ct_h, ct_f)),
                                      initial_state=as_backend(backend, h0), method=method)
        want = reference.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0)
        return compare_many([compare(name, as_numpy(backend, g), w, "complex128", method=method, length=t, grad=True)
                             for name, g, w in zip(("a_bar", "b_bar", "initial_state_bar"), got, want)])

    return run


def cases(backend: ModuleType) -> list[Case]:
    """Each property once per method of ``backend``."""
    methods = getattr(backend, "METHODS", ("auto",))
    out = [
        Case(
            id=f"scan/mutant/combine-fold-equals-scan[{method}]",
            property="combine-fold-equals-scan",
            doc="Folding the spec's combine (§6) over the steps gives the scan: h_t = A_t h_{-1} + B_t "
                "(kills the mutants ref-combine-swap and ref-combine-add, which no other case reaches).",
            fn=_combine_case(method),
        )
        for method in methods
    ]
    out += [
        Case(
            id=f"scan/mutant/gradient-leading-broadcast[{method}]",
            property="gradient-leading-broadcast",
            doc="a broadcast over a leading state axis (a (B, T, 1) for a (B, T, 5) state, or (B, T, 1, 3) for "
                "(B, T, 2, 3)): a_bar is summed back to a's shape and equals the reference "
                "(kills np-vjp-broadcast-axes).",
            fn=_broadcast_gradient_case(method),
            requires=("linear_scan_vjp",),
        )
        for method in methods
    ]
    out += [
        Case(
            id=f"scan/mutant/gradient-complex[{method}]",
            property="gradient-complex",
            doc="complex128 a (one decay per element), b, initial_state and cotangents: a_bar, b_bar and "
                "initial_state_bar equal the reference VJP, whose a_bar conjugates the previous state "
                "(kills cc-bwd-unconjugated whatever the property cases happen to draw).",
            fn=_complex_gradient_case(method),
            requires=("linear_scan_vjp",),
            dtypes=("complex128",),
        )
        for method in methods
        if method != "log"  # log space takes positive real a and b only (recurrence.md §7)
    ]
    return out
