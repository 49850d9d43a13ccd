"""Named scan cases: tiny inputs with hand-computed outputs that double as documentation.

Each example states a law of recurrence.md with numbers you can check in your head. Every
method of a backend runs every example; where an example lies outside a method's domain
(``log`` needs positive values) the case instead checks that the method refuses it with a
``ValueError`` (no silent fallback, §7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, Outcome
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many
from linrec.conformance.inputs import rounded
from linrec.spec import reference
from linrec.spec.tolerances import log_decay_sum

__all__ = ["EXAMPLES", "Example", "cases"]


def _col(*values) -> np.ndarray:
    """A (1, T, 1) array: batch 1, one state channel."""
    return np.asarray(values).reshape(1, -1, 1)


@dataclass(frozen=True)
class Example:
    name: str
    doc: str
    a: np.ndarray
    b: np.ndarray
    h: np.ndarray
    final_state: np.ndarray
    initial_state: np.ndarray | None = None
    reverse: bool = False
    resets: np.ndarray | None = None
    dtypes: tuple[str, ...] = ("float32", "float64")
    extra: dict = field(default_factory=dict)


EXAMPLES: tuple[Example, ...] = (
    Example(
        "decay-half",
        "h_t = 0.5 h_{t-1} + 1 from zero: 1, 1.5, 1.75.",
        a=_col(0.5, 0.5, 0.5), b=_col(1, 1, 1), h=_col(1, 1.5, 1.75), final_state=np.array([[1.75]]),
    ),
    Example(
        "initial-state",
        "The initial state decays: h_{-1} = 8, a = 0.5, b = 0 gives 4, 2, 1.",
        a=_col(0.5, 0.5, 0.5), b=_col(0, 0, 0), initial_state=np.array([[8.0]]),
        h=_col(4, 2, 1), final_state=np.array([[1.0]]),
    ),
    Example(
        "reverse",
        "reverse=True runs from the end: a = 0.5, b = 1 gives 1.75, 1.5, 1 and final_state = h_0.",
        a=_col(0.5, 0.5, 0.5), b=_col(1, 1, 1), reverse=True, h=_col(1.75, 1.5, 1), final_state=np.array([[1.75]]),
    ),
    Example(
        "reset",
        "A segment start at t=2 restarts from zero: 1, 1.5 | 1, 1.5.",
        a=_col(0.5, 0.5, 0.5, 0.5), b=_col(1, 1, 1, 1), resets=np.array([[False, False, True, False]]),
        h=_col(1, 1.5, 1, 1.5), final_state=np.array([[1.5]]),
    ),
    Example(
        "reset-keeps-initial-state-in-first-segment",
        "resets[:, 0] has no effect: h_{-1} = 2 still feeds t=0; the next segment starts from zero.",
        a=_col(0.5, 0.5, 0.5), b=_col(1, 1, 1), initial_state=np.array([[2.0]]),
        resets=np.array([[True, False, True]]), h=_col(2, 2, 1), final_state=np.array([[1.0]]),
    ),
    Example(
        "decay-zero",
        "a = 0 forgets everything: h = b.",
        a=_col(0, 0, 0), b=_col(3, -1, 2), initial_state=np.array([[5.0]]), h=_col(3, -1, 2),
        final_state=np.array([[2.0]]),
    ),
    Example(
        "decay-one",
        "a = 1 accumulates: h is the cumulative sum of b plus h_{-1}.",
        a=_col(1, 1, 1, 1), b=_col(1, 2, 3, 4), initial_state=np.array([[10.0]]), h=_col(11, 13, 16, 20),
        final_state=np.array([[20.0]]),
    ),
    Example(
        "negative-decay",
        "a = -1 flips the sign each step: 1, 0, 1, 0.",
        a=_col(-1, -1, -1, -1), b=_col(1, 1, 1, 1), h=_col(1, 0, 1, 0), final_state=np.array([[0.0]]),
    ),
    Example(
        "complex-rotation",
        "a = i rotates by 90°: 1, 1+i, i, 0.",
        a=_col(1j, 1j, 1j, 1j), b=_col(1, 1, 1, 1), h=_col(1, 1 + 1j, 1j, 0), final_state=np.array([[0j]]),
        dtypes=("complex64", "complex128"),
    ),
    Example(
        "row-decay-of-matrix-state",
        "a of shape (B, T, K, 1) decays the rows of a K×V state: row 0 halves, row 1 stays.",
        a=np.array([0.5, 1.0]).reshape(1, 1, 2, 1).repeat(2, axis=1),
        b=np.array([[2.0, 4.0], [1.0, 3.0]]).reshape(1, 1, 2, 2).repeat(2, axis=1),
        h=np.array([[[[2, 4], [1, 3]], [[3, 6], [2, 6]]]], dtype=float),
        final_state=np.array([[[3.0, 6.0], [2.0, 6.0]]]),
    ),
    Example(
        "batch-rows-independent",
        "Two rows with different decays never mix: row 0 a=0.5, row 1 a=2.",
        a=np.array([[[0.5], [0.5]], [[2.0], [2.0]]]), b=np.ones((2, 2, 1)),
        h=np.array([[[1.0], [1.5]], [[1.0], [3.0]]]), final_state=np.array([[1.5], [3.0]]),
    ),
    Example(
        "subnormal-decay",
        "A decay of 1e-40 (float32 subnormal) forgets almost everything: h = b. Every method, log included "
        "(XLA flushes subnormals to zero, so log(1e-40) needs care).",
        a=_col(1e-40, 1e-40, 1e-40), b=_col(1, 2, 3), initial_state=np.array([[5.0]]), h=_col(1, 2, 3),
        final_state=np.array([[3.0]]), dtypes=("float32",),
    ),
    Example(
        "empty-sequence",
        "T = 0: h is empty and final_state is initial_state.",
        a=np.zeros((1, 0, 1)), b=np.zeros((1, 0, 1)), initial_state=np.array([[7.0]]), h=np.zeros((1, 0, 1)),
        final_state=np.array([[7.0]]),
    ),
)


def _in_log_domain(ex: Example) -> bool:
    if ex.resets is not None:
        return False
    values = [ex.a, ex.b] + ([] if ex.initial_state is None else [ex.initial_state])
    return all(not np.iscomplexobj(v) and np.all(v > 0) for v in values)


def _run_example(backend: ModuleType, ex: Example, method: str, dtype: str) -> Outcome:
    def arr(x):
        return as_backend(backend, rounded(x, dtype) if x is not None else None)

    kwargs = dict(initial_state=arr(ex.initial_state), reverse=ex.reverse, method=method)
    if ex.resets is not None:
        kwargs["resets"] = as_backend(backend, ex.resets)
    if method == "log" and not _in_log_domain(ex):
        try:
            backend.linear_scan(arr(ex.a), arr(ex.b), **kwargs)
        except ValueError as err:
            return Outcome(True, detail=f"refused outside the log domain: {err}")
        return Outcome(False, detail="method='log' accepted an input outside its domain (must raise ValueError)")
    h, final = backend.linear_scan(arr(ex.a), arr(ex.b), **kwargs)
    kw = dict(method=method, length=ex.b.shape[1], log_decay_sum=log_decay_sum(ex.a) if method == "log" else None)
    return compare_many([
        compare("h", as_numpy(backend, h), ex.h, dtype, **kw),
        compare("final_state", as_numpy(backend, final), ex.final_state, dtype, **kw),
    ])


@dataclass(frozen=True)
class NonFinite:
    """A NaN or inf in the input: where ``h`` is finite must match the reference loop exactly, and the finite
    values must match it within the tolerance (recurrence.md §11)."""

    name: str
    doc: str
    a: np.ndarray
    b: np.ndarray
    initial_state: np.ndarray | None = None
    reverse: bool = False
    resets: np.ndarray | None = None


_NAN, _INF = float("nan"), float("inf")
# two rows: the non-finite value sits in row 0 only, so row 1 checks that rows stay apart
NON_FINITE: tuple[NonFinite, ...] = (
    NonFinite(
        "nan-stays-in-its-segment",
        "A NaN in b at t=1 makes h NaN from t=1 to the end of its segment; the segment starting at t=3 and the "
        "other row are untouched (a reset is a `where`, not a = 0 times NaN).",
        a=np.full((2, 6, 2), 0.5), b=np.array([[1, _NAN, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])[..., None].repeat(2, 2),
        resets=np.array([[False, False, False, True, False, False], [False] * 6]),
    ),
    NonFinite(
        "nan-stays-in-its-segment-reverse",
        "reverse=True: a NaN at t=4 reaches t=4..3 (its segment runs from the end down to the cut at t=3); "
        "t=0..2 and the other row are untouched.",
        a=np.full((2, 6, 2), 0.5), b=np.array([[1, 1, 1, 1, _NAN, 1], [1, 1, 1, 1, 1, 1]])[..., None].repeat(2, 2),
        resets=np.array([[False, False, False, True, False, False], [False] * 6]), reverse=True,
    ),
    NonFinite(
        "inf-propagates",
        "An inf in b stays inf under positive decays (IEEE: 0.5 inf + 1 = inf), and a literal a = 0 after it is "
        "0 inf = NaN (not a reset); steps before it and the other row are finite.",
        a=np.array([[0.5, 0.5, 0.5, 0.0, 0.5], [0.5] * 5])[..., None].repeat(2, 2),
        b=np.array([[1, 1, _INF, 1, 1], [1, 1, 1, 1, 1]])[..., None].repeat(2, 2),
    ),
    NonFinite(
        "nan-in-a-and-initial-state",
        "A NaN decay at t=2 poisons h from t=2 on; a NaN initial state of row 1 poisons row 1 only, until the "
        "reset at t=3 of row 1.",
        a=np.array([[0.5, 0.5, _NAN, 0.5, 0.5], [0.5] * 5])[..., None].repeat(2, 2),
        b=np.ones((2, 5, 2)), initial_state=np.array([[0.0, 0.0], [_NAN, 1.0]]),
        resets=np.array([[False] * 5, [False, False, False, True, False]]),
    ),
)


def _run_non_finite(backend: ModuleType, ex: NonFinite, method: str, dtype: str) -> Outcome:
    def arr(x):
        return None if x is None else as_backend(backend, rounded(x, dtype))

    kwargs = dict(initial_state=arr(ex.initial_state), reverse=ex.reverse, method=method)
    if ex.resets is not None:
        kwargs["resets"] = as_backend(backend, ex.resets)
    with np.errstate(invalid="ignore", over="ignore"):
        want_h, want_final = reference.linear_scan(
            rounded(ex.a, dtype).astype(np.float64), rounded(ex.b, dtype).astype(np.float64),
            initial_state=None if ex.initial_state is None else rounded(ex.initial_state, dtype).astype(np.float64),
            reverse=ex.reverse, resets=ex.resets)
        h, final = backend.linear_scan(arr(ex.a), arr(ex.b), **kwargs)
    outcomes = []
    for name, got, want in (("h", as_numpy(backend, h), want_h), ("final_state", as_numpy(backend, final),
                                                                  want_final)):
        got = np.asarray(got, np.float64)
        finite = np.isfinite(want)
        if not np.array_equal(np.isfinite(got), finite):
            return Outcome(False, float("inf"), 0.0, f"{name}: finite at {np.argwhere(np.isfinite(got)).tolist()}, "
                                                     f"expected at {np.argwhere(finite).tolist()}")
        # +inf stays +inf where the reference says so (a NaN there would lose the sign information IEEE keeps)
        if not np.array_equal(np.isnan(got), np.isnan(want)) and method in ("sequential", "native"):
            return Outcome(False, float("inf"), 0.0, f"{name}: NaN pattern differs from the loop's (IEEE order)")
        outcomes.append(compare(name, np.where(finite, got, 0), np.where(finite, want, 0), dtype, method=method,
                                length=ex.b.shape[1]))
    return compare_many(outcomes)


def cases(backend: ModuleType) -> list[Case]:
    out = []
    for ex in NON_FINITE:
        for method in getattr(backend, "METHODS", ("auto",)):
            if method == "log":  # its domain is positive finite values: refusing NaN/inf is checked in scan/errors
                continue
            for dtype in ("float32", "float64"):
                out.append(Case(
                    id=f"scan/named/{ex.name}[{method},{dtype}]",
                    property="non-finite-propagation",
                    doc=ex.doc,
                    fn=lambda be, ex=ex, m=method, d=dtype: _run_non_finite(be, ex, m, d),
                ))
    for ex in EXAMPLES:
        for method in getattr(backend, "METHODS", ("auto",)):
            for dtype in ex.dtypes:
                out.append(Case(
                    id=f"scan/named/{ex.name}[{method},{dtype}]",
                    property="named-example",
                    doc=ex.doc,
                    fn=lambda be, ex=ex, m=method, d=dtype: _run_example(be, ex, m, d),
                ))
    return out
