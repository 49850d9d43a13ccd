"""Per-dtype tolerances used by conformance (normative text: ``recurrence.md`` §9).

Errors are measured against the float64/complex128 reference run on the same, already
rounded inputs: ``|x - ref| <= atol + rtol * max|ref|``. ``rtol`` grows with the number of
steps ``T`` (rounding errors of a long scan add up): ``max(table rtol, LINEAR_T_FACTOR * eps * sqrt(T))``,
and for ``method="log"`` by the bound of :func:`log_method_rtol`. The factors are measured
(``benchmarks/precision.py``, recurrence.md §9) with a margin of at least 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASELINE_FACTOR",
    "GRAD_FACTOR",
    "LINEAR_T_FACTOR",
    "LOG_METHOD_T_FACTOR",
    "LOG_SUM_FACTOR",
    "LOG_T_FACTOR",
    "TOLERANCES",
    "Tolerance",
    "compute_eps",
    "log_decay_sum",
    "log_method_rtol",
    "max_violation",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def scaled(self, factor: float) -> Tolerance:
        return Tolerance(self.rtol * factor, self.atol * factor)


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(1e-12, 1e-12),
    "complex128": Tolerance(1e-12, 1e-12),
    "float32": Tolerance(2e-5, 1e-6),
    "complex64": Tolerance(2e-5, 1e-6),
    "bfloat16": Tolerance(1.6e-2, 1e-2),
    "float16": Tolerance(2e-3, 1e-3),
}
#: Gradients: the table times this factor.
GRAD_FACTOR = 10.0
#: A fast method passes when its error is at most this times the error of ``sequential`` (issue 13: 2x).
BASELINE_FACTOR = 2.0
#: Every method: rtol is at least this times ``eps * sqrt(T)``. The float32 loop measured at most
#: ``0.40 * eps * sqrt(T)`` for T = 1e3 ... 1e6 (a = 1 or 1 - U(0, 1e-4), b ~ N(0, 1) or U(0, 1); recurrence.md §9).
LINEAR_T_FACTOR = 2.0
#: ``method="log"`` when ``|Σ log a|`` is not known: rtol is at least this times T times eps (compute dtype).
LOG_METHOD_T_FACTOR = 8.0
#: ``method="log"`` with ``S = max |Σ_t log a_t|`` known: rtol is at least
#: ``eps * min(LOG_METHOD_T_FACTOR * T, LOG_T_FACTOR * T + LOG_SUM_FACTOR * S)`` (measured at most
#: ``eps * (0.05 T + 3 S)`` for T = 1e3 ... 1e5, S = 0.05 ... 5e3; recurrence.md §9).
LOG_T_FACTOR = 1.0
LOG_SUM_FACTOR = 16.0

_COMPUTE_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "complex128": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "complex64": float(np.finfo(np.float32).eps),
    # low precision accumulates in float32 (recurrence.md §5)
    "bfloat16": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float32).eps),
}


def compute_eps(dtype: str) -> float:
    """Machine epsilon of the dtype the state of a ``dtype`` scan is computed in (float32 for bfloat16/float16)."""
    try:
        return _COMPUTE_EPS[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {sorted(TOLERANCES)}") from None


def log_decay_sum(a: np.ndarray) -> float:
    """``S = max |Σ_t log |a_t||`` over batch and state, for ``a`` of shape ``(B, T, *Sa)``: the total log-decay
    the log method's error grows with (0 for an empty sequence)."""
    a = np.abs(np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64))
    if a.ndim < 2 or a.shape[1] == 0 or a.size == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        return float(np.max(np.abs(np.log(a).sum(axis=1))))


def log_method_rtol(dtype: str, length: int, decay_sum: float | None = None) -> float:
    """The T-scaled part of ``method="log"``'s rtol: ``eps * min(LOG_METHOD_T_FACTOR * T, LOG_T_FACTOR * T +
    LOG_SUM_FACTOR * S)``, or ``eps * LOG_METHOD_T_FACTOR * T`` when ``S = decay_sum`` is not given."""
    bound = LOG_METHOD_T_FACTOR * length
    if decay_sum is not None:
        bound = min(bound, LOG_T_FACTOR * length + LOG_SUM_FACTOR * decay_sum)
    return compute_eps(dtype) * bound


def tolerance_for(
    dtype: str,
    *,
    method: str | None = None,
    length: int = 0,
    grad: bool = False,
    log_decay_sum: float | None = None,
) -> Tolerance:
    """The tolerance for a result of ``dtype`` produced by ``method`` over ``length`` steps (recurrence.md §9).

    ``rtol = max(table rtol, LINEAR_T_FACTOR * eps * sqrt(T))``; for ``method="log"`` also at least
    :func:`log_method_rtol` (pass ``log_decay_sum`` = :func:`log_decay_sum` of ``a`` for the tighter bound).
    """
    tol = TOLERANCES.get(dtype)
    eps = compute_eps(dtype)  # raises for an unknown dtype
    rtol = max(tol.rtol, LINEAR_T_FACTOR * eps * float(np.sqrt(max(length, 0))))
    if method == "log":
        rtol = max(rtol, log_method_rtol(dtype, length, log_decay_sum))
    tol = Tolerance(rtol, tol.atol)
    return tol.scaled(GRAD_FACTOR) if grad else tol


def max_violation(x: np.ndarray, ref: np.ndarray, tol: Tolerance) -> tuple[float, float]:
    """Return ``(max_abs_error, allowed)``: the result passes when the first is <= the second.

    ``allowed = atol + rtol * max|ref|``. NaN anywhere in ``x`` where ``ref`` is finite is an
    infinite error.
    """
    x = np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(ref) else np.float64)
    ref = np.asarray(ref, dtype=x.dtype)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: result {x.shape} vs reference {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    allowed = tol.atol + tol.rtol * scale
    if x.size == 0:
        return 0.0, allowed
    err = np.abs(x - ref)
    if np.any(np.isnan(err)):
        return float("inf"), allowed
    return float(np.max(err)), allowed
