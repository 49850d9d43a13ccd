"""GatedLinearRNN with its gates fused into the native scan, for the NumPy backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width, ``n`` 3 (tied gates) or 4 (untied). The twin of
``linrec.backends.jax.native_gated_linear_rnn`` and ``linrec.backends.torch.native_gated_linear_rnn`` (forward
only: NumPy has no autodiff; the kernel's VJP is ``linrec.backends.native.glr_scan_vjp``).
"""

from __future__ import annotations

import numpy as np

from linrec.backends import native
from linrec.backends.numpy.native_mingru import applies  # the same rule for every fused kernel

__all__ = ["applies", "native_gated_linear_rnn"]


def native_gated_linear_rnn(u: np.ndarray, h0: np.ndarray, tied: bool, reverse: bool = False
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``(y (B, T, H), final (B, H))``, ``y = tanh(h) o`` before ``out_proj``, from ``u (B, T, nH)``, ``h0 (B, H)``."""
    if u.dtype.name not in native.FUSED_DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused GatedLinearRNN kernel takes float32/float64 u and h0 of one dtype, got {u.dtype} "
                        f"and {h0.dtype}")
    y, _, final = native.glr_scan(u, h0, tied, reverse)
    return y, final
