"""Multi-head GateLoop's recurrence with the state kept local, for the PyTorch backend (``linrec.backends.native``).

Shape legend: ``B`` batch, ``T`` time, ``H`` heads, ``K`` d_key, ``V`` d_value, ``R`` gate rows per head (``K``
or 1), ``C`` the kernel's chunk of steps.

Two ``torch.library`` custom ops, with fake implementations (``torch.compile(fullgraph=True)``) and autograd:

- ``linrec::gmh_fwd(q, k (B, T, H, K), v (B, T, H, V), a (B, T, H, R), s0 (B, H, K, V)) -> (o (B, T, H, V),
  S_T (B, H, K, V), checkpoints (B, H, ⌈T/C⌉, K, V))``
- ``linrec::gmh_bwd(q, k, v, a, checkpoints, grad_o, grad_final) -> (q̄, k̄, v̄, ā, s̄0)``

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t`` (spec/gateloop_mh.md §2). The parallel path
(``linear_scan`` over ``k ⊗ v``) writes ``k ⊗ v`` and every ``S_t``, ``(B, T, H, K, V)`` each, and its backward
reads them back; here the state stays in the kernel's local memory, one state per chunk is kept for the backward,
which recomputes each chunk's states from it. CPU, float32/float64 ``q, k, v`` with a real or complex state and gate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.torch.native import _empty, _empty_shaped, _name, _ptr, _ready, _status
from linrec.backends.torch.scan import METHODS as SCAN_METHODS  # lists "native" when the kernel is built
from linrec.backends.torch.scan import sequence_parallel_hook

__all__ = ["applies", "gmh_bwd", "gmh_fwd", "native_gateloop_mh"]

_REAL = (torch.float32, torch.float64)


def applies(q: Tensor, v: Tensor, method: str) -> bool:
    """Whether the layer's scan ``method`` runs here: ``"auto"`` or ``"native"``, CPU, float32/float64 projections,
    values at least ``native.GMH_MIN_VALUE_WIDTH`` wide and the kernel built (otherwise the layer takes the parallel
    path, which raises for an unservable ``"native"``)."""
    return (method in ("auto", "native") and q.device.type == "cpu" and q.dtype in _REAL
            and v.shape[-1] >= native.GMH_MIN_VALUE_WIDTH and "native" in SCAN_METHODS
            and sequence_parallel_hook() is None)  # sharded: linear_scan


def _codes(q: Tensor, a: Tensor, s: Tensor) -> tuple[int, int, int]:
    return native.gmh_codes(_name(q.dtype), _name(a.dtype), _name(s.dtype))


@torch.library.custom_op("linrec::gmh_fwd", mutates_args=())
def gmh_fwd(q: Tensor, k: Tensor, v: Tensor, a: Tensor, s0: Tensor, real_output: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel: ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the checkpoints, in the state dtype
    (``o = Re(o)`` real with ``real_output``)."""
    n, t, h, kk, vv, r = native.check_gmh_shapes(q.shape, k.shape, v.shape, a.shape, s0.shape)
    codes = _codes(q, a, s0)
    lib = native._builder().load()
    q, k, v, a, s0 = (_ready(x) for x in (q, k, v, a, s0))
    o = _empty_shaped((n, t, h, vv), _output_dtype(s0.dtype, real_output))
    s_final = _empty(s0)
    ck = _empty_shaped(native.gmh_checkpoints(n, t, h, kk, vv), s0.dtype)
    _status(lib.linrec_gmh_fwd(*codes, int(real_output), n, t, h, kk, vv, r,
                               *(_ptr(x) for x in (q, k, v, a, s0, o, s_final, ck))))
    return o, s_final, ck


def _output_dtype(state: torch.dtype, real_output: bool) -> torch.dtype:
    return state.to_real() if real_output else state


@gmh_fwd.register_fake
def _gmh_fwd_fake(q, k, v, a, s0, real_output):
    n, t, h, kk = q.shape
    return (q.new_empty((n, t, h, v.shape[-1]), dtype=_output_dtype(s0.dtype, real_output)), s0.new_empty(s0.shape),
            s0.new_empty(native.gmh_checkpoints(n, t, h, kk, v.shape[-1])))


@torch.library.custom_op("linrec::gmh_bwd", mutates_args=())
def gmh_bwd(q: Tensor, k: Tensor, v: Tensor, a: Tensor, ck: Tensor, grad_o: Tensor,
            grad_final: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward kernel: ``(q̄, k̄, v̄, ā, s̄0)``."""
    n, t, h, kk, vv, r = native.check_gmh_shapes(q.shape, k.shape, v.shape, a.shape, grad_final.shape)
    codes = _codes(q, a, grad_final)
    real_output = bool(codes[1]) and not grad_o.is_complex()  # the cotangent of Re(o)
    lib = native._builder().load()
    q, k, v, a, ck = (_ready(x) for x in (q, k, v, a, ck))
    grad_o = _ready(grad_o.to(_output_dtype(grad_final.dtype, real_output)))
    grad_final = _ready(grad_final)
    gq, gk, gv, ga, gs0 = (_empty(x) for x in (q, k, v, a, grad_final))
    buffers = (q, k, v, a, ck, grad_o, grad_final, gq, gk, gv, ga, gs0)
    _status(lib.linrec_gmh_bwd(*codes, int(real_output), n, t, h, kk, vv, r, *(_ptr(x) for x in buffers)))
    return gq, gk, gv, ga, gs0


@gmh_bwd.register_fake
def _gmh_bwd_fake(q, k, v, a, ck, grad_o, grad_final):
    return tuple(x.new_empty(x.shape) for x in (q, k, v, a, grad_final))


def _setup_context(ctx, inputs, output):
    q, k, v, a, s0, _ = inputs
    ctx.save_for_backward(q, k, v, a, output[2])
    ctx.state = (s0.shape, s0.dtype, output[0].dtype)


def _backward(ctx, grad_o, grad_final, _grad_ck):
    if torch.is_grad_enabled():  # create_graph=True: the backward kernel has no derivative of its own
        raise RuntimeError(native.fused_double_backward_message("multi-head GateLoop"))
    q, k, v, a, ck = ctx.saved_tensors
    shape, dtype, o_dtype = ctx.state
    grad_final = torch.zeros(shape, dtype=dtype) if grad_final is None else grad_final.to(dtype)
    grad_o = torch.zeros((*q.shape[:3], v.shape[-1]), dtype=o_dtype) if grad_o is None else grad_o.to(o_dtype)
    return (*gmh_bwd(q, k, v, a, ck, grad_o, grad_final), None)


gmh_fwd.register_autograd(_backward, setup_context=_setup_context)


def native_gateloop_mh(q: Tensor, k: Tensor, v: Tensor, a: Tensor, initial_state: Tensor,
                       real_output: bool = False) -> tuple[Tensor, Tensor]:
    """``(o (B, T, H, V), S_T (B, H, K, V))`` in the state dtype, differentiable in every input; ``real_output``:
    ``o`` is ``Re(o)``, real (a complex state read out by its real part: half the bytes).

    Args:
      q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``: real, float32/float64 (the state's real dtype).
      a: ``(B, T, H, R, 1)`` decays, ``R = K`` or 1; real, or complex with a complex state.
      initial_state: ``(B, H, K, V)``, the state dtype (real or complex).
    """
    if a.dim() != 5 or a.shape[-1] != 1:
        raise ValueError(f"native multi-head GateLoop: a must be (B, T, H, R, 1), got {tuple(a.shape)}")
    a = a.expand(*q.shape[:3], a.shape[3], 1).squeeze(-1)
    o, s_final, _ = gmh_fwd(q, k, v, a, initial_state, bool(real_output) and initial_state.is_complex())
    return o, s_final
