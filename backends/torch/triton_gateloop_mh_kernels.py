"""The Triton kernels of the multi-head outer-product GateLoop (imported only by
``linrec.backends.torch.triton_gateloop_mh``, after the interpreter switch is settled: ``@triton.jit`` reads
``TRITON_INTERPRET`` when these functions are defined).

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` key rows, ``V`` value columns, ``C`` chunk steps
(``BLOCK_C ≥ C`` rows in registers, the rows past ``C`` masked).

The chunked form (the math of ``linrec.backends.jax.pallas_gateloop_mh``, with ``tl.dot`` for the matrix products).
One program per ``(batch row, head, tile of BLOCK_V value columns)`` carries its ``(K, BLOCK_V)`` state tile
``S`` (real/imaginary planes for a complex state) across the chunks; per chunk of ``C`` steps, from ``S₀`` the
state at the chunk start:

- decays ``W[t, s] = a_t ⋯ a_{s+1}`` (``s ≤ t``, per key row: a ``(C, C, K)`` tile) and ``P_t = a_t ⋯ a_0``, built
  as running products over the chunk's steps — never a quotient of decays or a log, so a decay of exactly 0 or an
  underflowing product is exact;
- intra-chunk, attention-like: scores ``sc[t, s] = Σ_k q_t[k] W[t,s,k] k_s[k]`` (``(C, C)``), ``o = sc · v``;
- inter-chunk: ``o += (P ⊙ q) · S₀``;
- the state at the chunk end: ``S = diag(P_{C-1}) S₀ + (W[C-1] ⊙ k)ᵀ · v``.

``k ⊗ v`` and the per-step states never leave the registers: the forward pass writes ``o``, the final state and
the state at the start of every chunk (``(B, H, ⌈T/C⌉, K, V)``, the checkpoints). The backward kernel walks the
chunks in reverse carrying ``Ḡ`` (the cotangent of the chunk-end state), rebuilds ``W``, ``P`` and the scores
from ``q, k, a`` and the chunk's checkpoint, and forms ``q̄, k̄, v̄`` with the same products; ``ā`` is pulled back
through the running products row by row (``C`` steps, ``cotangent ← conj(a_t) cotangent``), again without
division.

Steps past ``T`` (the tail of the last chunk) and rows past ``C`` are identity steps: ``a = 1``,
``q = k = v = 0`` by the masked loads. Tiles are powers of two of at least 16 (``tl.dot``'s minimum on a GPU).

Sums over an axis are ``tl.reduce(x, axis, tl.standard._sum_combine)``: Triton's interpreter maps that combine
function to ``np.sum``, and the reduction is a core builtin, not a ``triton.language.standard`` function
(``tl.sum`` is one: defined compiled when triton was imported before ``TRITON_INTERPRET=1`` was set, and the
interpreter cannot call it; see ``triton_scan_kernels._last_row``). For the same reason zeros are ``tl.full(shape,
0.0, dtype)``, never ``tl.zeros`` (a ``standard`` function too; ``tests/test_triton.py`` checks every kernel
module). Dots use ``input_precision="ieee"`` (no TF32: the float32 tolerances of the spec are those of float32
arithmetic).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gateloop_bwd_kernel", "gateloop_fwd_kernel"]


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _dot(x, y):
    return tl.dot(x, y, input_precision="ieee")


@triton.jit
def _decays(a_base, sa_t, sa_k, t0, T, KA, A_COMPLEX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
            BLOCK_A: tl.constexpr, acc: tl.constexpr):
    """Real/imaginary planes of ``W: (BLOCK_C, BLOCK_C, BLOCK_A)`` (``W[t, s] = a_t ⋯ a_{s+1}``, 1 on the
    diagonal, 0 above it), ``P: (BLOCK_C, BLOCK_A)`` (``P_t = a_t ⋯ a_0``), ``L: (BLOCK_C, BLOCK_A)``
    (``L_s = W[C-1, s]``) and ``P_{C-1}: (BLOCK_A,)`` of the chunk starting at step ``t0``; each is a running
    product over the chunk's steps ``r`` (a factor ``a_r`` where ``s < r ≤ t``), no division. ``BLOCK_A`` is
    ``BLOCK_K`` for a gate per key row (``KA = K`` of them), 1 for a gate per head (``KA = 1``): the trailing axis
    then broadcasts over the key rows."""
    jj = tl.arange(0, BLOCK_C)
    kk = tl.arange(0, BLOCK_A)
    tt = jj[:, None, None]
    ss = jj[None, :, None]
    w_r = tl.where(ss <= tt, 1.0, 0.0).to(acc) + tl.full([BLOCK_C, BLOCK_C, BLOCK_A], 0.0, acc)
    w_i = tl.full([BLOCK_C, BLOCK_C, BLOCK_A], 0.0, acc)
    p_r = tl.full([BLOCK_C, BLOCK_A], 1.0, acc)
    p_i = tl.full([BLOCK_C, BLOCK_A], 0.0, acc)
    l_r = tl.full([BLOCK_C, BLOCK_A], 1.0, acc)
    l_i = tl.full([BLOCK_C, BLOCK_A], 0.0, acc)
    e_r = tl.full([BLOCK_A], 1.0, acc)
    e_i = tl.full([BLOCK_A], 0.0, acc)
    for r in range(0, CHUNK):
        km = (kk < KA) & (kk * 0 + t0 + r < T)
        ar = tl.load(a_base + (t0 + r) * sa_t + kk * sa_k, mask=km, other=1.0).to(acc)
        m3 = (ss < r) & (tt >= r)
        m2 = jj[:, None] >= r  # P_t takes a_r for r ≤ t
        ml = jj[:, None] < r  # L_s takes a_r for s < r
        if A_COMPLEX:
            ai = tl.load(a_base + (t0 + r) * sa_t + kk * sa_k + 1, mask=km, other=0.0).to(acc)
            a3r = ar[None, None, :]
            a3i = ai[None, None, :]
            nw_r = tl.where(m3, a3r * w_r - a3i * w_i, w_r)
            w_i = tl.where(m3, a3r * w_i + a3i * w_r, w_i)
            w_r = nw_r
            np_r = tl.where(m2, ar[None, :] * p_r - ai[None, :] * p_i, p_r)
            p_i = tl.where(m2, ar[None, :] * p_i + ai[None, :] * p_r, p_i)
            p_r = np_r
            nl_r = tl.where(ml, ar[None, :] * l_r - ai[None, :] * l_i, l_r)
            l_i = tl.where(ml, ar[None, :] * l_i + ai[None, :] * l_r, l_i)
            l_r = nl_r
            ne_r = ar * e_r - ai * e_i
            e_i = ar * e_i + ai * e_r
            e_r = ne_r
        else:
            w_r = tl.where(m3, ar[None, None, :] * w_r, w_r)
            p_r = tl.where(m2, ar[None, :] * p_r, p_r)
            l_r = tl.where(ml, ar[None, :] * l_r, l_r)
            e_r = ar * e_r
    return w_r, w_i, p_r, p_i, l_r, l_i, e_r, e_i


@triton.jit
def _scores(q, k, w, HEAD_GATE: tl.constexpr):
    """``sc[t, s] = Σ_k q_t[k] W[t,s,k] k_s[k]`` (one plane of ``W``): ``(q · kᵀ) ⊙ W`` for a gate per head (one
    ``tl.dot``), a ``(C, C, K)`` product summed over ``K`` for a gate per key row (the decay differs per row and is
    never divided out of ``q`` and ``k``)."""
    if HEAD_GATE:
        sc = _dot(q, tl.trans(k)) * _sum(w, 2)
    else:
        sc = _sum(q[:, None, :] * w * k[None, :, :], 2)
    return sc


@triton.jit
def gateloop_fwd_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, s0_ptr, o_ptr, sT_ptr, ck_ptr,
    T, N_CHUNKS, K, V,
    sq_b, sq_t, sq_h, sq_k, sk_b, sk_t, sk_h, sk_k, sv_b, sv_t, sv_h, sv_v, sa_b, sa_t, sa_h, sa_k,
    ss_b, ss_h, ss_k, ss_v, so_b, so_t, so_h, so_v, sc_b, sc_h, sc_c, sc_k, sc_v,
    HAS_S0: tl.constexpr, A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr, HEAD_GATE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """``o_t = S_tᵀ q_t``, ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ`` for one (batch row, head, column tile) in the
    chunked form; grid ``(B, H, cdiv(V, BLOCK_V))`` (the columns of ``S`` are independent).

    ``a`` is read per key row with stride ``sa_k`` (0 for one gate per head). ``s0``/``sT`` share the strides
    ``ss_*``; complex operands are real views with the real/imaginary parts at offsets 0 and 1. ``ck`` gets the
    state at the start of every chunk.
    """
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    acc = sT_ptr.dtype.element_ty
    BLOCK_A: tl.constexpr = 1 if HEAD_GATE else BLOCK_K  # gate width: the decays broadcast over K per head
    KA = 1 if HEAD_GATE else K
    jj = tl.arange(0, BLOCK_C)
    kk = tl.arange(0, BLOCK_K)
    vv = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    k_ok = kk < K
    v_ok = vv < V
    kv_ok = k_ok[:, None] & v_ok[None, :]
    s_off = pid_b * ss_b + pid_h * ss_h + kk[:, None] * ss_k + vv[None, :] * ss_v
    s_r = tl.full([BLOCK_K, BLOCK_V], 0.0, acc)
    s_i = tl.full([BLOCK_K, BLOCK_V], 0.0, acc)
    if HAS_S0:
        s_r = tl.load(s0_ptr + s_off, mask=kv_ok, other=0.0).to(acc)
        if COMPLEX:
            s_i = tl.load(s0_ptr + s_off + 1, mask=kv_ok, other=0.0).to(acc)
    a_base = a_ptr + pid_b * sa_b + pid_h * sa_h
    for c in range(0, N_CHUNKS):
        c_off = pid_b * sc_b + pid_h * sc_h + c * sc_c + kk[:, None] * sc_k + vv[None, :] * sc_v
        tl.store(ck_ptr + c_off, s_r, mask=kv_ok)
        if COMPLEX:
            tl.store(ck_ptr + c_off + 1, s_i, mask=kv_ok)
        t0 = c * CHUNK
        tj = t0 + jj
        row_ok = (jj < CHUNK) & (tj < T)
        ck_m = row_ok[:, None] & k_ok[None, :]
        cv_m = row_ok[:, None] & v_ok[None, :]
        q = tl.load(q_ptr + pid_b * sq_b + tj[:, None] * sq_t + pid_h * sq_h + kk[None, :] * sq_k, mask=ck_m,
                    other=0.0).to(acc)
        k = tl.load(k_ptr + pid_b * sk_b + tj[:, None] * sk_t + pid_h * sk_h + kk[None, :] * sk_k, mask=ck_m,
                    other=0.0).to(acc)
        v = tl.load(v_ptr + pid_b * sv_b + tj[:, None] * sv_t + pid_h * sv_h + vv[None, :] * sv_v, mask=cv_m,
                    other=0.0).to(acc)
        w_r, w_i, p_r, p_i, l_r, l_i, e_r, e_i = _decays(a_base, sa_t, sa_k, t0, T, KA, A_COMPLEX, CHUNK, BLOCK_C,
                                                         BLOCK_A, acc)
        # intra-chunk (scores · v) plus inter-chunk ((P ⊙ q) · S₀)
        o_off = o_ptr + pid_b * so_b + tj[:, None] * so_t + pid_h * so_h + vv[None, :] * so_v
        pq_r = p_r * q
        o_r = _dot(_scores(q, k, w_r, HEAD_GATE), v) + _dot(pq_r, s_r)
        if A_COMPLEX:
            pq_i = p_i * q
            o_r = o_r - _dot(pq_i, s_i)
            o_i = _dot(_scores(q, k, w_i, HEAD_GATE), v) + _dot(pq_r, s_i) + _dot(pq_i, s_r)
            tl.store(o_off + 1, o_i, mask=cv_m)
        elif COMPLEX:
            tl.store(o_off + 1, _dot(pq_r, s_i), mask=cv_m)
        tl.store(o_off, o_r, mask=cv_m)
        # the chunk-end state: diag(P_{C-1}) S₀ + (L ⊙ k)ᵀ v
        if A_COMPLEX:
            n_r = e_r[:, None] * s_r - e_i[:, None] * s_i + _dot(tl.trans(l_r * k), v)
            s_i = e_r[:, None] * s_i + e_i[:, None] * s_r + _dot(tl.trans(l_i * k), v)
            s_r = n_r
        else:
            s_r = e_r[:, None] * s_r + _dot(tl.trans(l_r * k), v)
            if COMPLEX:
                s_i = e_r[:, None] * s_i
    tl.store(sT_ptr + s_off, s_r, mask=kv_ok)
    if COMPLEX:
        tl.store(sT_ptr + s_off + 1, s_i, mask=kv_ok)


@triton.jit
def gateloop_bwd_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, ck_ptr, go_ptr, gs_ptr,
    gq_ptr, gk_ptr, gv_ptr, ga_ptr, gs0_ptr,
    T, N_CHUNKS, K, V,
    sq_b, sq_t, sq_h, sq_k, sk_b, sk_t, sk_h, sk_k, sv_b, sv_t, sv_h, sv_v, sa_b, sa_t, sa_h, sa_k,
    ss_b, ss_h, ss_k, ss_v, so_b, so_t, so_h, so_v, sc_b, sc_h, sc_c, sc_k, sc_v,
    sp_w, sp_b, sp_t, sp_h, sp_k, sga_w, sga_b, sga_t, sga_h, sga_k,
    A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr, HEAD_GATE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """The VJP of :func:`gateloop_fwd_kernel` in PyTorch's convention (``grad = conj(J)ᵀ grad_out``); grid
    ``(B, H, W)``, ``W = cdiv(V, BLOCK_V)`` column tiles.

    Per chunk, in reverse, with ``Ḡ`` the cotangent of the chunk-end state (first ``ḡS_T``), ``S₀`` its
    checkpoint and ``ō`` the output cotangent: ``sc̄ = mask(ō vᵀ)``; ``v̄ = Re(scᴴ ō) + Re((L ⊙ k)ᴴ Ḡ)``;
    ``Ū = ō S₀ᴴ``; ``q̄ = Σ_s Re(sc̄ conj W) k + Re(conj(P) Ū)``; ``k̄ = Σ_t Re(sc̄ conj W) q + Re(conj(L) (v Ḡᴴ)ᴴ)``;
    ``W̄ = sc̄ q k`` (+ ``k ⊙ v Ḡᵀ`` on row ``C-1``) and ``P̄ = q Ū`` (+ ``Σ_v conj(S₀) Ḡ`` on row ``C-1``), pulled
    back row by row to ``ā_t = Σ_s conj(W[t-1, s]) W̄row_t + conj(P_{t-1}) P̄row_t`` (the rows' cotangents flow to
    row ``t-1`` times ``conj(a_t)``); then ``Ḡ ← (P ⊙ q)ᴴ ō + conj(P_{C-1}) Ḡ``. What is left after the first chunk
    is the cotangent of the initial state. ``q̄``, ``k̄``, ``ā`` sum over ``V``: each column tile writes its partial
    sums (``(W, B, T, H, K)``, strides ``sp_*``; ``sga_*`` for ``ā``), added up by the caller; ``v̄`` has ``v``'s
    strides; ``go`` has ``o``'s strides ``so_*``; ``gs``/``gs0`` the state strides ``ss_*``.
    """
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_w = tl.program_id(2)
    acc = gs0_ptr.dtype.element_ty
    BLOCK_A: tl.constexpr = 1 if HEAD_GATE else BLOCK_K  # gate width: the decays broadcast over K per head
    KA = 1 if HEAD_GATE else K
    jj = tl.arange(0, BLOCK_C)
    ka = tl.arange(0, BLOCK_A)
    kk = tl.arange(0, BLOCK_K)
    vv = pid_w * BLOCK_V + tl.arange(0, BLOCK_V)
    k_ok = kk < K
    v_ok = vv < V
    kv_ok = k_ok[:, None] & v_ok[None, :]
    s_off = pid_b * ss_b + pid_h * ss_h + kk[:, None] * ss_k + vv[None, :] * ss_v
    g_r = tl.load(gs_ptr + s_off, mask=kv_ok, other=0.0).to(acc)
    g_i = tl.full([BLOCK_K, BLOCK_V], 0.0, acc)
    if COMPLEX:
        g_i = tl.load(gs_ptr + s_off + 1, mask=kv_ok, other=0.0).to(acc)
    a_base = a_ptr + pid_b * sa_b + pid_h * sa_h
    causal = jj[:, None] >= jj[None, :]
    for cc in range(0, N_CHUNKS):
        c = N_CHUNKS - 1 - cc
        t0 = c * CHUNK
        tj = t0 + jj
        row_ok = (jj < CHUNK) & (tj < T)
        ck_m = row_ok[:, None] & k_ok[None, :]
        cv_m = row_ok[:, None] & v_ok[None, :]
        c_off = pid_b * sc_b + pid_h * sc_h + c * sc_c + kk[:, None] * sc_k + vv[None, :] * sc_v
        s_r = tl.load(ck_ptr + c_off, mask=kv_ok, other=0.0).to(acc)  # S₀ of this chunk
        s_i = tl.full([BLOCK_K, BLOCK_V], 0.0, acc)
        if COMPLEX:
            s_i = tl.load(ck_ptr + c_off + 1, mask=kv_ok, other=0.0).to(acc)
        q = tl.load(q_ptr + pid_b * sq_b + tj[:, None] * sq_t + pid_h * sq_h + kk[None, :] * sq_k, mask=ck_m,
                    other=0.0).to(acc)
        k = tl.load(k_ptr + pid_b * sk_b + tj[:, None] * sk_t + pid_h * sk_h + kk[None, :] * sk_k, mask=ck_m,
                    other=0.0).to(acc)
        v_off = pid_b * sv_b + tj[:, None] * sv_t + pid_h * sv_h + vv[None, :] * sv_v
        v = tl.load(v_ptr + v_off, mask=cv_m, other=0.0).to(acc)
        o_off = go_ptr + pid_b * so_b + tj[:, None] * so_t + pid_h * so_h + vv[None, :] * so_v
        go_r = tl.load(o_off, mask=cv_m, other=0.0).to(acc)
        go_i = tl.full([BLOCK_C, BLOCK_V], 0.0, acc)
        if COMPLEX:
            go_i = tl.load(o_off + 1, mask=cv_m, other=0.0).to(acc)
        w_r, w_i, p_r, p_i, l_r, l_i, e_r, e_i = _decays(a_base, sa_t, sa_k, t0, T, KA, A_COMPLEX, CHUNK, BLOCK_C,
                                                         BLOCK_A, acc)
        vt = tl.trans(v)
        scb_r = tl.where(causal, _dot(go_r, vt), 0.0)
        scb_i = tl.where(causal, _dot(go_i, vt), 0.0)
        # v̄ = Re(scᴴ ō) + Re((L ⊙ k)ᴴ Ḡ)
        gv = _dot(tl.trans(_scores(q, k, w_r, HEAD_GATE)), go_r) + _dot(l_r * k, g_r)
        if A_COMPLEX:
            gv += _dot(tl.trans(_scores(q, k, w_i, HEAD_GATE)), go_i) + _dot(l_i * k, g_i)
        tl.store(gv_ptr + v_off, gv, mask=cv_m)
        # Ū = ō S₀ᴴ (C, K); vG = v Ḡᵀ (C, K)
        u_r = _dot(go_r, tl.trans(s_r)) + _dot(go_i, tl.trans(s_i))
        u_i = _dot(go_i, tl.trans(s_r)) - _dot(go_r, tl.trans(s_i))
        vg_r = _dot(v, tl.trans(g_r))
        vg_i = _dot(v, tl.trans(g_i))
        rb = scb_r[:, :, None] * w_r  # Re(sc̄ conj W)
        if A_COMPLEX:
            rb += scb_i[:, :, None] * w_i
        if HEAD_GATE:  # (C, C, 1): the intra-chunk cotangents are two more dots
            rb2 = _sum(rb, 2)
            gq = _dot(rb2, k) + p_r * u_r
            gk = _dot(tl.trans(rb2), q) + l_r * vg_r
        else:
            gq = _sum(rb * k[None, :, :], 1) + p_r * u_r
            gk = _sum(rb * q[:, None, :], 0) + l_r * vg_r
        if A_COMPLEX:
            gq += p_i * u_i
            gk += l_i * vg_i
        p_off = pid_w * sp_w + pid_b * sp_b + tj[:, None] * sp_t + pid_h * sp_h + kk[None, :] * sp_k
        tl.store(gq_ptr + p_off, gq, mask=ck_m)
        tl.store(gk_ptr + p_off, gk, mask=ck_m)
        # ā: the cotangents of W's and P's rows, pulled back through the running products from row C-1 down;
        # row C-1 also gets the chunk-end state's terms (k ⊙ v Ḡᵀ for W, Σ_v conj(S₀) Ḡ for P)
        cw_r = k * vg_r
        cw_i = k * vg_i
        cp_r = _sum(s_r * g_r + s_i * g_i, 1)
        cp_i = _sum(s_r * g_i - s_i * g_r, 1)
        pu_r = q * u_r  # P̄ = q Ū
        pu_i = q * u_i
        if HEAD_GATE:  # one gate per head: the per-row cotangents summed over K, W̄ = sc̄ ⊙ (q kᵀ) by a dot
            qk = _dot(q, tl.trans(k))
            wq_r = scb_r * qk
            wq_i = scb_i * qk
            cw_r = _sum(cw_r, 1)[:, None]
            cw_i = _sum(cw_i, 1)[:, None]
            cp_r = _sum(cp_r[:, None], 0)
            cp_i = _sum(cp_i[:, None], 0)
            pu_r = _sum(pu_r, 1)[:, None]
            pu_i = _sum(pu_i, 1)[:, None]
        ga_base = ga_ptr + pid_w * sga_w + pid_b * sga_b + pid_h * sga_h + ka * sga_k
        for i in range(0, CHUNK):
            t = CHUNK - 1 - i
            at_row = jj[:, None] == t
            prev_row = jj[:, None] == t - 1
            below = jj[:, None] < t  # W[t, s] depends on a_t only for s < t (the diagonal is the constant 1)
            if HEAD_GATE:
                wb_r = tl.where(below, _sum(tl.where(at_row, wq_r, 0.0), 0)[:, None] + cw_r, 0.0)
            else:
                q_t = _sum(tl.where(at_row, q, 0.0), 0)
                wb_r = tl.where(below, _sum(tl.where(at_row, scb_r, 0.0), 0)[:, None] * q_t[None, :] * k + cw_r,
                                0.0)
            pb_r = _sum(tl.where(at_row, pu_r, 0.0), 0) + cp_r
            wp_r = _sum(tl.where(prev_row[:, :, None], w_r, 0.0), 0)  # W[t-1, ·] (0 for t = 0)
            pp_r = _sum(tl.where(prev_row, p_r, 0.0), 0) + tl.where(t == 0, 1.0, 0.0)  # P_{t-1} (P_{-1} = 1)
            ab_r = _sum(wp_r * wb_r, 0) + pp_r * pb_r
            tg = t0 + t
            km = (ka < KA) & (ka * 0 + tg < T)
            a_off = a_base + tg * sa_t + ka * sa_k
            ar = tl.load(a_off, mask=km, other=1.0).to(acc)
            if A_COMPLEX:
                ai = tl.load(a_off + 1, mask=km, other=0.0).to(acc)
                if HEAD_GATE:
                    wb_i = tl.where(below, _sum(tl.where(at_row, wq_i, 0.0), 0)[:, None] + cw_i, 0.0)
                else:
                    wb_i = tl.where(below, _sum(tl.where(at_row, scb_i, 0.0), 0)[:, None] * q_t[None, :] * k + cw_i,
                                    0.0)
                pb_i = _sum(tl.where(at_row, pu_i, 0.0), 0) + cp_i
                wp_i = _sum(tl.where(prev_row[:, :, None], w_i, 0.0), 0)
                pp_i = _sum(tl.where(prev_row, p_i, 0.0), 0)
                ab_r += _sum(wp_i * wb_i, 0) + pp_i * pb_i
                ab_i = _sum(wp_r * wb_i - wp_i * wb_r, 0) + pp_r * pb_i - pp_i * pb_r
                tl.store(ga_base + tg * sga_t + 1, ab_i, mask=km)
                cw_r = ar[None, :] * wb_r + ai[None, :] * wb_i  # ← conj(a_t) · cotangent
                cw_i = ar[None, :] * wb_i - ai[None, :] * wb_r
                n_r = ar * pb_r + ai * pb_i
                cp_i = ar * pb_i - ai * pb_r
                cp_r = n_r
            else:
                cw_r = ar[None, :] * wb_r
                cp_r = ar * pb_r
            tl.store(ga_base + tg * sga_t, ab_r, mask=km)
        # Ḡ for the previous chunk: (P ⊙ q)ᴴ ō + conj(P_{C-1}) Ḡ
        pq_r = tl.trans(p_r * q)
        n_r = _dot(pq_r, go_r) + e_r[:, None] * g_r
        n_i = _dot(pq_r, go_i) + e_r[:, None] * g_i
        if A_COMPLEX:
            pq_i = tl.trans(p_i * q)
            n_r += _dot(pq_i, go_i) + e_i[:, None] * g_i
            n_i += -_dot(pq_i, go_r) - e_i[:, None] * g_r
        g_r = n_r
        g_i = n_i
    tl.store(gs0_ptr + s_off, g_r, mask=kv_ok)
    if COMPLEX:
        tl.store(gs0_ptr + s_off + 1, g_i, mask=kv_ok)
