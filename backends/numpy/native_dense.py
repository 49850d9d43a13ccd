"""Native dense products for the NumPy backend (``linrec.backends.native.dense``): the twin of
``linrec.backends.{jax,torch}.native_dense``.

Shape legend: ``M`` rows, ``I`` input width, ``O`` output width.

A :class:`PackedKernel` holds a float32 ``(I, O)`` kernel and its panels; :func:`native_dense` runs a product of at
most ``native.dense.MAX_ROWS`` rows on the kernel (and raises for more: NumPy's ``@`` is the product for those).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from linrec.backends import native
from linrec.backends.native import dense as native_dense_kernel

__all__ = ["PackedKernel", "applies", "native_dense", "pack", "pack_kernels"]


class PackedKernel(NamedTuple):
    """A ``(I, O)`` float32 kernel and its panels for the native product (``native.dense.pack`` layout)."""

    kernel: np.ndarray  # (I, O)
    packed: np.ndarray  # (ceil(O / 16) · I · 16,)

    @property
    def dtype(self) -> np.dtype:
        return self.kernel.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.kernel.shape


def pack(kernel: np.ndarray) -> PackedKernel:
    """``kernel (I, O)`` float32 → :class:`PackedKernel` (a copy of the weights: the panels)."""
    kernel = np.asarray(kernel)
    return PackedKernel(kernel, native_dense_kernel.pack(kernel))


def pack_kernels(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every float32 2-D ``*kernel`` packed when the native kernel is built (else as is)."""
    if not native.available():
        return dict(params)
    return {k: pack(v) if (k.endswith("kernel") and isinstance(v, np.ndarray) and v.ndim == 2
                           and v.dtype == np.float32) else v
            for k, v in params.items()}


def applies(x: np.ndarray, kernel: PackedKernel) -> bool:
    """Whether ``native_dense(x, kernel)`` serves ``x``: float32 with at most ``MAX_ROWS`` rows."""
    return x.dtype == np.float32 and x.size // max(1, x.shape[-1]) <= native_dense_kernel.MAX_ROWS


def native_dense(x: np.ndarray, kernel: PackedKernel, bias: np.ndarray | None = None) -> np.ndarray:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)`` on the native kernel (see :func:`applies`)."""
    n_in, n_out = kernel.kernel.shape
    x = np.asarray(x)
    y = native_dense_kernel.dense(x.reshape(-1, n_in), kernel.packed, bias, n_out)
    return y.reshape(*x.shape[:-1], n_out)
