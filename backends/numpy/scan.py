"""The NumPy backend: vectorised implementations of ``recurrence.md`` (no autodiff; the VJP is analytic).

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step.

Every method reduces to one forward-direction kernel on ``(a, b, h0)`` in processing order:
resets become ``a := 0`` at the cut positions and ``reverse`` flips time on the way in and out.
"""

from __future__ import annotations

import numpy as np

from linrec.backends import native
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.spec import checks
from linrec.spec.reference import cu_seqlens_to_resets, cut_mask

__all__ = ["LOG_METHODS", "METHODS", "cu_seqlens_to_resets", "linear_scan", "linear_scan_vjp", "log_scan"]

#: ``"native"`` (the C++ kernel of ``linrec.backends.native``) is listed only where it is built.
METHODS = native.with_native(("sequential", "associative", "chunked", "log"))
LOG_METHODS = ("sequential", "heinsen")
#: Chunk length of ``method="chunked"``: long enough to amortise the per-chunk Python step.
DEFAULT_CHUNK_SIZE = 64


def _expand(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (ndim - 2))


def _cast(a, b, initial_state, reverse, resets):
    """Check arguments and cast to the compute dtype (no copy when already there); ``cut`` in time order."""
    a, b = np.asarray(a), np.asarray(b)
    checks.check_scan_args(
        a.shape, dtype_name(a), b.shape, dtype_name(b),
        None if initial_state is None else np.shape(initial_state),
        None if initial_state is None else dtype_name(initial_state),
        None if resets is None else np.shape(resets),
        None if resets is None else dtype_name(resets),
    )
    acc = np_dtype(checks.compute_dtype(dtype_name(b)))
    a_acc = a.astype(np_dtype(checks.compute_dtype(dtype_name(a))), copy=False)
    b_acc = b.astype(acc, copy=False)
    h0 = np.zeros((b.shape[0], *b.shape[2:]), acc) if initial_state is None else np.asarray(initial_state, acc)
    return a_acc, b_acc, h0, cut_mask(resets, reverse), b.dtype


def _prepare(a, b, initial_state, reverse, resets):
    """:func:`_cast`, then mask resets (``a := 0``) and flip to processing order; ``cut`` ``(B, T, 1, ...)`` or None."""
    a_acc, b_acc, h0, cut, out_dtype = _cast(a, b, initial_state, reverse, resets)
    if cut is not None:
        cut = _expand(cut, a_acc.ndim)
        a_acc = np.where(cut, 0, a_acc)
    if reverse:
        a_acc, b_acc = a_acc[:, ::-1], b_acc[:, ::-1]
        cut = None if cut is None else cut[:, ::-1]
    return a_acc, b_acc, h0, cut, out_dtype


def _step(a, h_prev, b, cut):
    """One affine step ``a h_prev + b``; where ``cut`` is set, ``b`` itself, chosen by ``where`` (not
    ``0 * h_prev``) so that a NaN or inf before a segment start stays in its own segment (§11)."""
    out = a * h_prev + b
    return out if cut is None else np.where(cut, b, out)


def _sequential(a, b, h0, cut):
    h = np.empty(np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b, h0))
    state = h0
    for t in range(b.shape[1]):
        state = _step(a[:, t], state, b[:, t], None if cut is None else cut[:, t])
        h[:, t] = state
    return h


def _prefix(a, b, cut):
    """Inclusive prefix of the affine maps (Hillis–Steele): ``(A_t, B_t)`` with ``h_t = A_t h_{-1} + B_t``.

    The product of decays is carried in complement form, ``C = 1 - prod a``, combined as ``C_i + C_j A_i``
    (``= 1 - A_i A_j``), and ``A = 1 - C`` is rounded afresh from it at each level. For decays near 1 the plain
    float32 product ``a_i a_j`` rounds ``1 - x_i - x_j + x_i x_j`` to ``1 - x_i - x_j``: a bias of one sign that
    compounds level after level, 10x the sequential loop's error at T = 65536 (``recurrence.md`` §9). In the
    complement it never compounds: each ``A`` is within half an ulp of the exact product. With ``cut``
    (``(B, T, 1, ...)``), a span containing a cut is its part after the cut, chosen by ``where`` (§11).
    """
    a = np.array(a)
    c = 1 - a
    b = np.array(np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape)), np.result_type(a, b))
    cut = None if cut is None else np.array(cut)
    shift = 1
    while shift < b.shape[1]:
        cut_j = None if cut is None else cut[:, shift:]
        b[:, shift:] = _step(a[:, shift:], b[:, :-shift], b[:, shift:], cut_j)
        c_new = c[:, :-shift] + c[:, shift:] * a[:, :-shift]  # exactly 1 (a forgotten past) when a_i == 0
        c[:, shift:] = c_new if cut_j is None else np.where(cut_j, c[:, shift:], c_new)
        a[:, shift:] = 1 - c[:, shift:]
        if cut is not None:
            cut[:, shift:] = cut_j | cut[:, :-shift]
        shift *= 2
    return a, b, cut


def _associative(a, b, h0, cut):
    if b.shape[1] == 0:
        return np.empty(b.shape, np.result_type(a, b, h0))
    b = np.array(b, np.result_type(a, b, h0))
    b[:, 0] = a[:, 0] * h0 + b[:, 0]  # the initial state enters as b_0 := a_0 h_{-1} + b_0 (§6); never cut
    return _prefix(a, b, cut)[1]


def _chunked(a, b, h0, cut, chunk_size):
    h = np.empty(np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b, h0))
    state = h0
    for start in range(0, b.shape[1], chunk_size):
        sl = slice(start, start + chunk_size)
        a_cum, b_cum, cut_cum = _prefix(a[:, sl], b[:, sl], None if cut is None else cut[:, sl])
        h[:, sl] = _step(a_cum, state[:, None], b_cum, cut_cum)
        state = h[:, sl][:, -1]
    return h


def _logcumsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    return np.logaddexp.accumulate(x, axis=axis)


def _heinsen(log_a, log_b, log_h0):
    """log h_t = a*_t + logaddexp(log h0, logcumsumexp(log b - a*)_t), a* = cumsum(log a)."""
    # a* summed in float64 and rounded once: a float32 running sum of small log-decays rounds the same way step
    # after step (1e-4 onto |a*| ~ 5 loses up to 1% of each term), which cost 6e-4 of max|h| at T = 1e5 (§9)
    wide = np.float64 if log_a.dtype.itemsize <= 8 else log_a.dtype
    a_star = np.cumsum(log_a, axis=1, dtype=wide).astype(log_a.dtype)
    with np.errstate(invalid="ignore"):  # -inf (zero initial state) minus finite is fine
        inner = _logcumsumexp(log_b - a_star, axis=1)
        return a_star + np.logaddexp(log_h0[:, None], inner)


def _check_log_domain(a, b, initial_state, resets):
    if resets is not None:
        raise ValueError(checks.log_domain_message("resets", "method='log' cannot carry a reset (log 0 = -inf)"))
    for name, x in (("a", a), ("b", b), ("initial_state", initial_state)):
        if x is None:
            continue
        if np.iscomplexobj(x):
            raise ValueError(checks.log_domain_message(name, "method='log' needs real values, got complex"))
        values = np.asarray(x, np.float64)
        if not np.all(values > 0):
            raise ValueError(checks.log_domain_message(name, "method='log' needs every value > 0"))
        # +inf passes "> 0" but turns the Heinsen form into inf - inf = NaN
        if not np.all(np.isfinite(values)):
            raise ValueError(checks.log_domain_message(name, "every value must be finite (no NaN or ±inf)"))


def _pick_method(method: str) -> str:
    native.require_native(method)
    checks.check_method(method, METHODS)
    if method != "auto":
        return method
    # NumPy pays per Python-level step: the kernel pays none, the chunked form T/64 of vectorised work.
    return "native" if "native" in METHODS else "chunked"


def linear_scan(
    a: np.ndarray,
    b: np.ndarray,
    *,
    initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``h_t = a_t * h_{t-1} + b_t`` (recurrence.md §2–§7).

    Args:
      a: ``(B, T, *Sa)``, broadcastable to ``b`` over the state axes.
      b: ``(B, T, *S)``.
      initial_state: ``(B, *S)`` or ``None`` (zeros).
      reverse: scan from the last step to the first.
      resets: ``(B, T)`` bool segment starts.
      method: ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"`` or ``"log"``.
      chunk_size: steps per chunk for ``"chunked"`` (default 64).

    Returns:
      ``(h, final_state)``: ``(B, T, *S)`` and ``(B, *S)`` in the dtype of ``b``.
    """
    method = _pick_method(method)
    checks.check_reverse(reverse)
    checks.check_chunk_size(chunk_size)
    if method == "native":  # the kernel takes resets and reverse itself: no masked or flipped copies
        a_c, b_c, h0, cut, out_dtype = _cast(a, b, initial_state, reverse, resets)
        h, final = native.linear_scan(np.ascontiguousarray(a_c), np.ascontiguousarray(b_c), h0, cut, reverse)
        return h.astype(out_dtype, copy=False), final.astype(out_dtype, copy=False)
    a_p, b_p, h0, cut, out_dtype = _prepare(a, b, initial_state, reverse, resets)
    if method == "log":
        _check_log_domain(a, b, initial_state, resets)
        log_h0 = np.full(h0.shape, -np.inf, h0.dtype) if initial_state is None else np.log(h0)
        with np.errstate(divide="ignore"):  # log 0 at reset positions is the intended -inf
            h = np.exp(_heinsen(np.log(a_p), np.log(b_p), log_h0))
    elif method == "sequential":
        h = _sequential(a_p, b_p, h0, cut)
    elif method == "associative":
        h = _associative(a_p, b_p, h0, cut)
    else:
        h = _chunked(a_p, b_p, h0, cut, chunk_size or DEFAULT_CHUNK_SIZE)
    final = h[:, -1] if h.shape[1] else h0
    if reverse:
        h = h[:, ::-1]
    # final is copied: a view of h (or the caller's initial_state when T = 0) must not alias another output
    return np.ascontiguousarray(h).astype(out_dtype, copy=False), np.array(final, dtype=out_dtype)


def log_scan(
    log_a: np.ndarray,
    log_b: np.ndarray,
    *,
    log_initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)`` (recurrence.md §8).

    Args:
      log_a: ``(B, T, *Sa)`` finite real; log_b: ``(B, T, *S)`` finite real.
      log_initial_state: ``(B, *S)`` finite, or ``None`` for a zero state.
      method: ``"auto"`` (= ``"heinsen"``), ``"sequential"`` or ``"heinsen"``.

    Returns:
      ``(log_h, log_final_state)``.
    """
    checks.check_method(method, LOG_METHODS, function="log_scan")
    checks.check_reverse(reverse)
    log_a, log_b = np.asarray(log_a), np.asarray(log_b)
    checks.check_log_scan_args(
        log_a.shape, dtype_name(log_a), log_b.shape, dtype_name(log_b),
        None if log_initial_state is None else np.shape(log_initial_state),
        None if log_initial_state is None else dtype_name(log_initial_state),
        None if resets is None else np.shape(resets),
        None if resets is None else dtype_name(resets),
    )
    for name, x in (("log_a", log_a), ("log_b", log_b), ("log_initial_state", log_initial_state)):
        if x is not None and not np.all(np.isfinite(np.asarray(x, np.float64))):
            raise ValueError(checks.log_domain_message(name, "every value must be finite (no NaN or ±inf)"))
    acc = np_dtype(checks.compute_dtype(dtype_name(log_b)))
    la, lb = log_a.astype(acc), log_b.astype(acc)
    shape0 = (lb.shape[0], *lb.shape[2:])
    lh0 = np.full(shape0, -np.inf, acc) if log_initial_state is None else np.asarray(log_initial_state, acc)
    cut = cut_mask(resets, reverse)
    if cut is not None:  # a cut link is a = 0, i.e. log a = -inf
        la = np.where(_expand(cut, la.ndim), -np.inf, la)
    if reverse:
        la, lb = la[:, ::-1], lb[:, ::-1]
    if method == "heinsen" and cut is not None:
        raise ValueError("log_scan(method='heinsen') cannot carry resets (a cut is log a = -inf); "
                         "use method='sequential' or 'auto'")
    if method == "sequential" or cut is not None:  # auto with resets: the loop carries -inf exactly
        out = np.empty(np.broadcast_shapes(la.shape, lb.shape), acc)
        state = lh0
        for t in range(lb.shape[1]):
            state = np.logaddexp(la[:, t] + state, lb[:, t])
            out[:, t] = state
    else:
        out = _heinsen(la, lb, lh0)
    final = out[:, -1] if out.shape[1] else lh0
    if reverse:
        out = out[:, ::-1]
    return np.ascontiguousarray(out).astype(log_b.dtype), np.asarray(final).astype(log_b.dtype)


def linear_scan_vjp(
    a: np.ndarray,
    b: np.ndarray,
    cotangent_h: np.ndarray,
    cotangent_final_state: np.ndarray | None = None,
    *,
    initial_state: np.ndarray | None = None,
    reverse: bool = False,
    resets: np.ndarray | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The VJP of :func:`linear_scan` as a reverse scan with the same method (§10, JAX convention).

    Returns ``(a_bar, b_bar, initial_state_bar)`` shaped like ``a``, ``b`` and ``(B, *S)``.
    """
    a, b = np.asarray(a), np.asarray(b)
    h, _ = linear_scan(a, b, initial_state=initial_state, reverse=reverse, resets=resets, method=method,
                       chunk_size=chunk_size)
    a_p, _, h0, _, _ = _prepare(a, b, initial_state, reverse, resets)
    acc = np.result_type(a_p, h0)
    h_p = (h[:, ::-1] if reverse else h).astype(acc)
    ct = np.asarray(cotangent_h).astype(acc)
    ct = ct[:, ::-1] if reverse else ct
    ct_final = np.zeros_like(h0) if cotangent_final_state is None else np.asarray(cotangent_final_state, acc)
    # g_t = ct_t + a_{t+1} g_{t+1}: a reverse scan whose decay is a shifted by one step
    a_next = np.concatenate([a_p[:, 1:], np.ones_like(a_p[:, :1])], axis=1)
    scan_method = "chunked" if method in ("auto", "log") else method
    # the same links are cut backwards: step t receives nothing from t+1 where the forward cut t+1 (processing
    # order); as resets of this reverse scan that is the cut mask itself, so NaN/inf stay in their segment (§11)
    cut_p = cut_mask(resets, reverse)
    if cut_p is not None and reverse:
        cut_p = np.ascontiguousarray(cut_p[:, ::-1])
    g, _ = linear_scan(a_next, ct, initial_state=ct_final, reverse=True, resets=cut_p, method=scan_method,
                       chunk_size=chunk_size)
    g = g.astype(acc)
    h_prev = np.concatenate([h0[:, None], h_p[:, :-1]], axis=1) if h_p.shape[1] else h_p
    a_bar = g * h_prev
    axes = tuple(i for i in range(2, a.ndim) if a.shape[i] == 1 and b.shape[i] != 1)
    a_bar = a_bar.sum(axis=axes, keepdims=True) if axes else a_bar
    init_bar = a_p[:, 0] * g[:, 0] if g.shape[1] else ct_final
    init_bar = np.broadcast_to(init_bar, h0.shape)
    cut = cut_mask(resets, reverse)
    if cut is not None:
        a_bar = np.where(_expand(cut[:, ::-1] if reverse else cut, a.ndim), 0, a_bar)
    if reverse:
        a_bar, g = a_bar[:, ::-1], g[:, ::-1]
    if not np.iscomplexobj(a):
        a_bar = a_bar.real
    out_init = b.dtype if initial_state is None else np.asarray(initial_state).dtype
    return a_bar.astype(a.dtype), g.astype(b.dtype), np.ascontiguousarray(init_bar).astype(out_init)
