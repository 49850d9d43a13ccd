"""Triton kernels of the fused GatedLinearRNN (imported lazily, like ``triton_scan_kernels``, whose block scan they
reuse). Layout: ``u (B, T, nH) = [u_in | u_i | (u_f |) u_o]``, each part passed as its own pointer with ``u``'s strides.

Forward: ``i = σ(u_i)``, ``f = 1 - i`` (tied) or ``σ(u_f)``, ``h_t = f h_{t-1} + i tanh(u_in)``, ``y = tanh(h) σ(u_o)``
(spec/gated_linear_rnn.md, default activations); writes ``y`` and ``h`` (the backward's residual). Backward: one pass
in the other direction: ``ḣ = ȳ σ(u_o) (1 - tanh² h)``, the reverse scan ``g``, then every part of ``ū`` and ``h̄0``.
``tanh`` is ``1 - 2 / (exp(2x) + 1)`` (no ``triton.language.standard`` helpers, see ``triton_scan_kernels``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from linrec.backends.torch.triton_scan_kernels import _block_scan, _last_row, _sigmoid

__all__ = ["glr_bwd_kernel", "glr_fwd_kernel"]


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _decay(ui_ptr, uf_ptr, off, mask, acc, TIED: tl.constexpr):
    """``f``: ``1 - σ(u_i)`` (tied) or ``σ(u_f)``."""
    if TIED:
        f = 1.0 - _sigmoid(tl.load(ui_ptr + off, mask=mask, other=0.0).to(acc))
    else:
        f = _sigmoid(tl.load(uf_ptr + off, mask=mask, other=0.0).to(acc))
    return f


@triton.jit
def glr_fwd_kernel(
    uin_ptr, ui_ptr, uf_ptr, uo_ptr, h0_ptr, h_ptr, y_ptr,
    T, N, su_b, su_t, su_n, s0_b, s0_n, sh_b, sh_t, sh_n,
    REVERSE: tl.constexpr, TIED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, LOG_T: tl.constexpr,
):
    pid_b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = h_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_T)
    tile_n = n[None, :] + 0 * rows[:, None]
    carry = tl.load(h0_ptr + pid_b * s0_b + tile_n * s0_n, mask=tile_n < N, other=0.0).to(acc)
    no_cut = tl.full([BLOCK_T, BLOCK_N], 0, tl.int32)
    for start in range(0, T, BLOCK_T):
        p = start + rows
        t = (T - 1 - p) if REVERSE else p
        ok = (p < T)[:, None] & n_ok[None, :]
        off = pid_b * su_b + t[:, None] * su_t + n[None, :] * su_n
        i = _sigmoid(tl.load(ui_ptr + off, mask=ok, other=0.0).to(acc))
        f = _decay(ui_ptr, uf_ptr, off, ok, acc, TIED)
        b = i * _tanh(tl.load(uin_ptr + off, mask=ok, other=0.0).to(acc))
        h, _ = _block_scan(no_cut, f, f, b, b, carry, carry, False, False, BLOCK_T, LOG_T)
        o = _sigmoid(tl.load(uo_ptr + off, mask=ok, other=0.0).to(acc))
        h_off = pid_b * sh_b + t[:, None] * sh_t + n[None, :] * sh_n
        tl.store(h_ptr + h_off, h, mask=ok)
        tl.store(y_ptr + h_off, _tanh(h) * o, mask=ok)
        carry = _last_row(h, BLOCK_T)


@triton.jit
def glr_bwd_kernel(
    uin_ptr, ui_ptr, uf_ptr, uo_ptr, h0_ptr, h_ptr, gy_ptr, gf_ptr,
    bin_ptr, bi_ptr, bf_ptr, bo_ptr, h0bar_ptr,
    T, N, su_b, su_t, su_n, s0_b, s0_n, sh_b, sh_t, sh_n, sy_b, sy_t, sy_n, sf_b, sf_n,
    REVERSE: tl.constexpr, TIED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, LOG_T: tl.constexpr,
):
    """``ū`` (parts at ``b*_ptr``, ``u``'s strides) and ``h̄0`` (``s0_*``) from ``ȳ`` (``sy_*``) and ``ḟ`` (``sf_*``)."""
    pid_b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = h_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_T)
    tile_n = n[None, :] + 0 * rows[:, None]
    carry = tl.load(gf_ptr + pid_b * sf_b + tile_n * sf_n, mask=tile_n < N, other=0.0).to(acc)
    h0 = tl.load(h0_ptr + pid_b * s0_b + tile_n * s0_n, mask=tile_n < N, other=0.0).to(acc)
    no_cut = tl.full([BLOCK_T, BLOCK_N], 0, tl.int32)
    for start in range(0, T, BLOCK_T):
        p = start + rows
        t = p if REVERSE else (T - 1 - p)
        t_ok = p < T
        ok = t_ok[:, None] & n_ok[None, :]
        nxt = (t - 1) if REVERSE else (t + 1)
        prv = (t + 1) if REVERSE else (t - 1)
        nok = (t_ok & (nxt >= 0) & (nxt < T))[:, None] & n_ok[None, :]
        pok = (t_ok & (prv >= 0) & (prv < T))[:, None] & n_ok[None, :]
        off = pid_b * su_b + t[:, None] * su_t + n[None, :] * su_n
        off_next = pid_b * su_b + nxt[:, None] * su_t + n[None, :] * su_n
        f_next = tl.where(nok, _decay(ui_ptr, uf_ptr, off_next, nok, acc, TIED), 1.0)
        h_off = pid_b * sh_b + t[:, None] * sh_t + n[None, :] * sh_n
        h = tl.load(h_ptr + h_off, mask=ok, other=0.0).to(acc)
        gy = tl.load(gy_ptr + pid_b * sy_b + t[:, None] * sy_t + n[None, :] * sy_n, mask=ok, other=0.0).to(acc)
        uo = tl.load(uo_ptr + off, mask=ok, other=0.0).to(acc)
        o = _sigmoid(uo)
        th = _tanh(h)
        dh = gy * o * (1.0 - th * th)
        g, _ = _block_scan(no_cut, f_next, f_next, dh, dh, carry, carry, False, False, BLOCK_T, LOG_T)
        h_prev = tl.load(h_ptr + pid_b * sh_b + prv[:, None] * sh_t + n[None, :] * sh_n, mask=pok, other=0.0)
        first = ok & ~pok
        h_prev = tl.where(first, h0, h_prev.to(acc))
        a_bar = g * h_prev
        u_i = tl.load(ui_ptr + off, mask=ok, other=0.0).to(acc)
        i, not_i = _sigmoid(u_i), _sigmoid(-u_i)
        cand = _tanh(tl.load(uin_ptr + off, mask=ok, other=0.0).to(acc))
        tl.store(bin_ptr + off, g * i * (1.0 - cand * cand), mask=ok)
        tl.store(bo_ptr + off, gy * th * o * _sigmoid(-uo), mask=ok)
        if TIED:
            tl.store(bi_ptr + off, (g * cand - a_bar) * i * not_i, mask=ok)
            f_t = 1.0 - i
        else:
            u_f = tl.load(uf_ptr + off, mask=ok, other=0.0).to(acc)
            f_t = _sigmoid(u_f)
            tl.store(bi_ptr + off, g * cand * i * not_i, mask=ok)
            tl.store(bf_ptr + off, a_bar * f_t * _sigmoid(-u_f), mask=ok)
        tl.store(h0bar_ptr + pid_b * s0_b + tile_n * s0_n, f_t * g, mask=first)
        carry = _last_row(g, BLOCK_T)
