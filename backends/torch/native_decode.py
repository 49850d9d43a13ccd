"""The torch language models' decode step as one call into the native library (``linrec.backends.native.decode``).

Why torch only: PyTorch runs an eager step operation by operation, and at batch 1 the dispatch of ~60 small
operations per layer costs as much as reading the weights (``benchmarks/results/decode.md``); ``torch.compile``
still calls the native products through the dispatcher. JAX's ``decoder()`` is already one compiled XLA program.

A :class:`NativeStep` holds the program and the float32 tensors it reads (kernels in packed form), and runs a step
for any batch size (each product takes every row in one pass over the weights):
``(input_t, h, pe_position) -> (out_t, h)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from linrec.backends import native
from linrec.backends.native import decode as native_decode
from linrec.backends.native import dense as native_dense_kernel
from linrec.backends.torch.native_dense import PackedKernel
from linrec.spec.state import State

__all__ = ["HeadStateStep", "NativeStep", "check_fused", "decoder_step", "gated_linear_rnn_lm_step",
           "gated_linear_rnn_step", "gateloop_mh_step", "layer_decoder", "mingru_lm_step", "mingru_step",
           "minlstm_step", "refusal"]


def refusal(params: Mapping[str, Any]) -> str | None:
    """Why the native step cannot serve these (prepared, packed) parameters, or ``None`` when it can."""
    if not native.available():
        return f"the native kernel is not built ({native.build_error()})"
    for name, value in params.items():
        tensor = value.packed if isinstance(value, PackedKernel) else value
        if name.endswith("kernel") and not isinstance(value, PackedKernel):
            return f"{name} is not a packed float32 CPU kernel"
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            return f"it runs float32 parameters on the CPU; {name} is {tensor.dtype} on {tensor.device}"
    return None


check_fused = native_decode.check_fused


def decoder_step(build, params: Mapping[str, Any], config: Any, fused: bool | None,
                 config_refusal: Callable[[Any], str | None] | None = None) -> NativeStep | None:
    """What a ``decoder(fused=...)`` runs: ``build(params, config)``, or ``None`` for the framework step
    (``native.decode.choose``: ``fused=True`` raises saying why the native step cannot serve ``params``, or
    ``config`` by ``config_refusal``)."""
    return native_decode.choose(fused, lambda: refusal(params) or (config_refusal and config_refusal(config)),
                                lambda: build(params, config))


class NativeStep:
    """A model's decode step on the native library. Call with ``input_t`` (``(B,)`` ids or ``(B, F)``), the
    layers' states ``h`` (``L`` tensors ``(B, H)``, float32) and ``pe_position`` (``(B,)`` table rows) →
    ``(out_t (B, V), h)``; the new states are views of one ``(L, B, H)`` tensor."""

    state_dtype = torch.float32  # what a layer decoder hands it (HeadStateStep: the multi-head GateLoop's)

    def __init__(self, program: native_decode.Program, layout: native_decode.Layout, d_h: int, d_output: int,
                 tokens: bool) -> None:
        self._program, self._layout = program, layout
        self._d_h, self._d_output, self._tokens = d_h, d_output, tokens
        self._scratch_width = sum(layout.scratch)

    def __call__(self, input_t: Tensor, h: tuple[Tensor, ...], pe_position: Tensor | None = None
                 ) -> tuple[Tensor, tuple[Tensor, ...]]:
        m = input_t.shape[0]
        if any(h_l.dtype != torch.float32 for h_l in h):
            raise TypeError(f"the native decode step carries float32 states, got {[str(h_l.dtype) for h_l in h]}")
        inputs = input_t.to(torch.int64) if self._tokens else input_t.to(torch.float32)
        inputs = inputs.contiguous()
        positions = None if pe_position is None else pe_position.to(torch.int32).contiguous()
        h = tuple(h_l.contiguous() for h_l in h)
        out = torch.empty((m, self._d_output), dtype=torch.float32)
        new = torch.empty((len(h), m, self._d_h), dtype=torch.float32)
        scratch = torch.empty((m * self._scratch_width,), dtype=torch.float32)
        slots = [inputs.data_ptr(), 0 if positions is None else positions.data_ptr(), out.data_ptr()]
        slots += [h_l.data_ptr() for h_l in h]
        slots += [new.data_ptr() + l * m * self._d_h * 4 for l in range(len(h))]
        base, offset = scratch.data_ptr(), 0
        for width in self._layout.scratch:
            slots.append(base + offset * 4)
            offset += m * width
        self._program.run(slots, m)
        return out, new.unbind(0)


def _program_step(build, params: Mapping[str, Any], config: Any, d_h: int, d_output: int, tokens: bool
                  ) -> NativeStep:
    tensors = {k: v.packed if isinstance(v, PackedKernel) else v.contiguous() for k, v in params.items()}
    program, layout = build(config, {k: v.data_ptr() for k, v in tensors.items()}, keep=tensors)
    return NativeStep(program, layout, d_h, d_output, tokens)


def gated_linear_rnn_lm_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The GatedLinearRNN LM's step (``params``: prepared float32 parameters with packed kernels,
    ``native_dense.pack_kernels``, that :func:`refusal` accepts)."""
    return _program_step(native_decode.gated_linear_rnn_lm_program, params, config, config.d_h, config.d_output,
                         config.use_word_embedding)


def mingru_lm_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The minGRU LM's step, as :func:`gated_linear_rnn_lm_step`."""
    return _program_step(native_decode.mingru_lm_program, params, config, config.d_inner, config.vocab_size, True)


def gated_linear_rnn_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The GatedLinearRNN layer's step, ``(x_t (B, D_in), (h,)) -> (y_t, (h,))``; parameters as
    :func:`gated_linear_rnn_lm_step`."""
    return _program_step(native_decode.gated_linear_rnn_program, params, config, config.d_h, config.d_model, False)


def mingru_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The minGRU layer's step, as :func:`gated_linear_rnn_step`."""
    d_out = config.d_model if config.out_proj else config.d_inner
    return _program_step(native_decode.mingru_program, params, config, config.d_inner, d_out, False)


def minlstm_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The minLSTM layer's step, as :func:`gated_linear_rnn_step`."""
    d_out = config.d_model if config.out_proj else config.d_inner
    return _program_step(native_decode.minlstm_program, params, config, config.d_inner, d_out, False)


class HeadStateStep:
    """The multi-head GateLoop layer's step on the native library (``native.decode.gateloop_mh_program``): its state
    ``(B, H, K, V)`` (complex64 as ``(re, im)`` pairs, float32 for a real gate) is one row of floats per batch row,
    viewed, not copied: ``(x_t (B, D), (S,)) -> (y_t (B, D), (S',))``."""

    def __init__(self, step: NativeStep, config: Any) -> None:
        self._step = step
        self._shape = (config.num_heads, config.d_key, config.d_value)
        self._complex = config.is_complex
        self.state_dtype = torch.complex64 if config.is_complex else torch.float32

    def __call__(self, x_t: Tensor, h: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        (state,) = h
        m = state.shape[0]
        rows = torch.view_as_real(state) if self._complex else state
        y, (new,) = self._step(x_t, (rows.reshape(m, -1),))
        if self._complex:
            return y, (torch.view_as_complex(new.view(m, *self._shape, 2)),)
        return y, (new.view(m, *self._shape),)


def gateloop_mh_step(params: Mapping[str, Any], config: Any) -> HeadStateStep:
    """The multi-head GateLoop layer's step (``params``: float32 CPU parameters, kernels plain or packed) for a
    configuration ``native.decode.gateloop_mh_refusal`` accepts."""
    arrays = {k: (v.kernel if isinstance(v, PackedKernel) else v).detach().numpy() for k, v in params.items()}
    program, layout = native_decode.gateloop_mh_build(config, arrays)
    step = NativeStep(program, layout, native_decode.gateloop_mh_state_width(config), config.d_model, False)
    return HeadStateStep(step, config)


def layer_decoder(framework: Callable[[Tensor, Any], tuple[Tensor, Any]], native_step: NativeStep | None,
                  checked: Callable[[Tensor, Any], tuple[Tensor, Tensor]], fused: bool | None,
                  native_rows: int = native_dense_kernel.MAX_ROWS) -> Callable[[Tensor, Any], tuple[Tensor, Any]]:
    """A layer's ``decode(x_t, state) -> (y_t, State)``: ``native_step`` for float32 inputs and states, else the
    ``framework`` decoder (``fused=True``: a ``TypeError`` instead). ``checked(x_t, state) -> (x_t, h)``: the
    step's argument checks, with ``h`` in the state dtype.

    Above ``native_rows`` rows (``MAX_ROWS`` by default, where the BLAS's cache blocking starts to outrun the native
    product) ``fused=None`` keeps the framework step; up to it the program wins for every layer (D=512 at 16 and 32
    rows: ``benchmarks/results/layers.md``); ``fused=True`` runs the program at any batch size."""
    if native_step is None:
        return framework

    @torch.no_grad()
    def decode(x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        if not fused and native_dense_kernel.step_rows(x_t) > native_rows:
            return framework(x_t, state)  # it checks its own arguments: no second pass of checks per token
        x, h = checked(x_t, state)
        rows_fit = fused or x.shape[0] <= native_rows
        if x.dtype == torch.float32 and h.dtype == native_step.state_dtype and rows_fit:
            y, (h,) = native_step(x, (h,))
            return y, State(h)
        if fused:
            raise TypeError(f"decoder(fused=True) runs float32 inputs, got {x.dtype}; use fused=None or False")
        return framework(x_t, state)

    return decode
