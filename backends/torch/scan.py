"""The PyTorch backend of ``recurrence.md``: ``linear_scan``, ``log_scan``, ``linear_scan_vjp``.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step
(each axis equal to the one of ``*S`` or 1).

Every ``linear_scan`` method runs one kernel on ``(a, b, h0)`` in the compute dtype (§5) with resets
already realised as ``a := 0`` at the cut positions (§4); ``reverse`` is handled inside the kernels
(mirrored slices, no flipped copies). The kernels sit inside one ``torch.autograd.Function`` whose
backward is itself a scan in the opposite direction with the same method (§10; ``"log"`` excepted:
signed cotangents have no logarithm, so its backward uses the ``auto`` method), so training stores
only ``a``, ``h`` and ``h0``: ``O(B·T·D)`` memory for every method.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

import numpy as np
import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.torch.arrays import asarray, dtype_name
from linrec.backends.torch.native import native_linear_scan
from linrec.backends.torch.triton_scan import available as _triton_available
from linrec.backends.torch.triton_scan import require_triton, triton_linear_scan
from linrec.spec import checks, reference

__all__ = [
    "LOG_METHODS",
    "METHODS",
    "cu_seqlens_to_resets",
    "linear_scan",
    "linear_scan_vjp",
    "log_scan",
]

#: ``"native"`` (the C++ kernel of ``linrec.backends.native``) is listed only where it is built; ``"triton"``
#: (``linrec.backends.torch.triton_scan``; interpreted on CPU tensors) only where triton is installed.
METHODS = native.with_native(("sequential", "associative", "chunked", "log")) + (
    ("triton",) if _triton_available() else ()
)
LOG_METHODS = ("sequential", "heinsen")
#: ``chunk_size=None``: chunks of about this many elements (``B·chunk·N``; 2 MiB of float32), at least ``_MIN_CHUNK``
#: steps (see ``_default_chunk_size``).
_CHUNK_ELEMENTS = 2**19
_MIN_CHUNK = 256

_LOW_PRECISION = (torch.bfloat16, torch.float16)

#: Set by ``linrec.backends.torch.distributed.sequence_parallel(group)``: the callable that runs :func:`linear_scan`
#: sharded along T over the group (``None``: the scan is local). ``_SEQUENCE_PARALLEL_DEPTH`` counts the open
#: contexts so that compiled code (which cannot read a ``ContextVar``) knows to leave the graph for the exchange.
SEQUENCE_PARALLEL: ContextVar = ContextVar("linrec_torch_sequence_parallel", default=None)
_SEQUENCE_PARALLEL_DEPTH = 0
#: ``SEQUENCE_PARALLEL.get`` behind ``torch.compiler.disable`` (a graph break), made by the first
#: ``sequence_parallel`` context: wrapping it at import would load torch._dynamo (and triton) with every backend import.
_COMPILED_HOOK = None


def compiled_sequence_parallel_hook():
    """The graph-breaking reader of :data:`SEQUENCE_PARALLEL` that compiled code calls (made once, outside a trace)."""
    global _COMPILED_HOOK
    if _COMPILED_HOOK is None:
        _COMPILED_HOOK = torch.compiler.disable(SEQUENCE_PARALLEL.get)
    return _COMPILED_HOOK


def sequence_parallel_hook():
    """The sharded scan of the enclosing ``sequence_parallel`` context, or ``None`` (a graph break when compiled)."""
    if torch.compiler.is_compiling():
        return _COMPILED_HOOK() if _SEQUENCE_PARALLEL_DEPTH else None
    return SEQUENCE_PARALLEL.get()


def refuse_sequence_parallel(what: str, fix: str) -> None:
    """Raise ``ValueError`` inside ``sequence_parallel``: ``what`` has no sharded form; ``fix`` names what has."""
    if sequence_parallel_hook() is not None:
        raise ValueError(f"{what} cannot run sequence-parallel (inside linrec.backends.torch.distributed."
                         f"sequence_parallel): {fix}")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return asarray(x) if isinstance(x, np.ndarray) else torch.as_tensor(x)


def _compute(x: Tensor) -> Tensor:
    """Cast low-precision inputs to float32: the state is accumulated there and rounded once (§5)."""
    return x.to(torch.float32) if x.dtype in _LOW_PRECISION else x


def _expand(mask: Tensor, ndim: int) -> Tensor:
    """``(B, T)`` -> ``(B, T, 1, ..., 1)`` with ``ndim`` axes, to broadcast over the state axes."""
    return mask.reshape(*mask.shape, *(1,) * (ndim - mask.ndim))


def _cut_mask(resets: Tensor | None, reverse: bool) -> Tensor | None:
    """Where the link into a step is cut, ``(B, T)`` in time order (``linrec.spec.reference.cut_mask``)."""
    if resets is None:
        return None
    never = torch.zeros_like(resets[:, :1])
    return torch.cat([resets[:, 1:], never], 1) if reverse else torch.cat([never, resets[:, 1:]], 1)


def _state_shape(b: Tensor) -> tuple[int, ...]:
    return (b.shape[0], *b.shape[2:])


def _check_scan(a: Tensor, b: Tensor, initial_state: Tensor | None, resets: Tensor | None) -> None:
    checks.check_scan_args(
        tuple(a.shape), dtype_name(a), tuple(b.shape), dtype_name(b),
        None if initial_state is None else tuple(initial_state.shape),
        None if initial_state is None else dtype_name(initial_state),
        None if resets is None else tuple(resets.shape),
        None if resets is None else dtype_name(resets),
    )


def _require(ok: Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the 0-d bool tensor ``ok`` holds.

    Eagerly this is a host sync and a real ``ValueError``. Under ``torch.compile`` a data-dependent
    ``if`` would break the graph (and fail ``fullgraph=True``), so the check becomes
    ``torch._assert_async``, which is traced into the graph and raises ``RuntimeError(message)`` when
    the compiled code runs: the input is still refused, never turned into NaN.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------------------------
# kernels: (a, b, h0) in the compute dtype, cuts applied; a (B, T, *Sa), b (B, T, *S), h0 (B, *S) or None


def _empty_like(b: Tensor) -> Tensor:
    # not torch.empty_like: b may be an expanded (zero-stride) cotangent, the output must be dense
    return torch.empty(b.shape, dtype=b.dtype, device=b.device)


def _into(out: Tensor, op, *args: Tensor) -> Tensor:
    """``out[...] = op(*args)`` without a temporary (eagerly, via ``out=``); returns ``out``."""
    if torch.compiler.is_compiling():
        # dynamo refuses a non-contiguous ``out=``; a copy into the view is traced fine and inductor fuses it
        return out.copy_(op(*args))
    return op(*args, out=out)


def _sequential(
    a: Tensor, b: Tensor, h0: Tensor | None, cut: Tensor | None, reverse: bool, out: Tensor | None = None
) -> Tensor:
    """The loop of §2, one vectorised step per ``t`` written straight into ``out`` (B, T, *S).

    ``cut`` (``(B, T, 1, ...)`` bool or None): the step restarts from ``b_t``, by ``where`` (not ``0 * h``), so a
    NaN or inf of the previous segment stays there (§11).
    """
    h = _empty_like(b) if out is None else out
    state = torch.zeros(_state_shape(b), dtype=b.dtype, device=b.device) if h0 is None else h0
    n_time = b.shape[1]
    for t in range(n_time - 1, -1, -1) if reverse else range(n_time):
        if cut is None:
            state = _into(h[:, t], torch.addcmul, b[:, t], a[:, t], state)  # h_t = a_t h_{t-1} + b_t
        else:
            state = _into(h[:, t], torch.where, cut[:, t], b[:, t], torch.addcmul(b[:, t], a[:, t], state))
    return h


def _step(a: Tensor, h_prev: Tensor, b: Tensor, cut: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``a h_prev + b``, or ``b`` itself where ``cut`` (``where``, not ``0 * h_prev``: NaN/inf before a segment start
    stays in its segment, §11). Into ``out`` when given."""
    if cut is None:
        return torch.addcmul(b, a, h_prev) if out is None else _into(out, torch.addcmul, b, a, h_prev)
    kept = torch.addcmul(b, a, h_prev)
    return torch.where(cut, b, kept) if out is None else _into(out, torch.where, cut, b, kept)


def _prefix(
    a: Tensor, c: Tensor, b: Tensor, cut: Tensor | None, h0: Tensor | None, reverse: bool, out: Tensor | None = None
) -> Tensor:
    """``h`` (B, T, *S): the ``b``-parts of the inclusive prefixes ``combine(e_0, ..., e_t)`` (§6) applied to ``h0``.

    Odd/even recursion (as in ``jax.lax.associative_scan``): combine neighbouring pairs (in processing
    order), scan the ``T/2`` pairs recursively (that gives every second step), then one more
    ``combine`` fills the others. ``O(T)`` work in ``log2 T`` levels of whole-tensor ops. Every level
    writes into strided views of the one output, so the only temporaries are the pair products
    (``T/2 + T/4 + ... < T`` steps). ``reverse`` mirrors the slices instead of flipping (a copy).
    The initial state enters as ``b_0 := a_0 h0 + b_0`` (§6), not by adding it to every ``h_t``.

    The product of decays is carried in complement form, ``c = 1 - prod a``, a pair's as
    ``c_lo + c_hi a_lo`` (``= 1 - a_lo a_hi``), and ``a = 1 - c`` is rounded afresh from it at each level for
    the ``b`` updates. For decays near 1 the plain float32 product ``a_lo a_hi`` rounds
    ``1 - x_lo - x_hi + x_lo x_hi`` to ``1 - x_lo - x_hi``: a bias of one sign that compounds level after
    level, 10x the sequential loop's error at T = 65536 (recurrence.md §9). In the complement it never compounds:
    each ``a`` is within half an ulp of the exact product. ``cut`` (``(B, T, 1, ...)`` bool or None) marks steps
    that ignore the carried state: a pair containing one is its part after the cut (``where``).
    """
    n_time = b.shape[1]
    h = _empty_like(b) if out is None else out
    if n_time == 0:
        return h
    # time indices of: the first step processed, the second; the first and second step of each pair;
    # the steps that are neither first nor a pair's second, and the step processed just before each of them
    if reverse:
        first, second, pair0 = n_time - 1, n_time - 2, -1
        lo, hi = slice(n_time % 2 + 1, n_time, 2), slice(n_time % 2, n_time - 1, 2)
        rest, before_rest = slice((n_time - 1) % 2, n_time - 2, 2), slice((n_time - 1) % 2 + 1, n_time - 1, 2)
    else:
        first, second, pair0 = 0, 1, 0
        lo, hi = slice(0, n_time - 1, 2), slice(1, n_time, 2)
        rest, before_rest = slice(2, n_time, 2), slice(1, n_time - 1, 2)

    def cut_at(index):
        return None if cut is None else cut[:, index]

    b_first = b[:, first] if h0 is None else _step(a[:, first], h0, b[:, first], cut_at(first))
    h[:, first] = b_first
    if n_time == 1:
        return h
    b_pairs = _step(a[:, hi], b[:, lo], b[:, hi], cut_at(hi))  # combine(e_lo, e_hi)
    if h0 is not None:
        b_pairs[:, pair0] = _step(a[:, second], b_first, b[:, second], cut_at(second))
    c_pairs = torch.addcmul(c[:, lo], c[:, hi], a[:, lo])  # 1 - a_lo a_hi; exactly 1 when a_lo == 0
    cut_pairs = None
    if cut is not None:
        c_pairs = torch.where(cut[:, hi], c[:, hi], c_pairs)
        cut_pairs = cut[:, hi] | cut[:, lo]
    _prefix(1 - c_pairs, c_pairs, b_pairs, cut_pairs, None, reverse, h[:, hi])
    _step(a[:, rest], h[:, before_rest], b[:, rest], cut_at(rest), h[:, rest])
    return h


def _chunked(
    a: Tensor, b: Tensor, cut: Tensor | None, h0: Tensor | None, reverse: bool, chunk_size: int,
    out: Tensor | None = None,
) -> Tensor:
    """Associative within chunks of ``chunk_size`` steps, sequential across chunks carrying the state.

    Each chunk's complement ``c = 1 - a`` (see :func:`_prefix`) is made per chunk, a cache-sized temporary.
    A chunk (``B·chunk_size·N`` elements) stays in cache through its ``log2 chunk_size`` levels, and the Python
    loop runs ``T / chunk_size`` times instead of ``T``; see ``_auto_method`` for the timings.
    """
    n_time = b.shape[1]
    h = _empty_like(b) if out is None else out
    state = h0
    starts = range(0, n_time, chunk_size)
    for start in reversed(starts) if reverse else starts:
        chunk = slice(start, min(start + chunk_size, n_time))
        cut_chunk = None if cut is None else cut[:, chunk]
        a_chunk = a[:, chunk]
        _prefix(a_chunk, 1 - a_chunk, b[:, chunk], cut_chunk, state, reverse, h[:, chunk])
        state = h[:, chunk.start if reverse else chunk.stop - 1]
    return h


def _heinsen(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None) -> Tensor:
    """Heinsen's closed form, processing order: ``log h_t = a*_t + logcumsumexp(log b - a*)_t``, ``a* = cumsum(log a)``.

    Args: log_a (B, T, *Sa), log_b (B, T, *S) finite; log_h0 (B, *S) or None (zero state). No cuts:
    ``log a = -inf`` would poison the cumulative sum, so callers refuse resets (§8).
    """
    if log_h0 is not None and log_b.shape[1] > 0:
        # the initial state enters as b_0 := a_0 h0 + b_0, in log space
        log_b0 = torch.logaddexp(log_a[:, :1] + log_h0.unsqueeze(1), log_b[:, :1])
        log_b = torch.cat([log_b0, log_b[:, 1:]], 1)
    a_star = log_a.cumsum(1)
    return a_star + (log_b - a_star).logcumsumexp(1)


def _log_sequential(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None, cut: Tensor | None) -> Tensor:
    """``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)`` in processing order (differentiable by autograd)."""
    state = torch.full(_state_shape(log_b), -torch.inf, dtype=log_b.dtype, device=log_b.device)
    state = state if log_h0 is None else log_h0
    steps = []
    for t in range(log_b.shape[1]):
        state = torch.logaddexp(log_a[:, t] + state, log_b[:, t])
        if cut is not None:
            state = torch.where(_expand(cut[:, t], state.ndim), log_b[:, t], state)
        steps.append(state)
    return torch.stack(steps, 1) if steps else log_b.clone()


def _scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None,
    cut: Tensor | None,
    reverse: bool,
    method: str,
    chunk_size: int,
    out: Tensor | None = None,
) -> Tensor:
    """Dispatch to a kernel; returns ``h`` (B, T, *S) in time order (written into ``out`` when given).

    ``cut`` (``(B, T, 1, ...)`` bool or None) marks the steps that ignore the carried state (``a`` is 0 there too).
    """
    if method == "sequential":
        return _sequential(a, b, h0, cut, reverse, out)
    if h0 is None and method in ("associative", "chunked"):
        # §2: None MUST give exactly the zeros result. The prefix recursion combines the first pair on its own when
        # given h0, and torch rounds a lone slice and a strided batch differently (SIMD vs scalar complex multiply,
        # found by --thorough), so an absent state takes the same path as an explicit zero one.
        h0 = torch.zeros(_state_shape(b), dtype=b.dtype, device=b.device)
    if method == "associative":
        return _prefix(a, 1 - a, b, cut, h0, reverse, out)
    if method == "chunked":
        return _chunked(a, b, cut, h0, reverse, chunk_size, out)
    # method == "log" (forward only): a > 0, b > 0, h0 > 0 and no resets, checked by the caller
    log_a, log_b = a.log(), b.log()
    if reverse:
        log_a, log_b = log_a.flip(1), log_b.flip(1)
    log_h = _heinsen(log_a, log_b, None if h0 is None else h0.log())
    return (log_h.flip(1) if reverse else log_h).exp()


def _step_elements(b: Tensor) -> int:
    """``N = B·prod(*S)``: the elements one time step touches."""
    return b.shape[0] * math.prod(b.shape[2:])


def _default_chunk_size(b: Tensor) -> int:
    """The largest power of two ``>= 256`` whose chunk ``B·chunk·N`` stays within ``2**19`` elements (cache-sized).

    Measured (table in ``_auto_method``): at ``N = 4096`` chunks of 64–256 steps are within 5% of each
    other; at ``N = 1024`` 512 beats 256 by 10%; at ``N = 64`` 512 beats 256 by 70%.
    """
    fit = max(1, _CHUNK_ELEMENTS // max(1, _step_elements(b)))
    return max(_MIN_CHUNK, 1 << (fit.bit_length() - 1))


def _auto_method(b: Tensor) -> str:
    """The fastest method for this shape on CPU (never ``"log"``: its domain depends on the values).

    With ``N = B·prod(*S)`` elements per step: ``N >= 8192`` -> ``sequential`` (each step is big
    enough to hide the Python loop; the log-depth methods move the data several times more);
    else ``T·N <= 2**20`` -> ``associative`` (everything stays in cache, one op per level);
    else ``chunked`` (cache-sized chunks, ``T / chunk`` Python steps instead of ``T``).

    Forward times in ms (torch 2.13, float32, best of 5, 1 thread) on the 2-core AMD EPYC this package
    is tested on. One thread because the shared machine was loaded (load 4–9): two-thread timings of
    the big associative/chunked ops scattered up to 50x (a stalled OpenMP partner thread), while their
    best-of-N matched one thread. Two idle threads only speed up those big ops, never the small per-step
    ops of ``sequential``, so they would move the rule further towards ``chunked``.

      (B, T, D)         N      seq    assoc  ch64   ch128  ch256  ch512  -> auto
      (8, 4096, 512)    4096   75.1   140.9  72.3   73.0   74.9   80.2   chunked(256)
      (8, 1024, 512)    4096   9.9    12.8   9.8    9.3    10.1   10.8   chunked(256)
      (8, 256, 512)     4096   2.4    2.5    2.2    2.1    -      -      associative
      (8, 64, 512)      4096   0.4    0.3    -      -      -      -      associative
      (8, 16, 512)      4096   0.1    0.1    -      -      -      -      associative
      (1, 4096, 64)     64     24.2   0.8    10.9   6.4    3.8    2.2    associative
      (64, 4096, 16)    1024   34.0   13.4   24.4   17.1   14.5   13.6   chunked(512)
      (2, 2048, 512)    1024   14.2   6.2    8.6    6.6    5.7    5.0    chunked(512)
      (1, 16384, 1024)  1024   166.3  130.2  100.8  81.7   74.9   67.5   chunked(512)
      (2, 4096, 2048)   4096   75.6   130.1  67.1   65.2   70.5   70.7   chunked(256)
      (16, 512, 512)    8192   7.0    23.1   16.2   10.6   15.4   -      sequential
      (4, 2048, 4096)   16384  103.5  256.9  131.0  145.8  175.8  236.2  sequential
      (8, 64, 4096)     32768  2.3    4.3    -      -      -      -      sequential
    """
    per_step = _step_elements(b)
    if per_step >= 8192:
        return "sequential"
    return "associative" if b.shape[1] * per_step <= 2**20 else "chunked"


def _auto_for_device(b: Tensor) -> str:
    """``method="auto"``: the CPU kernel on CPU (it streams at memory bandwidth, benchmarks/), the Triton kernel on
    CUDA (compiled there; on CPU it would run interpreted, so it is never chosen there), else :func:`_auto_method`."""
    if b.device.type == "cpu" and "native" in METHODS:
        return "native"
    if b.device.type == "cuda" and "triton" in METHODS:
        return "triton"
    return _auto_method(b)


class _LinearScanFn(torch.autograd.Function):
    """``(h, final_state)`` of a cut-masked, compute-dtype scan; backward is the reverse scan of §10.

    PyTorch's complex convention (``grad = conj(J)ᵀ grad_out``): ``g_t = ḣ_t + conj(a_{t+1}) g_{t+1}``,
    ``ā_t = g_t conj(h_{t-1})`` (summed over broadcast axes; real part for a real ``a``), ``b̄ = g``,
    ``h̄0 = conj(a_0) g_0``; mirrored for ``reverse``. ``final_state``'s cotangent is the scan's initial state.
    """

    @staticmethod
    def forward(
        ctx,
        a: Tensor,
        b: Tensor,
        h0: Tensor | None,
        cut: Tensor | None,
        reverse: bool,
        method: str,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        h = _scan(a, b, h0, cut, reverse, method, chunk_size)
        if b.shape[1] > 0:
            final = h[:, 0 if reverse else -1].clone()
        elif h0 is not None:
            final = h0.clone()
        else:
            final = torch.zeros(_state_shape(b), dtype=b.dtype, device=b.device)
        ctx.save_for_backward(a, h, h0)
        ctx.cut, ctx.reverse, ctx.method, ctx.chunk_size = cut, reverse, method, chunk_size
        return h, final

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_final: Tensor):
        a, h, h0 = ctx.saved_tensors
        reverse, n_time = ctx.reverse, h.shape[1]
        if n_time == 0:
            return torch.zeros_like(a), grad_h, None if h0 is None else grad_final, None, None, None, None
        # forward: g_{T-1} = ḣ_{T-1} + ḟ, then g_t = ḣ_t + conj(a_{t+1}) g_{t+1}: a scan over t < T-1 in the
        # other direction, on views of a and ḣ shifted by one step (no copies); reverse mirrored
        a_conj = a.conj()
        last, body = (0, slice(1, n_time)) if reverse else (n_time - 1, slice(0, n_time - 1))
        a_body = a_conj[:, : n_time - 1] if reverse else a_conj[:, 1:]
        g = _empty_like(grad_h)
        g[:, last] = grad_h[:, last] + grad_final
        # the log form cannot carry signed cotangents; its backward uses the fastest general method
        method = _auto_method(grad_h) if ctx.method == "log" else ctx.method
        # a cut at step t+1 stops g_t from receiving g_{t+1}: the cut mask shifted like a
        cut = ctx.cut
        cut_body = None if cut is None else (cut[:, : n_time - 1] if reverse else cut[:, 1:])
        _scan(a_body, grad_h[:, body], g[:, last], cut_body, not reverse, method, ctx.chunk_size, g[:, body])
        grad_a = grad_h0 = None
        first = n_time - 1 if reverse else 0
        if ctx.needs_input_grad[0]:
            # ā_t = g_t conj(h_{t-1}), h_{-1} = h0 (or 0), written in place of a shifted copy of h
            g_h = _empty_like(g)
            prev, after = (slice(1, n_time), slice(0, n_time - 1)) if reverse else (body, slice(1, n_time))
            _into(g_h[:, after], torch.mul, g[:, after], h[:, prev].conj())
            g_h[:, first] = 0 if h0 is None else g[:, first] * h0.conj()
            grad_a = g_h.sum_to_size(a.shape)
            if grad_a.is_complex() and not a.is_complex():
                grad_a = grad_a.real  # a real decay of a complex state has a real gradient
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = a_conj[:, first] * g[:, first]
        return grad_a, g, grad_h0, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# public API


def _check_log_domain(a: Tensor, b: Tensor, initial_state: Tensor | None, resets: Tensor | None) -> None:
    """§7/§8: real, ``a, b > 0``, ``initial_state > 0`` and no resets (a cut is ``log 0 = -inf``)."""
    if resets is not None:
        raise ValueError(checks.log_domain_message("resets", "method='log' cannot carry a reset (log 0 = -inf)"))
    for name, x in (("a", a), ("b", b), ("initial_state", initial_state)):
        if x is None:
            continue
        if x.is_complex():
            raise ValueError(checks.log_domain_message(name, "method='log' needs real values, got complex"))
        _require((x > 0).all(), checks.log_domain_message(name, "method='log' needs every value > 0"))
        # +inf passes "> 0" but turns the Heinsen form into inf - inf = NaN
        _require(x.isfinite().all(), checks.log_domain_message(name, "every value must be finite (no NaN or ±inf)"))


def linear_scan(
    a: Tensor,
    b: Tensor,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
    resets: Tensor | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` (recurrence.md §2–§7), differentiable for every method.

    Args:
      a: ``(B, T, *Sa)`` decays, broadcastable to ``b`` over the state axes (real ``a`` with complex ``b`` is allowed).
      b: ``(B, T, *S)`` inputs.
      initial_state: ``(B, *S)``; ``None`` means zeros.
      reverse: scan from ``t = T-1`` down to 0 (§3).
      resets: ``(B, T)`` bool segment starts (§4).
      method: ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"``, ``"log"`` (§7), ``"native"`` (CPU
        kernel) or ``"triton"`` (the Triton kernel: compiled on CUDA, interpreted on CPU tensors; ``"auto"`` picks it
        on CUDA only).
      chunk_size: steps per chunk for ``"chunked"`` (default: cache-sized, ``_default_chunk_size``); for ``"triton"``
        the kernel's time block (rounded up to a power of two).

    Returns:
      ``(h, final_state)``: ``(B, T, *S)`` and ``(B, *S)`` in the dtype of ``b``.
    """
    sharded = sequence_parallel_hook()
    if sharded is not None:  # inside distributed.sequence_parallel(group): a and b are this rank's chunk of T
        return sharded(a, b, initial_state=initial_state, reverse=reverse, resets=resets, method=method,
                       chunk_size=chunk_size)
    native.require_native(method)
    require_triton(method)
    checks.check_method(method, METHODS)
    checks.check_reverse(reverse)
    checks.check_chunk_size(chunk_size)
    a, b = _tensor(a), _tensor(b)
    initial_state = None if initial_state is None else _tensor(initial_state)
    resets = None if resets is None else _tensor(resets)
    _check_scan(a, b, initial_state, resets)
    if method == "log":
        _check_log_domain(a, b, initial_state, resets)
    if method == "native" and b.device.type != "cpu":
        raise ValueError(f"method='native' is a CPU kernel; b is on {b.device}: use 'chunked' or 'associative'")
    if method == "auto":
        # on CPU the kernel streams at memory bandwidth (benchmarks/) and beats every tensor-op method
        method = _auto_for_device(b)
    state_dtype = torch.float32 if b.dtype in _LOW_PRECISION else b.dtype  # §5: low precision accumulates in fp32
    h0 = None if initial_state is None else initial_state.to(state_dtype)
    cut = _cut_mask(resets, reverse)
    if method == "triton":  # its own autograd.Function; reads bf16/fp16 a, b as they are (the state is float32)
        h, final = triton_linear_scan(a, b, h0, cut, bool(reverse), chunk_size)
        return h.to(b.dtype), final.to(b.dtype)
    if method == "native":  # a custom op with its own autograd formula (the backward kernel)
        # bfloat16 a, b go in as they are: the kernel reads and writes bf16 around a float32 state (no fp32 copies);
        # float16 is converted to float32 here
        direct = a.dtype == b.dtype == torch.bfloat16
        h, final = native_linear_scan(a if direct else _compute(a), b if direct else _compute(b), h0, cut,
                                      bool(reverse))
        return h.to(b.dtype), final.to(b.dtype)
    a_c, b_c = _compute(a), _compute(b)
    if cut is not None:
        a_c = a_c.masked_fill(_expand(cut, a_c.ndim), 0)  # a cut link is a = 0 (its gradient is then 0 too)
    chunk_size = chunk_size or _default_chunk_size(b)
    cut = None if cut is None else _expand(cut, b_c.ndim)
    h, final = _LinearScanFn.apply(a_c, b_c, h0, cut, bool(reverse), method, chunk_size)
    return h.to(b.dtype), final.to(b.dtype)


def log_scan(
    log_a: Tensor,
    log_b: Tensor,
    *,
    log_initial_state: Tensor | None = None,
    reverse: bool = False,
    resets: Tensor | None = None,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)`` (recurrence.md §8), differentiable by autograd.

    Args:
      log_a: ``(B, T, *Sa)`` finite real; log_b: ``(B, T, *S)`` finite real.
      log_initial_state: ``(B, *S)`` finite, or ``None`` for a zero state.
      reverse, resets: as for :func:`linear_scan`.
      method: ``"auto"`` (``"heinsen"``, or ``"sequential"`` with resets), ``"sequential"`` or ``"heinsen"``
        (which refuses resets: a cut is ``log a = -inf``, §8).

    Returns:
      ``(log_h, log_final_state)``: ``(B, T, *S)`` and ``(B, *S)`` in the dtype of ``log_b``.
    """
    checks.check_method(method, LOG_METHODS, function="log_scan")
    checks.check_reverse(reverse)
    refuse_sequence_parallel("log_scan (the method='log' path)", "use method='chunked' (or 'auto') instead of 'log'")
    log_a, log_b = _tensor(log_a), _tensor(log_b)
    log_h0 = None if log_initial_state is None else _tensor(log_initial_state)
    resets = None if resets is None else _tensor(resets)
    checks.check_log_scan_args(
        tuple(log_a.shape), dtype_name(log_a), tuple(log_b.shape), dtype_name(log_b),
        None if log_h0 is None else tuple(log_h0.shape),
        None if log_h0 is None else dtype_name(log_h0),
        None if resets is None else tuple(resets.shape),
        None if resets is None else dtype_name(resets),
    )
    for name, x in (("log_a", log_a), ("log_b", log_b), ("log_initial_state", log_h0)):
        if x is not None:
            _require(x.isfinite().all(), checks.log_domain_message(name, "every value must be finite (no NaN or ±inf)"))
    if method == "heinsen" and resets is not None:
        raise ValueError("log_scan(method='heinsen') cannot carry resets (a cut is log a = -inf); "
                         "use method='sequential' or 'auto'")
    la, lb = _compute(log_a), _compute(log_b)
    lh0 = None if log_h0 is None else log_h0.to(lb.dtype)
    cut = _cut_mask(resets, reverse)
    if reverse:
        la, lb, cut = la.flip(1), lb.flip(1), None if cut is None else cut.flip(1)
    if method == "sequential" or cut is not None:  # auto with resets: the loop carries the cuts exactly
        out = _log_sequential(la, lb, lh0, cut)
    else:
        out = _heinsen(la, lb, lh0)
    if out.shape[1] > 0:
        final = out[:, -1]
    elif lh0 is not None:
        final = lh0.clone()
    else:
        final = torch.full(_state_shape(lb), -torch.inf, dtype=lb.dtype, device=lb.device)
    if reverse:
        out = out.flip(1)
    return out.to(log_b.dtype), final.to(log_b.dtype)


def _conj(x: Tensor) -> Tensor:
    return x.conj().resolve_conj() if x.is_complex() else x


def linear_scan_vjp(
    a: Tensor,
    b: Tensor,
    cotangent_h: Tensor,
    cotangent_final_state: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
    resets: Tensor | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The VJP of :func:`linear_scan` (§10) in the JAX convention of ``linrec.spec.reference.linear_scan_vjp``.

    Runs torch autograd (the reverse scan of ``_LinearScanFn``). For a holomorphic map the JAX VJP of
    a cotangent ``c`` is ``conj(torch VJP of conj(c))``, so cotangents are conjugated in and out.

    Args: as :func:`linear_scan`; cotangent_h ``(B, T, *S)``; cotangent_final_state ``(B, *S)`` or None.

    Returns:
      ``(a_bar, b_bar, initial_state_bar)`` shaped like ``a``, ``b`` and ``(B, *S)``; with
      ``initial_state=None`` the last is the cotangent of a zero initial state.
    """
    require_triton(method)
    checks.check_method(method, METHODS)
    checks.check_reverse(reverse)
    checks.check_chunk_size(chunk_size)
    a, b, cotangent_h = _tensor(a), _tensor(b), _tensor(cotangent_h)
    initial_state = None if initial_state is None else _tensor(initial_state)
    _check_scan(a, b, initial_state, None if resets is None else _tensor(resets))
    if tuple(cotangent_h.shape) != tuple(b.shape):
        raise ValueError(
            f"cotangent_h must have the shape of h (B, T, *S) = {tuple(b.shape)}, got {tuple(cotangent_h.shape)}"
        )
    state_shape = _state_shape(b)
    if cotangent_final_state is not None:
        cotangent_final_state = _tensor(cotangent_final_state)
        if tuple(cotangent_final_state.shape) != state_shape:
            got = tuple(cotangent_final_state.shape)
            raise ValueError(f"cotangent_final_state must have shape (B, *S) = {state_shape}, got {got}")
    leaves = [x.detach().requires_grad_(True) for x in (a, b) + (() if initial_state is None else (initial_state,))]
    with torch.enable_grad():
        h, final = linear_scan(
            leaves[0], leaves[1], initial_state=leaves[2] if initial_state is not None else None,
            reverse=reverse, resets=resets, method=method, chunk_size=chunk_size,
        )
    outputs, grad_outputs = [h], [_conj(cotangent_h.to(h.dtype))]
    if cotangent_final_state is not None:
        outputs.append(final)
        grad_outputs.append(_conj(cotangent_final_state.to(final.dtype)))
    grads = torch.autograd.grad(outputs, leaves, grad_outputs, allow_unused=True)
    a_bar, b_bar, *init_bar = (torch.zeros_like(x) if g is None else _conj(g) for x, g in zip(leaves, grads))
    if init_bar:
        return a_bar, b_bar, init_bar[0]
    # initial_state=None is a zero state; its cotangent is a_first ⊙ b̄_first (§10), or the final cotangent if T = 0
    if b.shape[1] == 0:
        zero = torch.zeros(state_shape, dtype=b.dtype, device=b.device)
        return a_bar, b_bar, zero if cotangent_final_state is None else cotangent_final_state.to(b.dtype).clone()
    first = -1 if reverse else 0
    init = _compute(a)[:, first] * _compute(b_bar)[:, first]
    return a_bar, b_bar, init.broadcast_to(state_shape).to(b.dtype)


def cu_seqlens_to_resets(cu_seqlens, length: int) -> Tensor:
    """FlashLinearAttention's ``cu_seqlens`` offsets ``[0, n_1, n_1+n_2, ..., T]`` -> ``resets`` (1, T) bool (§4).

    Validation and semantics are those of ``linrec.spec.reference.cu_seqlens_to_resets`` (host-side, small).
    """
    device = cu_seqlens.device if isinstance(cu_seqlens, Tensor) else None
    values = cu_seqlens.detach().cpu().numpy() if isinstance(cu_seqlens, Tensor) else np.asarray(cu_seqlens)
    return torch.from_numpy(reference.cu_seqlens_to_resets(values, length)).to(device)
