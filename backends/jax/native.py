"""``method="native"`` for the JAX backend: the compiled CPU kernel (``linrec.backends.native``) as XLA FFI calls.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step.

:func:`native_scan` has the signature of the backend's per-method kernels (``_sequential`` in ``scan.py``);
:func:`native_linear_scan` also takes the cut mask, so resets need no ``a := 0`` pass and ``reverse`` no flips.
Both are differentiable through a ``jax.custom_vjp`` whose backward is a second FFI call (the dedicated backward
kernel, JAX complex convention, recurrence.md §10), and work under ``jit`` and ``vmap`` (``vmap_method=
"broadcast_all"``: the kernel folds the extra leading axes into its batch). CPU only; the library is compiled on
first use (``linrec.backends.native.build``).
"""

from __future__ import annotations

import math
import threading
from functools import partial

import jax
import jax.numpy as jnp

from linrec.backends import native

__all__ = ["native_linear_scan", "native_scan", "register"]

Array = jax.Array

_FWD, _BWD = "linrec_scan_fwd", "linrec_scan_bwd"
_registered = False
_register_lock = threading.Lock()


def register() -> None:
    """Build/load the library and register its FFI targets with XLA (once). Raises ``NativeBuildError``."""
    global _registered
    with _register_lock:
        if _registered:
            return
        lib = native._builder().load()
        if not lib.linrec_has_ffi():
            raise native.NativeBuildError(
                "the native kernel was built without the XLA FFI handlers (jaxlib's headers were not found at "
                "build time); reinstall jaxlib or rebuild with `python -m linrec.backends.native.build --force`"
            )
        jax.ffi.register_ffi_target(_FWD, jax.ffi.pycapsule(lib.linrec_scan_fwd_ffi), platform="cpu")
        jax.ffi.register_ffi_target(_BWD, jax.ffi.pycapsule(lib.linrec_scan_bwd_ffi), platform="cpu")
        _registered = True


def _like(x: Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _ffi_fwd(a: Array, b: Array, h0: Array, cut: Array, reverse: bool) -> tuple[Array, Array]:
    call = jax.ffi.ffi_call(_FWD, (_like(b), _like(h0)), vmap_method="broadcast_all")
    return call(a, b, h0, cut, reverse=bool(reverse))


# a3 (N, T, Da), b3 (N, T, D), h03 (N, D), cut2 (N, T) bool or (N, 0) for no resets.
@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _scan3(a3: Array, b3: Array, h03: Array, cut2: Array, reverse: bool) -> tuple[Array, Array]:
    return _ffi_fwd(a3, b3, h03, cut2, reverse)


def _scan3_fwd(a3, b3, h03, cut2, reverse):
    h, final = _ffi_fwd(a3, b3, h03, cut2, reverse)
    return (h, final), (a3, h03, cut2, h)


def _scan3_bwd(reverse, residuals, cotangents):
    a3, h03, cut2, h = residuals
    ct_h, ct_final = cotangents
    call = jax.ffi.ffi_call(_BWD, (_like(a3), _like(h), _like(h03)), vmap_method="broadcast_all")
    a_bar, b_bar, h0_bar = call(a3, h, h03, ct_h.astype(h.dtype), ct_final.astype(h.dtype), cut2,
                                reverse=bool(reverse))
    return a_bar, b_bar, h0_bar, None  # no cotangent for the boolean cut mask


_scan3.defvjp(_scan3_fwd, _scan3_bwd)


def native_linear_scan(
    a: Array, b: Array, h0: Array, cut: Array | None = None, reverse: bool = False
) -> tuple[Array, Array]:
    """``(h, final_state)`` of ``h_t = a_t h_{t-1} + b_t`` on validated inputs in the compute dtype, time order.

    Args:
      a: ``(B, T, *Sa)`` float32/float64/complex64/complex128 (real ``a`` with complex ``b`` allowed).
      b: ``(B, T, *S)``.
      h0: ``(B, *S)`` (pass zeros for no initial state).
      cut: ``(B, T)`` bool, ``linrec.spec.reference.cut_mask(resets, reverse)``: the step ignores the carried state.
      reverse: run from ``t = T-1`` down to 0.

    A decay broadcast over trailing state axes (``(H, K, 1)``, ``(1, 1, 1)``) is passed as is; any other broadcast is
    materialised up to its last full axis (see ``linrec.backends.native.decay_layout``).
    """
    pair = (jnp.dtype(a.dtype).name, jnp.dtype(b.dtype).name)
    if pair not in native.DTYPE_PAIRS or h0.dtype != b.dtype:
        raise TypeError(f"method='native' supports the (a, b) dtype pairs {sorted(native.DTYPE_PAIRS)} with h0 in the "
                        f"dtype of b; got a={pair[0]}, b={pair[1]}, h0={jnp.dtype(h0.dtype).name}")
    register()
    n, t, state = b.shape[0], b.shape[1], tuple(b.shape[2:])
    target, da, _ = native.decay_layout(tuple(a.shape[2:]), state)
    a3 = jnp.broadcast_to(a, (n, t, *target)).reshape(n, t, da)
    cut2 = jnp.zeros((n, 0), jnp.bool_) if cut is None else jnp.asarray(cut, jnp.bool_)
    d = math.prod(state)
    h, final = _scan3(a3, b.reshape(n, t, d), h0.reshape(n, d), cut2, bool(reverse))
    return h.reshape(b.shape), final.reshape(h0.shape)


def native_scan(a: Array, b: Array, h0: Array, reverse: bool = False) -> Array:
    """The per-method kernel signature of ``linrec.backends.jax.scan``: ``h (B, T, *S)`` in time order.

    ``a (B, T, *Sa)`` with resets already realised as ``a := 0``, ``b (B, T, *S)``, ``h0 (B, *S)``, compute dtype.
    """
    return native_linear_scan(a, b, h0, None, reverse)[0]
