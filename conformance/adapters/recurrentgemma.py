"""recurrentgemma's JAX scan (``recurrentgemma.jax.scan.linear_scan``, the RG-LRU's) under the spec's names.

``linear_scan(x, a, h0=None, reverse=False, scan_type=...)`` runs ``h_t = a_t * h_{t-1} + x_t`` on batch-first
``(B, T, D)`` arrays and returns ``(y, h_last)``. Methods are its scan types that run on CPU:

- ``"linear_native"``: ``ScanType.LINEAR_NATIVE`` (a ``jax.lax.scan`` loop);
- ``"associative_native"``: ``ScanType.ASSOCIATIVE_NATIVE`` (``jax.lax.associative_scan``).

``ScanType.LINEAR_PALLAS`` is not offered: its ``pallas_call`` takes no ``interpret=`` flag, and on CPU Pallas
refuses ("Only interpret mode is supported on CPU backend"); it also needs D divisible by 128 (see
:data:`UNAVAILABLE`).

Layout: ``(B, T, *S)`` is flattened to ``(B, T, D)`` (a broadcast ``a`` is materialised) and back. The peer's
accumulator dtype (``acc_float_dtype``) is float64 for float64/complex128 inputs and float32 otherwise, the
state dtype of the spec; a bfloat16/float16 ``initial_state`` is widened to it (exact) because the peer asserts
that ``h0`` has the accumulator's dtype. Nothing the peer lacks is emulated: see :data:`LACKS`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from linrec.backends.jax.arrays import asarray, dtype_name, precision_scope, to_numpy
from linrec.conformance.adapters._common import Unsupported, load_xfails, refuse_lacking

try:
    from recurrentgemma import common as _common
    from recurrentgemma.jax import scan as _scan
except ImportError as err:
    raise ImportError(f"the recurrentgemma adapter needs recurrentgemma ({err}); install it with: "
                      "python -m pip install -c constraints.txt 'linrec[peers]'") from err

__all__ = ["LACKS", "METHODS", "UNAVAILABLE", "XFAILS", "Unsupported", "asarray", "describe", "dtype_name",
           "linear_scan", "linear_scan_vjp", "precision_scope", "to_numpy"]

PEER = "recurrentgemma"
METHODS: tuple[str, ...] = ("linear_native", "associative_native")
LOG_METHODS: tuple[str, ...] = ()
_SCAN_TYPES = {"linear_native": _common.ScanType.LINEAR_NATIVE,
               "associative_native": _common.ScanType.ASSOCIATIVE_NATIVE}
_NO_RESETS = "linear_scan(x, a, h0, reverse) has no segment starts (resets); the RG-LRU has no document masking"
#: method -> option -> why the peer does not offer it
_NO_EMPTY = "T = 0 raises IndexError: the scan reads y[:, -1] (and associative_scan needs equal first dimensions)"
LACKS: dict[str, dict[str, str]] = {m: {"resets": _NO_RESETS, "empty": _NO_EMPTY} for m in METHODS}
UNAVAILABLE: dict[str, str] = {
    "linear_pallas": "ScanType.LINEAR_PALLAS calls pallas_call without interpret=, which Pallas refuses on CPU "
                     "('Only interpret mode is supported on CPU backend'); it also needs D divisible by 128",
}
XFAILS: dict[str, str] = load_xfails("recurrentgemma")


def _resolve(method: str) -> str:
    if method == "auto":
        return "linear_native"
    if method in UNAVAILABLE:
        raise RuntimeError(f"method={method!r}: {UNAVAILABLE[method]}; use one of {METHODS}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {('auto', *METHODS)}, got {method!r}")
    return method


def _acc_dtype(b: jax.Array):
    return jnp.float64 if b.dtype in (jnp.float64, jnp.complex128) else jnp.float32


def _scan_flat(a, b, h0, *, reverse: bool, method: str):
    """The peer on the flattened layout; returns ``(h (B, T, *S), final (B, *S))``."""
    shape = tuple(b.shape)
    flat = (shape[0], shape[1], math.prod(shape[2:]))
    x, gates = b.reshape(flat), jnp.broadcast_to(a, shape).reshape(flat)
    acc = _acc_dtype(b)
    if h0 is not None:
        h0 = h0.reshape(flat[0], flat[2])
        if not jnp.iscomplexobj(h0) and h0.dtype != acc:
            h0 = h0.astype(acc)
    y, last = _scan.linear_scan(x, gates, h0=h0, reverse=reverse, scan_type=_SCAN_TYPES[method],
                                acc_float_dtype=acc)
    return y.reshape(shape), last.reshape(shape[0], *shape[2:])


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    *,
    initial_state: jax.Array | None = None,
    reverse: bool = False,
    resets: jax.Array | None = None,
    method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """``h_t = a_t * h_{t-1} + b_t`` by recurrentgemma's scan of type ``method``.

    Args:
      a: decays ``(B, T, *S)`` or broadcastable to ``b``.
      b: inputs ``(B, T, *S)``.
      initial_state: ``(B, *S)`` or None (zeros).
      reverse: scan from the end (the peer's own ``reverse=``).
      resets: ``(B, T)`` bool; refused (:class:`Unsupported`) when a segment starts after t = 0.
      method: ``"linear_native"``, ``"associative_native"`` or ``"auto"`` (``linear_native``).

    Returns:
      ``(h (B, T, *S), final_state (B, *S))`` as the peer returns them (``final_state`` in its accumulator dtype).
    """
    method = _resolve(method)
    refuse_lacking(PEER, method, LACKS[method], dtype=dtype_name(b), reverse=bool(reverse),
                   has_initial_state=initial_state is not None,
                   has_resets=resets is not None and bool(jnp.asarray(resets)[:, 1:].any()), length=b.shape[1])
    return _scan_flat(a, b, initial_state, reverse=bool(reverse), method=method)


def linear_scan_vjp(
    a: jax.Array,
    b: jax.Array,
    cotangent_h: jax.Array,
    cotangent_final_state: jax.Array | None = None,
    *,
    initial_state: jax.Array | None = None,
    reverse: bool = False,
    resets: jax.Array | None = None,
    method: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``jax.vjp`` of :func:`linear_scan` (the peer's scan differentiated by JAX).

    Returns ``(a_bar, b_bar, initial_state_bar)``; with ``initial_state=None`` the last is the cotangent of a zero
    initial state passed to the peer as ``h0``.
    """
    method = _resolve(method)
    refuse_lacking(PEER, method, LACKS[method], dtype=dtype_name(b), reverse=bool(reverse), has_initial_state=False,
                   has_resets=resets is not None and bool(jnp.asarray(resets)[:, 1:].any()), length=b.shape[1])
    h0 = jnp.zeros((b.shape[0], *b.shape[2:]), b.dtype) if initial_state is None else initial_state

    def fn(a_, b_, h0_):
        return _scan_flat(a_, b_, h0_, reverse=bool(reverse), method=method)

    (_, final), pullback = jax.vjp(fn, a, b, h0)
    ct_final = jnp.zeros_like(final) if cotangent_final_state is None else cotangent_final_state.astype(final.dtype)
    return pullback((cotangent_h, ct_final))


def describe() -> dict:
    """What the report records about this adapter: the peer's version and what it lacks."""
    from importlib.metadata import version

    return {"peer": PEER, "peer_version": version("recurrentgemma"), "jax_version": jax.__version__,
            "lacks": LACKS, "unavailable": UNAVAILABLE}
