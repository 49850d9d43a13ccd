"""Multi-head GateLoop's recurrence with the state kept local, for the JAX backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` d_key, ``V`` d_value, ``R`` gate rows per head (``K``
or 1).

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t`` (spec/gateloop_mh.md §2) in one XLA FFI call:
the parallel path (``linear_scan`` over ``k ⊗ v``) writes ``k ⊗ v`` and every ``S_t``, ``(B, T, H, K, V)`` each, and
its backward reads them back; here the state stays in the kernel's local memory and one state per chunk is kept
for the backward (a ``jax.custom_vjp``), which recomputes each chunk's states from it. The kernel's complex
gradients follow PyTorch's convention; this binding conjugates JAX's complex cotangents in and out. Works under
``jit``, ``vmap`` (``vmap_method="broadcast_all"``) and ``grad``; CPU only, float32/float64 ``q, k, v``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from linrec.backends import native
from linrec.backends.jax import native as scan_native
from linrec.backends.jax.autodiff import first_order_only
from linrec.backends.jax.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built
from linrec.backends.jax.scan import SEQUENCE_PARALLEL

__all__ = ["applies", "native_gateloop_mh", "register"]

Array = jax.Array

_FWD, _BWD = "linrec_gmh_fwd", "linrec_gmh_bwd"


def register() -> None:
    """Register the multi-head GateLoop FFI targets with XLA (once); builds the library like ``method="native"``."""
    scan_native.register_targets(_FWD, _BWD)


def applies(q: Array, v: Array, method: str) -> bool:
    """Whether the layer's scan ``method`` runs here: ``"auto"`` or ``"native"``, the CPU backend, float32/float64
    projections, values at least ``native.GMH_MIN_VALUE_WIDTH`` wide and the kernel built (otherwise the layer takes
    the parallel path, which raises for an unservable ``"native"``)."""
    if SEQUENCE_PARALLEL.get() is not None:  # sequence-parallel: the parallel path, whose linear_scan is sharded
        return False
    return (method in ("auto", "native") and jax.default_backend() == "cpu"
            and jnp.dtype(q.dtype).name in native.FUSED_DTYPES and v.shape[-1] >= native.GMH_MIN_VALUE_WIDTH
            and "native" in SCAN_METHODS)


def _conj(x: Array) -> Array:
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _gmh(q: Array, k: Array, v: Array, a: Array, s0: Array, real_output: bool) -> tuple[Array, Array]:
    return _gmh_fwd(q, k, v, a, s0, real_output)[0]


def _gmh_fwd(q, k, v, a, s0, real_output):
    n, t, h, kk = q.shape
    vv = v.shape[-1]
    o_dtype = native.gmh_output_dtype(s0.dtype, real_output)  # the kernel reads Re(o) from o's real dtype
    out = (jax.ShapeDtypeStruct((n, t, h, vv), o_dtype), jax.ShapeDtypeStruct(s0.shape, s0.dtype),
           jax.ShapeDtypeStruct(native.gmh_checkpoints(n, t, h, kk, vv), s0.dtype))
    o, final, ck = jax.ffi.ffi_call(_FWD, out, vmap_method="broadcast_all")(q, k, v, a, s0)
    return (o, final), (q, k, v, a, ck)


def _gmh_bwd(real_output, residuals, cotangents):
    q, k, v, a, ck = residuals
    ct_o, ct_final = cotangents
    state = ck.dtype
    out = (*(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v, a)), jax.ShapeDtypeStruct(ct_final.shape, state))
    call = jax.ffi.ffi_call(_BWD, out, vmap_method="broadcast_all")
    kernel = first_order_only(call, native.fused_double_backward_message("multi-head GateLoop"))
    ct_o = ct_o.astype(native.gmh_output_dtype(state, real_output))
    grads = kernel(q, k, v, a, ck, _conj(ct_o), _conj(ct_final.astype(state)))
    return tuple(_conj(g) for g in grads)  # the kernel's complex gradients are PyTorch's: JAX's are the conjugates


_gmh.defvjp(_gmh_fwd, _gmh_bwd)


def native_gateloop_mh(q: Array, k: Array, v: Array, a: Array, initial_state: Array,
                       real_output: bool = False) -> tuple[Array, Array]:
    """``(o (B, T, H, V), S_T (B, H, K, V))`` in the state dtype, differentiable in every input; ``real_output``:
    ``o`` is ``Re(o)``, real (a complex state read out by its real part: half the bytes).

    Args:
      q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``: real, float32/float64 (the state's real dtype).
      a: ``(B, T, H, R, 1)`` decays, ``R = K`` or 1; real, or complex with a complex state.
      initial_state: ``(B, H, K, V)``, the state dtype (real or complex).
    """
    if a.ndim != 5 or a.shape[-1] != 1:
        raise ValueError(f"native multi-head GateLoop: a must be (B, T, H, R, 1), got {tuple(a.shape)}")
    a = jnp.broadcast_to(a, (*q.shape[:3], a.shape[3], 1))[..., 0]
    native.check_gmh_shapes(q.shape, k.shape, v.shape, a.shape, initial_state.shape)
    native.gmh_codes(jnp.dtype(q.dtype).name, jnp.dtype(a.dtype).name, jnp.dtype(initial_state.dtype).name)
    register()
    return _gmh(q, k, v, a, initial_state, bool(real_output) and jnp.iscomplexobj(initial_state))
