"""The Triton kernels of the multi-head outer-product GateLoop (imported only by
``linrec.backends.torch.triton_gateloop_mh``, after the interpreter switch is settled: ``@triton.jit`` reads
``TRITON_INTERPRET`` when these functions are defined).

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` key rows, ``V`` value columns, ``C`` chunk steps.

One program per ``(batch row, head, tile of BLOCK_V value columns)`` holds its ``(K, BLOCK_V)`` state tile in
registers (real/imaginary parts as two
tiles for a complex gate) and walks ``T`` in chunks of ``C`` steps; inside a chunk each step is the in-register
update ``S ← diag(a_t) S + k_t v_tᵀ`` and the read-out ``o_t = S_tᵀ q_t``: ``k ⊗ v`` and the states are never
written to memory. The forward pass writes the state at the start of every chunk (``(B, H, ⌈T/C⌉, K, V)``, the
checkpoints); the backward pass walks the chunks in reverse, recomputes one chunk's states from its checkpoint into
a per-program scratch of ``C`` states, then runs the adjoint recurrence ``G ← conj(a_t) G`` backwards through it.
No division by a decay anywhere (a tiny or zero decay is exact).

Steps past ``T`` (the tail of the last chunk) are identity steps: ``a = 1``, ``k = q = 0`` by the masked loads.

Sums over ``K`` or ``V`` are ``tl.reduce(x, axis, tl.standard._sum_combine)``: Triton's interpreter maps that
combine function to ``np.sum``, and the reduction is a core builtin, not a ``triton.language.standard`` function
(``tl.sum`` is one: defined compiled when triton was imported before ``TRITON_INTERPRET=1`` was set, and the
interpreter cannot call it; see ``triton_scan_kernels._last_row``).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gateloop_bwd_kernel", "gateloop_fwd_kernel"]


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def gateloop_fwd_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, s0_ptr, o_ptr, sT_ptr, ck_ptr,
    T, N_CHUNKS, K, V,
    sq_b, sq_t, sq_h, sq_k, sk_b, sk_t, sk_h, sk_k, sv_b, sv_t, sv_h, sv_v, sa_b, sa_t, sa_h, sa_k,
    ss_b, ss_h, ss_k, ss_v, so_b, so_t, so_h, so_v, sc_b, sc_h, sc_c, sc_k, sc_v,
    HAS_S0: tl.constexpr, A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """``o_t = S_tᵀ q_t``, ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ`` for one (batch row, head, column tile); grid
    ``(B, H, cdiv(V, BLOCK_V))`` (the columns of ``S`` are independent).

    ``a`` is read per key row with stride ``sa_k`` (0 for one gate per head). ``s0``/``sT`` share the strides
    ``ss_*``; complex operands are real views with the real/imaginary parts at offsets 0 and 1. ``ck`` gets the
    state at the start of every chunk.
    """
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    acc = sT_ptr.dtype.element_ty
    kk = tl.arange(0, BLOCK_K)
    vv = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    k_ok = kk < K
    v_ok = vv < V
    kv_ok = k_ok[:, None] & v_ok[None, :]
    s_off = pid_b * ss_b + pid_h * ss_h + kk[:, None] * ss_k + vv[None, :] * ss_v
    s_r = tl.full([BLOCK_K, BLOCK_V], 0, acc)
    s_i = tl.full([BLOCK_K, BLOCK_V], 0, acc)
    if HAS_S0:
        s_r = tl.load(s0_ptr + s_off, mask=kv_ok, other=0.0).to(acc)
        if COMPLEX:
            s_i = tl.load(s0_ptr + s_off + 1, mask=kv_ok, other=0.0).to(acc)
    for c in range(0, N_CHUNKS):
        c_off = pid_b * sc_b + pid_h * sc_h + c * sc_c + kk[:, None] * sc_k + vv[None, :] * sc_v
        tl.store(ck_ptr + c_off, s_r, mask=kv_ok)
        if COMPLEX:
            tl.store(ck_ptr + c_off + 1, s_i, mask=kv_ok)
        for j in range(0, CHUNK):
            t = c * CHUNK + j
            km = k_ok & (kk * 0 + t < T)
            vm = v_ok & (vv * 0 + t < T)
            q = tl.load(q_ptr + pid_b * sq_b + t * sq_t + pid_h * sq_h + kk * sq_k, mask=km, other=0.0).to(acc)
            k = tl.load(k_ptr + pid_b * sk_b + t * sk_t + pid_h * sk_h + kk * sk_k, mask=km, other=0.0).to(acc)
            v = tl.load(v_ptr + pid_b * sv_b + t * sv_t + pid_h * sv_h + vv * sv_v, mask=vm, other=0.0).to(acc)
            a_off = a_ptr + pid_b * sa_b + t * sa_t + pid_h * sa_h + kk * sa_k
            ar = tl.load(a_off, mask=km, other=1.0).to(acc)
            kv = k[:, None] * v[None, :]
            if A_COMPLEX:
                ai = tl.load(a_off + 1, mask=km, other=0.0).to(acc)
                new_r = ar[:, None] * s_r - ai[:, None] * s_i + kv
                s_i = ar[:, None] * s_i + ai[:, None] * s_r
                s_r = new_r
            else:
                s_r = ar[:, None] * s_r + kv
                if COMPLEX:
                    s_i = ar[:, None] * s_i
            o_off = o_ptr + pid_b * so_b + t * so_t + pid_h * so_h + vv * so_v
            tl.store(o_off, _sum(q[:, None] * s_r, 0), mask=vm)
            if COMPLEX:
                tl.store(o_off + 1, _sum(q[:, None] * s_i, 0), mask=vm)
    tl.store(sT_ptr + s_off, s_r, mask=kv_ok)
    if COMPLEX:
        tl.store(sT_ptr + s_off + 1, s_i, mask=kv_ok)


@triton.jit
def gateloop_bwd_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, ck_ptr, go_ptr, gs_ptr, scr_ptr,
    gq_ptr, gk_ptr, gv_ptr, ga_ptr, gs0_ptr,
    T, N_CHUNKS, K, V,
    sq_b, sq_t, sq_h, sq_k, sk_b, sk_t, sk_h, sk_k, sv_b, sv_t, sv_h, sv_v, sa_b, sa_t, sa_h, sa_k,
    ss_b, ss_h, ss_k, ss_v, so_b, so_t, so_h, so_v, sc_b, sc_h, sc_c, sc_k, sc_v,
    sr_b, sr_h, sr_c, sr_k, sr_v, sp_w, sp_b, sp_t, sp_h, sp_k, sga_w, sga_b, sga_t, sga_h, sga_k,
    A_COMPLEX: tl.constexpr, COMPLEX: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """The VJP of :func:`gateloop_fwd_kernel` in PyTorch's convention (``grad = conj(J)ᵀ grad_out``); grid
    ``(B, H, W)``, ``W = cdiv(V, BLOCK_V)`` column tiles.

    ``G`` = the cotangent of ``S_t``: ``G ← ḡS_T`` then, backwards, ``G += q_t ōₜᵀ``, and per step
    ``q̄_t = Re(conj(S_t) ō_t)`` (sum over V), ``k̄_t = Re(G) v_t``, ``v̄_t = Re(G)ᵀ k_t``,
    ``ā_t = Σ_v G ⊙ conj(S_{t-1})`` (per key row; real part only for a real gate), then ``G ← conj(a_t) G``; the
    ``G`` left after step 0 is the cotangent of the initial state. ``q̄``, ``k̄``, ``ā`` sum over ``V``: each column
    tile writes its partial sums (``(W, B, T, H, K)``, strides ``sp_*``; ``sga_*`` for ``ā``), added up by the
    caller; ``v̄`` has ``v``'s strides; ``go`` has ``o``'s strides ``so_*``; ``gs``/``gs0`` the state strides
    ``ss_*``; ``scr`` is the per-program scratch of one chunk's states ``S_{t-1}``.
    """
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    acc = gs0_ptr.dtype.element_ty
    kk = tl.arange(0, BLOCK_K)
    vv = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    k_ok = kk < K
    v_ok = vv < V
    kv_ok = k_ok[:, None] & v_ok[None, :]
    s_off = pid_b * ss_b + pid_h * ss_h + kk[:, None] * ss_k + vv[None, :] * ss_v
    g_r = tl.load(gs_ptr + s_off, mask=kv_ok, other=0.0).to(acc)
    g_i = tl.full([BLOCK_K, BLOCK_V], 0, acc)
    if COMPLEX:
        g_i = tl.load(gs_ptr + s_off + 1, mask=kv_ok, other=0.0).to(acc)
    r_base = pid_b * sr_b + pid_h * sr_h + kk[:, None] * sr_k + vv[None, :] * sr_v
    for cc in range(0, N_CHUNKS):
        c = N_CHUNKS - 1 - cc
        # recompute the chunk's states from its checkpoint: scr[j] = S_{t-1} of step t = c*CHUNK + j
        c_off = pid_b * sc_b + pid_h * sc_h + c * sc_c + kk[:, None] * sc_k + vv[None, :] * sc_v
        s_r = tl.load(ck_ptr + c_off, mask=kv_ok, other=0.0).to(acc)
        s_i = tl.full([BLOCK_K, BLOCK_V], 0, acc)
        if COMPLEX:
            s_i = tl.load(ck_ptr + c_off + 1, mask=kv_ok, other=0.0).to(acc)
        for j in range(0, CHUNK):
            t = c * CHUNK + j
            km = k_ok & (kk * 0 + t < T)
            tl.store(scr_ptr + r_base + j * sr_c, s_r, mask=kv_ok)
            if COMPLEX:
                tl.store(scr_ptr + r_base + j * sr_c + 1, s_i, mask=kv_ok)
            k = tl.load(k_ptr + pid_b * sk_b + t * sk_t + pid_h * sk_h + kk * sk_k, mask=km, other=0.0).to(acc)
            v = tl.load(v_ptr + pid_b * sv_b + t * sv_t + pid_h * sv_h + vv * sv_v, mask=v_ok & (vv * 0 + t < T),
                        other=0.0).to(acc)
            a_off = a_ptr + pid_b * sa_b + t * sa_t + pid_h * sa_h + kk * sa_k
            ar = tl.load(a_off, mask=km, other=1.0).to(acc)
            kv = k[:, None] * v[None, :]
            if A_COMPLEX:
                ai = tl.load(a_off + 1, mask=km, other=0.0).to(acc)
                new_r = ar[:, None] * s_r - ai[:, None] * s_i + kv
                s_i = ar[:, None] * s_i + ai[:, None] * s_r
                s_r = new_r
            else:
                s_r = ar[:, None] * s_r + kv
                if COMPLEX:
                    s_i = ar[:, None] * s_i
        tl.debug_barrier()
        for jj in range(0, CHUNK):
            j = CHUNK - 1 - jj
            t = c * CHUNK + j
            km = k_ok & (kk * 0 + t < T)
            vm = v_ok & (vv * 0 + t < T)
            p_r = tl.load(scr_ptr + r_base + j * sr_c, mask=kv_ok, other=0.0).to(acc)  # S_{t-1}
            p_i = tl.full([BLOCK_K, BLOCK_V], 0, acc)
            if COMPLEX:
                p_i = tl.load(scr_ptr + r_base + j * sr_c + 1, mask=kv_ok, other=0.0).to(acc)
            q_off = pid_b * sq_b + t * sq_t + pid_h * sq_h + kk * sq_k
            k_off = pid_b * sk_b + t * sk_t + pid_h * sk_h + kk * sk_k
            v_off = pid_b * sv_b + t * sv_t + pid_h * sv_h + vv * sv_v
            q = tl.load(q_ptr + q_off, mask=km, other=0.0).to(acc)
            k = tl.load(k_ptr + k_off, mask=km, other=0.0).to(acc)
            v = tl.load(v_ptr + v_off, mask=vm, other=0.0).to(acc)
            a_off = a_ptr + pid_b * sa_b + t * sa_t + pid_h * sa_h + kk * sa_k
            ar = tl.load(a_off, mask=km, other=1.0).to(acc)
            ai = tl.full([BLOCK_K], 0, acc)
            if A_COMPLEX:
                ai = tl.load(a_off + 1, mask=km, other=0.0).to(acc)
            kv = k[:, None] * v[None, :]
            s_r = ar[:, None] * p_r - ai[:, None] * p_i + kv  # S_t
            s_i = ar[:, None] * p_i + ai[:, None] * p_r
            o_off = go_ptr + pid_b * so_b + t * so_t + pid_h * so_h + vv * so_v
            go_r = tl.load(o_off, mask=vm, other=0.0).to(acc)
            go_i = tl.full([BLOCK_V], 0, acc)
            if COMPLEX:
                go_i = tl.load(o_off + 1, mask=vm, other=0.0).to(acc)
            g_r = g_r + q[:, None] * go_r[None, :]
            g_i = g_i + q[:, None] * go_i[None, :]
            gq = _sum(s_r * go_r[None, :] + s_i * go_i[None, :], 1)
            p_off = tl.program_id(2) * sp_w + pid_b * sp_b + t * sp_t + pid_h * sp_h + kk * sp_k
            tl.store(gq_ptr + p_off, gq, mask=km)
            tl.store(gk_ptr + p_off, _sum(g_r * v[None, :], 1), mask=km)
            tl.store(gv_ptr + v_off, _sum(g_r * k[:, None], 0), mask=vm)
            ga_off = ga_ptr + tl.program_id(2) * sga_w + pid_b * sga_b + t * sga_t + pid_h * sga_h + kk * sga_k
            tl.store(ga_off, _sum(g_r * p_r + g_i * p_i, 1), mask=km)
            if A_COMPLEX:
                tl.store(ga_off + 1, _sum(g_i * p_r - g_r * p_i, 1), mask=km)
            new_r = ar[:, None] * g_r + ai[:, None] * g_i  # G ← conj(a_t) G
            g_i = ar[:, None] * g_i - ai[:, None] * g_r
            g_r = new_r
        tl.debug_barrier()
    tl.store(gs0_ptr + s_off, g_r, mask=kv_ok)
    if COMPLEX:
        tl.store(gs0_ptr + s_off + 1, g_i, mask=kv_ok)
