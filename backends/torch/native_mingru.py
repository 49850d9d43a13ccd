"""minGRU with its gates fused into the native scan, for the PyTorch backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width.

Two ``torch.library`` custom ops, with fake implementations (``torch.compile(fullgraph=True)``) and autograd:

- ``linrec::mingru_fwd(u (B, T, 2H), h0 (B, H), candidate) -> (h (B, T, H), final (B, H))`` (``u (B, T, 3H)``
  with minLSTM's gates: ``candidate`` is ``native.fused_code``)
- ``linrec::mingru_bwd(u, h, h0, grad_h, grad_final, candidate) -> (u_bar, h0_bar)``

``u = [u_z | u_h]`` is the layer's projection; per step ``h_t = σ(-u_z) h_{t-1} + σ(u_z) c(u_h)`` (spec/mingru.md)
with ``c`` the identity or ``g``. One pass reads ``u`` and writes ``h``: the gate tensors ``a`` and ``b`` of the
unfused path (several elementwise ops, each a pass over memory, and their backward) never exist. Real dtypes only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.torch.native import _cotangent_rows, _empty, _empty_shaped, _ptr, _ready, _status
from linrec.backends.torch.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built
from linrec.backends.torch.scan import sequence_parallel_hook

__all__ = ["applies", "mingru_bwd", "mingru_fwd", "native_mingru"]

_DTYPES = {torch.float32: 0, torch.float64: 1}


def applies(u: Tensor, method: str) -> bool:
    """Whether the layer's scan ``method`` on projections ``u`` runs here: ``"auto"`` or ``"native"``, CPU,
    float32/float64 and the kernel built (otherwise the layer takes the unfused path, which raises for an
    unservable ``"native"``)."""
    return (method in ("auto", "native") and u.device.type == "cpu" and u.dtype in _DTYPES
            and "native" in SCAN_METHODS and sequence_parallel_hook() is None)  # sharded: linear_scan


@torch.library.custom_op("linrec::mingru_fwd", mutates_args=())
def mingru_fwd(u: Tensor, h0: Tensor, candidate: int) -> tuple[Tensor, Tensor]:
    """The fused forward kernel: ``h (B, T, H)`` and ``final (B, H)``."""
    blocks = native.gate_blocks(candidate)
    native.check_fused_shapes(u.shape, h0.shape, blocks)
    lib = native._builder().load()
    u, h0 = _ready(u), _ready(h0)
    n, t, width = u.shape
    h = _empty_shaped((n, t, width // blocks), u.dtype)
    final = _empty(h0)
    _status(lib.linrec_mingru_fwd(_DTYPES[u.dtype], n, t, width // blocks, candidate, _ptr(u), _ptr(h0), _ptr(h),
                                  _ptr(final)))
    return h, final


@mingru_fwd.register_fake
def _mingru_fwd_fake(u, h0, candidate):
    return u.new_empty((*u.shape[:-1], u.shape[-1] // native.gate_blocks(candidate))), h0.new_empty(h0.shape)


@torch.library.custom_op("linrec::mingru_bwd", mutates_args=())
def mingru_bwd(u: Tensor, h: Tensor, h0: Tensor, grad_h: Tensor, grad_final: Tensor,
               candidate: int) -> tuple[Tensor, Tensor]:
    """The fused backward kernel: ``(u_bar (B, T, 2H), h0_bar (B, H))``."""
    blocks = native.gate_blocks(candidate)
    native.check_fused_shapes(u.shape, h0.shape, blocks, h.shape, grad_h.shape, grad_final.shape)
    lib = native._builder().load()
    u, h, h0 = _ready(u), _ready(h), _ready(h0)
    (grad_h, ct_rs), grad_final = _cotangent_rows(grad_h, h.dtype), _ready(grad_final.to(h.dtype))
    n, t, width = u.shape
    u_bar, h0_bar = _empty(u), _empty(h0)
    _status(lib.linrec_mingru_bwd(_DTYPES[u.dtype], n, t, width // blocks, candidate, _ptr(u), _ptr(h), _ptr(h0),
                                  _ptr(grad_h), ct_rs, _ptr(grad_final), _ptr(u_bar), _ptr(h0_bar)))
    return u_bar, h0_bar


@mingru_bwd.register_fake
def _mingru_bwd_fake(u, h, h0, grad_h, grad_final, candidate):
    return u.new_empty(u.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    u, h0, candidate = inputs
    h, _ = output
    ctx.save_for_backward(u, h0, h)
    ctx.candidate = candidate


def _backward(ctx, grad_h, grad_final):
    if torch.is_grad_enabled():  # create_graph=True: the fused backward kernel has no derivative of its own
        raise RuntimeError(native.fused_double_backward_message("minGRU"))
    u, h0, h = ctx.saved_tensors
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h
    grad_final = torch.zeros_like(h0) if grad_final is None else grad_final
    u_bar, h0_bar = mingru_bwd(u, h, h0, grad_h, grad_final, ctx.candidate)
    return u_bar, h0_bar, None


mingru_fwd.register_autograd(_backward, setup_context=_setup_context)


def native_mingru(u: Tensor, h0: Tensor, candidate: str, gates: str = "mingru") -> tuple[Tensor, Tensor]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, 2H)`` and ``h0 (B, H)`` (same dtype).

    ``candidate``: ``"identity"`` or ``"g"``; ``gates="minlstm"``: minLSTM's gates from ``u (B, T, 3H) =
    [u_f | u_i | u_h]``. Differentiable in ``u`` and ``h0``.
    """
    if u.dtype not in _DTYPES or h0.dtype != u.dtype:
        raise TypeError(f"the fused minGRU kernel takes float32/float64 u and h0 of one dtype, got {u.dtype} and "
                        f"{h0.dtype}")
    return mingru_fwd(u, h0, native.fused_code(candidate, gates))
