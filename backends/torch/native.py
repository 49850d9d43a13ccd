"""``method="native"`` for the PyTorch backend: the compiled CPU kernel (``linrec.backends.native``) as custom ops.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the shape of ``a`` per step.

Two ``torch.library`` custom ops on the kernel layout (``N`` batch, ``T`` time, ``D = Da * R`` state):

- ``linrec::scan_fwd(a (N, T, Da), b (N, T, D), h0 (N, D), cut (N, T) bool?, reverse) -> (h, final)``
- ``linrec::scan_bwd(a, h, h0, grad_h, grad_final, cut, reverse) -> (a_bar, b_bar, h0_bar)``

with fake (meta) implementations, so ``torch.compile(fullgraph=True)`` sees one opaque node each, and autograd
registered as the second op. bfloat16 ``a``, ``b`` go to the kernel as they are (it reads and writes bfloat16 and
carries a float32 state, recurrence.md §5): ``h``, ``a_bar``, ``b_bar`` are then bfloat16 and ``h0``, ``final`` and
their gradients float32. Gradients follow PyTorch's complex convention (the kernel's ``conjugate=1`` mode,
recurrence.md §10). The ops run the C function on contiguous CPU tensors through ctypes (the GIL is released).
A backward run with ``create_graph=True`` (double backward) computes the same VJP from differentiable pieces
(:func:`_differentiable_backward`: a ``scan_fwd`` in the opposite direction plus elementwise ops), so every order of
derivative works; the ordinary backward, eager or compiled, stays the one fused ``scan_bwd`` call.

:func:`native_scan` has the signature of the backend's per-method kernels (``_sequential`` in ``scan.py``);
:func:`native_linear_scan` also takes the cut mask, so resets need no ``a := 0`` pass and ``reverse`` no flips.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.torch import output_pool

__all__ = ["native_linear_scan", "native_scan", "scan_bwd", "scan_fwd", "state_dtype"]


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64,
                 torch.complex128: np.complex128}


_POOLED = (*_NUMPY_DTYPES, torch.bfloat16, torch.bool)


def _ready(x: Tensor) -> Tensor:
    """A contiguous CPU tensor whose memory holds its values (no lazy conjugate or negative bit)."""
    if x.device.type != "cpu":
        raise ValueError(f"method='native' runs on CPU tensors, got a tensor on {x.device}")
    x = x.detach().resolve_conj().resolve_neg()
    if x.is_contiguous() or x.dtype not in _POOLED:
        return x.contiguous()
    # e.g. a transposed or sliced cotangent: materialised into a pooled buffer, whose pages are mapped
    out = _empty_shaped(x.shape, x.dtype)
    return out.copy_(x)


def _cotangent_rows(ct: Tensor, dtype: torch.dtype) -> tuple[Tensor, int]:
    """A cotangent ``(N, T, D)`` as the backward kernels read it: ``(tensor, row stride)``. The expanded cotangent of
    ``h.sum()`` (one row over every step, ``native.shares_one_row``) is passed as that one row with
    stride 0, not materialised at the size of ``h``."""
    ct = ct.to(dtype)
    if native.shares_one_row(tuple(ct.shape), ct.stride()):
        return _ready(ct[0, 0]), 0
    return _ready(ct), ct.shape[2]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _codes(a: Tensor, s: Tensor) -> tuple[int, int]:
    names = (_name(a.dtype), _name(s.dtype))
    if names not in native.KERNEL_PAIRS:
        raise TypeError(f"method='native' supports the (a, state) dtype pairs {sorted(native.KERNEL_PAIRS)}, "
                        f"got {names}")
    return native.DTYPE_CODES[names[0]], native.DTYPE_CODES[names[1]]


def state_dtype(b_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the kernel's ``h0``/``final`` for ``b`` of ``b_dtype``: float32 for bfloat16, else ``b_dtype``."""
    return torch.float32 if b_dtype == torch.bfloat16 else b_dtype


def _empty(like: Tensor) -> Tensor:
    """An uninitialised contiguous CPU tensor shaped like ``like``, allocated by NumPy (through
    :mod:`linrec.backends.torch.output_pool`, which reuses freed outputs of the same size).

    NumPy (like the kernel itself, for outputs over 8 MiB) asks for transparent huge pages on large buffers, so the
    first writes fault 2 MiB at a time, not 4 KiB. Measured (8x4096x512 float32, first touch): 27 ms vs 115 ms.
    """
    return _empty_shaped(like.shape, like.dtype)


def _empty_shaped(shape, dtype: torch.dtype) -> Tensor:
    """:func:`_empty` for a given shape and dtype; large buffers come from (and return to) the output pool."""
    if dtype == torch.bfloat16:  # NumPy has no bfloat16: the same 16-bit buffer, viewed
        return torch.from_numpy(output_pool.empty(tuple(shape), np.uint16)).view(torch.bfloat16)
    if dtype == torch.bool:
        return torch.from_numpy(output_pool.empty(tuple(shape), np.bool_))
    return torch.from_numpy(output_pool.empty(tuple(shape), _NUMPY_DTYPES[dtype]))


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _status(code: int) -> None:
    if code:
        raise ValueError(f"linrec native kernel failed with status {code} (1: dtypes, 2: sizes)")


@torch.library.custom_op("linrec::scan_fwd", mutates_args=())
def scan_fwd(a: Tensor, b: Tensor, h0: Tensor, cut: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """The forward kernel: ``h (N, T, D)`` and ``final (N, D)``."""
    lib = native._builder().load()
    a, b, h0 = _ready(a), _ready(b), _ready(h0)
    cut = None if cut is None else _ready(cut.to(torch.bool))
    codes, (n, t, d) = _codes(a, b), b.shape
    if h0.dtype != state_dtype(b.dtype):
        raise TypeError(f"linrec::scan_fwd needs h0 in {state_dtype(b.dtype)} for b in {b.dtype}, got {h0.dtype}")
    h, final = _empty(b), _empty(h0)
    _status(lib.linrec_scan_fwd(*codes, n, t, d, a.shape[2], _ptr(a), _ptr(b), _ptr(h0), _ptr(cut),
                                int(reverse), _ptr(h), _ptr(final)))
    return h, final


@scan_fwd.register_fake
def _scan_fwd_fake(a, b, h0, cut, reverse):
    return b.new_empty(b.shape), h0.new_empty(h0.shape)


@torch.library.custom_op("linrec::scan_bwd", mutates_args=())
def scan_bwd(a: Tensor, h: Tensor, h0: Tensor, grad_h: Tensor, grad_final: Tensor, cut: Tensor | None,
             reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The backward kernel in PyTorch's convention: ``(a_bar (N, T, Da), b_bar (N, T, D), h0_bar (N, D))``."""
    lib = native._builder().load()
    a, h, h0 = _ready(a), _ready(h), _ready(h0)
    (grad_h, ct_rs), grad_final = _cotangent_rows(grad_h, h.dtype), _ready(grad_final.to(h0.dtype))
    cut = None if cut is None else _ready(cut.to(torch.bool))
    codes, (n, t, d) = _codes(a, h), h.shape
    if h0.dtype != state_dtype(h.dtype):
        raise TypeError(f"linrec::scan_bwd needs h0 in {state_dtype(h.dtype)} for h in {h.dtype}, got {h0.dtype}")
    a_bar, b_bar, h0_bar = _empty(a), _empty(h), _empty(h0)
    _status(lib.linrec_scan_bwd(*codes, n, t, d, a.shape[2], _ptr(a), _ptr(h), _ptr(h0), _ptr(grad_h), ct_rs,
                                _ptr(grad_final), _ptr(cut), int(reverse), 1, _ptr(a_bar), _ptr(b_bar),
                                _ptr(h0_bar)))
    return a_bar, b_bar, h0_bar


@scan_bwd.register_fake
def _scan_bwd_fake(a, h, h0, grad_h, grad_final, cut, reverse):
    return a.new_empty(a.shape), h.new_empty(h.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    a, _, h0, cut, reverse = inputs
    h, _ = output
    ctx.save_for_backward(a, h0, h, cut)
    ctx.reverse = reverse


def _backward(ctx, grad_h, grad_final):
    a, h0, h, cut = ctx.saved_tensors
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h
    grad_final = torch.zeros_like(h0) if grad_final is None else grad_final
    if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable (double backward)
        a_bar, b_bar, h0_bar = _differentiable_backward(a, h, h0, grad_h, grad_final, cut, ctx.reverse)
    else:
        a_bar, b_bar, h0_bar = scan_bwd(a, h, h0, grad_h, grad_final, cut, ctx.reverse)
    return a_bar, b_bar, h0_bar, None, None


def _differentiable_backward(a: Tensor, h: Tensor, h0: Tensor, grad_h: Tensor, grad_final: Tensor,
                             cut: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """What ``scan_bwd`` computes, built from differentiable ops: the adjoint recurrence is again a scan, run by
    :func:`scan_fwd` in the opposite direction, so every order of derivative is native scans plus elementwise ops.

    ``a (N, T, Da)``, ``h``/``grad_h (N, T, D)``, ``h0``/``grad_final (N, D)``, ``cut (N, T)``; PyTorch's complex
    convention (the Jacobian conjugated, recurrence.md §10). ``h`` is the forward's output, so the second
    derivative flows through it back into ``a``, ``b`` and ``h0``. With bfloat16 ``a``, ``h`` (float32 ``h0``) the
    elementwise products are taken in float32, as the kernel does.
    """
    if reverse:  # the same computation in processing order
        flip = lambda x: None if x is None else x.flip(1)  # noqa: E731
        a_bar, b_bar, h0_bar = _differentiable_backward(flip(a), flip(h), h0, flip(grad_h), grad_final, flip(cut),
                                                        False)
        return a_bar.flip(1), b_bar.flip(1), h0_bar
    n, t, da = a.shape
    d = h.shape[2]
    r = d // da if da else 1
    if t == 0:
        return a.new_zeros(a.shape), h.new_zeros(h.shape), grad_final
    no_cut = torch.zeros((n, 1), dtype=torch.bool, device=h.device)
    cut = torch.zeros((n, t), dtype=torch.bool, device=h.device) if cut is None else cut.to(torch.bool)
    a_conj = a.conj() if a.is_complex() else a
    # g_k = grad_h_k + conj(a_{k+1}) g_{k+1} (dropped where step k+1 is cut), g_{T-1} = grad_h_{T-1} + grad_final:
    # a reverse scan of grad_h whose decays are a shifted one step (the last one multiplies grad_final).
    a_next = torch.cat([a_conj[:, 1:], torch.ones_like(a_conj[:, :1])], 1)
    cut_next = torch.cat([cut[:, 1:], no_cut], 1)
    g, _ = scan_fwd(a_next, grad_h.to(h.dtype), grad_final.to(h0.dtype), cut_next, True)
    # .to(h0.dtype): a no-op except for bfloat16 streams, whose products the kernel forms in float32
    h_prev = torch.cat([h0[:, None], h[:, :-1].to(h0.dtype)], 1)
    a_bar = (g.to(h0.dtype) * h_prev.conj()).reshape(n, t, da, r).sum(-1)
    if not a.is_complex() and a_bar.is_complex():
        a_bar = a_bar.real  # a real decay of a complex state: the imaginary direction does not exist
    a_bar = torch.where(cut[..., None], torch.zeros((), dtype=a_bar.dtype), a_bar)  # cut steps: where, not times 0
    a_first = a_conj[:, 0, :, None]
    a_first = a_first.float() if a_first.dtype == torch.bfloat16 else a_first  # a real decay stays real
    h0_bar = (g[:, 0].to(h0.dtype).reshape(n, da, r) * a_first).reshape(n, d)
    h0_bar = torch.where(cut[:, :1], torch.zeros((), dtype=h0_bar.dtype), h0_bar)
    return a_bar.to(a.dtype), g, h0_bar


scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def native_linear_scan(
    a: Tensor, b: Tensor, h0: Tensor | None, cut: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """``(h, final_state)`` of ``h_t = a_t h_{t-1} + b_t`` on validated inputs in the compute dtype, time order.

    Args:
      a: ``(B, T, *Sa)`` float32/float64/complex64/complex128 (real ``a`` with complex ``b`` allowed), or bfloat16
        with bfloat16 ``b``: read as it is, the state carried in float32 and ``h`` rounded to bfloat16 on store.
      b: ``(B, T, *S)``.
      h0: ``(B, *S)`` in the dtype of ``b`` (float32 for bfloat16 ``b``: then ``final_state`` is float32 too, for
        the caller to round), or ``None`` (zeros).
      cut: ``(B, T)`` bool, ``linrec.spec.reference.cut_mask(resets, reverse)``: the step ignores the carried state.
      reverse: run from ``t = T-1`` down to 0.

    A decay broadcast over trailing state axes (``(H, K, 1)``, ``(1, 1, 1)``) is passed as is; any other broadcast is
    materialised up to its last full axis (see ``linrec.backends.native.decay_layout``).
    """
    n, t, state = b.shape[0], b.shape[1], tuple(b.shape[2:])
    d = math.prod(state)
    _codes(a, b)
    state_type = state_dtype(b.dtype)
    if h0 is not None and h0.dtype != state_type:
        raise TypeError(f"method='native' needs h0 in {state_type} for b in {b.dtype}, got {h0.dtype}")
    if h0 is None:
        h0 = b.new_zeros((n, *state), dtype=state_type)
    target, da, _ = native.decay_layout(tuple(a.shape[2:]), state)
    a3 = a.expand(n, t, *target).reshape(n, t, da)
    h, final = scan_fwd(a3, b.reshape(n, t, d), h0.reshape(n, d), cut, bool(reverse))
    return h.reshape(b.shape), final.reshape(h0.shape)


def native_scan(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool = False) -> Tensor:
    """The per-method kernel signature of ``linrec.backends.torch.scan``: ``h (B, T, *S)`` in time order.

    ``a (B, T, *Sa)`` with resets already realised as ``a := 0``, ``b (B, T, *S)``, ``h0 (B, *S)`` or ``None``,
    compute dtype.
    """
    return native_linear_scan(a, b, h0, None, reverse)[0]
