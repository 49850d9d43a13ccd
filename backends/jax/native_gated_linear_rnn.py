"""GatedLinearRNN with its gates fused into the native scan, for the JAX backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width, ``n`` 3 (tied gates) or 4 (untied).

From the layer's projection ``u (B, T, nH) = [u_in | u_i | (u_f |) u_o]`` with the default activations (tanh
input, sigmoid gates, tanh output): ``h_t = f h_prev + i tanh(u_in)`` (``f = 1 - i`` when tied) and
``y_t = tanh(h_t) o`` (spec/gated_linear_rnn.md), in one XLA FFI call; a ``jax.custom_vjp`` whose backward is the
fused backward kernel (it needs ``h``, which the forward call also returns). ``jit``, ``vmap``, ``grad``; CPU only.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from linrec.backends import native
from linrec.backends.jax import native as scan_native
from linrec.backends.jax.autodiff import first_order_only
from linrec.backends.jax.native_mingru import applies  # the same rule for every fused kernel

__all__ = ["applies", "native_gated_linear_rnn", "register"]

Array = jax.Array

_FWD, _BWD = "linrec_glr_fwd", "linrec_glr_bwd"


def register() -> None:
    """Register the fused GatedLinearRNN FFI targets with XLA (once); builds the library like ``method="native"``."""
    scan_native.register_targets(_FWD, _BWD)


def _like(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _forward(u: Array, h0: Array, tied: bool, reverse: bool) -> tuple[Array, Array, Array]:
    state = _like((*u.shape[:-1], h0.shape[-1]), u.dtype)
    call = jax.ffi.ffi_call(_FWD, (state, state, _like(h0.shape, h0.dtype)), vmap_method="broadcast_all")
    return call(u, h0, tied=bool(tied), reverse=bool(reverse))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _glr(u: Array, h0: Array, tied: bool, reverse: bool) -> tuple[Array, Array]:
    y, _, final = _forward(u, h0, tied, reverse)
    return y, final


def _glr_fwd(u, h0, tied, reverse):
    # differentiating the backward pass differentiates this call too (it makes the residual h): refuse it clearly
    forward = first_order_only(lambda u, h0: _forward(u, h0, tied, reverse),
                               native.fused_double_backward_message("GatedLinearRNN"))
    y, h, final = forward(u, h0)
    return (y, final), (u, h0, h)


def _glr_bwd(tied, reverse, residuals, cotangents):
    u, h0, h = residuals
    ct_y, ct_final = cotangents
    call = jax.ffi.ffi_call(_BWD, (_like(u.shape, u.dtype), _like(h0.shape, h0.dtype)), vmap_method="broadcast_all")
    kernel = first_order_only(lambda *xs: call(*xs, tied=bool(tied), reverse=bool(reverse)),
                              native.fused_double_backward_message("GatedLinearRNN"))
    return kernel(u, h, h0, ct_y.astype(h.dtype), ct_final.astype(h.dtype))


_glr.defvjp(_glr_fwd, _glr_bwd)


def native_gated_linear_rnn(u: Array, h0: Array, tied: bool, reverse: bool = False) -> tuple[Array, Array]:
    """``(y (B, T, H), final (B, H))``, ``y = tanh(h) o`` before ``out_proj``, from ``u (B, T, nH)`` and
    ``h0 (B, H)`` (same float32/float64 dtype). Differentiable in ``u`` and ``h0``."""
    if jnp.dtype(u.dtype).name not in native.FUSED_DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused GatedLinearRNN kernel takes float32/float64 u and h0 of one dtype, got "
                        f"{jnp.dtype(u.dtype).name} and {jnp.dtype(h0.dtype).name}")
    register()
    return _glr(u, h0, bool(tied), bool(reverse))
