"""Reuse of the native ops' large output buffers: a freed output goes back to a pool, not to the system.

Why: glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on ``free``, so every call of a
scan that streams at memory bandwidth first page-faults (and the kernel zero-fills) its outputs: measured at
B=8, T=16384, D=512 float32, this is most of a training step's time (benchmarks/results/scan.md). The pool keeps
the buffers of outputs that were freed (a forward's ``h`` once the backward has used it, a gradient once the
optimizer dropped it) and hands them to the next output of the same byte size, whose pages are then already
mapped. Unlike :func:`linrec.backends.native.malloc.retain_freed_memory` it touches nothing outside linrec's own
ops.

Only buffers of at least :data:`MIN_BYTES` are pooled (smaller ones come from malloc's own free lists quickly), and
the pool holds at most ``LINREC_TORCH_POOL_MB`` MiB of free buffers (default 1024; ``0`` turns pooling off); a
buffer that would exceed it is returned to the system. :func:`clear` drops every free buffer.
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np

__all__ = ["MIN_BYTES", "clear", "empty", "free_bytes", "limit_bytes"]

#: Smallest output (bytes) that is pooled: glibc's default threshold above which it maps fresh pages per buffer.
MIN_BYTES = 1 << 20
_DEFAULT_LIMIT_MB = 1024

_lock = threading.Lock()
_free: dict[int, list[np.ndarray]] = {}  # byte size -> free uint8 buffers of that size
_held = {"bytes": 0}


def limit_bytes() -> int:
    """The most free memory the pool keeps: ``LINREC_TORCH_POOL_MB`` MiB (read at each release; default 1024)."""
    raw = os.environ.get("LINREC_TORCH_POOL_MB", "").strip()
    if not raw:
        return _DEFAULT_LIMIT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"LINREC_TORCH_POOL_MB must be a number of MiB (0 turns pooling off), got {raw!r}") from None
    if not math.isfinite(mb) or mb < 0:
        raise ValueError(f"LINREC_TORCH_POOL_MB must be a finite number >= 0, got {raw!r}")
    return int(mb * (1 << 20))


def free_bytes() -> int:
    """Bytes of free buffers the pool holds now."""
    return _held["bytes"]


def clear() -> None:
    """Return every free buffer to the system (outputs in use are unaffected)."""
    with _lock:
        _free.clear()
        _held["bytes"] = 0


def _release(buffer: np.ndarray) -> None:
    """The finalizer of a pooled output: keep its buffer for the next output of its size, within the limit."""
    size = buffer.nbytes
    try:
        limit = limit_bytes()
    except ValueError:  # the setting went bad after the buffer was handed out: a finalizer must not raise
        return
    with _lock:
        if _held["bytes"] + size <= limit:
            _free.setdefault(size, []).append(buffer)
            _held["bytes"] += size


def empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, from the pool when one of its size is free.

    The array is a view of a byte buffer; when the last reference to it dies (in PyTorch: the tensor made by
    ``torch.from_numpy`` and every view of it), the buffer returns to the pool.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < MIN_BYTES or limit_bytes() == 0:  # limit_bytes: a bad setting is an error here, at the call
        return np.empty(shape, dtype)
    with _lock:
        buffers = _free.get(size)
        buffer = buffers.pop() if buffers else None
        if buffer is not None:
            _held["bytes"] -= size
    if buffer is None:
        buffer = np.empty(size, np.uint8)  # NumPy asks for huge pages on buffers this large
    out = buffer.view(dtype).reshape(shape)
    weakref.finalize(out, _release, buffer)
    return out
