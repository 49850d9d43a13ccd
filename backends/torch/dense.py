"""The dense product every PyTorch layer uses: ``x (..., I) @ kernel (I, O) + bias (O,)`` as one call.

A decoder's kernels may be :class:`~linrec.backends.torch.native_dense.PackedKernel` (packed once for the native
product of a few rows, ``linrec.backends.native.dense``): those products run there when
``native_dense.applies``, else on the kernel kept beside the panels.

Twin of ``linrec.backends.jax.dense``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from linrec.backends.torch import native_dense

__all__ = ["dense"]


def dense(x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)``, the bias add fused into the product.

    Why one call: a one-token decode step is mostly per-operation overhead on CPU, and a fused bias is one
    kernel instead of two in the forward and backward passes. ``kernel`` may be a transposed view (the
    ``nn.Linear`` weight): no copy is made.
    """
    if isinstance(kernel, native_dense.PackedKernel):
        if native_dense.applies(x, kernel, bias):
            return native_dense.native_dense(x, kernel, bias)
        kernel = kernel.kernel
    if x.ndim == 2:  # the 2-D BLAS calls take a transposed kernel as it is, and skip F.linear's reshapes
        return torch.mm(x, kernel) if bias is None else torch.addmm(bias, x, kernel)
    return F.linear(x, kernel.T, bias)
