"""Sequence parallelism on ``torch.distributed``: the scan, every layer and LM with T split across ranks.

Shape legend: ``B`` batch, ``T`` the local chunk of time (every rank holds the same ``T``; the sequence is
the concatenation of the chunks in rank order), ``N`` ranks in the group, ``*S`` state shape, ``*Sa`` the shape
of ``a`` per step.

The algorithm (recurrence.md §12): each rank scans its chunk from a zero state and keeps the chunk's composed
map, the product ``A`` of its ``a`` and its last ``h``; one ``all_gather`` of those maps (``O(B·S)`` per rank);
each rank composes the maps of the ranks before it (after it, for ``reverse``) into its incoming state ``h_in``
(``initial_state`` enters at the first rank), then fixes its chunk up by scanning it again from ``h_in`` (equal to
``h_t += (∏ a up to t) · h_in``, at the cost of a scan rather than of ``torch.cumprod``, 8x slower on CPU). A reset
cuts the incoming state from its step on, also exactly at a chunk edge. The backward pass is the same algorithm
in the opposite direction on the cotangents, with its own ``all_gather``.

Gradient convention (what data- and sequence-parallel training needs): every rank's gradients are its share,
and the one-device gradient is their **sum over the group**. ``a``/``b`` get exactly their chunk's gradient;
``initial_state`` gets its gradient on the first rank in scan order (zeros elsewhere); the cotangents of the
(replicated) ``final_state`` are summed over the ranks. Parameters therefore need their gradients summed over
the sequence group after ``backward`` (:func:`reduce_gradients`), on top of any data-parallel averaging.

Transport: only ``torch.distributed`` collectives (gloo on CPU; the same code runs on NCCL).

``torch.compile`` limitations: dynamo cannot trace ``ContextVar.get``/``set`` (the ``sequence_parallel`` hook) nor
this module's host-side checks, so a compiled sharded model runs with graph breaks around every sharded scan
(the local maths is still compiled). Its outputs and gradients equal eager ones (checked for a compiled
``SequenceParallel(MinGRU)`` on 2 gloo ranks, torch 2.13); ``fullgraph=True`` is not supported. Compiled code
outside any ``sequence_parallel`` context is unaffected (no hook is read inside the graph).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from linrec.backends.torch import scan as _scan
from linrec.spec.state import State

__all__ = [
    "SequenceParallel",
    "exchange_bytes",
    "linear_scan_sharded",
    "local_lengths",
    "reduce_gradients",
    "sequence_parallel",
]

_HEADER = 4  # T, reverse, initial_state given, the count of elements that follow


# ---------------------------------------------------------------------------------------------------------------
# the process group


def _group(group: Any) -> tuple[Any, int, int]:
    """``(group, rank, size)``; refuse an uninitialised default group and a group of one."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("linear_scan_sharded needs torch.distributed: call torch.distributed.init_process_group "
                           "(e.g. backend='gloo' on CPU, 'nccl' on GPUs) first, or use linear_scan on one device")
    group = dist.group.WORLD if group is None else group
    size = dist.get_world_size(group)
    if size < 2:
        raise ValueError("group has one process: there is nothing to shard; use linrec.backends.torch.linear_scan "
                         "(or pass a process group of 2+ ranks that split T)")
    return group, dist.get_rank(group), size


def _real(x: Tensor) -> Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


def _all_gather(buffer: Tensor, group: Any, size: int) -> list[Tensor]:
    out = [torch.empty_like(buffer) for _ in range(size)]
    dist.all_gather(out, buffer.contiguous(), group=group)
    return out


def _unpack(flat: Tensor, like: list[tuple[tuple[int, ...], torch.dtype]]) -> list[Tensor]:
    """Split a gathered real buffer into tensors of the given shapes and dtypes (complex from real pairs)."""
    parts, start = [], 0
    for shape, dtype in like:
        n = math.prod(shape) * (2 if dtype.is_complex else 1)
        x = flat[start:start + n]
        start += n
        parts.append(torch.view_as_complex(x.reshape(*shape, 2)) if dtype.is_complex else x.reshape(shape))
    return parts


# ---------------------------------------------------------------------------------------------------------------
# prefix products and cut masks along the local chunk, in processing order


def _product(a: Tensor) -> Tensor:
    """``∏_t a_t``: ``(B, T, *Sa) -> (B, *Sa)``. ``Tensor.prod(1)`` is slow when a step has few elements (14 ms
    for ``(1, 16384, 64)``, 10x a scan): there, a pairwise tree of whole-tensor multiplies (0.7 ms)."""
    if a.shape[0] * math.prod(a.shape[2:]) >= 1024:
        return a.prod(1)
    while a.shape[1] > 1:
        n = a.shape[1]
        pairs = a[:, 0:n - 1:2] * a[:, 1:n:2]
        a = torch.cat([pairs, a[:, n - 1:]], 1) if n % 2 else pairs
    return a[:, 0]


def _expand(mask: Tensor, ndim: int) -> Tensor:
    return mask.reshape(*mask.shape, *(1,) * (ndim - mask.ndim))


def _shift(x: Tensor, reverse: bool, fill: float | bool) -> Tensor:
    """``x`` moved one step against the processing order: step ``t`` gets the value of the step processed after
    it (forward: ``x[t+1]``), the last processed step gets ``fill``."""
    pad = torch.full_like(x[:, :1], fill)
    return torch.cat([pad, x[:, :-1]], 1) if reverse else torch.cat([x[:, 1:], pad], 1)


def _links(resets: Tensor | None, reverse: bool) -> Tensor | None:
    """``(B, T)`` bool: the link into step ``t`` from the step processed before it (inside the chunk) is cut."""
    if resets is None:
        return None
    return _shift(resets, not reverse, False) if reverse else torch.cat([torch.zeros_like(resets[:, :1]),
                                                                         resets[:, 1:]], 1)


def _local_scan(a: Tensor, b: Tensor, h0: Tensor | None, resets: Tensor | None, reverse: bool, method: str,
                chunk_size: int | None) -> Tensor:
    """This rank's scan from ``h0`` (``None``: zeros) with the local cuts; never re-enters the sharded hook."""
    token = _scan.SEQUENCE_PARALLEL.set(None)
    try:
        return _scan.linear_scan(a, b, initial_state=h0, reverse=reverse, resets=resets, method=method,
                                 chunk_size=chunk_size)[0]
    finally:
        _scan.SEQUENCE_PARALLEL.reset(token)


class _ShardedScanFn(torch.autograd.Function):
    """``(h, final_state)`` of the sharded scan on compute-dtype inputs; backward is the sharded reverse scan.

    Two local scans per pass on every rank but the first in scan order: one from a zero state for the chunk's map
    (only its last step is kept), and, once the incoming state is known, the chunk's scan from it (the one-device
    computation given ``h_in``). A second scan streams at memory bandwidth; a fix-up ``h += cumprod(a) · h_in``
    would cost ``torch.cumprod`` (8x a scan on CPU, measured by benchmarks/distributed_torch.py).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, resets: Tensor | None, group: Any, reverse: bool,
                method: str, chunk_size: int | None) -> tuple[Tensor, Tensor]:
        group, rank, size = _group(group)
        order = list(range(size - 1, -1, -1)) if reverse else list(range(size))
        pos = order.index(rank)
        n_batch, n_time = b.shape[0], b.shape[1]
        first, last = (n_time - 1, 0) if reverse else (0, n_time - 1)
        state_like = (n_batch, *b.shape[2:])
        h = None
        if n_time == 0:
            map_h = torch.zeros(state_like, dtype=b.dtype, device=b.device)
        elif pos == 0:  # the first chunk starts from the true initial state: the one-device computation
            h = _local_scan(a, b, h0, resets, reverse, method, chunk_size)
            map_h = h[:, last]
        else:  # from a zero state (exact for a finite a at the first step), for the chunk's map only
            map_h = _local_scan(a, b, None, resets, reverse, method, chunk_size)[:, last].clone()
        map_a = _product(a) if n_time else torch.ones((n_batch, *a.shape[2:]), dtype=a.dtype, device=a.device)
        a_dtype = b.dtype if a.is_complex() else _real_dtype(b.dtype)
        real = _real_dtype(b.dtype)
        flags = torch.zeros((2, n_batch), dtype=real, device=b.device)
        links = _links(resets, reverse)
        if resets is not None and n_time:
            flags[0] = links.any(1).to(real)  # a cut inside the chunk
            flags[1] = resets[:, 0].to(real)  # a segment starts at the chunk's first step (time order)
        header = torch.tensor([n_time, float(reverse), float(h0 is not None), 0.0], dtype=real, device=b.device)
        body = [_real(map_a.to(a_dtype)).flatten(), _real(map_h).flatten(), flags.flatten()]
        header[3] = sum(x.numel() for x in body)
        gathered = _all_gather(torch.cat([header, *body]), group, size)
        headers = [x[:_HEADER].tolist() for x in gathered]
        if any(hd != headers[0] for hd in headers):
            lengths = [int(hd[0]) for hd in headers]
            raise ValueError(f"linear_scan_sharded: every rank must hold the same chunk length T and pass the same "
                             f"reverse and initial_state (given or None); got T per rank {lengths}, "
                             f"reverse {[bool(hd[1]) for hd in headers]}, initial_state given "
                             f"{[bool(hd[2]) for hd in headers]}: split the sequence into equal chunks "
                             "(pad T to a multiple of the group size)")
        like = [((n_batch, *a.shape[2:]), a_dtype), (state_like, b.dtype), ((2, n_batch), real)]
        maps = [_unpack(x[_HEADER:], like) for x in gathered]
        # processing order k: chunk order[k]; its edge cut (a segment start between it and the chunk before it)
        edge = [torch.zeros(n_batch, dtype=torch.bool, device=b.device)]
        for k in range(1, size):
            owner = order[k] if not reverse else order[k - 1]  # whose first step (time order) starts a segment
            edge.append(maps[owner][2][1] > 0)
        dead = [edge[k] | (maps[order[k]][2][0] > 0) for k in range(size)]
        h_in = h0  # the first chunk's map already holds initial_state: its h_last is the one-device state
        state = maps[order[0]][1]
        for k in range(1, size):
            if k == pos:
                h_in = state
            map_a_k, map_h_k = maps[order[k]][0], maps[order[k]][1]
            state = torch.where(_expand(dead[k], state.ndim), map_h_k, torch.addcmul(map_h_k, map_a_k, state))
        final = state
        if pos > 0 and n_time:
            a_in, h_start = a, h_in
            if bool(edge[pos].any()):  # a segment starts here in some rows: their incoming state is cut (a := 0)
                a_in = a.clone()
                a_in[:, first] = torch.where(_expand(edge[pos], a.ndim - 1), 0, a[:, first])
                h_start = torch.where(_expand(edge[pos], h_in.ndim), 0, h_in)
            h = _local_scan(a_in, b, h_start, resets, reverse, method, chunk_size)
        elif h is None:
            h = b.clone()
        ctx.save_for_backward(a, h, h_in, h0)
        ctx.group, ctx.reverse, ctx.method, ctx.chunk_size = group, reverse, method, chunk_size
        ctx.resets, ctx.order, ctx.pos, ctx.edge, ctx.dead = resets, order, pos, edge, dead
        ctx.maps_a = [maps[order[k]][0] for k in range(size)]
        return h, final

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_final: Tensor):
        a, h, h_in, h0 = ctx.saved_tensors
        group, reverse, order, pos = ctx.group, ctx.reverse, ctx.order, ctx.pos
        size, n_time = len(order), h.shape[1]
        resets, edge, dead = ctx.resets, ctx.edge, ctx.dead
        grad_h = grad_h.to(h.dtype)
        grad_final = grad_final.to(h.dtype)
        first = n_time - 1 if reverse else 0
        a_conj = a.conj()
        # g_t = ḣ_t + conj(a_next) g_next: a scan in the other direction; the last processed step has a_next := 1
        a_next = _shift(a_conj, reverse, 1.0) if n_time else a_conj
        # sent to the chunk before: conj(a_first) g_first from a zero cotangent after this chunk; and this rank's
        # share of the final cotangent. The first chunk in scan order has nobody before it: zeros.
        out = torch.zeros_like(grad_final)
        if n_time and pos > 0:
            g_zero = _local_scan(a_next, grad_h, None, resets, not reverse, ctx.method, ctx.chunk_size)
            out = a_conj[:, first] * g_zero[:, first]
            del g_zero
        gathered = _all_gather(torch.cat([_real(out.to(h.dtype)).flatten(), _real(grad_final).flatten()]),
                               group, size)
        like = [(tuple(grad_final.shape), h.dtype)] * 2
        parts = [_unpack(x, like) for x in gathered]
        gamma = parts[0][1]
        for rank in range(1, size):
            gamma = gamma + parts[rank][1]  # Σ of the final cotangents, in rank order (the same on every rank)
        for k in range(size - 1, pos, -1):  # the chunks after this one, last first
            send = parts[order[k]][0]
            kept = torch.where(_expand(dead[k], gamma.ndim), send, torch.addcmul(send, ctx.maps_a[k].conj(), gamma))
            gamma = torch.where(_expand(edge[k], gamma.ndim), torch.zeros_like(gamma), kept)
        g = _local_scan(a_next, grad_h, gamma, resets, not reverse, ctx.method, ctx.chunk_size) if n_time else grad_h
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0] and n_time:
            # ā_t = g_t conj(h_prev), h_prev the state processed before t (h_in for the first step)
            g_h = torch.empty_like(g)
            if reverse:
                torch.mul(g[:, :-1], h[:, 1:].conj(), out=g_h[:, :-1])
            else:
                torch.mul(g[:, 1:], h[:, :-1].conj(), out=g_h[:, 1:])
            g_h[:, first] = 0 if h_in is None else g[:, first] * h_in.conj()
            links = _links(resets, reverse)
            if links is not None or bool(edge[pos].any()):
                cut = edge[pos][:, None] & (torch.arange(n_time, device=g.device) == first)[None, :]
                cut = cut if links is None else cut | links
                g_h = torch.where(_expand(cut, g_h.ndim), torch.zeros_like(g_h), g_h)  # a cut link has a := 0
            grad_a = g_h.sum_to_size(a.shape)
            if grad_a.is_complex() and not a.is_complex():
                grad_a = grad_a.real
        elif ctx.needs_input_grad[0]:
            grad_a = torch.zeros_like(a)
        if h0 is not None and ctx.needs_input_grad[2]:
            if pos == 0:
                grad_h0 = a_conj[:, first] * g[:, first] if n_time else gamma
            else:
                grad_h0 = torch.zeros_like(h0)
        return grad_a, g, grad_h0, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# public API


def linear_scan_sharded(
    a: Tensor,
    b: Tensor,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
    resets: Tensor | None = None,
    group: Any = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` over a sequence split along T across the ranks of ``group`` (recurrence.md §12).

    Call it on every rank of ``group`` with that rank's chunk (rank ``r`` holds steps ``r·T ... (r+1)·T - 1``).

    Args:
      a: ``(B, T, *Sa)`` this rank's decays (broadcastable to ``b`` over the state axes).
      b: ``(B, T, *S)`` this rank's inputs.
      initial_state: ``(B, *S)`` the state before the whole sequence, the same on every rank (``None``: zeros);
        its gradient lands on the first rank in scan order (rank 0, or the last rank with ``reverse``).
      reverse: scan the whole sequence from its last step down (§3).
      resets: ``(B, T)`` bool segment starts of this chunk (§4); one at a chunk's first step cuts the chunk edge.
      group: the ``torch.distributed`` process group that splits T (``None``: the default group); 2+ ranks.
      method: the local scan's method (recurrence.md §7); ``"log"`` has no sharded form.
      chunk_size: for ``method="chunked"``.

    ``B``, ``*S`` and the dtypes must agree on every rank (the collective exchanges equal-sized buffers); an
    unequal ``T``, ``reverse`` or ``initial_state``-given-or-not raises ``ValueError`` on every rank.

    Returns:
      ``(h, final_state)``: ``(B, T, *S)`` this rank's chunk of the one-device ``h``, and ``(B, *S)`` the final
      state of the whole sequence (the same on every rank), in the dtype of ``b``.
    """
    if method == "log":
        raise ValueError("method='log' has no sequence-parallel form (its composed maps would need log-space "
                         "products of signed cotangents); use method='chunked' or the default 'auto'")
    _scan.native.require_native(method)
    _scan.checks.check_method(method, _scan.METHODS)
    _scan.checks.check_reverse(reverse)
    _scan.checks.check_chunk_size(chunk_size)
    a, b = _scan._tensor(a), _scan._tensor(b)
    initial_state = None if initial_state is None else _scan._tensor(initial_state)
    resets = None if resets is None else _scan._tensor(resets)
    _scan._check_scan(a, b, initial_state, resets)
    a_c, b_c = _scan._compute(a), _scan._compute(b)
    h0 = None if initial_state is None else initial_state.to(b_c.dtype)
    h, final = _ShardedScanFn.apply(a_c, b_c, h0, resets, group, bool(reverse), method, chunk_size)
    return h.to(b.dtype), final.to(b.dtype)


def exchange_bytes(a: Tensor, b: Tensor, *, devices: int, resets: bool = False, backward: bool = False) -> int:
    """Bytes one rank receives in one :func:`linear_scan_sharded` call on local ``a (B, T, *Sa)``, ``b (B, T, *S)``.

    Forward: one ``all_gather`` of ``(∏ a, h_last, two flags)`` per rank, ``B·(Sa + S + 2)`` compute-dtype values
    plus a 4-value header (one packed buffer: the flags travel with or without ``resets``, so ``resets`` does not
    change the count); backward (``backward=True``): one ``all_gather`` of two ``(B, *S)`` cotangents. Each rank
    receives ``devices - 1`` such buffers per gather (and sends its own once on a ring/tree transport).
    """
    del resets  # same packed buffer either way; the argument keeps the twins' signature
    if devices < 2:
        raise ValueError(f"devices must be >= 2 (a group of one exchanges nothing), got {devices}")
    compute = _scan._compute(b[:0]).dtype
    item = _real_dtype(compute).itemsize
    n_batch = b.shape[0]
    a_state = math.prod(a.shape[2:]) * (2 if a.is_complex() or compute.is_complex else 1)
    state = math.prod(b.shape[2:]) * (2 if compute.is_complex else 1)
    forward = _HEADER + n_batch * (a_state + state + 2)
    total = forward + (2 * n_batch * state if backward else 0)
    return (devices - 1) * total * item


@contextlib.contextmanager
def sequence_parallel(group: Any = None) -> Iterator[Any]:
    """Within this context every ``linear_scan`` of the torch backend (so every layer and LM) runs sharded along T
    over ``group``: the inputs are each rank's chunk, outputs are that chunk of the one-device result.

    Step loops (``mode="sequential"``), ``method="log"`` and gateloop_mh's ``method="chunked"`` raise inside it
    (they have no sharded form). Yields the group. Nesting replaces the group for the inner block.
    """
    group, _, _ = _group(group)

    def sharded(a, b, **kwargs):
        return linear_scan_sharded(a, b, group=group, **kwargs)

    _scan.compiled_sequence_parallel_hook()  # made here, in eager code, for compiled callers to break the graph on
    token = _scan.SEQUENCE_PARALLEL.set(sharded)
    _scan._SEQUENCE_PARALLEL_DEPTH += 1
    try:
        yield group
    finally:
        _scan._SEQUENCE_PARALLEL_DEPTH -= 1
        _scan.SEQUENCE_PARALLEL.reset(token)


def local_lengths(lengths: Tensor, rank: int, local_t: int) -> Tensor:
    """The right-padding ``lengths (B,)`` of the whole sequence -> rank ``rank``'s chunk of ``local_t`` steps."""
    return (lengths - rank * local_t).clamp(0, local_t).to(lengths.dtype)


def reduce_gradients(module: nn.Module, group: Any = None) -> None:
    """Sum every parameter gradient of ``module`` over ``group`` (the sequence group): the one-device gradient.

    Call after ``backward`` (and after DDP's data-parallel averaging, which runs inside ``backward``).
    """
    group, _, _ = _group(group)
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)


class SequenceParallel(nn.Module):
    """Run a layer or LM of the torch backend sequence-parallel: ``forward`` takes this rank's chunk of T.

    ``SequenceParallel(module, group)(x_local, initial_state, lengths=..., **kwargs)`` calls ``module`` inside
    :func:`sequence_parallel` and returns ``(this rank's chunk of the output, the whole sequence's final
    State)``. For LMs with a positional encoding (their ``State`` has a ``position``), the chunk's positions are
    offset by ``rank · T``, and the returned ``position`` is the one-device one. ``lengths`` is the whole
    sequence's right padding ``(B,)`` (cut to each chunk here). After ``backward``, sum the parameter gradients
    over ``group`` (:func:`reduce_gradients`); outputs at padded positions are zero as on one device.
    ``remat=True`` modules are refused (their recomputation in the backward pass would run outside the context);
    so are functions called with ``remat=True`` inside :func:`sequence_parallel` by hand: do not combine them.
    """

    def __init__(self, module: nn.Module, group: Any = None):
        super().__init__()
        self.module = module
        self.group, self.rank, self.size = _group(group)

    def _time_axis(self) -> int:
        return 1 if getattr(self.module, "batch_first", True) else 0

    def forward(self, x: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                **kwargs: Any) -> tuple[Tensor, State]:
        remat = [name or type(self.module).__name__ for name, m in self.module.named_modules()
                 if getattr(m, "remat", False)]
        if remat and torch.is_grad_enabled():
            raise ValueError(f"remat=True on {remat}: the backward pass would recompute the layer outside "
                             "sequence_parallel, i.e. unsharded; set remat=False on them under SequenceParallel")
        local_t = x.shape[self._time_axis()]
        n_batch = x.shape[1 - self._time_axis()]
        position = None
        probe = initial_state
        if probe is None and hasattr(self.module, "initial_state"):
            probe = self.module.initial_state(n_batch)
        if isinstance(probe, State) and probe.position is not None:
            position = torch.as_tensor(probe.position)
            initial_state = State(probe.h, position + self.rank * local_t)
        if lengths is not None:
            lengths_local = local_lengths(torch.as_tensor(lengths), self.rank, local_t)
            kwargs["lengths"] = lengths_local
        with sequence_parallel(self.group):
            y, final = self.module(x, initial_state, **kwargs)
        if position is not None and isinstance(final, State):
            advance = self.size * local_t if lengths is None else torch.as_tensor(lengths).to(position.device)
            final = State(final.h, (position + advance).to(final.position.dtype))
        return y, final
