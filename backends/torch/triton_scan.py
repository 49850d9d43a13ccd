"""``method="triton"`` of the PyTorch ``linear_scan``: the diagonal scan as a Triton kernel, forward and backward.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``N = prod(*S)``.

On a CUDA device the kernels are compiled; on CPU tensors they run in Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the conformance suite holds them to the spec on a machine without a GPU: slow, exact in semantics.
``TRITON_INTERPRET`` is read when a kernel is *defined*, so the kernels module is imported lazily here: on CPU, if
the kernels are not defined yet, the variable is set first; if they were defined compiled (an earlier call on a
GPU), the call raises and says to set it (see ``_load_kernels``). ``auto`` never picks this method on CPU.

The kernels live in ``linrec.backends.torch.triton_scan_kernels``; see there for the blocking (a program per tile of
``N`` over blocks of ``T``, the state carried in registers). Inputs may be bf16/fp16 (read as such, the state is
float32), float32/float64, complex64/complex128 (real/imaginary pairs).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_BLOCK_T",
    "InterpretedKernelWarning",
    "available",
    "require_triton",
    "triton_linear_scan",
]

#: time steps per block when ``chunk_size`` is not given (a power of two; ``chunk_size`` is rounded up to one)
DEFAULT_BLOCK_T = 16
#: state elements per program (at most; fewer when ``N`` is smaller)
_MAX_BLOCK_N = 64
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
_FALLBACK = "use method='chunked' (or 'auto'), which computes the same function"
_kernels = None
_warned = {"interpreted": False}
#: whether the kernels were defined for the interpreter (set on first use)
_mode = {"interpreted": False}


class InterpretedKernelWarning(UserWarning):
    """A Triton kernel runs in Triton's interpreter (CPU tensors): correct, but far slower than any other method."""


def available() -> bool:
    """Whether triton is installed (found without importing it: ``import linrec`` loads no framework)."""
    return "triton" in sys.modules or importlib.util.find_spec("triton") is not None


def require_triton(method: str = "triton") -> None:
    """``ValueError`` for ``method="triton"`` when triton is not installed, naming the method that works."""
    if method == "triton" and not available():
        raise ValueError(
            "method='triton' needs the triton package (pip install 'linrec[triton]'; on CPU it runs in Triton's "
            f"interpreter); {_FALLBACK}"
        )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _load_kernels(device: torch.device):
    """The kernels module, defined under the right ``TRITON_INTERPRET`` for ``device`` (see the module doc).

    ``@triton.jit`` decides between compiling and interpreting when a kernel is defined (in every triton version;
    importing triton itself fixes nothing, torch imports it on its own). So: on CPU, before the kernels are defined,
    ``TRITON_INTERPRET=1`` is set (and stays set: the interpreter reads it while running too); kernels already
    defined compiled cannot take CPU tensors, kernels defined for the interpreter would run CUDA tensors through it.
    Either mismatch raises.
    """
    global _kernels
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"method='triton' runs on CUDA (or on CPU, interpreted); the tensors are on {device}: "
                         f"{_FALLBACK}")
    if _kernels is None:
        if device.type == "cpu" and not _interpreting():
            os.environ["TRITON_INTERPRET"] = "1"
        from linrec.backends.torch import triton_scan_kernels

        _kernels = triton_scan_kernels
        _mode["interpreted"] = _interpreting()
    if device.type == "cpu" and not _mode["interpreted"]:
        raise RuntimeError(
            "method='triton' on CPU tensors runs in Triton's interpreter, but its kernels were already defined "
            "compiled in this process (TRITON_INTERPRET was not set when they were first used, on a GPU): set "
            f"TRITON_INTERPRET=1 in the environment before the first call, move the tensors to CUDA, or {_FALLBACK}"
        )
    if device.type == "cuda" and _mode["interpreted"] and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "method='triton' was first used on CPU tensors in this process, so its kernels were defined for Triton's "
            "interpreter and would run these CUDA tensors interpreted (slowly): use the GPU in a fresh process, or "
            "set TRITON_INTERPRET=1 to interpret on purpose"
        )
    if _mode["interpreted"] and not _warned["interpreted"]:
        _warned["interpreted"] = True
        warnings.warn("method='triton' runs in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors): exact, but "
                      "slow; it is meant for testing the kernel, and 'auto' never picks it on CPU",
                      InterpretedKernelWarning, stacklevel=4)
    return _kernels


def _check_dtypes(*xs: Tensor | None) -> None:
    for x in xs:
        if x is not None and x.dtype not in _SUPPORTED:
            raise TypeError(f"method='triton' supports {', '.join(str(d)[6:] for d in _SUPPORTED)}; got {x.dtype}: "
                            f"{_FALLBACK}")


def _block_t(chunk_size: int | None) -> int:
    size = chunk_size or DEFAULT_BLOCK_T
    return 1 << max(0, (size - 1).bit_length())


def _block_n(n: int) -> int:
    return min(_MAX_BLOCK_N, 1 << max(0, (n - 1).bit_length()))


def _real_view(x: Tensor) -> Tensor:
    """``x`` with complex values as ``(..., 2)`` real pairs (strides in real elements); real ``x`` unchanged."""
    return torch.view_as_real(x.resolve_conj()) if x.is_complex() else x


def _strides(x: Tensor, n_axes: int) -> tuple[int, ...]:
    return tuple(x.stride()[:n_axes])


def _state_dtype(b: Tensor) -> torch.dtype:
    if b.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return b.dtype


def _flat(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a``, ``b`` as ``(B, T, N)`` (``a`` broadcast to ``b``'s state shape: a zero-stride view where possible)."""
    batch, n_time, n = b.shape[0], b.shape[1], math.prod(b.shape[2:])
    return a.expand(b.shape).reshape(batch, n_time, n), b.reshape(batch, n_time, n)


def _launch_fwd(a3: Tensor, b3: Tensor, h0: Tensor | None, cut: Tensor | None, reverse: bool,
                block_t: int, gate: int = 0) -> Tensor:
    """``h`` (B, T, N) in the state dtype from ``(B, T, N)`` operands; ``h0`` (B, N) or None; ``cut`` (B, T) bool."""
    batch, n_time, n = b3.shape
    h = torch.empty((batch, n_time, n), dtype=_state_dtype(b3), device=b3.device)
    if h.numel() == 0:
        return h
    k = _load_kernels(b3.device)
    av, bv, hv = _real_view(a3), _real_view(b3), _real_view(h)
    h0v = None if h0 is None else _real_view(h0)
    block_n = _block_n(n)
    grid = (batch, _cdiv(n, block_n))
    k.scan_fwd_kernel[grid](
        av, bv, hv if h0v is None else h0v, hv if cut is None else cut, hv,
        n_time, n,
        *_strides(av, 3), *_strides(bv, 3), *((0, 0) if h0v is None else _strides(h0v, 2)),
        *((0, 0) if cut is None else _strides(cut, 2)), *_strides(hv, 3),
        REVERSE=bool(reverse), HAS_H0=h0 is not None, HAS_CUT=cut is not None,
        A_COMPLEX=a3.is_complex(), COMPLEX=b3.is_complex(), BLOCK_T=block_t, BLOCK_N=block_n,
        LOG_T=block_t.bit_length() - 1, GATE=gate,
    )
    return h


def _cdiv(x: int, y: int) -> int:
    return -(-x // y)


class _TritonScanFn(torch.autograd.Function):
    """``(h, final_state)`` in the state dtype; backward is one kernel pass (reverse scan of ḣ plus ``ā``)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, cut: Tensor | None, reverse: bool,
                block_t: int) -> tuple[Tensor, Tensor]:
        a3, b3 = _flat(a, b)
        batch, n_time, n = b3.shape
        h0_2 = None if h0 is None else h0.reshape(batch, n)
        h3 = _launch_fwd(a3, b3, h0_2, cut, reverse, block_t)
        h = h3.reshape(b.shape)
        if n_time > 0:
            final = h[:, 0 if reverse else -1].clone()
        elif h0 is not None:
            final = h0.to(h.dtype).clone()
        else:
            final = torch.zeros((b.shape[0], *b.shape[2:]), dtype=h.dtype, device=b.device)
        ctx.save_for_backward(a, h3, h0_2, cut)
        ctx.reverse, ctx.block_t, ctx.b_shape, ctx.b_dtype = reverse, block_t, b.shape, b.dtype
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return h, final

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_final: Tensor):
        a, h3, h0_2, cut = ctx.saved_tensors
        batch, n_time, n = h3.shape
        b_shape = ctx.b_shape
        if n_time == 0:
            grad_h0 = None if h0_2 is None else grad_final.to(ctx.h0_dtype)
            return torch.zeros_like(a), grad_h.to(ctx.b_dtype), grad_h0, None, None, None
        a3 = a.expand(b_shape).reshape(batch, n_time, n)
        gh3 = grad_h.reshape(batch, n_time, n)
        gf2 = grad_final.reshape(batch, n)
        g3 = torch.empty_like(h3)
        ga_full = torch.empty_like(h3)  # real a with a complex state: only the real part is written and kept
        k = _load_kernels(h3.device)
        av, hv, ghv, gfv, gv = _real_view(a3), _real_view(h3), _real_view(gh3), _real_view(gf2), _real_view(g3)
        ga_view = _real_view(ga_full)
        h0v = None if h0_2 is None else _real_view(h0_2)
        block_n = _block_n(n)
        k.scan_bwd_kernel[(batch, _cdiv(n, block_n))](
            av, hv, gv if h0v is None else h0v, gv if cut is None else cut, ghv, gfv, gv, ga_view, av, gv,
            n_time, n,
            *_strides(av, 3), *_strides(hv, 3), *_strides(ghv, 3), *((0, 0) if h0v is None else _strides(h0v, 2)),
            *((0, 0) if cut is None else _strides(cut, 2)), *_strides(gv, 3), *_strides(gfv, 2),
            REVERSE=bool(ctx.reverse), HAS_H0=h0_2 is not None, HAS_CUT=cut is not None,
            A_COMPLEX=a.is_complex(), COMPLEX=h3.is_complex(), BLOCK_T=ctx.block_t, BLOCK_N=block_n,
            LOG_T=ctx.block_t.bit_length() - 1, GATE=0,
        )
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            ga = ga_full if a.is_complex() or not h3.is_complex() else ga_full.real
            grad_a = ga.reshape(b_shape).sum_to_size(a.shape).to(a.dtype)
        if h0_2 is not None and ctx.needs_input_grad[2]:
            first = n_time - 1 if ctx.reverse else 0
            link = a3[:, first].to(g3.dtype).conj() * g3[:, first]
            if cut is not None:
                link = torch.where(cut[:, first, None], torch.zeros_like(link), link)
            grad_h0 = link.reshape(b_shape[:1] + b_shape[2:]).to(ctx.h0_dtype)
        grad_b = g3.reshape(b_shape).to(ctx.b_dtype)
        return grad_a, grad_b, grad_h0, None, None, None


def triton_linear_scan(
    a: Tensor, b: Tensor, h0: Tensor | None, cut: Tensor | None, reverse: bool, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(h, final_state)`` (B, T, *S) and (B, *S) in the state dtype (float32 for bf16/fp16 ``b``), differentiable.

    Args:
      a: ``(B, T, *Sa)`` decays (any supported dtype; a real ``a`` with a complex ``b`` is allowed).
      b: ``(B, T, *S)``; h0: ``(B, *S)`` or None (zeros), in the state dtype.
      cut: ``(B, T)`` bool, the steps whose incoming link is cut (resets realised, ``linrec.spec.reference.cut_mask``).
      reverse: scan from ``T-1`` down to 0.
      chunk_size: the kernel's time block (rounded up to a power of two; default ``DEFAULT_BLOCK_T``).
    """
    require_triton()
    _check_dtypes(a, b, h0)
    if a.device != b.device:
        raise ValueError(f"method='triton': a is on {a.device}, b on {b.device}; put both on one device")
    return _TritonScanFn.apply(a, b, h0, cut, bool(reverse), _block_t(chunk_size))
