"""A minimal linrec backend: the sequential loop of spec/recurrence.md §2 in NumPy."""

import numpy as np

METHODS = ("sequential",)  # the methods it implements besides "auto"
LOG_METHODS = ()  # it has no log_scan


def asarray(x):
    return np.asarray(x)


def to_numpy(x):
    return np.asarray(x)


def dtype_name(x):
    return str(np.asarray(x).dtype)


def linear_scan(a, b, *, initial_state=None, reverse=False, resets=None, method="auto"):
    """h_t = a_t * h_{t-1} + b_t along axis 1 of b: (B, T, *S); returns (h, final_state): (B, T, *S), (B, *S)."""
    if method not in ("auto", "sequential"):
        raise ValueError(f"method={method!r}: this backend implements 'sequential' (or 'auto')")
    b = np.asarray(b)
    a = np.broadcast_to(a, b.shape)
    wide = np.float32 if b.dtype.itemsize == 2 else b.dtype  # bfloat16/float16: state in float32 (§5)
    state = np.zeros((b.shape[0], *b.shape[2:]), wide) if initial_state is None else np.asarray(initial_state, wide)
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    h = np.empty(b.shape, wide)
    for i, t in enumerate(steps):
        state = a[:, t].astype(wide) * state + b[:, t].astype(wide)
        if resets is not None and i > 0:  # a segment starts: the link to the previous step is cut (§4)
            cut = np.asarray(resets)[:, t + 1 if reverse else t].reshape(-1, *[1] * (b.ndim - 2))
            state = np.where(cut, b[:, t].astype(wide), state)
        h[:, t] = state
    return h.astype(b.dtype), state.astype(b.dtype)
