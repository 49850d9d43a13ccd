"""minGRU with its gates fused into the native scan, for the NumPy backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width. The twin of ``linrec.backends.jax.native_mingru`` and
``linrec.backends.torch.native_mingru`` (forward only: NumPy has no autodiff; the kernel's VJP is
``linrec.backends.native.mingru_scan_vjp``). One pass reads the projection ``u = [u_z | u_h]`` and writes ``h``.
"""

from __future__ import annotations

import numpy as np

from linrec.backends import native
from linrec.backends.numpy.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built

__all__ = ["applies", "native_mingru"]


def applies(u: np.ndarray, method: str) -> bool:
    """Whether the layer's scan ``method`` on projections ``u`` runs here: ``"auto"`` or ``"native"``,
    float32/float64 and the kernel built (otherwise the layer takes the unfused path)."""
    return method in ("auto", "native") and u.dtype.name in native.FUSED_DTYPES and "native" in SCAN_METHODS


def native_mingru(u: np.ndarray, h0: np.ndarray, candidate: str, gates: str = "mingru"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, 2H)`` and ``h0 (B, H)`` (same dtype);
    ``gates="minlstm"``: minLSTM's gates from ``u (B, T, 3H) = [u_f | u_i | u_h]``."""
    if u.dtype.name not in native.FUSED_DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused minGRU kernel takes float32/float64 u and h0 of one dtype, got {u.dtype} and "
                        f"{h0.dtype}")
    return native.mingru_scan(u, h0, candidate, gates)
