"""``method="native"`` for the JAX backend: the compiled CPU kernel (``linrec.backends.native``) as XLA FFI calls.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step.

:func:`native_scan` has the signature of the backend's per-method kernels (``_sequential`` in ``scan.py``);
:func:`native_linear_scan` also takes the cut mask, so resets need no ``a := 0`` pass and ``reverse`` no flips.
Both are differentiable through a ``jax.custom_vjp`` whose backward is a second FFI call (the dedicated backward
kernel, JAX complex convention, recurrence.md §10), and work under ``jit`` and ``vmap`` (``vmap_method=
"broadcast_all"``: the kernel folds the extra leading axes into its batch). Differentiating the backward itself
(grad of grad) goes through :func:`_composite_vjp`, the same VJP written as a scan in the opposite direction plus
elementwise ops, so every order of derivative is again native scans. bfloat16 ``a``, ``b`` reach the kernel as
bfloat16 buffers (it reads and writes bf16 around a float32 state, recurrence.md §5): ``h``, ``a_bar``, ``b_bar``
are then bfloat16 and ``h0``, ``final`` and their cotangents float32. Resets are passed as the cut mask, a select
in the kernel: a NaN or inf never crosses into the next segment (``a := 0`` times NaN would). CPU only; the library
is compiled on first use (``linrec.backends.native.build``).
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
                "build time); reinstall jaxlib or rebuild with `python -m linrec.backends.native.build --force`, or "
                "use method='sequential'"
            )
        jax.ffi.register_ffi_target(_FWD, jax.ffi.pycapsule(lib.linrec_scan_fwd_ffi), platform="cpu")
        jax.ffi.register_ffi_target(_BWD, jax.ffi.pycapsule(lib.linrec_scan_bwd_ffi), platform="cpu")
        _registered = True


_fused_targets: set[str] = set()


def register_targets(*targets: str) -> None:
    """Register the library's FFI handlers ``<target>_ffi`` under the names ``targets`` with XLA, once each (after
    :func:`register`, which builds or loads the library). The fused layer kernels' bindings call this."""
    register()
    with _register_lock:
        lib = native._builder().load()
        for target in targets:
            if target not in _fused_targets:
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, f"{target}_ffi")), platform="cpu")
                _fused_targets.add(target)


def _like(x: Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _ffi_fwd(a: Array, b: Array, h0: Array, cut: Array, reverse: bool) -> tuple[Array, Array]:
    call = jax.ffi.ffi_call(_FWD, (_like(b), _like(h0)), vmap_method="broadcast_all")
    return call(a, b, h0, cut, reverse=bool(reverse))


def _ffi_bwd(a3, h, h03, ct_h, ct_final, cut2, reverse: bool) -> tuple[Array, Array, Array]:
    call = jax.ffi.ffi_call(_BWD, (_like(a3), _like(h), _like(h03)), vmap_method="broadcast_all")
    return call(a3, h, h03, ct_h, ct_final, cut2, reverse=bool(reverse))


# a3 (N, T, Da), b3 (N, T, D), h03 (N, D), cut2 (N, T) bool or (N, 0) for no resets.
@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _scan3(a3: Array, b3: Array, h03: Array, cut2: Array, reverse: bool) -> tuple[Array, Array]:
    return _ffi_fwd(a3, b3, h03, cut2, reverse)


def _scan3_fwd(a3, b3, h03, cut2, reverse):
    # Through _scan3, not the FFI call: under an outer derivative (grad of grad) this is then differentiable.
    h, final = _scan3(a3, b3, h03, cut2, reverse)
    return (h, final), (a3, h03, cut2, h)


def _scan3_bwd(reverse, residuals, cotangents):
    a3, h03, cut2, h = residuals
    ct_h, ct_final = cotangents
    a_bar, b_bar, h0_bar = _scan3_vjp(a3, h, h03, ct_h.astype(h.dtype), ct_final.astype(h03.dtype), cut2, reverse)
    return a_bar, b_bar, h0_bar, None  # no cotangent for the boolean cut mask


_scan3.defvjp(_scan3_fwd, _scan3_bwd)


# The backward kernel as a function of (a3, h, h03, ct_h, ct_final): the fused FFI kernel when evaluated, and the
# derivative of _composite_vjp (scans and elementwise ops) when it is itself differentiated (double backward).
@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _scan3_vjp(a3, h, h03, ct_h, ct_final, cut2, reverse: bool) -> tuple[Array, Array, Array]:
    return _ffi_bwd(a3, h, h03, ct_h, ct_final, cut2, reverse)


def _scan3_vjp_fwd(a3, h, h03, ct_h, ct_final, cut2, reverse):
    return _scan3_vjp(a3, h, h03, ct_h, ct_final, cut2, reverse), (a3, h, h03, ct_h, ct_final, cut2)


def _scan3_vjp_bwd(reverse, residuals, cotangents):
    *primals, cut2 = residuals
    _, pullback = jax.vjp(lambda *x: _composite_vjp(*x, cut2, reverse), *primals)
    return (*pullback(cotangents), None)


_scan3_vjp.defvjp(_scan3_vjp_fwd, _scan3_vjp_bwd)


def _composite_vjp(a3: Array, h: Array, h03: Array, ct_h: Array, ct_final: Array, cut2: Array,
                   reverse: bool) -> tuple[Array, Array, Array]:
    """What the backward kernel computes (JAX convention, recurrence.md §10), from differentiable pieces: the
    adjoint recurrence is a scan in the opposite direction (:func:`_scan3`), the rest elementwise.

    ``a3 (N, T, Da)``, ``h``/``ct_h (N, T, D)``, ``h03``/``ct_final (N, D)``, ``cut2 (N, T)`` or ``(N, 0)``. With
    bfloat16 ``a3``, ``h`` (float32 ``h03``) the elementwise products are taken in float32, as the kernel does.
    """
    n, t, da = a3.shape
    d = h.shape[-1]
    r = d // da if da else 1
    if t == 0:
        return jnp.zeros_like(a3), jnp.zeros_like(h), ct_final
    cut = jnp.zeros((n, t), jnp.bool_) if cut2.shape[-1] == 0 else cut2
    if reverse:  # the same computation in processing order
        a_bar, b_bar, h0_bar = _composite_vjp(a3[:, ::-1], h[:, ::-1], h03, ct_h[:, ::-1], ct_final,
                                              cut[:, ::-1], False)
        return a_bar[:, ::-1], b_bar[:, ::-1], h0_bar
    # g_k = ct_h_k + a_{k+1} g_{k+1} (dropped where step k+1 is cut), g_{T-1} = ct_h_{T-1} + ct_final
    a_next = jnp.concatenate([a3[:, 1:], jnp.ones_like(a3[:, :1])], 1)
    cut_next = jnp.concatenate([cut[:, 1:], jnp.zeros((n, 1), jnp.bool_)], 1)
    g, _ = _scan3(a_next, ct_h, ct_final, cut_next, True)
    # astype(h03.dtype): a no-op except for bfloat16 streams, whose products the kernel forms in float32
    h_prev = jnp.concatenate([h03[:, None], h[:, :-1].astype(h03.dtype)], 1)
    a_bar = (g.astype(h03.dtype) * h_prev).reshape(n, t, da, r).sum(-1)
    if not jnp.iscomplexobj(a3):
        a_bar = jnp.real(a_bar)  # a real decay of a complex state: the imaginary direction does not exist
    a_bar = jnp.where(cut[..., None], jnp.zeros((), a_bar.dtype), a_bar)  # cut steps: where, not times 0
    a_first = a3[:, 0, :, None]
    a_first = a_first.astype(jnp.float32) if a_first.dtype == jnp.bfloat16 else a_first  # a real decay stays real
    h0_bar = (g[:, 0].astype(h03.dtype).reshape(n, da, r) * a_first).reshape(n, d)
    h0_bar = jnp.where(cut[:, :1], jnp.zeros((), h0_bar.dtype), h0_bar)
    return a_bar.astype(a3.dtype), g, h0_bar


def native_linear_scan(
    a: Array, b: Array, h0: Array, cut: Array | None = None, reverse: bool = False
) -> tuple[Array, Array]:
    """``(h, final_state)`` of ``h_t = a_t h_{t-1} + b_t`` on validated inputs in the compute dtype, time order.

    Args:
      a: ``(B, T, *Sa)`` float32/float64/complex64/complex128 (real ``a`` with complex ``b`` allowed), or bfloat16
        with bfloat16 ``b``: read as it is, the state carried in float32 and ``h`` rounded to bfloat16 on store.
      b: ``(B, T, *S)``.
      h0: ``(B, *S)`` in the dtype of ``b``, float32 for bfloat16 ``b`` (then ``final_state`` is float32 too, for the
        caller to round); pass zeros for no initial state.
      cut: ``(B, T)`` bool, ``linrec.spec.reference.cut_mask(resets, reverse)``: the step ignores the carried state.
      reverse: run from ``t = T-1`` down to 0.

    A decay broadcast over trailing state axes (``(H, K, 1)``, ``(1, 1, 1)``) is passed as is; any other broadcast is
    materialised up to its last full axis (see ``linrec.backends.native.decay_layout``).
    """
    pair = (jnp.dtype(a.dtype).name, jnp.dtype(b.dtype).name)
    if pair not in native.KERNEL_PAIRS or jnp.dtype(h0.dtype).name != native.state_dtype(pair[1]):
        raise TypeError(f"method='native' supports the (a, b) dtype pairs {sorted(native.KERNEL_PAIRS)} with h0 in the "
                        f"dtype of b (float32 for bfloat16); got a={pair[0]}, b={pair[1]}, "
                        f"h0={jnp.dtype(h0.dtype).name}")
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
