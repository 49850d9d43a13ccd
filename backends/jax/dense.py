"""The dense product every JAX layer uses: ``x (..., I) @ kernel (I, O) + bias (O,)`` as one 2-D product.

A decoder's kernels may be :class:`~linrec.backends.jax.native_dense.PackedKernel` (packed once for the native
product of a few rows, ``linrec.backends.native.dense``): those products run there when ``native_dense.applies``,
else on the kernel kept beside the panels.

Twin of ``linrec.backends.torch.dense``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from linrec.backends.jax import native_dense

__all__ = ["as_kernel", "dense"]


def as_kernel(kernel) -> Array | native_dense.PackedKernel:
    """A kernel as a JAX array (NumPy input converted), a decoder's packed kernel as it is (both have ``astype``)."""
    return kernel if isinstance(kernel, native_dense.PackedKernel) else jnp.asarray(kernel)


def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)``, with the leading axes flattened into one.

    Why flatten: on ``(B, T, I)`` inputs the kernel's gradient contracts over two axes, ``B`` and ``T``, and
    XLA:CPU lowers that to a transpose of the cotangent plus a slow generic dot (1.6× the 2-D product's time
    for a ``(4, 4096, 256) @ (256, 512)`` projection, forward and backward). The reshapes are free.
    """
    if isinstance(kernel, native_dense.PackedKernel):
        if native_dense.applies(x, kernel):
            return native_dense.native_dense(x, kernel, bias)
        kernel = kernel.kernel
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    return y if bias is None else y + bias
