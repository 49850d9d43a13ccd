"""Native dense products for the JAX decoders (``linrec.backends.native.dense``), through XLA FFI.

Shape legend: ``M`` rows, ``I`` input width, ``O`` output width.

A decoder packs each float32 kernel once (:func:`pack_kernels`); :func:`linrec.backends.jax.dense.dense` then sends
a product with at most ``native.dense.MAX_ROWS`` rows (a static shape under ``jit``) to the kernel, and any other to
XLA's dot on the kernel kept beside the panels. Differentiable: the derivative is the plain product's
(``custom_jvp``), so a decoder's step still works under ``jax.grad``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from linrec.backends import native
from linrec.backends.jax.arrays import eager_unless
from linrec.backends.jax.native import register_targets
from linrec.backends.native import dense as native_dense_kernel

__all__ = ["PackedKernel", "applies", "layer_decoder", "native_dense", "pack", "pack_kernels"]

_TARGET = "linrec_dense"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedKernel:
    """A ``(I, O)`` float32 kernel and its panels for the native product (``native.dense.pack`` layout); a pytree
    of both arrays."""

    kernel: Array  # (I, O): XLA's dot uses it (more rows)
    packed: Array  # (ceil(O / 16) · I · 16,)

    @property
    def dtype(self):
        return self.kernel.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.kernel.shape

    def astype(self, dtype) -> Array | PackedKernel:
        """Itself in its own dtype, else the plain kernel cast (the panels are float32 only)."""
        return self if jnp.dtype(dtype) == self.kernel.dtype else self.kernel.astype(dtype)


def pack(kernel: Array) -> PackedKernel:
    """``kernel (I, O)`` float32 → :class:`PackedKernel` (a copy of the weights: the panels)."""
    if kernel.ndim != 2 or kernel.dtype != jnp.float32:
        raise TypeError(f"pack takes a (I, O) float32 kernel, got {kernel.dtype} {tuple(kernel.shape)}")
    packed = jnp.asarray(native_dense_kernel.pack(np.asarray(kernel)))
    return PackedKernel(kernel, packed)


def pack_kernels(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every float32 2-D ``*kernel`` on the CPU packed when the native kernel and its XLA FFI
    handlers are built (else as is): what the decoders read. Packing copies those weights once."""
    try:
        register_targets(_TARGET)
    except native.NativeBuildError:
        return dict(params)
    return {k: pack(v) if (k.endswith("kernel") and isinstance(v, jax.Array) and v.ndim == 2
                           and v.dtype == jnp.float32 and _on_cpu(v)) else v
            for k, v in params.items()}


def _on_cpu(x: Array) -> bool:
    return all(d.platform == "cpu" for d in x.devices())


def applies(x: Array, kernel: PackedKernel) -> bool:
    """Whether ``dense(x, kernel)`` runs on the native kernel: float32 ``x`` of at most ``MAX_ROWS`` rows."""
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    return x.dtype == jnp.float32 and rows <= native_dense_kernel.MAX_ROWS


@jax.custom_jvp
def _product(x2: Array, kernel: Array, packed: Array, bias: Array) -> Array:
    call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((x2.shape[0], kernel.shape[1]), jnp.float32),
                            vmap_method="sequential")
    return call(x2, packed, bias)


@_product.defjvp
def _product_jvp(primals, tangents):
    x2, kernel, packed, bias = primals
    dx, dk, _, db = tangents
    tangent = dx @ kernel + x2 @ dk + (db if bias.shape[0] else 0.0)
    return _product(x2, kernel, packed, bias), tangent


def native_dense(x: Array, kernel: PackedKernel, bias: Array | None = None) -> Array:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)`` on the native kernel (see :func:`applies`)."""
    n_in, n_out = kernel.kernel.shape
    x2 = x.reshape(-1, n_in)
    native_dense_kernel.check_packed(tuple(x2.shape), tuple(kernel.packed.shape), n_out)
    register_targets(_TARGET)  # (once per process; at trace time)
    b = jnp.zeros((0,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    return _product(x2, kernel.kernel, kernel.packed, b).reshape(*x.shape[:-1], n_out)


def layer_decoder(step: Callable[[Mapping[str, Any], Array, Any], tuple[Array, Any]], params: Mapping[str, Any],
                  compile: bool = True) -> Callable[[Array, Any], tuple[Array, Any]]:
    """``decode(x_t, state) -> (y_t, state)``: ``step(params, x_t, state)`` with ``params`` read and their float32
    kernels packed once (:func:`pack_kernels`), as one ``jax.jit``-compiled call (``compile=False``: op by op under
    ``jax.disable_jit()``, for debugging): what the layers' ``decoder()`` return."""
    packed = pack_kernels(params)
    run = eager_unless(compile, jax.jit(step) if compile else step)

    def decode(x_t: Array, state: Any) -> tuple[Array, Any]:
        # above MAX_ROWS rows no product runs natively: the plain kernels are fewer arguments to pass per token
        small = native_dense_kernel.step_rows(x_t) <= native_dense_kernel.MAX_ROWS
        return run(packed if small else params, x_t, state)

    return decode
