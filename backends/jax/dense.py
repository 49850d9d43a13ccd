"""The dense product every JAX layer uses: ``x (..., I) @ kernel (I, O) + bias (O,)`` as one 2-D product.

Twin of ``linrec.backends.torch.dense``.
"""

from __future__ import annotations

from jax import Array

__all__ = ["dense"]


def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)``, with the leading axes flattened into one.

    Why flatten: on ``(B, T, I)`` inputs the kernel's gradient contracts over two axes, ``B`` and ``T``, and
    XLA:CPU lowers that to a transpose of the cotangent plus a slow generic dot (1.6× the 2-D product's time
    for a ``(4, 4096, 256) @ (256, 512)`` projection, forward and backward). The reshapes are free.
    """
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    return y if bias is None else y + bias
