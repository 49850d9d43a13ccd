"""GatedLinearRNN with its gates fused into the Triton scan (``method="triton"`` of the PyTorch layer).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width, ``n`` 3 (tied gates) or 4 (untied).

The twin of ``linrec.backends.torch.native_gated_linear_rnn`` for CUDA (interpreted on CPU tensors): from the
projection ``u (B, T, nH) = [u_in | u_i | (u_f |) u_o]`` with the default activations, one pass computes
``h_t = f h_{t-1} + i tanh(u_in)`` and ``y_t = tanh(h_t) o``; the backward writes ``ū`` and ``h̄0`` in one pass
(kernels: ``linrec.backends.torch.triton_gated_linear_rnn_kernels``). float32/float64 only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends.torch import triton_scan as _ts

__all__ = ["applies", "triton_gated_linear_rnn"]

_DTYPES = (torch.float32, torch.float64)
_kernels = None


def applies(u: Tensor, method: str) -> bool:
    """``method="triton"`` on float32/float64 projections (the layer also requires the default activations)."""
    return method == "triton" and u.dtype in _DTYPES


def _load(device: torch.device):
    global _kernels
    _ts._load_kernels(device)  # settles TRITON_INTERPRET (and the checks) before these kernels are defined
    if _kernels is None:
        from linrec.backends.torch import triton_gated_linear_rnn_kernels

        _kernels = triton_gated_linear_rnn_kernels
    return _kernels


def _parts(u: Tensor, hidden: int, tied: bool) -> list[Tensor]:
    """``[u_in, u_i, u_f, u_o]`` views (``u_f`` is ``u_i`` when tied: never read)."""
    parts = list(u.split(hidden, dim=-1))
    return [parts[0], parts[1], parts[1], parts[2]] if tied else parts


class _TritonGLRFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, h0: Tensor, tied: bool, reverse: bool, block_t: int) -> tuple[Tensor, Tensor]:
        batch, n_time, _ = u.shape
        hidden = h0.shape[-1]
        h = torch.empty((batch, n_time, hidden), dtype=u.dtype, device=u.device)
        y = torch.empty_like(h)
        if h.numel():
            k = _load(u.device)
            block_n = _ts._block_n(hidden)
            k.glr_fwd_kernel[(batch, _ts._cdiv(hidden, block_n))](
                *_parts(u, hidden, tied), h0, h, y, n_time, hidden, *u.stride(), *h0.stride(), *h.stride(),
                REVERSE=reverse, TIED=tied, BLOCK_T=block_t, BLOCK_N=block_n, LOG_T=block_t.bit_length() - 1,
            )
        final = h[:, 0 if reverse else -1].clone() if n_time else h0.clone()
        ctx.save_for_backward(u, h0, h)
        ctx.tied, ctx.reverse, ctx.block_t = tied, reverse, block_t
        return y, final

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_final: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("the fused Triton GatedLinearRNN kernel has no second derivative; use "
                               "method='chunked' for double backward (create_graph=True)")
        u, h0, h = ctx.saved_tensors
        batch, n_time, hidden = h.shape
        if n_time == 0 or hidden == 0:
            return torch.zeros_like(u), grad_final.to(h0.dtype).clone(), None, None, None
        u_bar, h0_bar = torch.empty_like(u), torch.empty_like(h0)
        k = _load(u.device)
        block_n = _ts._block_n(hidden)
        k.glr_bwd_kernel[(batch, _ts._cdiv(hidden, block_n))](
            *_parts(u, hidden, ctx.tied), h0, h, grad_y, grad_final, *_parts(u_bar, hidden, ctx.tied), h0_bar,
            n_time, hidden, *u.stride(), *h0.stride(), *h.stride(), *grad_y.stride(), *grad_final.stride(),
            REVERSE=ctx.reverse, TIED=ctx.tied, BLOCK_T=ctx.block_t, BLOCK_N=block_n,
            LOG_T=ctx.block_t.bit_length() - 1,
        )
        return u_bar, h0_bar, None, None, None


def triton_gated_linear_rnn(u: Tensor, h0: Tensor, tied: bool, reverse: bool = False,
                            chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """``(y (B, T, H), final (B, H))``, ``y = tanh(h) o`` before ``out_proj``, from ``u (B, T, nH)`` and
    ``h0 (B, H)`` (one float32/float64 dtype). Differentiable in ``u`` and ``h0``."""
    _ts.require_triton()
    if u.dtype not in _DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused Triton GatedLinearRNN kernel takes float32/float64 u and h0 of one dtype, got "
                        f"{u.dtype} and {h0.dtype}; use method='chunked'")
    return _TritonGLRFn.apply(u, h0, bool(tied), bool(reverse), _ts._block_t(chunk_size))
