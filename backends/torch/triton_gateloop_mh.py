"""``method="triton"`` of the PyTorch ``gateloop_mh``: the outer-product recurrence as a chunked Triton kernel
(intra-chunk attention-like product plus inter-chunk state), fwd and bwd.

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` d_key, ``V`` d_value, ``R`` gate rows per head (``K`` or
1), ``C`` chunk steps.

From ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)`` (real, the state's real dtype), ``a: (B, T, H, R, 1)`` (real or
complex) and ``S_0: (B, H, K, V)`` the kernel computes ``o_t = S_tᵀ q_t`` with ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``
(spec/gateloop_mh.md §2, §4) per chunk of ``C`` steps with matrix products (``tl.dot``; tensor cores on a GPU):
intra-chunk ``o = sc · v`` with scores ``sc[t, s] = Σ_k q_t[k] W[t,s,k] k_s[k]`` from the running-product decays
``W[t, s] = a_t ⋯ a_{s+1}`` (``(q · kᵀ) ⊙ W`` for one gate per head), inter-chunk ``o += (P ⊙ q) · S₀`` with
``P_t = a_t ⋯ a_0``, and the chunk-end state ``diag(P_{C-1}) S₀ + (W[C-1] ⊙ k)ᵀ v`` carried to the next chunk.
Neither ``k ⊗ v`` nor the per-step states are written to memory (the parallel scan path materialises both): the
forward pass keeps one state per chunk (``C = config.chunk_size``, the saved-state interval) and the backward kernel
recomputes each chunk's products from it (kernels: ``linrec.backends.torch.triton_gateloop_mh_kernels``). The
interpreter switch, the device checks and the one-time interpreted warning are ``triton_scan``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends.torch import triton_scan as _ts

__all__ = ["DEFAULT_CHUNK", "triton_gateloop_mh"]

#: value columns per program (at most; the columns of ``S`` are independent, so ``V`` is split into tiles)
_MAX_BLOCK_V = 64
#: time steps per chunk (one checkpointed state per chunk; a program holds the chunk's ``(C, C, K)`` decays)
DEFAULT_CHUNK = 16
#: the smallest tile side: ``tl.dot`` needs 16 on a GPU (masked rows/columns pad smaller ``C``, ``K``, ``V``)
_MIN_BLOCK = 16
_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_FALLBACK = "use method='chunked' (the memory-lean path, same function)"
_kernels = None


def _load(device: torch.device):
    global _kernels
    _ts._load_kernels(device)  # settles TRITON_INTERPRET (and the checks, the warning) before these are defined
    if _kernels is None:
        from linrec.backends.torch import triton_gateloop_mh_kernels

        _kernels = triton_gateloop_mh_kernels
    return _kernels


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _block(n: int) -> int:
    """A tile dimension covering ``n``: a power of two, at least ``_MIN_BLOCK`` (``tl.dot``'s minimum on a GPU)."""
    return max(_MIN_BLOCK, _pow2(n))


def _block_v(d_v: int) -> int:
    return max(min(_MAX_BLOCK_V, _pow2(d_v)), _MIN_BLOCK)


def _rv(x: Tensor) -> Tensor:
    return _ts._real_view(x)


def _gate_view(a: Tensor, k_dim: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """``a: (B, T, H, R, 1)`` as a real view and its ``(b, t, h, key row)`` strides (row stride 0 when ``R = 1``)."""
    av = _rv(a)
    st = av.stride()
    return av, (st[0], st[1], st[2], st[3] if a.shape[3] == k_dim else 0)


def _head_gate(a: Tensor, k_dim: int) -> bool:
    """One gate per head (``R = 1 < K``): the kernels' ``(Q · Kᵀ) ⊙ L`` form, no ``(C, C, K)`` decay tile."""
    return a.shape[3] == 1 and k_dim > 1


class _TritonGateLoopFn(torch.autograd.Function):
    """``(o: (B, T, H, V), S_T: (B, H, K, V))`` in the state dtype; backward is one reverse kernel pass.

    Grid ``(B, H, cdiv(V, BLOCK_V))``: a program per batch row, head and tile of value columns."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, a: Tensor, s0: Tensor, chunk: int):
        batch, n_time, heads, d_k = q.shape
        d_v = v.shape[-1]
        n_chunks = _ts._cdiv(n_time, chunk)
        o = torch.empty((batch, n_time, heads, d_v), dtype=s0.dtype, device=q.device)
        s_t = torch.empty_like(s0)
        ck = torch.empty((batch, heads, max(n_chunks, 1), d_k, d_v), dtype=s0.dtype, device=q.device)
        if n_time == 0 or s0.numel() == 0:
            s_t.copy_(s0)
        else:
            kern = _load(q.device)
            av, a_st = _gate_view(a, d_k)
            ov, sv, s0v, ckv = _rv(o), _rv(s_t), _rv(s0), _rv(ck)
            block_v = _block_v(d_v)
            kern.gateloop_fwd_kernel[(batch, heads, _ts._cdiv(d_v, block_v))](
                q, k, v, av, s0v, ov, sv, ckv, n_time, n_chunks, d_k, d_v,
                *q.stride(), *k.stride(), *v.stride(), *a_st, *s0v.stride()[:4], *ov.stride()[:4],
                *ckv.stride()[:5],
                HAS_S0=True, A_COMPLEX=a.is_complex(), COMPLEX=s0.is_complex(), HEAD_GATE=_head_gate(a, d_k),
                CHUNK=chunk,
                BLOCK_C=_block(chunk), BLOCK_K=_block(d_k), BLOCK_V=block_v,
            )
        ctx.save_for_backward(q, k, v, a, ck)
        ctx.chunk, ctx.s0_meta = chunk, (s0.shape, s0.dtype)
        return o, s_t

    @staticmethod
    def backward(ctx, grad_o: Tensor | None, grad_s: Tensor | None):
        if torch.is_grad_enabled():
            raise RuntimeError("the Triton GateLoop kernel has no second derivative; use method='chunked' for "
                               "double backward (create_graph=True)")
        q, k, v, a, ck = ctx.saved_tensors
        s_shape, s_dtype = ctx.s0_meta
        batch, n_time, heads, d_k = q.shape
        d_v = v.shape[-1]
        grad_s = torch.zeros(s_shape, dtype=s_dtype, device=q.device) if grad_s is None else grad_s.to(s_dtype)
        if n_time == 0 or grad_s.numel() == 0:
            zero = torch.zeros_like
            return zero(q), zero(k), zero(v), zero(a), grad_s.clone(), None
        grad_o = (torch.zeros((batch, n_time, heads, d_v), dtype=s_dtype, device=q.device) if grad_o is None
                  else grad_o.to(s_dtype).contiguous())
        grad_s = grad_s.contiguous()
        chunk = ctx.chunk
        n_chunks = _ts._cdiv(n_time, chunk)
        block_v = _block_v(d_v)
        tiles = _ts._cdiv(d_v, block_v)
        # q̄, k̄, ā sum over V: one partial sum per column tile, added up below
        gq, gk = (torch.empty((tiles, *q.shape), dtype=q.dtype, device=q.device) for _ in range(2))
        gv = torch.empty_like(v)
        ga = torch.empty((tiles, batch, n_time, heads, a.shape[3]), dtype=a.dtype, device=q.device)  # per gate
        gs0 = torch.empty(s_shape, dtype=s_dtype, device=q.device)
        kern = _load(q.device)
        av, a_st = _gate_view(a, d_k)
        gov, gsv, gs0v, ckv, gav = _rv(grad_o), _rv(grad_s), _rv(gs0), _rv(ck), _rv(ga)
        kern.gateloop_bwd_kernel[(batch, heads, tiles)](
            q, k, v, av, ckv, gov, gsv, gq, gk, gv, gav, gs0v, n_time, n_chunks, d_k, d_v,
            *q.stride(), *k.stride(), *v.stride(), *a_st, *gs0v.stride()[:4], *gov.stride()[:4], *ckv.stride()[:5],
            *gq.stride(), *gav.stride()[:5],
            A_COMPLEX=a.is_complex(), COMPLEX=s_dtype.is_complex, HEAD_GATE=_head_gate(a, d_k), CHUNK=chunk,
            BLOCK_C=_block(chunk), BLOCK_K=_block(d_k), BLOCK_V=block_v,
        )
        grad_a = ga.sum(0).unsqueeze(-1).sum_to_size(a.shape) if ctx.needs_input_grad[3] else None
        return gq.sum(0), gk.sum(0), gv, grad_a, gs0, None


def triton_gateloop_mh(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, initial_state: Tensor, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(o: (B, T, H, V), S_T: (B, H, K, V))`` in the state dtype, differentiable (q, k, v, a, initial_state).

    Args:
      q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``: real, in the state's real dtype (float32/float64).
      a: ``(B, T, H, R, 1)`` decays, ``R = K`` or 1; real or complex (a complex ``a`` needs a complex state).
      initial_state: ``(B, H, K, V)`` float32/float64/complex64/complex128 (the state dtype).
      chunk_size: steps per chunk (default ``DEFAULT_CHUNK``; the layer passes ``config.chunk_size``), capped at
        the power of two covering ``T``: one state is kept per chunk, and a program holds the chunk's ``(C, C)``
        scores (and, for a gate per key row, its ``(C, C, K)`` decays).

    Raises ``TypeError``/``ValueError`` naming ``method='chunked'`` for inputs the kernel does not take.
    """
    _ts.require_triton()
    sdt = initial_state.dtype
    if sdt not in _DTYPES:
        raise TypeError(f"gateloop_mh(method='triton') takes a float32/float64/complex64/complex128 state; got {sdt}: "
                        f"{_FALLBACK}")
    real = _REAL.get(sdt, sdt)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != real:
            raise TypeError(f"gateloop_mh(method='triton'): {name} must be {real} for a {sdt} state, got {x.dtype}: "
                            f"{_FALLBACK}")
    if a.is_complex() and not sdt.is_complex:
        raise TypeError(f"gateloop_mh(method='triton'): a complex gate needs a complex state, got {sdt}: {_FALLBACK}")
    if a.dtype not in (real, sdt):
        raise TypeError(f"gateloop_mh(method='triton'): a must be {real} or {sdt}, got {a.dtype}: {_FALLBACK}")
    if len({t.device for t in (q, k, v, a, initial_state)}) != 1:
        raise ValueError(f"gateloop_mh(method='triton'): put q, k, v, a and initial_state on one device: {_FALLBACK}")
    d_k = q.shape[-1]
    if a.dim() != 5 or a.shape[-1] != 1 or a.shape[3] not in (1, d_k):
        raise ValueError(f"gateloop_mh(method='triton'): a must be (B, T, H, R, 1) with R in (1, {d_k}), got "
                         f"{tuple(a.shape)}")
    chunk = DEFAULT_CHUNK if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"gateloop_mh(method='triton'): chunk_size must be a positive int, got {chunk_size!r}")
    chunk = min(chunk, _pow2(max(q.shape[1], 1)))  # no more masked tail steps than a power of two covers
    a = a.expand(*q.shape[:3], a.shape[3], 1)
    return _TritonGateLoopFn.apply(q.contiguous(), k.contiguous(), v.contiguous(), a.contiguous(),
                                   initial_state.contiguous(), chunk)
