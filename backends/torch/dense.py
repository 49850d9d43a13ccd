"""The dense product every PyTorch layer uses: ``x (..., I) @ kernel (I, O) + bias (O,)`` as one call.

Twin of ``linrec.backends.jax.dense``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dense"]


def dense(x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)``, the bias add fused into the product.

    Why one call: a one-token decode step is mostly per-operation overhead on CPU, and a fused bias is one
    kernel instead of two in the forward and backward passes. ``kernel`` may be a transposed view (the
    ``nn.Linear`` weight): no copy is made.
    """
    if x.ndim == 2:  # the 2-D BLAS calls take a transposed kernel as it is, and skip F.linear's reshapes
        return torch.mm(x, kernel) if bias is None else torch.addmm(bias, x, kernel)
    return F.linear(x, kernel.T, bias)
