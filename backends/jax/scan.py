"""The JAX backend: ``linear_scan``, ``log_scan`` and their VJP (recurrence.md §2–§11).

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step
(each axis equal to the one of ``*S`` or 1; ``a`` is never materialised at the shape of ``b``).

Every method reduces to one kernel ``h = kernel(a, b, h0)``: resets become ``a := 0`` at the cut positions (§4);
``reverse`` runs the loop backwards and flips time around the parallel kernels. The kernel sits inside a
``jax.custom_vjp`` whose backward pass is a linear scan in the opposite direction with the same method (§10; the
``log`` method, which cannot scan signed cotangents, uses the loop), so differentiating stores only ``a``, ``h0``
and ``h`` — O(B·T·|S|) memory, not the O(B·T·|S|·log T) intermediates of autodiff through ``lax.associative_scan``.

float64/complex128 inputs need JAX's 64-bit mode (``with jax.enable_x64(True):``); outside it they raise
``TypeError`` rather than being truncated (``arrays.to_jax``).
"""

from __future__ import annotations

import contextvars
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linrec.backends import native
from linrec.backends.jax.arrays import dtype_name, jnp_dtype, to_jax
from linrec.backends.jax.native import native_linear_scan
from linrec.spec import checks
from linrec.spec.reference import cu_seqlens_to_resets as _reference_cu_seqlens_to_resets

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LOG_METHODS",
    "METHODS",
    "cu_seqlens_to_resets",
    "linear_scan",
    "linear_scan_vjp",
    "log_scan",
]

#: ``"native"`` (the C++ kernel of ``linrec.backends.native``) is listed only where it is built; ``"pallas"`` (the
#: Pallas kernel, ``pallas_scan.py``; interpreted on CPU) comes last.
METHODS = (*native.with_native(("sequential", "associative", "chunked", "log")), "pallas")
LOG_METHODS = ("sequential", "heinsen")
#: Steps per chunk of ``method="chunked"``. Measured on 2 shared CPU cores (float32, jit, forward, best of 7, ms):
#: B=8, D=512, T=4096: chunk 8: 408-444, 16: 429-484, 32: 478-611, 64: 426-480, 128: 402-483;
#: T=1024: 47-53, 58-63, 68-101, 73-95, 71-81; T=256: 4.0-6.5, 4.4-4.9, 5.1-7.3, 4.9-10.6, 5.1-5.2.
#: Flat within the noise; 8-16 is best or near-best everywhere (a shallow in-chunk prefix, a short carry loop).
DEFAULT_CHUNK_SIZE = 16
# The NumPy backend's text, so both raise the same message.
_HEINSEN_RESETS = (
    "log_scan(method='heinsen') cannot carry resets (a cut is log a = -inf); use method='sequential' or 'auto'"
)

Array = jax.Array

#: Set by ``linrec.backends.jax.distributed.sequence_parallel`` (recurrence.md §12): while it holds a function,
#: :func:`linear_scan` calls it instead (the sequence-parallel scan) and :func:`log_scan` refuses.
SEQUENCE_PARALLEL: contextvars.ContextVar = contextvars.ContextVar("linrec_jax_sequence_parallel", default=None)


# ---------------------------------------------------------------------------------------------------------------------
# Forward kernels. All take a: (B, T, *Sa), b: (B, T, *S), h0: (B, *S) in the compute dtype, processing order, T >= 1,
# and return h: (B, T, *S).


def _combine(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
    """§6 with the decay in complement form, ``c = 1 - a``. First ``first``, then ``second``:
    ``(a_j a_i, a_j b_i + b_j)`` as ``(c_i + c_j a_i, a_j b_i + b_j)`` with ``a = 1 - c`` rounded afresh.

    For decays near 1 the plain float32 product ``a_i a_j`` rounds ``1 - x_i - x_j + x_i x_j`` to ``1 - x_i - x_j``:
    a bias of one sign that compounds level after level, 10x the sequential loop's error at T = 65536
    (recurrence.md §9). The complement keeps the small quantity at full relative precision, and each ``a`` derived
    from it is within half an ulp of the exact product, so nothing compounds. ``c_i = 1`` (a forgotten past) stays
    exactly 1. XLA fuses the elementwise work, so the complement costs no extra pass over memory.
    """
    c_i, b_i = first
    c_j, b_j = second
    return c_i + c_j * (1 - c_i), (1 - c_j) * b_i + b_j


def _combine_cut(first: tuple[Array, Array, Array], second: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    """:func:`_combine` carrying a cut flag: a span that contains a cut is its part after the cut, chosen by
    ``where`` (not ``0 * b_i``), so a NaN or inf before a segment start stays in its segment (§11)."""
    f_i, c_i, b_i = first
    f_j, c_j, b_j = second
    c, b = _combine((c_i, b_i), (c_j, b_j))
    return f_i | f_j, jnp.where(f_j, c_j, c), jnp.where(f_j, b_j, b)


def _apply(c: Array, h_prev: Array, b: Array, cut: Array | None) -> Array:
    """``(1 - c) h_prev + b``, or ``b`` where ``cut`` (``where``: see :func:`_combine_cut`)."""
    out = (1 - c) * h_prev + b
    return out if cut is None else jnp.where(cut, b, out)


def _loop(step, xs: tuple[Array, ...], state: Array, reverse: bool) -> Array:
    """``state = step(state, *[x[:, t] for x in xs])`` for each t; returns every state, (B, T, *S).

    A ``fori_loop`` that reads and writes axis 1 in place: ``lax.scan`` would need time-major copies of the inputs
    and the output, which measured 2-5x slower on CPU (B=8, T=1024, D=512 float32: 23 ms with lax.scan, 4.4 ms).
    """
    n_time = xs[0].shape[1]

    def body(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        state, out = carry
        t = n_time - 1 - i if reverse else i
        state = step(state, *(lax.dynamic_index_in_dim(x, t, 1, False) for x in xs))
        return state, lax.dynamic_update_index_in_dim(out, state, t, 1)

    out = jnp.zeros((state.shape[0], n_time, *state.shape[1:]), state.dtype)
    return lax.fori_loop(0, n_time, body, (state, out))[1]


def _sequential(a: Array, b: Array, h0: Array, cut: Array | None, reverse: bool = False) -> Array:
    if cut is None:
        return _loop(lambda state, a_t, b_t: a_t * state + b_t, (a, b), h0, reverse)
    # a cut link restarts from b_t; `where`, so NaN/inf of the previous segment stays there (§11)
    return _loop(lambda state, a_t, b_t, cut_t: jnp.where(cut_t, b_t, a_t * state + b_t), (a, b, cut), h0, reverse)


def _associative(a: Array, b: Array, h0: Array, cut: Array | None) -> Array:
    # The initial state enters as b_0 := a_0 h0 + b_0 (§6), not as a term added to every h_t (step 0 is never cut).
    b = b.at[:, 0].set(a[:, 0] * h0 + b[:, 0])
    if cut is None:
        return lax.associative_scan(_combine, (1 - a, b), axis=1)[1]
    return lax.associative_scan(_combine_cut, (cut, 1 - a, b), axis=1)[2]


def _chunked(a: Array, b: Array, h0: Array, cut: Array | None, chunk_size: int) -> Array:
    """Prefix within each chunk (all chunks at once), then a sequential carry across chunks (complement form)."""
    n_batch, n_time = b.shape[:2]
    n_chunks = -(-n_time // chunk_size)
    pad = n_chunks * chunk_size - n_time

    def chunks(x: Array, fill) -> Array:  # (B, T, ...) -> (B, n_chunks, chunk, ...), padded with identity steps
        if pad:
            x = jnp.concatenate([x, jnp.full((n_batch, pad, *x.shape[2:]), fill, x.dtype)], axis=1)
        return x.reshape(n_batch, n_chunks, chunk_size, *x.shape[2:])

    c, b = chunks(1 - a, 0), chunks(b, 0)  # identity step: a = 1 (c = 0), b = 0
    if cut is None:
        f_cum = None
        c_cum, b_cum = lax.associative_scan(_combine, (c, b), axis=2)
    else:
        f_cum, c_cum, b_cum = lax.associative_scan(_combine_cut, (chunks(cut, False), c, b), axis=2)

    def carry(state: Array, last: tuple[Array, ...]) -> tuple[Array, Array]:
        return _apply(last[0], state, last[1], None if f_cum is None else last[2]), state  # emit the entering state

    last = tuple(jnp.moveaxis(x[:, :, -1], 1, 0) for x in (c_cum, b_cum) + (() if f_cum is None else (f_cum,)))
    _, entering = lax.scan(carry, h0, last)
    h = _apply(c_cum, jnp.moveaxis(entering, 0, 1)[:, :, None], b_cum, f_cum)
    return h.reshape(n_batch, n_chunks * chunk_size, *h.shape[3:])[:, :n_time]


def _heinsen(log_a: Array, log_b: Array, log_h0: Array | None) -> Array:
    """Log-space closed form: ``log h_t = a*_t + logaddexp(log h0, logcumsumexp(log b - a*)_t)``, ``a* = cumsum log a``.

    All inputs finite (``log_h0=None`` is a zero state); resets are refused by the callers (a cut is ``-inf``).
    On CPU the two prefix sums run as one in-place loop (:func:`_heinsen_loop`); elsewhere as XLA's parallel
    ``cumsum``/``cumlogsumexp`` (:func:`_heinsen_parallel`). Same formula, same rounding profile.
    """
    return lax.platform_dependent(cpu=lambda: _heinsen_loop(log_a, log_b, log_h0),
                                  default=lambda: _heinsen_parallel(log_a, log_b, log_h0))


def _heinsen_parallel(log_a: Array, log_b: Array, log_h0: Array | None) -> Array:
    """:func:`_heinsen` through ``jnp.cumsum`` and ``lax.cumlogsumexp`` (parallel prefix sums)."""
    a_star = jnp.cumsum(log_a, axis=1)
    inner = lax.cumlogsumexp(log_b - a_star, axis=1)
    if log_h0 is not None:
        inner = jnp.logaddexp(log_h0[:, None], inner)
    return a_star + inner


def _heinsen_loop(log_a: Array, log_b: Array, log_h0: Array | None) -> Array:
    """:func:`_heinsen` as one loop over time carrying ``a*_t`` and the running ``logaddexp`` (started at
    ``log h0``, the same sum in another order). On CPU XLA's ``cumlogsumexp`` is a log-depth tree of ``logaddexp``
    passes: B=8, T=4096, D=512 float32 took 3279 ms that way and 126 ms this way (error vs the float64 loop:
    3.2e-5 and 6.5e-5 of max|h|, both far inside the method's T-scaled tolerance)."""
    n_batch, n_time = log_b.shape[:2]
    state = (n_batch, *log_b.shape[2:])
    inner0 = jnp.full(state, -jnp.inf, log_b.dtype) if log_h0 is None else jnp.broadcast_to(log_h0, state)

    def body(t: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
        a_star, lost, inner, out = carry
        # Kahan-compensated a*: adding a small log a_t to a large running sum rounds the same way step after step
        # (decays near 1: 1e-4 onto |a*| ~ 5 loses up to 1% of each term), which cost 6e-4 of max|h| at T = 1e5;
        # the compensation keeps a*_t within an ulp of the exact sum (recurrence.md §9).
        step = lax.dynamic_index_in_dim(log_a, t, 1, False) - lost
        total = a_star + step
        lost = (total - a_star) - step
        inner = jnp.logaddexp(inner, lax.dynamic_index_in_dim(log_b, t, 1, False) - total)
        return total, lost, inner, lax.dynamic_update_index_in_dim(out, total + inner, t, 1)

    a_star0 = jnp.zeros((n_batch, *log_a.shape[2:]), log_a.dtype)
    out = jnp.zeros(log_b.shape, jnp.result_type(log_a, log_b))
    return lax.fori_loop(0, n_time, body, (a_star0, a_star0, inner0.astype(out.dtype), out))[3]


def _int_view(x: Array) -> Array:
    """The bits of a real float array as a signed integer of the same width (no conversion)."""
    return lax.bitcast_convert_type(x, {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(x.dtype).itemsize])


def _positive_finite(x) -> Array:
    """``0 < x < inf`` decided on the bits: XLA on CPU flushes subnormals to zero in arithmetic *and* comparisons,
    so ``1e-40 > 0`` is False under ``jit``. A positive finite float is exactly a bit pattern in
    ``(0, bits(+inf))`` read as a signed integer (negatives, -0, NaN and +inf fall outside)."""
    if isinstance(x, np.ndarray):
        return np.isfinite(x) & (x > 0)
    inf_bits = _int_view(jnp.asarray(np.inf, x.dtype))
    bits = _int_view(x)
    return (bits > 0) & (bits < inf_bits)


def _log_positive(x: Array) -> Array:
    """``log x`` for ``x >= 0``, right for subnormals too: XLA on CPU flushes them to zero (``log(1e-40)`` came out
    as -inf or a wrong constant and the Heinsen form returned NaN). A subnormal is its integer mantissa ``m`` times
    the smallest subnormal ``2**(minexp - nmant)``, so ``log x = log m + (minexp - nmant) log 2``, with ``m < 2**nmant``
    exact in the same dtype."""
    info = jnp.finfo(x.dtype)
    bits = _int_view(x)
    subnormal = (bits > 0) & (bits < _int_view(jnp.asarray(info.smallest_normal, x.dtype)))
    log_sub = jnp.log(bits.astype(x.dtype)) + (int(info.minexp) - int(info.nmant)) * float(np.log(2.0))
    return jnp.where(subnormal, log_sub, jnp.log(x))


def _log(a: Array, b: Array, h0: Array) -> Array:
    # h0 = 0 (initial_state=None) is log h0 = -inf, which logaddexp absorbs; the VJP is custom, so no NaN gradient.
    return jnp.exp(_heinsen(_log_positive(a), _log_positive(b), _log_positive(h0))).astype(b.dtype)


def _forward(
    a: Array, b: Array, h0: Array, cut: Array | None, method: str, chunk_size: int, reverse: bool
) -> Array:
    """Dispatch to a kernel; ``reverse`` runs it from the last step (flipping, except for the loop).

    ``cut`` (``(B, T, 1, ...)`` bool or None) marks steps that ignore the carried state; ``a`` is already 0 there.
    """
    if method == "sequential":
        return _sequential(a, b, h0, cut, reverse)
    if reverse:
        flipped = None if cut is None else cut[:, ::-1]
        return _forward(a[:, ::-1], b[:, ::-1], h0, flipped, method, chunk_size, False)[:, ::-1]
    if method == "associative":
        return _associative(a, b, h0, cut)
    if method == "chunked":
        return _chunked(a, b, h0, cut, chunk_size)
    return _log(a, b, h0)  # the log method refuses resets


# ---------------------------------------------------------------------------------------------------------------------
# The custom VJP (§10) around the kernel.


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    axes = tuple(i for i, (sx, s) in enumerate(zip(x.shape, shape, strict=True)) if s == 1 and sx != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def _shift(x: Array, fill: Array, later: bool) -> Array:
    """``out[t] = x[t+1]`` (``later``) or ``x[t-1]``; ``fill`` (a scalar or one step (B, *S)) at the open end."""
    fill = fill if fill.ndim == 0 else fill[:, None]
    edge = jnp.broadcast_to(fill, (x.shape[0], 1, *x.shape[2:])).astype(x.dtype)
    return jnp.concatenate([x[:, 1:], edge] if later else [edge, x[:, :-1]], axis=1)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _scan(a: Array, b: Array, h0: Array, cut: Array | None, method: str, chunk_size: int, reverse: bool) -> Array:
    """``h`` (B, T, *S) in time order; T >= 1. Differentiable through :func:`_scan_bwd`."""
    return _forward(a, b, h0, cut, method, chunk_size, reverse)


def _scan_fwd(a, b, h0, cut, method, chunk_size, reverse):
    h = _forward(a, b, h0, cut, method, chunk_size, reverse)
    return h, (a, h0, h, cut)


def _real_if(x: Array, like: Array) -> Array:
    return x if jnp.iscomplexobj(like) else x.real  # a real decay of a complex state has a real cotangent


def _sequential_vjp(
    a: Array, h0: Array, h: Array, ct_h: Array, cut: Array | None, reverse: bool
) -> tuple[Array, Array, Array]:
    """The VJP as one fused loop against the forward direction: reads a, ct_h, h; writes g (= b_bar) and a_bar.

    The carry is ``a_t g_t``, the cotangent flowing into the previous step, so no shifted copy of ``a`` or ``h``
    is made (this CPU is memory-bound: each extra pass over (B, T, *S) costs about as much as the loop itself).
    """
    n_time = h.shape[1]
    first = n_time - 1 if reverse else 0

    def index(x: Array, t: Array) -> Array:
        return lax.dynamic_index_in_dim(x, t, 1, False)

    def body(i: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        flow, g, a_bar = carry
        t = i if reverse else n_time - 1 - i
        a_t = index(a, t)
        g_t = index(ct_h, t) + flow
        h_prev = jnp.where(t == first, h0, index(h, t + 1 if reverse else t - 1))  # clamped index at the edge
        a_bar_t = _real_if(_sum_to_shape(g_t * h_prev, a_t.shape), a)
        flow = a_t * g_t if cut is None else jnp.where(index(cut, t), 0, a_t * g_t)  # nothing crosses a cut
        return (flow, lax.dynamic_update_index_in_dim(g, g_t, t, 1),
                lax.dynamic_update_index_in_dim(a_bar, a_bar_t.astype(a_bar.dtype), t, 1))

    init = (jnp.zeros_like(h0), jnp.zeros_like(ct_h), jnp.zeros(a.shape, a.dtype))
    h0_bar, g, a_bar = lax.fori_loop(0, n_time, body, init)
    return a_bar, g, h0_bar


def _scan_bwd(method, chunk_size, reverse, residuals, ct_h):
    a, h0, h, cut = residuals
    # Forward direction: g_t = ct_t + a_{t+1} g_{t+1}, a scan in the opposite direction whose decay is `a` shifted
    # by one step (mirrored for reverse=True). The cotangent of final_state arrives already added to ct_h at the
    # last processed step (final_state is a slice of h outside this function). Cuts are a == 0 here, so g does
    # not cross them, and the a := 0 outside zeroes a_bar at the cut positions.
    # `log` cannot run this scan (cotangents take any sign): it uses the loop, the fastest general method on CPU.
    if method in ("sequential", "log"):
        a_bar, g, h0_bar = _sequential_vjp(a, h0, h, ct_h, cut, reverse)
    else:
        a_next = _shift(a, jnp.ones((), a.dtype), later=not reverse)
        cut_next = None if cut is None else _shift(cut, jnp.zeros((), bool), later=not reverse)
        g = _forward(a_next, ct_h, jnp.zeros_like(h0), cut_next, method, chunk_size, not reverse)
        a_bar = _real_if(_sum_to_shape(g * _shift(h, h0, later=reverse), a.shape), a)
        first = -1 if reverse else 0
        h0_bar = a[:, first] * g[:, first]
    return a_bar.astype(a.dtype), g.astype(ct_h.dtype), h0_bar.astype(h0.dtype), None


_scan.defvjp(_scan_fwd, _scan_bwd)


# ---------------------------------------------------------------------------------------------------------------------
# Argument handling shared by the public functions.


def _expand(mask: Array, ndim: int) -> Array:
    return mask.reshape(mask.shape + (1,) * (ndim - 2))


def _cut_mask(resets: Array | None, reverse: bool) -> Array | None:
    """(B, T) bool in time order: where the link into a step is cut (``linrec.spec.reference.cut_mask``)."""
    if resets is None:
        return None
    shifted = resets[:, 1:]
    no_cut = jnp.zeros_like(resets[:, :1])
    return jnp.concatenate([shifted, no_cut] if reverse else [no_cut, shifted], axis=1)


def _as_array(x, name: str) -> Array | None:
    return None if x is None else to_jax(x, name)


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _raise_outside(name: str, condition: str, ok) -> None:
    if not np.all(np.asarray(ok)):
        raise ValueError(checks.log_domain_message(name, condition))


def _check_values(named: dict[str, Array | None], predicate, condition: str) -> None:
    """Raise ``ValueError`` unless ``predicate`` holds everywhere.

    Concrete arrays are checked now. Traced ones (``jit``, ``vmap``, ``grad``) get a ``jax.debug.callback`` that
    raises when the computation executes (JAX wraps it in a runtime error carrying the same message), so a value
    outside the domain never comes back as a silent NaN.
    """
    for name, x in named.items():
        if x is None:
            continue
        if _is_traced(x):
            jax.debug.callback(partial(_raise_outside, name, condition), jnp.all(predicate(x)))
        else:  # on the host: no compile for a one-off check
            _raise_outside(name, condition, predicate(np.asarray(x)))


def _check_linear_args(a: Array, b: Array, h0: Array | None, resets: Array | None) -> None:
    checks.check_scan_args(
        tuple(a.shape), dtype_name(a), tuple(b.shape), dtype_name(b),
        None if h0 is None else tuple(h0.shape),
        None if h0 is None else dtype_name(h0),
        None if resets is None else tuple(resets.shape),
        None if resets is None else dtype_name(resets),
    )


def _pick_method(method: str, dtype: str | None = None) -> str:
    """Resolve ``"auto"`` (never ``"log"``, whose domain depends on values).

    On CPU the loop wins at every shape measured: 2 CPU cores (shared), float32, jit, best of 5, ms, forward / grad
    of ``h.sum()`` with respect to ``a`` and ``b``::

        B, T, D          sequential        associative        chunked (chunk 32)
        8, 4096, 512     54.5 / 228        343 / 1073         490 / 986
        8, 1024, 512     8.0 / 46.9        119 / 245          69.8 / 197
        8, 256, 512      0.70 / 4.07       8.52 / 22.6        8.26 / 23.3
        8, 64, 512       0.13 / 0.48       0.51 / 0.97        0.47 / 1.74
        8, 16, 512       0.07 / 0.11       0.11 / 0.24        0.39 / 1.34
        1, 65536, 8      0.52 / 1.75       5.88 / 16.5        2.88 / 14.6
        64, 1024, 16     2.05 / 6.74       4.28 / 11.1        5.55 / 15.7

    XLA's CPU loop touches each element once; the parallel forms make O(log T) (or O(log chunk)) passes over
    memory on a machine with only two cores to spread them over. Accelerators (not measured here) take the Pallas
    kernel (one pass over memory, ``pallas_scan.py``) for the dtypes it compiles for, else ``chunked`` (parallel
    depth). On CPU ``auto`` never picks ``pallas``: there it runs in the interpreter.
    """
    checks.check_method(method, METHODS)
    if method != "auto":
        return method
    if jax.default_backend() != "cpu":
        from linrec.backends.jax.pallas_scan import DEVICE_DTYPES

        return "pallas" if dtype in DEVICE_DTYPES else "chunked"
    # the native kernel streams at memory bandwidth (benchmarks/), the XLA loop allocates and copies more
    return "native" if "native" in METHODS else "sequential"


def _validate(a, b, initial_state, resets, method: str, chunk_size: int | None, reverse: object):
    native.require_native(method)
    checks.check_method(method, METHODS)
    checks.check_reverse(reverse)
    checks.check_chunk_size(chunk_size)
    a, b, h0, resets = (_as_array(a, "a"), _as_array(b, "b"), _as_array(initial_state, "initial_state"),
                        _as_array(resets, "resets"))
    _check_linear_args(a, b, h0, resets)
    method = _pick_method(method, dtype_name(b))
    if method == "pallas":
        from linrec.backends.jax import pallas_scan

        for name, x in (("a", a), ("b", b), ("initial_state", h0)):
            if x is not None:
                pallas_scan.check_pallas_dtype(name, dtype_name(x))
        pallas_scan.notice_interpreted()
    if method == "log":
        if resets is not None:
            raise ValueError(checks.log_domain_message("resets", "method='log' cannot carry a reset (log 0 = -inf)"))
        for name, x in (("a", a), ("b", b), ("initial_state", h0)):
            if x is not None and jnp.iscomplexobj(x):  # a property of the dtype: refuse even when traced
                raise ValueError(checks.log_domain_message(name, "method='log' needs real values, got complex"))
        # finite as well: +inf passes "> 0" but turns the Heinsen form into inf - inf = NaN
        _check_values({"a": a, "b": b, "initial_state": h0}, _positive_finite,
                      "method='log' needs every value > 0 and finite (no NaN or ±inf)")
    # chunk_size is a static jit argument: normalise it where unused, so it never causes a recompile
    # (pallas: the time block of the kernel's grid, 0 for the kernel's default)
    if method == "pallas":
        chunk_size = chunk_size or 0
    else:
        chunk_size = (chunk_size or DEFAULT_CHUNK_SIZE) if method == "chunked" else DEFAULT_CHUNK_SIZE
    return a, b, h0, resets, method, chunk_size


@partial(jax.jit, static_argnames=("reverse", "method", "chunk_size"))
def _linear_scan(a, b, h0, resets, *, reverse: bool, method: str, chunk_size: int) -> tuple[Array, Array]:
    acc = jnp_dtype(checks.compute_dtype(dtype_name(b)))
    a_acc = a.astype(jnp_dtype(checks.compute_dtype(dtype_name(a))))
    b_acc = b.astype(acc)
    h0_acc = jnp.zeros((b.shape[0], *b.shape[2:]), acc) if h0 is None else h0.astype(acc)
    cut = _cut_mask(resets, reverse)
    if method == "pallas" and b.shape[1]:  # reads 16-bit inputs as they are; the cut is a select in the kernel
        from linrec.backends.jax.pallas_scan import pallas_linear_scan

        h = pallas_linear_scan(a, b, h0_acc, cut, reverse, block_t=chunk_size or None)
        return h, (h[:, 0] if reverse else h[:, -1])
    if cut is not None:
        a_acc = jnp.where(_expand(cut, a.ndim), jnp.zeros((), a_acc.dtype), a_acc)
    if b.shape[1] == 0:
        return jnp.zeros(b.shape, b.dtype), h0_acc.astype(b.dtype)
    if method == "native":  # its own custom_vjp runs the backward kernel; the cut mask keeps segments apart
        # bfloat16 a, b go in as they are: the kernel reads and writes bf16 around the float32 state (no fp32 copies
        # of a, b, h); float16 is converted to float32 here
        direct = a.dtype == b.dtype == jnp.bfloat16
        h, final = native_linear_scan(a if direct else a_acc, b if direct else b_acc, h0_acc, cut, reverse)
        return h.astype(b.dtype), final.astype(b.dtype)
    h = _scan(a_acc, b_acc, h0_acc, None if cut is None else _expand(cut, b.ndim), method, chunk_size, reverse)
    final = h[:, 0] if reverse else h[:, -1]
    return h.astype(b.dtype), final.astype(b.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Public API.


def cu_seqlens_to_resets(cu_seqlens, length: int) -> Array:
    """``cu_seqlens`` offsets ``[0, n_1, n_1+n_2, ..., T]`` -> ``resets`` of shape ``(1, T)`` bool (§4)."""
    return jnp.asarray(_reference_cu_seqlens_to_resets(np.asarray(cu_seqlens), length))


def linear_scan(
    a: Array,
    b: Array,
    *,
    initial_state: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, Array]:
    """``h_t = a_t * h_{t-1} + b_t`` (recurrence.md §2–§7).

    Args:
      a: ``(B, T, *Sa)``, broadcastable to ``b`` over the state axes; dtype of ``b`` or, for complex ``b``,
        the real dtype of the same precision.
      b: ``(B, T, *S)``.
      initial_state: ``(B, *S)`` or ``None`` (zeros).
      reverse: scan from the last step to the first.
      resets: ``(B, T)`` bool segment starts.
      method: ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"``, ``"log"``, ``"native"`` (where
        built) or ``"pallas"`` (the Pallas kernel; interpreted, and slow, when JAX's default device is a CPU).
      chunk_size: steps per chunk for ``"chunked"`` (default :data:`DEFAULT_CHUNK_SIZE`); for ``"pallas"`` the
        time steps per grid block (default ``pallas_scan.DEVICE_BLOCK_T``, or ``INTERPRET_BLOCK_T`` on CPU).

    Returns:
      ``(h, final_state)``: ``(B, T, *S)`` and ``(B, *S)`` in the dtype of ``b``.
    """
    sharded = SEQUENCE_PARALLEL.get()
    if sharded is not None:  # inside distributed.sequence_parallel: the time axis is split over devices (§12)
        return sharded(a, b, initial_state=initial_state, reverse=reverse, resets=resets, method=method,
                       chunk_size=chunk_size)
    a, b, h0, resets, method, chunk_size = _validate(a, b, initial_state, resets, method, chunk_size, reverse)
    return _linear_scan(a, b, h0, resets, reverse=reverse, method=method, chunk_size=chunk_size)


def linear_scan_vjp(
    a: Array,
    b: Array,
    cotangent_h: Array,
    cotangent_final_state: Array | None = None,
    *,
    initial_state: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, Array, Array]:
    """``jax.vjp`` of :func:`linear_scan` (JAX complex convention, §10).

    Returns ``(a_bar, b_bar, initial_state_bar)`` shaped like ``a``, ``b`` and ``(B, *S)``; with
    ``initial_state=None`` the last is the gradient with respect to the zero initial state.
    """
    a, b, h0, resets, method, chunk_size = _validate(a, b, initial_state, resets, method, chunk_size, reverse)
    if h0 is None:  # differentiate at explicit zeros (after the domain check, which only concerns given values)
        h0 = jnp.zeros((b.shape[0], *b.shape[2:]), b.dtype)

    ct_h = jnp.asarray(cotangent_h).astype(b.dtype)
    ct_final = None if cotangent_final_state is None else jnp.asarray(cotangent_final_state).astype(b.dtype)
    return _vjp(a, b, h0, resets, ct_h, ct_final, reverse=reverse, method=method, chunk_size=chunk_size)


@partial(jax.jit, static_argnames=("reverse", "method", "chunk_size"))
def _vjp(a, b, h0, resets, ct_h, ct_final, *, reverse: bool, method: str, chunk_size: int):
    def fn(a: Array, b: Array, h0: Array) -> tuple[Array, Array]:
        return _linear_scan(a, b, h0, resets, reverse=reverse, method=method, chunk_size=chunk_size)

    (_, final), pullback = jax.vjp(fn, a, b, h0)
    return pullback((ct_h, jnp.zeros_like(final) if ct_final is None else ct_final))


@partial(jax.jit, static_argnames=("reverse", "method"))
def _log_scan(log_a, log_b, log_h0, resets, *, reverse: bool, method: str) -> tuple[Array, Array]:
    acc = jnp_dtype(checks.compute_dtype(dtype_name(log_b)))
    la, lb = log_a.astype(acc), log_b.astype(acc)
    lh0 = None if log_h0 is None else log_h0.astype(acc)
    state = jnp.full((lb.shape[0], *lb.shape[2:]), -jnp.inf, acc) if lh0 is None else lh0
    if lb.shape[1] == 0:
        return jnp.zeros(lb.shape, log_b.dtype), state.astype(log_b.dtype)
    cut = _cut_mask(resets, reverse)
    if method == "heinsen":  # resets were refused by the caller
        out = _heinsen(la[:, ::-1], lb[:, ::-1], lh0)[:, ::-1] if reverse else _heinsen(la, lb, lh0)
    elif cut is None:
        out = _loop(lambda s, la_t, lb_t: jnp.logaddexp(la_t + s, lb_t), (la, lb), state, reverse)
    else:  # a cut link restarts from b (a = 0); `where` keeps -inf out of the arithmetic
        def step(s: Array, la_t: Array, lb_t: Array, cut_t: Array) -> Array:
            return jnp.where(cut_t, lb_t, jnp.logaddexp(la_t + s, lb_t))

        out = _loop(step, (la, lb, _expand(cut, lb.ndim)), state, reverse)
    final = out[:, 0] if reverse else out[:, -1]
    return out.astype(log_b.dtype), final.astype(log_b.dtype)


def log_scan(
    log_a: Array,
    log_b: Array,
    *,
    log_initial_state: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
    method: str = "auto",
) -> tuple[Array, Array]:
    """``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)`` (recurrence.md §8).

    Args:
      log_a: ``(B, T, *Sa)`` finite real; log_b: ``(B, T, *S)`` finite real.
      log_initial_state: ``(B, *S)`` finite, or ``None`` for a zero state (``-inf``).
      reverse, resets: as for :func:`linear_scan`.
      method: ``"auto"`` (``"heinsen"``, or ``"sequential"`` when ``resets`` are given), ``"sequential"`` (a loop)
        or ``"heinsen"`` (the parallel closed form; refuses ``resets``).

    Returns:
      ``(log_h, log_final_state)`` in the dtype of ``log_b``.
    """
    checks.check_method(method, LOG_METHODS, function="log_scan")
    checks.check_reverse(reverse)
    if SEQUENCE_PARALLEL.get() is not None:
        raise ValueError("log_scan cannot run sequence-parallel (recurrence.md §12): inside sequence_parallel use "
                         "linear_scan, or a layer's method='sequential', 'associative' or 'chunked' (not 'log')")
    log_a, log_b, log_h0, resets = (_as_array(x, n) for x, n in ((log_a, "log_a"), (log_b, "log_b"),
                                    (log_initial_state, "log_initial_state"), (resets, "resets")))
    checks.check_log_scan_args(
        tuple(log_a.shape), dtype_name(log_a), tuple(log_b.shape), dtype_name(log_b),
        None if log_h0 is None else tuple(log_h0.shape),
        None if log_h0 is None else dtype_name(log_h0),
        None if resets is None else tuple(resets.shape),
        None if resets is None else dtype_name(resets),
    )
    _check_values(
        {"log_a": log_a, "log_b": log_b, "log_initial_state": log_h0},
        lambda x: abs(x) < np.inf, "every value must be finite (no NaN or ±inf)",  # NaN and ±inf fail
    )
    if method == "auto":
        method = "sequential" if resets is not None else "heinsen"
    if method == "heinsen" and resets is not None:
        raise ValueError(_HEINSEN_RESETS)
    return _log_scan(log_a, log_b, log_h0, resets, reverse=reverse, method=method)
