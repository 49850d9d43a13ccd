"""Native dense products for the PyTorch decoders (``linrec.backends.native.dense``).

Shape legend: ``M`` rows, ``I`` input width, ``O`` output width.

A decoder packs each float32 CPU kernel once (:func:`pack_kernels`); :func:`linrec.backends.torch.dense.dense` then
sends a product with at most ``native.dense.MAX_ROWS`` rows and no autograd to the kernel and any other to
``torch.addmm`` on the kernel kept beside the panels. One custom op, ``linrec::dense(x (M, I), packed, bias?, O)``,
with a fake implementation so ``torch.compile(fullgraph=True)`` sees one node; eager calls skip the op dispatcher
(its ~10 µs are a third of a product at ``M = 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.native import dense as native_dense_kernel

__all__ = ["PackedKernel", "applies", "layer_decoder", "native_dense", "pack", "pack_kernels"]


class PackedKernel(NamedTuple):
    """A ``(I, O)`` float32 kernel and its panels for the native product (``native.dense.pack`` layout)."""

    kernel: Tensor  # (I, O): the framework's product uses it (more rows, gradients)
    packed: Tensor  # (ceil(O / 16) · I · 16,)

    @property
    def dtype(self) -> torch.dtype:
        return self.kernel.dtype

    @property
    def shape(self) -> torch.Size:
        return self.kernel.shape


def pack(kernel: Tensor) -> PackedKernel:
    """``kernel (I, O)`` float32 on CPU → :class:`PackedKernel` (a copy of the weights: the panels)."""
    if kernel.ndim != 2 or kernel.dtype != torch.float32 or kernel.device.type != "cpu":
        raise TypeError(f"pack takes a (I, O) float32 CPU kernel, got {kernel.dtype} {tuple(kernel.shape)} on "
                        f"{kernel.device}")
    packed = native_dense_kernel.pack(kernel.detach().numpy())
    return PackedKernel(kernel, torch.from_numpy(packed))


def pack_kernels(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every float32 CPU 2-D ``*kernel`` packed when the native kernel is built (else as is): what
    the decoders read. Packing copies those weights once; the decoder holds both forms."""
    if not native.available():
        return dict(params)
    return {k: pack(v) if (k.endswith("kernel") and isinstance(v, Tensor) and v.ndim == 2
                           and v.dtype == torch.float32 and v.device.type == "cpu") else v
            for k, v in params.items()}


def applies(x: Tensor, kernel: PackedKernel, bias: Tensor | None = None) -> bool:
    """Whether ``dense(x, kernel, bias)`` runs on the native kernel: float32 ``x`` of at most ``MAX_ROWS`` rows
    (leading axes flattened) and no gradient to record (the kernel has no backward; the framework's product does)."""
    rows = x.numel() // max(1, x.shape[-1])
    grads = torch.is_grad_enabled() and (x.requires_grad or kernel.kernel.requires_grad
                                         or (bias is not None and bias.requires_grad))
    return (x.dtype == torch.float32 and x.device.type == "cpu" and rows <= native_dense_kernel.MAX_ROWS
            and not grads and (bias is None or bias.dtype == torch.float32))


@torch.library.custom_op("linrec::dense", mutates_args=())
def dense_op(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``x (M, I) @ W + bias`` from ``packed = pack(W).packed`` → ``(M, O)``."""
    return _run(x, packed, bias, out_features)


@dense_op.register_fake
def _dense_fake(x, packed, bias, out_features):
    return x.new_empty((x.shape[0], out_features))


_library: list = []  # the loaded kernel library, once (each product would otherwise look it up: ~2 µs)


def _run(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    # a decode step calls this for every product: its Python costs count (~5 µs here against ~10 µs of product)
    m, n_in = x.shape
    if m > native_dense_kernel.MAX_ROWS or packed.shape[0] != native_dense_kernel.packed_size(n_in, out_features):
        native_dense_kernel.check_packed(tuple(x.shape), tuple(packed.shape), out_features)  # raises, saying why
    if not _library:
        _library.append(native._builder().load())
    x = x.contiguous()
    y = torch.empty((m, out_features), dtype=torch.float32)
    native._check(_library[0].linrec_dense(m, n_in, out_features, x.data_ptr(), packed.data_ptr(),
                                           None if bias is None else bias.contiguous().data_ptr(), y.data_ptr()))
    return y


def native_dense(x: Tensor, kernel: PackedKernel, bias: Tensor | None = None) -> Tensor:
    """``x (..., I) @ kernel (I, O) (+ bias (O,))`` → ``(..., O)`` on the native kernel (see :func:`applies`)."""
    n_in, n_out = kernel.kernel.shape
    x2 = x if x.ndim == 2 else x.reshape(-1, n_in)
    run = dense_op if torch.compiler.is_compiling() else _run
    y = run(x2, kernel.packed, bias, n_out)
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], n_out)


def layer_decoder(step: Callable[[Mapping[str, Any], Tensor, Any], tuple[Tensor, Any]], params: Mapping[str, Any],
                  compile: bool = False) -> Callable[[Tensor, Any], tuple[Tensor, Any]]:
    """``decode(x_t, state) -> (y_t, state)``: ``step(params, x_t, state)`` with ``params`` gathered and their
    float32 kernels packed once (:func:`pack_kernels`), without autograd: what the layers' ``decoder()`` return.
    ``compile=True``: the step as one ``torch.compile(fullgraph=True)`` graph (``compiled_step.compile_step``, no
    guards on the captured parameters; the first call compiles)."""
    from linrec.backends.torch.compiled_step import compile_step

    packed = pack_kernels(params)

    def core(x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        return step(packed, x_t, state)

    run = compile_step(core, ("packed",)) if compile else core

    @torch.no_grad()
    def decode(x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        return run(x_t, state)

    return decode
