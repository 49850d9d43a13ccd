"""Native dense products for decoding (``linrec_dense.cc``): ``y (M, N) = x (M, K) @ W (K, N) + bias (N,)`` in
float32 for a few rows ``M`` (a decode step's batch), on every core.

Shape legend: ``M`` rows (at most :data:`MAX_ROWS`), ``K`` input width, ``N`` output width, ``P = ceil(N / 16)``
column panels.

Why: at batch 1 a decode step reads every weight once per token and does one multiply-add per weight, so its time
is the time to stream the weights; the frameworks' BLAS calls (MKL's sgemv, XLA:CPU's dot) run such a product on
one core, and the kernel streams disjoint column panels on every core (about twice the bandwidth on the 2-core
reference machine: benchmarks/results/decode.md). With more rows the product becomes compute-bound; up to
:data:`MAX_ROWS` rows the kernel still matches or beats the BLAS, so the decoders use it for at most that many rows
and keep the framework's product above.

The kernel reads ``W`` packed once into :data:`PANEL`-column panels (:func:`pack`: ``(P, K, 16)``, the last panel
zero-padded), so every thread streams one contiguous block. Each output is summed in the order ``k = 0..K-1`` with one
fused multiply-add per term, by one thread: the result does not depend on the thread count (it differs from a BLAS
product by rounding only, within the spec's float32 tolerance). The framework twins are
``linrec.backends.{numpy,jax,torch}.native_dense``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_ROWS", "PANEL", "check_packed", "dense", "pack", "packed_size", "step_rows"]

#: Columns per panel of a packed kernel (``kPanel`` in ``linrec_dense.cc``).
PANEL = 16
#: The most rows the decoders send to the kernel (``linrec_dense_max_rows()``). On the 2-core reference machine a
#: 512x1536 product takes 29/30/61/73/149/242 us at 1/2/4/8/16/32 rows, against 278/413 us (``torch.addmm``) and
#: 170/300 us (XLA's dot) at 16/32 rows (``benchmarks/results/dense.md``); every layer's native decode program
#: beats its framework step up to 32 rows (``benchmarks/results/layers.md``); at 64 rows XLA's minGRU step already
#: wins (the BLAS blocks for cache, the kernel re-reads each panel once per 6 rows), so larger batches keep the
#: framework's product.
MAX_ROWS = 32


def packed_size(k: int, n: int) -> int:
    """Floats of the packed form of a ``(K, N)`` kernel: ``P · K · 16``."""
    return -(-n // PANEL) * PANEL * k


def pack(kernel: np.ndarray) -> np.ndarray:
    """``kernel (K, N)`` float32 → its panels ``(P · K · 16,)`` (what :func:`dense` reads)."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.dtype != np.float32:
        raise TypeError(f"pack takes a (K, N) float32 kernel, got {kernel.dtype} {kernel.shape}")
    k, n = kernel.shape
    panels = -(-n // PANEL)
    padded = np.zeros((k, panels * PANEL), np.float32)
    padded[:, :n] = kernel
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2)).reshape(-1)


def step_rows(x: object) -> int:
    """The rows a dense product of ``x (..., K)`` multiplies, read from ``x.shape`` as given (``0`` without a shape
    or for a 1-D one: the caller's own checks then say what is wrong). Plain Python: decoders ask once per token,
    where ``np.prod`` alone cost ~10 µs."""
    shape = getattr(x, "shape", ())
    return math.prod(shape[:-1]) if len(shape) > 1 else 0


def check_packed(x_shape: tuple[int, ...], packed_shape: tuple[int, ...], n: int) -> None:
    """``ValueError`` unless ``x`` is ``(M, K)`` with ``M ≤`` :data:`MAX_ROWS` and ``packed`` packs a ``(K, n)``."""
    if len(x_shape) != 2:
        raise ValueError(f"the native dense product takes x of shape (M, K), got {x_shape}")
    if x_shape[0] > MAX_ROWS:
        raise ValueError(f"the native dense product takes at most {MAX_ROWS} rows, got {x_shape[0]}; use the "
                         "framework's matrix product for more")
    if tuple(packed_shape) != (packed_size(x_shape[1], n),):
        raise ValueError(f"the packed kernel {tuple(packed_shape)} is not a ({x_shape[1]}, {n}) kernel packed for "
                         f"x {x_shape}")


def dense(x: np.ndarray, packed: np.ndarray, bias: np.ndarray | None, n: int) -> np.ndarray:
    """``x (M, K) @ W (K, n) (+ bias (n,))`` float32 from ``packed = pack(W)``, on the native kernel."""
    from linrec.backends import native

    check_packed(x.shape, packed.shape, n)
    if x.dtype != np.float32 or packed.dtype != np.float32 or (bias is not None and bias.dtype != np.float32):
        raise TypeError("the native dense product takes float32 x, kernel and bias")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be ({n},), got {bias.shape}")
    lib = native._builder().load()
    x, packed = np.ascontiguousarray(x), np.ascontiguousarray(packed)
    bias = None if bias is None else np.ascontiguousarray(bias)
    y = np.empty((x.shape[0], n), np.float32)
    native._check(lib.linrec_dense(x.shape[0], x.shape[1], n, native._ptr(x), native._ptr(packed),
                                   native._ptr(bias), native._ptr(y)))
    return y
