"""Opt-in process allocator setting for CPU runs: keep freed large buffers for reuse instead of unmapping them.

Why: glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on ``free``. XLA and PyTorch
allocate each large result anew, so every call page-faults (and zero-fills) its outputs before the kernel can
write them; for a scan that streams at memory bandwidth this doubles or triples the time at ``B·T·D`` in the tens of
millions (benchmarks/results/scan.md, rows "native, malloc retained"). :func:`retain_freed_memory` switches glibc
to serving all sizes from one heap (one arena: XLA's worker threads would otherwise each get their own, which
cannot hold a buffer over 64 MiB without ``mmap``) and never trimming it, so the second call reuses the first
call's pages. This is what the PyTorch CPU performance guide gets from jemalloc/tcmalloc, and what
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=-1:glibc.malloc.arena_max=1`` does at
process start.

It is process-wide and never done implicitly: resident memory stays at its peak (freed memory is kept, not returned
to the system). Call it once, early, in a training or serving process that wants the speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["retain_freed_memory"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NO_TRIM = -1  # mallopt(3): -1 disables trimming altogether


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` per large buffer, no trimming, one arena). Process-wide;
    call it before the frameworks start their threads.

    Returns ``True`` when applied, ``False`` where the C library is not glibc (nothing is changed there).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc: musl and macOS name these settings differently or lack them
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM), (_M_ARENA_MAX, 1))
    return all([bool(mallopt(option, value)) for option, value in settings])
