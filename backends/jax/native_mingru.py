"""minGRU with its gates fused into the native scan, for the JAX backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width.

``u = [u_z | u_h] (B, T, 2H)`` is the layer's projection; per step ``h_t = σ(-u_z) h_{t-1} + σ(u_z) c(u_h)``
(spec/mingru.md) with ``c`` the identity or ``g``. One XLA FFI call reads ``u`` and writes ``h``; XLA would fuse the
gate math into one loop too, but must then write ``a`` and ``b`` for the scan call to read back. A
``jax.custom_vjp`` whose backward is the fused backward kernel writes ``u_bar`` directly. Works under ``jit``,
``vmap`` (``vmap_method="broadcast_all"``) and ``grad``; CPU only, float32/float64.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from linrec.backends import native
from linrec.backends.jax import native as scan_native
from linrec.backends.jax.autodiff import first_order_only
from linrec.backends.jax.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built
from linrec.backends.jax.scan import SEQUENCE_PARALLEL

__all__ = ["applies", "native_mingru", "register"]

Array = jax.Array

_FWD, _BWD = "linrec_mingru_fwd", "linrec_mingru_bwd"


def register() -> None:
    """Register the fused minGRU FFI targets with XLA (once); builds the library like ``method="native"``."""
    scan_native.register_targets(_FWD, _BWD)


def applies(u: Array, method: str) -> bool:
    """Whether the layer's scan ``method`` on projections ``u`` runs here: ``"auto"`` or ``"native"``, the CPU
    backend, float32/float64 and the kernel built (otherwise the layer takes the unfused path, which raises for an
    unservable ``"native"``)."""
    if SEQUENCE_PARALLEL.get() is not None:  # sequence-parallel: the unfused path, whose linear_scan is sharded
        return False
    return (method in ("auto", "native") and jax.default_backend() == "cpu"
            and jnp.dtype(u.dtype).name in native.FUSED_DTYPES and "native" in SCAN_METHODS)


def _states(u: Array, code: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*u.shape[:-1], u.shape[-1] // native.gate_blocks(code)), u.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mingru(u: Array, h0: Array, candidate: int) -> tuple[Array, Array]:
    call = jax.ffi.ffi_call(_FWD, (_states(u, candidate), jax.ShapeDtypeStruct(h0.shape, h0.dtype)),
                            vmap_method="broadcast_all")
    return call(u, h0, candidate=np.int32(candidate))


def _mingru_fwd(u, h0, candidate):
    h, final = _mingru(u, h0, candidate)
    return (h, final), (u, h0, h)


def _mingru_bwd(candidate, residuals, cotangents):
    u, h0, h = residuals
    ct_h, ct_final = cotangents
    call = jax.ffi.ffi_call(_BWD, (jax.ShapeDtypeStruct(u.shape, u.dtype), jax.ShapeDtypeStruct(h0.shape, h0.dtype)),
                            vmap_method="broadcast_all")
    kernel = first_order_only(lambda *xs: call(*xs, candidate=np.int32(candidate)),
                              native.fused_double_backward_message("minGRU"))
    return kernel(u, h, h0, ct_h.astype(h.dtype), ct_final.astype(h.dtype))


_mingru.defvjp(_mingru_fwd, _mingru_bwd)


def native_mingru(u: Array, h0: Array, candidate: str, gates: str = "mingru") -> tuple[Array, Array]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, 2H)`` and ``h0 (B, H)`` (same dtype).

    ``candidate``: ``"identity"`` or ``"g"``; ``gates="minlstm"``: minLSTM's gates from ``u (B, T, 3H) =
    [u_f | u_i | u_h]``. Differentiable in ``u`` and ``h0``.
    """
    if jnp.dtype(u.dtype).name not in native.FUSED_DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused minGRU kernel takes float32/float64 u and h0 of one dtype, got "
                        f"{jnp.dtype(u.dtype).name} and {jnp.dtype(h0.dtype).name}")
    code = native.fused_code(candidate, gates)
    register()
    return _mingru(u, h0, code)
