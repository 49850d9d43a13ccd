"""Sequence parallelism simulated over a list of chunks: the executable statement of recurrence.md §12.

Shape legend: ``B`` batch, ``T_k`` the steps of chunk ``k`` (device ``k``), ``*S`` state shape, ``*Sa`` the shape
of ``a`` per step, ``N`` the number of chunks (devices).

Each "device" is one element of a Python list. The four steps of §12 are separate functions so that the JAX and
PyTorch backends (and a reader) can follow them one by one:

1. :func:`chunk_scan` — local scan from a zero state, the running decay product ``P`` and the chunk's composed map;
2. the exchange — here, the list of maps itself (a real backend ``all_gather``\\s them);
3. :func:`compose` — each chunk's incoming state from the maps before it (after it for ``reverse``);
4. :func:`fix_up` — ``h = h0 + P * h_in`` (``h0`` where a cut lies on the way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.scan import linear_scan
from linrec.spec import checks
from linrec.spec.reference import cut_mask

__all__ = ["ChunkMap", "chunk_scan", "compose", "exchange_bytes", "fix_up", "linear_scan_sharded"]


class ChunkMap(NamedTuple):
    """The composed map of one chunk, ``h -> A * h + H`` unless ``cut`` (then ``h -> H``): what devices exchange.

    ``decay``: ``(B, *Sa)`` the product of the chunk's ``a`` (0 when it holds a cut); ``state``: ``(B, *S)`` the
    chunk's last state (in processing order) scanned from zero; ``cut``: ``(B,)`` bool, whether the chunk holds a cut.
    """

    decay: np.ndarray
    state: np.ndarray
    cut: np.ndarray


def _expand(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def _local_resets(cut: np.ndarray, reverse: bool) -> np.ndarray:
    """``resets`` for the backend's ``linear_scan`` on one chunk that reproduce the chunk's cut mask ``(B, T_k)``.

    Forward a cut at ``t`` is ``resets[t]``; reverse it is ``resets[t + 1]``. The one cut a chunk cannot express this
    way (its first step forward, its last step reverse: the link into the chunk from its neighbour) needs nothing,
    since the local scan starts from zero and ``a := 0`` there.
    """
    if not reverse:
        return cut
    return np.concatenate([np.zeros_like(cut[:, :1]), cut[:, :-1]], axis=1)


def chunk_scan(
    a: np.ndarray, b: np.ndarray, cut: np.ndarray | None, *, reverse: bool = False, method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ChunkMap]:
    """Step 1 of §12 on one device's chunk, in the compute dtype.

    Args:
      a: ``(B, T_k, *Sa)``; b: ``(B, T_k, *S)``, both in the compute dtype, ``T_k >= 1``.
      cut: ``(B, T_k)`` bool, the global cut mask of §4 restricted to the chunk (``None``: no resets).
      reverse, method, chunk_size: as for ``linear_scan``.

    Returns:
      ``(h0, decay_prefix, seen_cut, chunk_map)``: the local states from zero ``(B, T_k, *S)``, the running product
      ``P`` ``(B, T_k, *Sa)`` (in processing order, 0 from a cut on), whether a cut lies at or before each step in
      processing order ``(B, T_k)``, and the chunk's :class:`ChunkMap`.
    """
    if cut is None:
        cut = np.zeros(b.shape[:2], bool)
    a = np.where(_expand(cut, a.ndim), np.zeros((), a.dtype), a)  # a := 0 at a cut (§4)
    h0, _ = linear_scan(a, b, reverse=reverse, resets=_local_resets(cut, reverse), method=method,
                        chunk_size=chunk_size)
    if reverse:
        prefix = np.cumprod(a[:, ::-1], axis=1)[:, ::-1]
        seen = np.logical_or.accumulate(cut[:, ::-1], axis=1)[:, ::-1]
    else:
        prefix = np.cumprod(a, axis=1)
        seen = np.logical_or.accumulate(cut, axis=1)
    last = 0 if reverse else -1
    return h0, prefix, seen, ChunkMap(prefix[:, last], h0[:, last], seen[:, last])


def compose(maps: Sequence[ChunkMap], initial_state: np.ndarray, *, reverse: bool = False
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """Step 3 of §12: every chunk's incoming state and the final state, from all chunks' maps.

    Forward ``h_in(0) = initial_state``, ``h_in(k+1) = A_k h_in(k) + H_k`` (``H_k`` where the chunk holds a cut, a
    selection so NaN does not cross it); reverse runs ``k`` from the last chunk down. Returns
    ``([h_in(k) for k in range(N)], final_state)``, each ``(B, *S)``.
    """
    order = range(len(maps) - 1, -1, -1) if reverse else range(len(maps))
    incoming: list[np.ndarray | None] = [None] * len(maps)
    state = initial_state
    for k in order:
        incoming[k] = state
        m = maps[k]
        state = np.where(_expand(m.cut, state.ndim), m.state, m.decay * state + m.state)
    return incoming, state


def fix_up(h0: np.ndarray, prefix: np.ndarray, seen: np.ndarray, incoming: np.ndarray) -> np.ndarray:
    """Step 4 of §12: ``h = h0 + P * h_in``, but ``h0`` where a cut lies at or before the step (processing order)."""
    return np.where(_expand(seen, h0.ndim), h0, h0 + prefix * incoming[:, None])


def exchange_bytes(a, b, *, devices: int, resets: bool = False, backward: bool = False) -> int:
    """Bytes one device receives in one sharded scan of ``a (B, T, *Sa)``, ``b (B, T, *S)`` (§12's volume table).

    Forward: one ``all_gather`` of every other device's map ``(A, H)`` (``B·(|Sa| + |S|)`` values of the compute
    dtype of §5) plus, with ``resets``, one cut flag byte per row; ``backward=True`` adds the backward pass's gather,
    which moves as many. Only ``B`` and the state shapes matter: the count is the same for global or per-device
    arrays, and independent of ``T``. Anything with ``.shape`` and ``.dtype`` works (the twins of this function in
    the JAX and PyTorch backends count their own transports).
    """
    if devices < 2:
        raise ValueError(f"devices must be >= 2 (a group of one exchanges nothing), got {devices}")
    itemsize = np.result_type(np.dtype(a.dtype), np.dtype(b.dtype), np.float32).itemsize
    n_batch = int(b.shape[0])
    per_map = n_batch * (math.prod(a.shape[2:]) + math.prod(b.shape[2:])) * itemsize
    per_map += n_batch if resets else 0  # the cut flags, one byte per row
    return (devices - 1) * per_map * (2 if backward else 1)


def linear_scan_sharded(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: Sequence[np.ndarray] | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``linear_scan`` with the time axis split into chunks, one per simulated device (recurrence.md §12).

    Args:
      a: ``N`` chunks ``(B, T_k, *Sa)`` (any ``T_k``, concatenated along time they are the full ``a``).
      b: ``N`` chunks ``(B, T_k, *S)`` with the same ``T_k``.
      initial_state: ``(B, *S)`` or ``None`` (zeros); enters on the first chunk in processing order.
      reverse: scan from the last step of the last chunk to the first step of the first.
      resets: ``N`` chunks ``(B, T_k)`` bool segment starts in global time (§4), or ``None``.
      method: the local scans' method (``"log"`` is refused: its map would live in log space).
      chunk_size: for ``method="chunked"``.

    Returns:
      ``(h, final_state)``: ``N`` chunks ``(B, T_k, *S)`` and ``(B, *S)`` in the dtype of ``b``.
    """
    checks.check_reverse(reverse)
    if method == "log":
        raise ValueError("linear_scan_sharded: method='log' cannot be sequence-parallel (its chunk maps live in log "
                         "space, recurrence.md §12); use method='sequential', 'associative' or 'chunked'")
    if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b) or not a:
        raise ValueError("linear_scan_sharded: a and b must be non-empty lists of chunks of equal length (one per "
                         f"device), got {type(a).__name__} and {type(b).__name__}")
    if resets is not None and (not isinstance(resets, (list, tuple)) or len(resets) != len(a)):
        raise ValueError(f"linear_scan_sharded: resets must be a list of {len(a)} chunks (B, T_k), like a and b")
    lengths = [np.shape(x)[1] if np.ndim(x) >= 2 else -1 for x in b]
    a_full, b_full = np.concatenate([np.asarray(x) for x in a], axis=1), np.concatenate([np.asarray(x) for x in b],
                                                                                        axis=1)
    resets_full = None if resets is None else np.concatenate([np.asarray(r) for r in resets], axis=1)
    # the one-device checks, on the whole sequence (shapes, dtypes, method names)
    checks.check_scan_args(
        a_full.shape, dtype_name(a_full), b_full.shape, dtype_name(b_full),
        None if initial_state is None else np.shape(initial_state),
        None if initial_state is None else dtype_name(initial_state),
        None if resets_full is None else resets_full.shape,
        None if resets_full is None else dtype_name(resets_full),
    )
    if any(n < 1 for n in lengths) or any(np.shape(x)[1] != n for x, n in zip(a, lengths, strict=True)):
        raise ValueError(f"linear_scan_sharded: every chunk needs at least one step and a, b chunks equal lengths; "
                         f"got b chunk lengths {lengths}")
    acc = np_dtype(checks.compute_dtype(dtype_name(b_full)))
    a_acc = a_full.astype(np_dtype(checks.compute_dtype(dtype_name(a_full))), copy=False)
    b_acc = b_full.astype(acc, copy=False)
    h_init = np.zeros((b_full.shape[0], *b_full.shape[2:]), acc) if initial_state is None else \
        np.asarray(initial_state).astype(acc)
    cut = cut_mask(resets_full, reverse)  # global time: a cut at a chunk edge belongs to the chunk it enters
    edges = np.cumsum(lengths)[:-1]
    a_chunks, b_chunks = np.split(a_acc, edges, axis=1), np.split(b_acc, edges, axis=1)
    cut_chunks = [None] * len(lengths) if cut is None else np.split(cut, edges, axis=1)

    local = [chunk_scan(a_k, b_k, c_k, reverse=reverse, method=method, chunk_size=chunk_size)
             for a_k, b_k, c_k in zip(a_chunks, b_chunks, cut_chunks, strict=True)]  # step 1, on every device
    maps = [m for *_, m in local]  # step 2: the all_gather
    incoming, final = compose(maps, h_init, reverse=reverse)  # step 3
    out_dtype = b_full.dtype
    h = [fix_up(h0, p, s, h_in).astype(out_dtype) for (h0, p, s, _), h_in in zip(local, incoming, strict=True)]
    return h, final.astype(out_dtype)
