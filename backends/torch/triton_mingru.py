"""minGRU with its gates fused into the Triton scan (``method="triton"`` of the PyTorch minGRU layers).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width.

The twin of ``linrec.backends.torch.native_mingru`` for CUDA (and, interpreted, for CPU tensors): from the
projection ``u = [u_z | u_h]`` (B, T, 2H) one pass computes ``h_t = σ(-u_z) h_{t-1} + σ(u_z) c(u_h)`` (spec/mingru.md,
``c`` the identity or ``g``) with the gates made in registers, so the tensors ``a`` and ``b`` of the unfused path
never exist; the backward is one pass too, writing ``ū`` (B, T, 2H) and ``h̄0`` directly. Real dtypes only (float32,
float64: the layer's state dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends.torch import triton_scan as _ts

__all__ = ["applies", "triton_mingru"]

_DTYPES = (torch.float32, torch.float64)
_GATES = {"identity": 1, "g": 2}


def applies(u: Tensor, method: str) -> bool:
    """Whether a minGRU layer's scan ``method`` runs here: ``"triton"`` on float32/float64 projections (other dtypes
    take the unfused path, whose ``linear_scan(method="triton")`` raises or serves them)."""
    return method == "triton" and u.dtype in _DTYPES


class _TritonMinGRUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, h0: Tensor, gate: int, block_t: int) -> tuple[Tensor, Tensor]:
        n_hidden = u.shape[-1] // 2
        u_z, u_h = u[..., :n_hidden], u[..., n_hidden:]
        h = _ts._launch_fwd(u_z, u_h, h0, None, False, block_t, gate)
        final = h[:, -1].clone() if u.shape[1] > 0 else h0.clone()
        ctx.save_for_backward(u, h, h0)
        ctx.gate, ctx.block_t = gate, block_t
        return h, final

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_final: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("the fused Triton minGRU kernel has no second derivative; use method='chunked' "
                               "for double backward (create_graph=True)")
        u, h, h0 = ctx.saved_tensors
        batch, n_time, two_h = u.shape
        n_hidden = two_h // 2
        if n_time == 0:
            return torch.zeros_like(u), grad_final.to(h0.dtype), None, None
        u_bar = torch.empty_like(u)
        h0_bar = torch.empty_like(h0)
        k = _ts._load_kernels(u.device)
        u_z, u_h = u[..., :n_hidden], u[..., n_hidden:]
        g_z, g_h = u_bar[..., :n_hidden], u_bar[..., n_hidden:]
        block_n = _ts._block_n(n_hidden)
        k.scan_bwd_kernel[(batch, _ts._cdiv(n_hidden, block_n))](
            u_z, h, h0, h, grad_h, grad_final, g_z, g_h, u_h, h0_bar,
            n_time, n_hidden,
            *u_z.stride(), *h.stride(), *grad_h.stride(), *h0.stride(), 0, 0, *g_z.stride(), *grad_final.stride(),
            REVERSE=False, HAS_H0=True, HAS_CUT=False, A_COMPLEX=False, COMPLEX=False, BLOCK_T=ctx.block_t,
            BLOCK_N=block_n, LOG_T=ctx.block_t.bit_length() - 1, GATE=ctx.gate,
        )
        return u_bar, h0_bar, None, None


def triton_mingru(u: Tensor, h0: Tensor, candidate: str, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, 2H)`` and ``h0 (B, H)`` (one dtype).

    ``candidate``: ``"identity"`` or ``"g"``; ``chunk_size``: the kernel's time block. Differentiable in ``u`` and
    ``h0``.
    """
    _ts.require_triton()
    if u.dtype not in _DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused Triton minGRU kernel takes float32/float64 u and h0 of one dtype, got {u.dtype} "
                        f"and {h0.dtype}; use method='chunked'")
    if candidate not in _GATES:
        raise ValueError(f"candidate must be one of {sorted(_GATES)}, got {candidate!r}")
    return _TritonMinGRUFn.apply(u, h0, _GATES[candidate], _ts._block_t(chunk_size))
