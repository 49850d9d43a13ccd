"""The NumPy reference for ``recurrence.md``: plain loops, float64-capable, obviously correct.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step
(each axis equal to the one of ``*S`` or 1).

These functions *define* the semantics; backends are fast implementations of them. They compute
in the dtype of their inputs (pass float64/complex128 arrays to get the reference answer used by
conformance) except that bfloat16/float16 inputs are accumulated in float32 (§5).
"""

from __future__ import annotations

import numpy as np

from linrec.spec.checks import (
    check_log_scan_args,
    check_reverse,
    check_scan_args,
    compute_dtype,
    log_domain_message,
)

__all__ = [
    "combine",
    "cu_seqlens_to_resets",
    "cut_mask",
    "dtype_name",
    "linear_scan",
    "linear_scan_vjp",
    "log_scan",
]


def dtype_name(x: np.ndarray) -> str:
    """Canonical dtype name of a NumPy array (``ml_dtypes.bfloat16`` is ``"bfloat16"``)."""
    return np.dtype(x.dtype).name


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def combine(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]):
    """Compose two affine steps ``h -> a h + b``: first ``first``, then ``second`` (§6).

    ``combine((a_i, b_i), (a_j, b_j)) = (a_j * a_i, a_j * b_i + b_j)``, and
    ``combine(x, combine(y, z)) == combine(combine(x, y), z)``.
    """
    a_i, b_i = first
    a_j, b_j = second
    return a_j * a_i, a_j * b_i + b_j


def cut_mask(resets: np.ndarray | None, reverse: bool) -> np.ndarray | None:
    """Where the link into a step is cut (§4), as a ``(B, T)`` bool array in time order.

    Forward: step ``t`` ignores ``h_{t-1}`` when ``resets[:, t]`` and ``t >= 1``.
    Reverse: step ``t`` ignores ``h_{t+1}`` when ``resets[:, t + 1]``.
    """
    if resets is None:
        return None
    resets = np.asarray(resets, dtype=bool)
    cut = np.zeros_like(resets)
    if reverse:
        cut[:, :-1] = resets[:, 1:]
    else:
        cut[:, 1:] = resets[:, 1:]
    return cut


def cu_seqlens_to_resets(cu_seqlens, length: int) -> np.ndarray:
    """Convert ``cu_seqlens`` offsets ``[0, n_1, n_1+n_2, ..., T]`` to ``resets`` of shape ``(1, T)``."""
    cu = np.asarray(cu_seqlens)
    if cu.ndim != 1 or cu.size < 2 or cu[0] != 0 or cu[-1] != length or np.any(np.diff(cu) < 0):
        raise ValueError(
            f"cu_seqlens must be non-decreasing offsets starting at 0 and ending at T={length}, got {cu.tolist()}"
        )
    resets = np.zeros((1, length), dtype=bool)
    starts = cu[:-1][cu[:-1] < length]
    resets[0, starts] = True
    return resets


def linear_scan(
    a: np.ndarray,
    b: np.ndarray,
    *,
    initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``h_t = a_t * h_{t-1} + b_t`` as the loop of §2.

    Args:
      a: ``(B, T, *Sa)`` decays, broadcastable to ``b`` over the state axes.
      b: ``(B, T, *S)`` inputs.
      initial_state: ``(B, *S)``; ``None`` means zeros.
      reverse: run from ``t = T-1`` down to 0 (§3).
      resets: ``(B, T)`` bool segment starts (§4).

    Returns:
      ``(h, final_state)`` with shapes ``(B, T, *S)`` and ``(B, *S)``.
    """
    check_reverse(reverse)
    a, b = np.asarray(a), np.asarray(b)
    check_scan_args(
        a.shape, dtype_name(a), b.shape, dtype_name(b),
        None if initial_state is None else np.shape(initial_state),
        None if initial_state is None else dtype_name(np.asarray(initial_state)),
        None if resets is None else np.shape(resets),
        None if resets is None else dtype_name(np.asarray(resets)),
    )
    out_dtype = b.dtype
    acc = _np_dtype(compute_dtype(dtype_name(b)))
    a, b = a.astype(acc), b.astype(acc)
    n_batch, n_time = b.shape[:2]
    state = np.zeros((n_batch, *b.shape[2:]), acc)
    if initial_state is not None:
        state = np.asarray(initial_state).astype(acc)
    cut = cut_mask(resets, reverse)
    h = np.zeros(b.shape, acc)
    steps = range(n_time - 1, -1, -1) if reverse else range(n_time)
    for t in steps:
        for i in range(n_batch):
            carried = np.zeros_like(state[i]) if cut is not None and cut[i, t] else state[i]
            state[i] = a[i, t] * carried + b[i, t]
        h[:, t] = state
    return h.astype(out_dtype), state.astype(out_dtype)


def log_scan(
    log_a: np.ndarray,
    log_b: np.ndarray,
    *,
    log_initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)`` as a loop (§8).

    Args:
      log_a: ``(B, T, *Sa)`` finite real.
      log_b: ``(B, T, *S)`` finite real.
      log_initial_state: ``(B, *S)`` finite real; ``None`` means a zero state (``-inf``).

    Returns:
      ``(log_h, log_final_state)``; a row whose state is still zero has ``log_final_state = -inf``.
    """
    check_reverse(reverse)
    log_a, log_b = np.asarray(log_a), np.asarray(log_b)
    check_log_scan_args(
        log_a.shape, dtype_name(log_a), log_b.shape, dtype_name(log_b),
        None if log_initial_state is None else np.shape(log_initial_state),
        None if log_initial_state is None else dtype_name(np.asarray(log_initial_state)),
        None if resets is None else np.shape(resets),
        None if resets is None else dtype_name(np.asarray(resets)),
    )
    for name, x in (("log_a", log_a), ("log_b", log_b), ("log_initial_state", log_initial_state)):
        if x is not None and not np.all(np.isfinite(np.asarray(x, np.float64))):
            raise ValueError(log_domain_message(name, "every value must be finite (no NaN or ±inf)"))
    out_dtype = log_b.dtype
    acc = _np_dtype(compute_dtype(dtype_name(log_b)))
    log_a, log_b = log_a.astype(acc), log_b.astype(acc)
    n_batch, n_time = log_b.shape[:2]
    state = np.full((n_batch, *log_b.shape[2:]), -np.inf, acc)
    if log_initial_state is not None:
        state = np.asarray(log_initial_state).astype(acc)
    cut = cut_mask(resets, reverse)
    log_h = np.zeros(log_b.shape, acc)
    steps = range(n_time - 1, -1, -1) if reverse else range(n_time)
    for t in steps:
        for i in range(n_batch):
            if cut is not None and cut[i, t]:
                state[i] = log_b[i, t]
            else:
                state[i] = np.logaddexp(log_a[i, t] + state[i], log_b[i, t])
        log_h[:, t] = state
    return log_h.astype(out_dtype), state.astype(out_dtype)


def _sum_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    axes = tuple(i for i, (sx, s) in enumerate(zip(x.shape, shape)) if s == 1 and sx != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def linear_scan_vjp(
    a: np.ndarray,
    b: np.ndarray,
    cotangent_h: np.ndarray,
    cotangent_final_state: np.ndarray | None = None,
    *,
    initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The VJP of :func:`linear_scan` as a reverse loop (§10), in the JAX complex convention.

    Returns ``(a_bar, b_bar, initial_state_bar)`` with the shapes of ``a``, ``b`` and ``(B, *S)``.
    """
    a, b = np.asarray(a), np.asarray(b)
    h, _ = linear_scan(a, b, initial_state=initial_state, reverse=reverse, resets=resets)
    n_batch, n_time = b.shape[:2]
    dtype = h.dtype
    h0 = np.zeros((n_batch, *b.shape[2:]), dtype) if initial_state is None else np.asarray(initial_state, dtype)
    a_full = np.broadcast_to(a, b.shape).astype(dtype)
    cut = cut_mask(resets, reverse)
    if cut is not None:
        a_full = np.where(cut.reshape(cut.shape + (1,) * (b.ndim - 2)), 0, a_full)
    g_acc = np.zeros_like(h0) if cotangent_final_state is None else np.asarray(cotangent_final_state, dtype).copy()
    a_bar = np.zeros(b.shape, dtype)
    b_bar = np.zeros(b.shape, dtype)
    # walk the steps in the opposite order of the forward pass
    steps = range(n_time) if reverse else range(n_time - 1, -1, -1)
    for t in steps:
        g = np.asarray(cotangent_h[:, t], dtype) + g_acc
        prev = h0 if (t == n_time - 1 if reverse else t == 0) else h[:, t + 1 if reverse else t - 1]
        a_bar[:, t] = g * prev
        b_bar[:, t] = g
        g_acc = a_full[:, t] * g
    if cut is not None:
        a_bar = np.where(cut.reshape(cut.shape + (1,) * (b.ndim - 2)), 0, a_bar)
    a_bar = _sum_to_shape(a_bar, a.shape)
    if not np.iscomplexobj(a) and np.iscomplexobj(a_bar):
        a_bar = a_bar.real  # a real decay of a complex state has a real cotangent
    return a_bar, b_bar, g_acc
