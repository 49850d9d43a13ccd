"""Multi-head GateLoop's recurrence with the state kept local, for the NumPy backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` d_key, ``V`` d_value, ``R`` gate rows per head. The twin
of ``linrec.backends.jax.native_gateloop_mh`` and ``linrec.backends.torch.native_gateloop_mh`` (forward only: NumPy
has no autodiff; the kernel's VJP is ``linrec.backends.native.gateloop_mh_scan_vjp``).
"""

from __future__ import annotations

import numpy as np

from linrec.backends import native
from linrec.backends.numpy.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built

__all__ = ["applies", "native_gateloop_mh"]


def applies(q: np.ndarray, v: np.ndarray, method: str) -> bool:
    """Whether the layer's scan ``method`` runs here: ``"auto"`` or ``"native"``, float32/float64 projections, values
    at least ``native.GMH_MIN_VALUE_WIDTH`` wide and the kernel built (otherwise the layer takes the parallel
    path)."""
    return (method in ("auto", "native") and q.dtype.name in native.FUSED_DTYPES
            and v.shape[-1] >= native.GMH_MIN_VALUE_WIDTH and "native" in SCAN_METHODS)


def native_gateloop_mh(q: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray, initial_state: np.ndarray,
                       real_output: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(o (B, T, H, V), S_T (B, H, K, V))`` in the state dtype from ``q, k (B, T, H, K)``, ``v (B, T, H, V)``,
    ``a (B, T, H, R, 1)`` and ``initial_state (B, H, K, V)``; ``real_output``: ``o`` is ``Re(o)``, real."""
    if a.ndim != 5 or a.shape[-1] != 1:
        raise ValueError(f"native multi-head GateLoop: a must be (B, T, H, R, 1), got {tuple(a.shape)}")
    a = np.broadcast_to(a, (*q.shape[:3], a.shape[3], 1))[..., 0]
    real_output = bool(real_output) and np.iscomplexobj(initial_state)
    o, final, _ = native.gateloop_mh_scan(q, k, v, a, initial_state, real_output)
    return o, final
