"""``method="pallas"`` of the multi-head GateLoop (``spec/gateloop_mh.md``): the outer-product recurrence as one
Pallas kernel that never writes ``k ⊗ v`` or the per-step states to memory.

Shape legend: ``B`` batch, ``T`` time (``Tp`` padded to a multiple of ``C``), ``H`` heads, ``K`` key size (state
rows), ``V`` value size (state columns), ``C`` the chunk (time block) of one grid step, ``NC = Tp / C``.

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ`` and ``o_t = S_tᵀ q_t``. The grid is ``(B, H, NC)``: one program per
(batch row, head, chunk) reads the chunk's ``q, k: (C, K)``, ``v: (C, V)``, ``a: (C, K)`` in place from the
projections' ``(B, Tp, H, ·)`` layout and computes the chunked form, with ``S₀`` the state at the chunk start (the
carry output's block index does not move along the chunk axis: the accumulator pattern, so chunk ``j + 1`` starts
from the state chunk ``j`` ended with):

- decays ``W[t, s] = a_t ⋯ a_{s+1}`` (``s ≤ t``, per key row) and ``P_t = a_t ⋯ a_0``, built as running products
  row by row — never a quotient ``D_t / D_s`` or a log, so a decay of exactly 0 or an underflowing product is exact;
- intra-chunk, attention-like: ``o_t = Σ_{s≤t} (Σ_k q_t[k] W[t,s,k] k_s[k]) v_s`` (a ``(C, C)`` score matrix, then
  a matmul with ``v``);
- inter-chunk: ``o_t += S₀ᵀ (P_t ⊙ q_t)`` (a matmul with the carried state);
- the state at the chunk end: ``S = diag(P_{C-1}) S₀ + Σ_s (W[C-1, s] ⊙ k_s) v_sᵀ``.

``k ⊗ v`` and the per-step states never leave the kernel: only ``o: (B, Tp, H, V)``, the final state and the
state at each chunk start ``(B, NC, H, K, V)`` (for the backward pass) are written. A complex decay is the same
code on real/imaginary planes.

Differentiation: a ``jax.custom_vjp`` whose backward is a second kernel of the same chunked form, over the chunks
in reverse, carrying ``Ḡ = ∂L/∂S`` at the chunk end (it starts as the cotangent of the final state). Each program
recomputes ``W``, ``P`` and the scores from ``q, k, a`` and the saved chunk-start state ``S₀``, then: the score
cotangent ``sc̄ = mask(ō vᵀ)``; ``v̄ = Re(scᴴ ō) + Re((W_{C-1} ⊙ k)ᴴ Ḡ)``; ``q̄``, ``k̄`` from ``Re(sc̄ ⊙ conj W)``
and the inter-chunk term; ``W̄``, ``P̄``, pulled back through the running products row by row (``C`` steps) to ``ā``;
and ``Ḡ ← conj(P ⊙ q)ᵀ ō + conj(P_{C-1}) ⊙ Ḡ`` for the previous chunk. Everything is written on real planes (a
complex value is a (real, imaginary) pair; a cotangent pulls back through ``y = c·x`` as ``x̄ = conj(c)·ȳ``), so
JAX's complex convention follows from the transposes of ``real``/``imag``/``complex`` around it.

Right padding (``lengths``) and the padding of ``T`` to a multiple of ``C`` are identity steps (``a = 1``,
``k = v = q = 0``) that leave ``S`` unchanged. On a CPU ``pallas_call`` runs with ``interpret=True`` (chunks of
:data:`INTERPRET_CHUNK_T` steps; :data:`DEVICE_CHUNK_T` on a GPU/TPU).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from linrec.backends.jax.pallas_scan import interpreted

__all__ = ["DEVICE_CHUNK_T", "INTERPRET_CHUNK_T", "pallas_gateloop_mh"]

#: Steps per chunk on a GPU/TPU: a program holds the ``(C, C, K)`` decay products per plane (1 MiB in float32 at
#: ``C = 64, K = 64``), so the chunk is kept smaller than the diagonal scan's time block.
DEVICE_CHUNK_T = 64

#: Steps per chunk (grid step) in the interpreter: the conformance cases' 5-7 steps still cross a chunk boundary,
#: so the carry between chunks is held to the spec on CPU.
INTERPRET_CHUNK_T = 4

Array = jax.Array
Planes = tuple[Array, ...]


def _cmul(a: Planes, x: Planes) -> Planes:
    """Product of plane tuples (1 plane: real, 2: complex); a real ``a`` scales every plane of ``x``."""
    if len(a) == 1:
        return tuple(a[0] * p for p in x)
    if len(x) == 1:
        return tuple(p * x[0] for p in a)
    (ar, ai), (xr, xi) = a, x
    return ar * xr - ai * xi, ar * xi + ai * xr


def _conj(a: Planes) -> Planes:
    return a if len(a) == 1 else (a[0], -a[1])


def _forward_kernel(*refs, n_a: int, n_s: int, block_t: int) -> None:
    """Refs: q, k ``(C, K)``, v ``(C, V)``, a planes ``(C, K)``, h0 planes ``(K, V)``; outputs: o planes ``(C, V)``,
    chunk-start planes ``(K, V)``, carry planes ``(K, V)``."""
    q_ref, k_ref, v_ref = refs[:3]
    a_refs = refs[3:3 + n_a]
    h0_refs = refs[3 + n_a:3 + n_a + n_s]
    o_refs = refs[3 + n_a + n_s:3 + n_a + 2 * n_s]
    start_refs = refs[3 + n_a + 2 * n_s:3 + n_a + 3 * n_s]
    carry_refs = refs[3 + n_a + 3 * n_s:]
    acc = carry_refs[0].dtype

    @pl.when(pl.program_id(2) == 0)
    def _start() -> None:
        for carry, h0 in zip(carry_refs, h0_refs, strict=True):
            carry[...] = h0[...].astype(acc)

    state = tuple(c[...] for c in carry_refs)
    for start, s in zip(start_refs, state, strict=True):
        start[...] = s

    q = q_ref[...].astype(acc)  # (C, K)
    k = k_ref[...].astype(acc)  # (C, K)
    v = v_ref[...].astype(acc)  # (C, V)
    a = tuple(r[...].astype(acc) for r in a_refs)  # (C, K) planes
    w, p = _decays(a, block_t)  # W[t, s] = a_t ⋯ a_{s+1} (s ≤ t), P_t = a_t ⋯ a_0: products, never quotients
    # intra-chunk, attention-like: o_t += Σ_{s≤t} (Σ_k q_t[k] W[t,s,k] k_s[k]) v_s
    scores = tuple(jnp.sum(q[:, None, :] * pw * k[None, :, :], axis=-1) for pw in w)  # (C, C) planes
    intra = tuple(jnp.dot(sc, v, preferred_element_type=acc) for sc in scores)  # (C, V)
    # inter-chunk: o_t += S_startᵀ (P_t ⊙ q_t)
    inter = _cmatmul(tuple(pp * q for pp in p), state)  # (C, V)
    for r, x, y in zip(o_refs, intra, inter, strict=True):
        r[...] = (x + y).astype(r.dtype)
    # the state at the chunk's end: S = diag(P_last) S_start + Σ_s (W[last, s] ⊙ k_s) v_sᵀ
    decayed = _cmul(tuple(pp[block_t - 1][:, None] for pp in p), state)
    written = tuple(jnp.dot(jnp.transpose(pw[block_t - 1] * k), v, preferred_element_type=acc) for pw in w)
    for carry, x, y in zip(carry_refs, decayed, written, strict=True):
        carry[...] = x + y


def _decays(a: Planes, block_t: int) -> tuple[Planes, Planes]:
    """``W: (C, C, K)`` planes, ``W[t, s] = a_t ⋯ a_{s+1}`` for ``s ≤ t`` (1 on the diagonal, 0 above it), and
    ``P: (C, K)`` planes, ``P_t = a_t ⋯ a_0``, built row by row as running products (``C`` steps): no division by
    a decay and no log, so decays of exactly 0 (and products that underflow) are exact."""
    n_k = a[0].shape[1]
    cols = lax.broadcasted_iota(jnp.int32, (block_t, n_k), 0)

    def row(t, carry):
        w, p, prev = carry
        a_t = tuple(lax.dynamic_slice_in_dim(x, t, 1, 0) for x in a)  # (1, K)
        cur = _cmul(a_t, prev)
        cur = tuple(jnp.where(cols == t, jnp.ones_like(c) if i == 0 else jnp.zeros_like(c), c)
                    for i, c in enumerate(cur))
        pt = _cmul(a_t, tuple(lax.dynamic_slice_in_dim(x, jnp.maximum(t - 1, 0), 1, 0) for x in p))
        pt = tuple(jnp.where(t == 0, x, y) for x, y in zip(a_t, pt, strict=True))
        w = tuple(lax.dynamic_update_slice(x, c[None], (t, 0, 0)) for x, c in zip(w, cur, strict=True))
        p = tuple(lax.dynamic_update_slice(x, y, (t, 0)) for x, y in zip(p, pt, strict=True))
        return w, p, cur

    zeros = tuple(jnp.zeros((block_t, n_k), x.dtype) for x in a)
    w0 = tuple(jnp.zeros((block_t, block_t, n_k), x.dtype) for x in a)
    w, p, _ = lax.fori_loop(0, block_t, row, (w0, zeros, zeros))
    return w, p


def _cmatmul(x: Planes, y: Planes) -> Planes:
    """Matrix product of plane tuples ``x: (M, N)``, ``y: (N, P)``."""
    def dot(u, w):
        return jnp.dot(u, w, preferred_element_type=u.dtype)

    if len(x) == 1:
        return tuple(dot(x[0], w) for w in y)
    if len(y) == 1:
        return tuple(dot(u, y[0]) for u in x)
    (xr, xi), (yr, yi) = x, y
    return dot(xr, yr) - dot(xi, yi), dot(xr, yi) + dot(xi, yr)


def _backward_kernel(*refs, n_a: int, n_s: int, block_t: int) -> None:
    """Refs: q, k ``(C, K)``, v ``(C, V)``, a planes ``(C, K)``, ō planes ``(C, V)``, chunk-start planes
    ``(K, V)``, final-state cotangent planes ``(K, V)``; outputs: q̄, k̄ ``(C, K)``, v̄ ``(C, V)``, ā planes
    ``(C, K)``, carry ``G`` planes ``(K, V)``."""
    q_ref, k_ref, v_ref = refs[:3]
    i = 3
    a_refs = refs[i:i + n_a]
    i += n_a
    ct_refs = refs[i:i + n_s]
    i += n_s
    start_refs = refs[i:i + n_s]
    i += n_s
    ctf_refs = refs[i:i + n_s]
    i += n_s
    qb_ref, kb_ref, vb_ref = refs[i:i + 3]
    i += 3
    ab_refs = refs[i:i + n_a]
    carry_refs = refs[i + n_a:]
    acc = carry_refs[0].dtype

    @pl.when(pl.program_id(2) == 0)
    def _start() -> None:  # the last chunk starts from the cotangent of the final state
        for carry, ctf in zip(carry_refs, ctf_refs, strict=True):
            carry[...] = ctf[...].astype(acc)

    last = block_t - 1
    q, k, v = (r[...].astype(acc) for r in (q_ref, k_ref, v_ref))  # (C, K), (C, K), (C, V)
    a = tuple(r[...].astype(acc) for r in a_refs)
    ct = tuple(r[...].astype(acc) for r in ct_refs)  # ō (C, V)
    s0 = tuple(r[...].astype(acc) for r in start_refs)  # S₀ (K, V)
    g = tuple(c[...] for c in carry_refs)  # Ḡ: the cotangent of the chunk-end state
    w, p = _decays(a, block_t)  # recomputed, as in the forward kernel
    causal = lax.broadcasted_iota(jnp.int32, (block_t, block_t), 0) >= lax.broadcasted_iota(
        jnp.int32, (block_t, block_t), 1)
    scores = tuple(jnp.sum(q[:, None, :] * pw * k[None, :, :], axis=-1) for pw in w)  # (C, C)
    # on planes a cotangent pulls back through y = c·x as x̄ = conj(c)·ȳ (the real transpose)
    scb = tuple(jnp.where(causal, jnp.dot(c, jnp.transpose(v), preferred_element_type=acc), 0) for c in ct)
    w_last = tuple(pw[last] * k for pw in w)  # (C, K): W[C-1, s] ⊙ k_s
    gv = tuple(jnp.dot(v, jnp.transpose(x), preferred_element_type=acc) for x in g)  # (C, K): Σ_v Ḡ[k,v] v_s[v]
    vb = sum(jnp.dot(jnp.transpose(sc), c, preferred_element_type=acc) for sc, c in zip(scores, ct, strict=True))
    vb = vb + sum(jnp.dot(x, y, preferred_element_type=acc) for x, y in zip(w_last, g, strict=True))
    ub = _cmatmul(ct, tuple(jnp.transpose(x) for x in _conj(s0)))  # Ū = ō conj(S₀)ᵀ (C, K)
    rb = sum(sb[:, :, None] * pw for sb, pw in zip(scb, w, strict=True))  # Re(sc̄ conj W) (C, C, K)
    qb = jnp.sum(rb * k[None, :, :], axis=1) + sum(pp * u for pp, u in zip(p, ub, strict=True))
    kb = jnp.sum(rb * q[:, None, :], axis=0) + sum(pw[last] * x for pw, x in zip(w, gv, strict=True))
    qb_ref[...] = qb.astype(qb_ref.dtype)
    kb_ref[...] = kb.astype(kb_ref.dtype)
    vb_ref[...] = vb.astype(vb_ref.dtype)
    # cotangents of the decay products, then back through their running products to ā
    wb = tuple(sb[:, :, None] * (q[:, None, :] * k[None, :, :]) for sb in scb)  # W̄ (C, C, K)
    wb = tuple(x.at[last].add(y * k) for x, y in zip(wb, gv, strict=True))
    pb = tuple(u * q for u in ub)  # P̄ (C, K)
    p_last = tuple(jnp.transpose(jnp.sum(x, axis=1, keepdims=True)) for x in _cmul(_conj(s0), g))  # (1, K)
    pb = tuple(x.at[last].add(y[0]) for x, y in zip(pb, p_last, strict=True))
    cols = lax.broadcasted_iota(jnp.int32, (block_t, q.shape[1]), 0)

    def back(i, carry):
        cw, cp = carry  # what flows into row t of W and P from row t + 1
        t = last - i
        a_t = tuple(lax.dynamic_slice_in_dim(x, t, 1, 0) for x in a)  # (1, K)
        wrow = tuple(jnp.where(cols == t, 0, lax.dynamic_index_in_dim(x, t, 0, keepdims=False) + c)
                     for x, c in zip(wb, cw, strict=True))  # the diagonal is the constant 1
        prow = tuple(lax.dynamic_slice_in_dim(x, t, 1, 0) + c for x, c in zip(pb, cp, strict=True))
        tp = jnp.maximum(t - 1, 0)
        w_prev = tuple(jnp.where(t == 0, 0, lax.dynamic_index_in_dim(x, tp, 0, keepdims=False)) for x in w)
        p_prev = tuple(jnp.where(t == 0, 1.0 if n == 0 else 0.0, lax.dynamic_slice_in_dim(x, tp, 1, 0))
                       for n, x in enumerate(p))
        ab = tuple(jnp.sum(x, axis=0, keepdims=True) + y for x, y in
                   zip(_cmul(_conj(w_prev), wrow), _cmul(_conj(p_prev), prow), strict=True))
        for r, x in zip(ab_refs, ab, strict=True):
            r[pl.ds(t, 1), :] = x.astype(r.dtype)
        return _cmul(_conj(a_t), wrow), _cmul(_conj(a_t), prow)

    zero_w = tuple(jnp.zeros((block_t, q.shape[1]), acc) for _ in a)
    zero_p = tuple(jnp.zeros((1, q.shape[1]), acc) for _ in a)
    lax.fori_loop(0, block_t, back, (zero_w, zero_p))
    # Ḡ for the previous chunk: S₀ enters o through P ⊙ q and the chunk-end state through diag(P_{C-1})
    u = tuple(pp * q for pp in p)
    g_prev = _cmatmul(tuple(jnp.transpose(x) for x in _conj(u)), ct)
    g_prev = tuple(x + y for x, y in zip(g_prev, _cmul(_conj(tuple(pp[last][:, None] for pp in p)), g),
                                          strict=True))
    for carry, x in zip(carry_refs, g_prev, strict=True):
        carry[...] = x


def _planes(x: Array) -> Planes:
    return (jnp.real(x), jnp.imag(x)) if jnp.iscomplexobj(x) else (x,)


def _seq_spec(block_t: int, width: int, reverse: bool, n_chunks: int) -> pl.BlockSpec:
    def index(b, h, j):
        return (b, n_chunks - 1 - j if reverse else j, h, 0)

    return pl.BlockSpec((None, block_t, None, width), index)


def _state_spec(n_k: int, n_v: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, n_k, n_v), lambda b, h, j: (b, h, 0, 0))


def _start_spec(n_k: int, n_v: int, reverse: bool, n_chunks: int) -> pl.BlockSpec:
    def index(b, h, j):
        return (b, n_chunks - 1 - j if reverse else j, h, 0, 0)

    return pl.BlockSpec((None, None, None, n_k, n_v), index)


def _run_forward(q, k, v, a, h0, block_t):
    n_b, n_t, n_h, n_k = q.shape
    n_v = v.shape[-1]
    n_c = n_t // block_t
    acc = h0[0].dtype
    seq_k, seq_v = _seq_spec(block_t, n_k, False, n_c), _seq_spec(block_t, n_v, False, n_c)
    n_a, n_s = len(a), len(h0)
    out_shape = ([jax.ShapeDtypeStruct((n_b, n_t, n_h, n_v), acc)] * n_s
                 + [jax.ShapeDtypeStruct((n_b, n_c, n_h, n_k, n_v), acc)] * n_s
                 + [jax.ShapeDtypeStruct((n_b, n_h, n_k, n_v), acc)] * n_s)
    outs = pl.pallas_call(
        partial(_forward_kernel, n_a=n_a, n_s=n_s, block_t=block_t), out_shape=out_shape, grid=(n_b, n_h, n_c),
        in_specs=[seq_k, seq_k, seq_v] + [seq_k] * n_a + [_state_spec(n_k, n_v)] * n_s,
        out_specs=[seq_v] * n_s + [_start_spec(n_k, n_v, False, n_c)] * n_s + [_state_spec(n_k, n_v)] * n_s,
        interpret=interpreted(), name="linrec_pallas_gateloop_mh",
    )(q, k, v, *a, *h0)
    return tuple(outs[:n_s]), tuple(outs[n_s:2 * n_s]), tuple(outs[2 * n_s:])


def _run_backward(q, k, v, a, ct_o, starts, ct_final, block_t):
    n_b, n_t, n_h, n_k = q.shape
    n_v = v.shape[-1]
    n_c = n_t // block_t
    acc = starts[0].dtype
    seq_k, seq_v = _seq_spec(block_t, n_k, True, n_c), _seq_spec(block_t, n_v, True, n_c)
    n_a, n_s = len(a), len(starts)
    out_shape = ([jax.ShapeDtypeStruct(q.shape, acc)] * 2 + [jax.ShapeDtypeStruct(v.shape, acc)]
                 + [jax.ShapeDtypeStruct(q.shape, acc)] * n_a
                 + [jax.ShapeDtypeStruct((n_b, n_h, n_k, n_v), acc)] * n_s)
    outs = pl.pallas_call(
        partial(_backward_kernel, n_a=n_a, n_s=n_s, block_t=block_t), out_shape=out_shape, grid=(n_b, n_h, n_c),
        in_specs=[seq_k, seq_k, seq_v] + [seq_k] * n_a + [seq_v] * n_s + [_start_spec(n_k, n_v, True, n_c)] * n_s
        + [_state_spec(n_k, n_v)] * n_s,
        out_specs=[seq_k, seq_k, seq_v] + [seq_k] * n_a + [_state_spec(n_k, n_v)] * n_s,
        interpret=interpreted(), name="linrec_pallas_gateloop_mh_backward",
    )(q, k, v, *a, *ct_o, *starts, *ct_final)
    return outs[0], outs[1], outs[2], tuple(outs[3:3 + n_a]), tuple(outs[3 + n_a:])


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _planes_gateloop(q, k, v, a, h0, block_t: int):
    o, _, final = _run_forward(q, k, v, a, h0, block_t)
    return o, final


def _planes_fwd(q, k, v, a, h0, block_t):
    o, starts, final = _run_forward(q, k, v, a, h0, block_t)
    return (o, final), (q, k, v, a, starts)


def _planes_bwd(block_t, residuals, cts):
    q, k, v, a, starts = residuals
    ct_o, ct_final = cts
    qb, kb, vb, ab, h0b = _run_backward(q, k, v, a, ct_o, starts, ct_final, block_t)
    return qb, kb, vb, ab, h0b


_planes_gateloop.defvjp(_planes_fwd, _planes_bwd)


def pallas_gateloop_mh(q: Array, k: Array, v: Array, a: Array, h0: Array, *,
                       block_t: int | None = None) -> tuple[Array, Array]:
    """``(o, S_T)`` of ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t`` through the Pallas kernel;
    differentiable in every argument (custom VJP with a backward kernel).

    Args:
      q, k: ``(B, T, H, K)`` real, in the state's real dtype.
      v: ``(B, T, H, V)`` real.
      a: ``(B, T, H, R, 1)`` with ``R`` = ``K`` or 1, real, or complex for a complex state.
      h0: ``(B, H, K, V)`` the state (real, or complex with a complex ``a``).
      block_t: time steps per chunk (grid step); default :data:`INTERPRET_CHUNK_T` on CPU, :data:`DEVICE_CHUNK_T` else.

    Returns:
      ``o: (B, T, H, V)`` and the final state ``(B, H, K, V)``, both in ``h0``'s dtype.
    """
    n_b, n_t, n_h, n_k = q.shape
    block_t = block_t or (INTERPRET_CHUNK_T if interpreted() else DEVICE_CHUNK_T)
    block_t = max(1, min(block_t, n_t))
    t_pad = -(-n_t // block_t) * block_t
    a = jnp.broadcast_to(a[..., 0], (n_b, n_t, n_h, n_k))  # autodiff sums the broadcast back
    a_planes = _planes(a)
    h0_planes = _planes(h0)
    if len(h0_planes) == 2 and len(a_planes) == 1:  # a real decay of a complex state: complex planes of a
        a_planes = (a_planes[0], jnp.zeros_like(a_planes[0]))

    def pad(x: Array, fill: float) -> Array:
        if t_pad == n_t:
            return x
        return jnp.pad(x, ((0, 0), (0, t_pad - n_t), (0, 0), (0, 0)), constant_values=fill)

    a_planes = tuple(pad(p, fill) for p, fill in zip(a_planes, (1.0, 0.0)))  # identity steps: a = 1 + 0i
    o, final = _planes_gateloop(pad(q, 0.0), pad(k, 0.0), pad(v, 0.0), a_planes, h0_planes, block_t)
    o = tuple(p[:, :n_t] for p in o)
    if len(o) == 2:
        return lax.complex(*o), lax.complex(*final)
    return o[0], final[0]
