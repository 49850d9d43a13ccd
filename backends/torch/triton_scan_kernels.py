"""The Triton kernels of the diagonal scan (imported only by ``linrec.backends.torch.triton_scan``, after the
interpreter switch is settled: ``@triton.jit`` reads ``TRITON_INTERPRET`` when these functions are defined).

Layout: every operand is viewed as ``(B, T, N)`` (``N = prod(*S)``) with explicit strides, complex tensors as
``torch.view_as_real`` (real/imaginary parts at offsets 0 and 1; strides in real elements). One program owns a tile
of ``BLOCK_N`` state elements of one batch row and walks the time axis in blocks of ``BLOCK_T`` steps: a block is
scanned in ``log2 BLOCK_T`` Hillis–Steele rounds (element ``(cut, a, b)``, see ``_block_scan``; a cut keeps NaN/inf
of the previous segment out, recurrence.md §11; ``tl.associative_scan`` would do the same on a GPU, but Triton's
interpreter runs a custom combine once per element, ~50x slower), then applied to the state carried in
registers from the previous block: ``h = where(cut*, b*, a* carry + b*)``. The carry is the block's last row
(kept broadcast over a tile's rows, see ``_last_row``).

The state is accumulated in the dtype of the output ``h`` (float32 for bf16/fp16/fp32 inputs, float64 for float64),
whatever the input dtype: inputs are upcast on load and never written back in low precision.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["scan_bwd_kernel", "scan_fwd_kernel"]


@triton.jit
def _last_row(x, BLOCK_T: tl.constexpr):
    """Every row of the ``(BLOCK_T, BLOCK_N)`` tile replaced by its last one (the carry, kept as a full tile).

    A gather rather than a reduction: no NaN from other rows can leak in, and no ``triton.language.standard``
    function (``tl.sum`` is one) is called: those are ``@triton.jit`` functions defined when ``triton.language`` is
    first imported, so compiled ones if that happened before ``TRITON_INTERPRET=1`` was set (torch imports triton on
    its own), and the interpreter cannot call them.
    """
    return tl.gather(x, tl.full(x.shape, BLOCK_T - 1, tl.int32), 0)


@triton.jit
def _block_scan(f, ar, ai, br, bi, carry_r, carry_i,
                A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_T: tl.constexpr, LOG_T: tl.constexpr):
    """Scan one ``(BLOCK_T, BLOCK_N)`` block in processing order and apply it to the carried state.

    Hillis–Steele over the rows: ``log2 BLOCK_T`` rounds, each combining every row with the one ``2^k`` before it
    (``tl.gather`` along the rows), ``(f, a, b) ∘ (f', a', b') = (f | f', where(f, a, a' a), where(f, b, a b' + b))``
    for the earlier ``(f', a', b')``: a cut row (``f``) keeps its own values, so nothing (not NaN) crosses it.
    Returns ``(h_re, h_im)`` (``h_im`` is ``h_re`` for a real state). ``f`` is int32 0/1; the carry is a full
    ``(BLOCK_T, BLOCK_N)`` tile whose rows are all the carried state.
    """
    rows = tl.broadcast_to(tl.arange(0, BLOCK_T)[:, None], f.shape)
    for k in tl.static_range(LOG_T):
        step: tl.constexpr = 1 << k
        before = tl.maximum(rows - step, 0)
        link = (rows >= step) & (f == 0)
        f_p = tl.gather(f, before, 0)
        a_p = tl.gather(ar, before, 0)
        b_p = tl.gather(br, before, 0)
        if A_COMPLEX:
            ai_p = tl.gather(ai, before, 0)
            bi_p = tl.gather(bi, before, 0)
            # b := a b' + b, a := a a' (complex)
            nbr = ar * b_p - ai * bi_p + br
            nbi = ar * bi_p + ai * b_p + bi
            nar = ar * a_p - ai * ai_p
            nai = ar * ai_p + ai * a_p
            br = tl.where(link, nbr, br)
            bi = tl.where(link, nbi, bi)
            ar = tl.where(link, nar, ar)
            ai = tl.where(link, nai, ai)
        elif COMPLEX:
            bi_p = tl.gather(bi, before, 0)
            bi = tl.where(link, ar * bi_p + bi, bi)
            br = tl.where(link, ar * b_p + br, br)
            ar = tl.where(link, ar * a_p, ar)
        else:
            br = tl.where(link, ar * b_p + br, br)
            ar = tl.where(link, ar * a_p, ar)
        f = tl.where(rows >= step, f | f_p, f)
    cut = f != 0
    if A_COMPLEX:
        hr = tl.where(cut, br, ar * carry_r - ai * carry_i + br)
        hi = tl.where(cut, bi, ar * carry_i + ai * carry_r + bi)
    elif COMPLEX:
        hr = tl.where(cut, br, ar * carry_r + br)
        hi = tl.where(cut, bi, ar * carry_i + bi)
    else:
        hr = tl.where(cut, br, ar * carry_r + br)
        hi = hr
    return hr, hi


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _mingru_gates(u_z, u_h, GATE: tl.constexpr):
    """minGRU's ``(a, b) = (σ(-u_z), σ(u_z) c(u_h))``, ``c`` the identity (``GATE == 1``) or ``g`` (``GATE == 2``:
    ``u + 1/2`` for ``u >= 0``, else ``σ(u)``; spec/mingru.md)."""
    c = u_h
    if GATE == 2:
        c = tl.where(u_h >= 0, u_h + 0.5, _sigmoid(u_h))
    return _sigmoid(-u_z), _sigmoid(u_z) * c


@triton.jit
def scan_fwd_kernel(
    a_ptr, b_ptr, h0_ptr, cut_ptr, h_ptr,
    T, N,
    sa_b, sa_t, sa_n, sb_b, sb_t, sb_n, s0_b, s0_n, sc_b, sc_t, sh_b, sh_t, sh_n,
    REVERSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_CUT: tl.constexpr,
    A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    LOG_T: tl.constexpr, GATE: tl.constexpr,
):
    """``h_t = a_t h_{t-1} + b_t`` for one (batch row, state tile); grid ``(B, cdiv(N, BLOCK_N))``.

    ``GATE`` 0: ``a``, ``b`` as given. 1, 2: minGRU with its gates fused in (real only): ``a_ptr``/``b_ptr`` are the
    halves ``u_z``/``u_h`` of the projection and ``(a, b)`` are made in registers (:func:`_mingru_gates`).
    """
    pid_b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = h_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_T)
    tile_n = n[None, :] + 0 * rows[:, None]  # (BLOCK_T, BLOCK_N): the carry is a tile of equal rows
    carry_r = tl.full([BLOCK_T, BLOCK_N], 0, acc)
    carry_i = tl.full([BLOCK_T, BLOCK_N], 0, acc)
    if HAS_H0:
        carry_r = tl.load(h0_ptr + pid_b * s0_b + tile_n * s0_n, mask=tile_n < N, other=0.0).to(acc)
        if COMPLEX:
            carry_i = tl.load(h0_ptr + pid_b * s0_b + tile_n * s0_n + 1, mask=tile_n < N, other=0.0).to(acc)
    for start in range(0, T, BLOCK_T):
        p = start + rows  # processing order
        t = (T - 1 - p) if REVERSE else p
        t_ok = p < T
        ok = t_ok[:, None] & n_ok[None, :]
        a_off = a_ptr + pid_b * sa_b + t[:, None] * sa_t + n[None, :] * sa_n
        b_off = b_ptr + pid_b * sb_b + t[:, None] * sb_t + n[None, :] * sb_n
        ar = tl.load(a_off, mask=ok, other=1.0).to(acc)
        ai = ar
        if A_COMPLEX:
            ai = tl.load(a_off + 1, mask=ok, other=0.0).to(acc)
        br = tl.load(b_off, mask=ok, other=0.0).to(acc)
        if GATE != 0:
            ar, br = _mingru_gates(ar, br, GATE)
        bi = br
        if COMPLEX:
            bi = tl.load(b_off + 1, mask=ok, other=0.0).to(acc)
        f = tl.full([BLOCK_T, BLOCK_N], 0, tl.int32)
        if HAS_CUT:
            c = tl.load(cut_ptr + pid_b * sc_b + t * sc_t, mask=t_ok, other=0).to(tl.int32)
            f = tl.broadcast_to(c[:, None], (BLOCK_T, BLOCK_N))
        hr, hi = _block_scan(f, ar, ai, br, bi, carry_r, carry_i, A_COMPLEX, COMPLEX, BLOCK_T, LOG_T)
        h_off = h_ptr + pid_b * sh_b + t[:, None] * sh_t + n[None, :] * sh_n
        tl.store(h_off, hr, mask=ok)
        if COMPLEX:
            tl.store(h_off + 1, hi, mask=ok)
        carry_r = _last_row(hr, BLOCK_T)
        if COMPLEX:
            carry_i = _last_row(hi, BLOCK_T)


@triton.jit
def scan_bwd_kernel(
    a_ptr, h_ptr, h0_ptr, cut_ptr, gh_ptr, gf_ptr, g_ptr, ga_ptr, uh_ptr, h0bar_ptr,
    T, N,
    sa_b, sa_t, sa_n, sh_b, sh_t, sh_n, sgh_b, sgh_t, sgh_n, s0_b, s0_n, sc_b, sc_t, sg_b, sg_t, sg_n, sf_b, sf_n,
    REVERSE: tl.constexpr, HAS_H0: tl.constexpr, HAS_CUT: tl.constexpr,
    A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    LOG_T: tl.constexpr, GATE: tl.constexpr,
):
    """The VJP of :func:`scan_fwd_kernel` (PyTorch's convention ``grad = conj(J)ᵀ grad_out``), one pass.

    ``g_t = ḣ_t + conj(a_{t+1}) g_{t+1}`` (no link across a cut at ``t+1``; ``g`` past the last step is the final
    state's cotangent ``ḟ``): the reverse scan, written to ``g`` (= ``b̄``). In the same pass
    ``ā_t = g_t conj(h_{t-1})`` (``h_{-1} = h0`` or 0; 0 where the link into ``t`` is cut), written to ``ga``
    per state element (``ga`` is real when ``a`` is: the real part). ``t+1``/``t-1`` are mirrored for ``REVERSE``.
    ``g``, ``ga`` share the strides ``sg_*``; ``gh`` is ḣ.

    ``GATE`` 1, 2 (minGRU, real, no cuts): ``a_ptr``/``uh_ptr`` are ``u_z``/``u_h`` (strides ``sa_*``), and the
    pass writes the projection's cotangent instead: ``ū_z = σ(u_z) σ(-u_z) (b̄ c - ā)`` to ``g`` and
    ``ū_h = b̄ σ(u_z) c'`` to ``ga``, and ``h̄0 = a_first b̄_first`` to ``h0bar`` (strides ``s0_*``).
    """
    pid_b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = g_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_T)
    tile_n = n[None, :] + 0 * rows[:, None]
    carry_r = tl.load(gf_ptr + pid_b * sf_b + tile_n * sf_n, mask=tile_n < N, other=0.0).to(acc)
    carry_i = carry_r
    if COMPLEX:
        carry_i = tl.load(gf_ptr + pid_b * sf_b + tile_n * sf_n + 1, mask=tile_n < N, other=0.0).to(acc)
    for start in range(0, T, BLOCK_T):
        p = start + rows  # processing order of the backward pass: the forward's, mirrored
        t = p if REVERSE else (T - 1 - p)
        t_ok = p < T
        ok = t_ok[:, None] & n_ok[None, :]
        nxt = (t - 1) if REVERSE else (t + 1)  # the forward's next step, whose decay links g_t to g_nxt
        prv = (t + 1) if REVERSE else (t - 1)
        nxt_ok = t_ok & (nxt >= 0) & (nxt < T)
        prv_ok = t_ok & (prv >= 0) & (prv < T)
        a_off = a_ptr + pid_b * sa_b + nxt[:, None] * sa_t + n[None, :] * sa_n
        nok = nxt_ok[:, None] & n_ok[None, :]
        ar = tl.load(a_off, mask=nok, other=1.0).to(acc)
        if GATE != 0:
            ar = tl.where(nok, _sigmoid(-ar), 1.0)
        ai = ar
        if A_COMPLEX:
            ai = -tl.load(a_off + 1, mask=nok, other=0.0).to(acc)  # conj(a)
        g_off = gh_ptr + pid_b * sgh_b + t[:, None] * sgh_t + n[None, :] * sgh_n
        br = tl.load(g_off, mask=ok, other=0.0).to(acc)
        bi = br
        if COMPLEX:
            bi = tl.load(g_off + 1, mask=ok, other=0.0).to(acc)
        f = tl.full([BLOCK_T, BLOCK_N], 0, tl.int32)
        cut_here = tl.full([BLOCK_T], 0, tl.int1)
        if HAS_CUT:
            c_next = tl.load(cut_ptr + pid_b * sc_b + nxt * sc_t, mask=nxt_ok, other=0).to(tl.int32)
            f = tl.broadcast_to(c_next[:, None], (BLOCK_T, BLOCK_N))
            cut_here = tl.load(cut_ptr + pid_b * sc_b + t * sc_t, mask=t_ok, other=0) != 0
        gr, gi = _block_scan(f, ar, ai, br, bi, carry_r, carry_i, A_COMPLEX, COMPLEX, BLOCK_T, LOG_T)
        out = pid_b * sg_b + t[:, None] * sg_t + n[None, :] * sg_n
        if GATE == 0:
            tl.store(g_ptr + out, gr, mask=ok)
        if COMPLEX:
            tl.store(g_ptr + out + 1, gi, mask=ok)
        # the state before each step: h[prv], or h0 (zeros) at the first step
        hp_off = h_ptr + pid_b * sh_b + prv[:, None] * sh_t + n[None, :] * sh_n
        pok = prv_ok[:, None] & n_ok[None, :]
        hr = tl.load(hp_off, mask=pok, other=0.0).to(acc)
        hi = hr
        if COMPLEX:
            hi = tl.load(hp_off + 1, mask=pok, other=0.0).to(acc)
        if HAS_H0:
            first = t_ok & ~prv_ok
            h0r = tl.load(h0_ptr + pid_b * s0_b + n * s0_n, mask=n_ok, other=0.0).to(acc)
            hr = tl.where(first[:, None], h0r[None, :], hr)
            if COMPLEX:
                h0i = tl.load(h0_ptr + pid_b * s0_b + n * s0_n + 1, mask=n_ok, other=0.0).to(acc)
                hi = tl.where(first[:, None], h0i[None, :], hi)
        keep = ~cut_here[:, None]
        if GATE != 0:
            u_off = pid_b * sa_b + t[:, None] * sa_t + n[None, :] * sa_n
            uz = tl.load(a_ptr + u_off, mask=ok, other=0.0).to(acc)
            uh = tl.load(uh_ptr + u_off, mask=ok, other=0.0).to(acc)
            s, a_t = _sigmoid(uz), _sigmoid(-uz)
            c = uh
            dc = tl.full([BLOCK_T, BLOCK_N], 1.0, acc)
            if GATE == 2:
                s_h = _sigmoid(uh)
                c = tl.where(uh >= 0, uh + 0.5, s_h)
                dc = tl.where(uh >= 0, 1.0, s_h * _sigmoid(-uh))
            tl.store(g_ptr + out, s * a_t * (gr * c - gr * hr), mask=ok)
            tl.store(ga_ptr + out, gr * s * dc, mask=ok)
            if HAS_H0:
                at_first = first[:, None] & n_ok[None, :]
                tl.store(h0bar_ptr + pid_b * s0_b + tile_n * s0_n, a_t * gr, mask=at_first)
        elif COMPLEX:
            # g conj(h_prev) = (gr hr + gi hi) + i (gi hr - gr hi)
            tl.store(ga_ptr + out, tl.where(keep, gr * hr + gi * hi, 0.0), mask=ok)
            if A_COMPLEX:
                tl.store(ga_ptr + out + 1, tl.where(keep, gi * hr - gr * hi, 0.0), mask=ok)
        else:
            tl.store(ga_ptr + out, tl.where(keep, gr * hr, 0.0), mask=ok)
        carry_r = _last_row(gr, BLOCK_T)
        if COMPLEX:
            carry_i = _last_row(gi, BLOCK_T)
