"""GatedLinearRNN with its gates fused into the native scan, for the PyTorch backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width, ``n`` 3 (tied gates) or 4 (untied).

From the layer's projection ``u (B, T, nH) = [u_in | u_i | (u_f |) u_o]`` with the default activations (tanh
input, sigmoid gates, tanh output): ``h_t = f h_prev + i tanh(u_in)`` (``f = 1 - i`` when tied) and
``y_t = tanh(h_t) o`` (spec/gated_linear_rnn.md), in one pass; the backward writes ``u_bar`` in one pass. Custom ops
with fake implementations and autograd:

- ``linrec::glr_fwd(u, h0 (B, H), tied, reverse) -> (y (B, T, H), h (B, T, H), final (B, H))`` — ``h`` is the
  backward's residual (not differentiated through);
- ``linrec::glr_bwd(u, h, h0, grad_y, grad_final, tied, reverse) -> (u_bar, h0_bar)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.torch.native import _cotangent_rows, _empty, _empty_shaped, _ptr, _ready, _status
from linrec.backends.torch.native_mingru import _DTYPES, applies  # the same rule for every fused kernel

__all__ = ["applies", "glr_bwd", "glr_fwd", "native_gated_linear_rnn"]



@torch.library.custom_op("linrec::glr_fwd", mutates_args=())
def glr_fwd(u: Tensor, h0: Tensor, tied: bool, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The fused forward kernel: ``y (B, T, H)``, ``h (B, T, H)``, ``final (B, H)``."""
    native.check_fused_shapes(u.shape, h0.shape, 3 if tied else 4)
    lib = native._builder().load()
    u, h0 = _ready(u), _ready(h0)
    n, t, _ = u.shape
    hidden = h0.shape[-1]
    y, h, final = _empty_shaped((n, t, hidden), u.dtype), _empty_shaped((n, t, hidden), u.dtype), _empty(h0)
    _status(lib.linrec_glr_fwd(_DTYPES[u.dtype], n, t, hidden, int(tied), _ptr(u), _ptr(h0), int(reverse), _ptr(y),
                               _ptr(h), _ptr(final)))
    return y, h, final


@glr_fwd.register_fake
def _glr_fwd_fake(u, h0, tied, reverse):
    shape = (*u.shape[:-1], h0.shape[-1])
    return u.new_empty(shape), u.new_empty(shape), h0.new_empty(h0.shape)


@torch.library.custom_op("linrec::glr_bwd", mutates_args=())
def glr_bwd(u: Tensor, h: Tensor, h0: Tensor, grad_y: Tensor, grad_final: Tensor, tied: bool,
            reverse: bool) -> tuple[Tensor, Tensor]:
    """The fused backward kernel: ``(u_bar (B, T, nH), h0_bar (B, H))``."""
    native.check_fused_shapes(u.shape, h0.shape, 3 if tied else 4, h.shape, grad_y.shape, grad_final.shape)
    lib = native._builder().load()
    u, h, h0 = _ready(u), _ready(h), _ready(h0)
    (grad_y, ct_rs), grad_final = _cotangent_rows(grad_y, h.dtype), _ready(grad_final.to(h.dtype))
    n, t, _ = u.shape
    u_bar, h0_bar = _empty(u), _empty(h0)
    _status(lib.linrec_glr_bwd(_DTYPES[u.dtype], n, t, h0.shape[-1], int(tied), _ptr(u), _ptr(h), _ptr(h0),
                               _ptr(grad_y), ct_rs, _ptr(grad_final), int(reverse), _ptr(u_bar), _ptr(h0_bar)))
    return u_bar, h0_bar


@glr_bwd.register_fake
def _glr_bwd_fake(u, h, h0, grad_y, grad_final, tied, reverse):
    return u.new_empty(u.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    u, h0, tied, reverse = inputs
    _, h, _ = output
    ctx.save_for_backward(u, h0, h)
    ctx.tied, ctx.reverse = tied, reverse


def _backward(ctx, grad_y, grad_h, grad_final):
    # grad_h: h is the residual, returned only so it can be saved; native_gated_linear_rnn never exposes it
    if torch.is_grad_enabled():  # create_graph=True: the fused backward kernel has no derivative of its own
        raise RuntimeError(native.fused_double_backward_message("GatedLinearRNN"))
    u, h0, h = ctx.saved_tensors
    grad_y = torch.zeros_like(h) if grad_y is None else grad_y
    grad_final = torch.zeros_like(h0) if grad_final is None else grad_final
    u_bar, h0_bar = glr_bwd(u, h, h0, grad_y, grad_final, ctx.tied, ctx.reverse)
    return u_bar, h0_bar, None, None


glr_fwd.register_autograd(_backward, setup_context=_setup_context)


def native_gated_linear_rnn(u: Tensor, h0: Tensor, tied: bool, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """``(y (B, T, H), final (B, H))``, ``y = tanh(h) o`` before ``out_proj``, from ``u (B, T, nH)`` and
    ``h0 (B, H)`` (same float32/float64 dtype). Differentiable in ``u`` and ``h0``."""
    if u.dtype not in _DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused GatedLinearRNN kernel takes float32/float64 u and h0 of one dtype, got {u.dtype} "
                        f"and {h0.dtype}")
    y, _, final = glr_fwd(u, h0, bool(tied), bool(reverse))
    return y, final
