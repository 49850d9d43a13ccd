"""Compare backend results with the float64 reference using the spec's tolerance table."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from linrec.conformance.case import Outcome
from linrec.spec.tolerances import BASELINE_FACTOR, Tolerance, max_violation, tolerance_for

__all__ = ["as_backend", "as_numpy", "compare", "compare_many", "to_reference_precision"]


def to_reference_precision(x: np.ndarray) -> np.ndarray:
    """Upcast (already rounded) values to float64/complex128 for the reference run."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def as_backend(backend: ModuleType, x: np.ndarray | None):
    return None if x is None else backend.asarray(x)


def as_numpy(backend: ModuleType, x) -> np.ndarray:
    return np.asarray(backend.to_numpy(x))


def compare(
    name: str,
    result: np.ndarray,
    reference: np.ndarray,
    dtype: str,
    *,
    method: str | None = None,
    length: int = 0,
    grad: bool = False,
    baseline: np.ndarray | None = None,
    tolerance: Tolerance | None = None,
    log_decay_sum: float | None = None,
) -> Outcome:
    """Judge ``result`` against ``reference`` (§9 of recurrence.md).

    Passes when within the dtype's T-scaled tolerance (``tolerance_for``; for ``method="log"`` pass
    ``log_decay_sum`` = ``linrec.spec.tolerances.log_decay_sum(a)`` for its tighter bound), or, for a fast method
    given the same-dtype ``sequential`` result as ``baseline``, when within ``BASELINE_FACTOR`` times its error.
    """
    result = np.asarray(result)
    if result.shape != np.shape(reference):
        return Outcome(False, float("inf"), 0.0, f"{name}: shape {result.shape}, expected {np.shape(reference)}")
    tol = tolerance or tolerance_for(dtype, method=method, length=length, grad=grad,
                                     log_decay_sum=log_decay_sum)
    err, allowed = max_violation(result, reference, tol)
    if err <= allowed:
        return Outcome(True, err, allowed, name)
    if baseline is not None:
        base_err, _ = max_violation(baseline, reference, tol)
        bound = BASELINE_FACTOR * base_err + tol.atol
        if err <= bound:
            return Outcome(True, err, bound, f"{name}: within {BASELINE_FACTOR:g}x the sequential error")
        return Outcome(False, err, max(allowed, bound), f"{name}: max error {err:.3g} > {max(allowed, bound):.3g}")
    return Outcome(False, err, allowed, f"{name}: max error {err:.3g} > allowed {allowed:.3g}")


def compare_many(outcomes: list[Outcome]) -> Outcome:
    """Combine outcomes: passes iff all pass; reports the worst ratio error/allowed."""
    failed = [o for o in outcomes if not o.passed]
    pick = failed or outcomes
    worst = max(pick, key=lambda o: (o.error / o.allowed) if o.allowed else (0.0 if o.error == 0 else np.inf))
    detail = "; ".join(o.detail for o in failed) if failed else worst.detail
    return Outcome(not failed, worst.error, worst.allowed, detail)
