"""Per-dtype tolerances used by conformance (normative text: ``recurrence.md`` §9).

Errors are measured against the float64/complex128 reference run on the same, already
rounded inputs: ``|x - ref| <= atol + rtol * max|ref|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASELINE_FACTOR",
    "GRAD_FACTOR",
    "LOG_METHOD_T_FACTOR",
    "TOLERANCES",
    "Tolerance",
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
#: A fast method passes when its error is at most this times the error of ``sequential``.
BASELINE_FACTOR = 4.0
#: ``method="log"``: rtol is at least this times T times eps(compute dtype).
LOG_METHOD_T_FACTOR = 8.0

_COMPUTE_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "complex128": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "complex64": float(np.finfo(np.float32).eps),
    # low precision accumulates in float32 (recurrence.md §5)
    "bfloat16": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float32).eps),
}


def tolerance_for(
    dtype: str, *, method: str | None = None, length: int = 0, grad: bool = False
) -> Tolerance:
    """The tolerance for a result of ``dtype`` produced by ``method`` over ``length`` steps."""
    try:
        tol = TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {sorted(TOLERANCES)}") from None
    if method == "log":
        tol = Tolerance(max(tol.rtol, LOG_METHOD_T_FACTOR * length * _COMPUTE_EPS[dtype]), tol.atol)
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
