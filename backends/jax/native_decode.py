"""The JAX decoders' step as one call into the native library (``linrec.backends.native.decode``), through XLA FFI.

The twin of ``linrec.backends.torch.native_decode``. A JAX ``decoder()`` is one XLA program already, so what the
native step removes here is XLA:CPU's per-operation (thunk) overhead and its dot at small batch, which streams the
weights on one core: the program's products stream them on every core (``benchmarks/results/decode.md``).

A :class:`NativeStep` holds the program and the float32 host copies of the weights it reads (kernels in packed
form); calling it (traceable, inside ``jax.jit``) runs one step: ``(input_t, h, pe_position) -> (out_t, h)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from linrec.backends import native
from linrec.backends.jax.native import register_targets
from linrec.backends.jax.native_dense import PackedKernel
from linrec.backends.native import decode as native_decode
from linrec.backends.native import dense as native_dense_kernel
from linrec.spec.state import State

__all__ = ["HeadStateStep", "NativeStep", "check_fused", "decoder_step", "gated_linear_rnn_lm_step",
           "gated_linear_rnn_step", "gateloop_mh_step", "layer_decoder", "mingru_lm_step", "mingru_step",
           "minlstm_step", "refusal"]

_TARGET = "linrec_decode"


def refusal(params: Mapping[str, Any]) -> str | None:
    """Why the native step cannot serve these (prepared, packed) parameters, or ``None`` when it can."""
    if not native.available():
        return f"the native kernel is not built ({native.build_error()})"
    try:
        register_targets(_TARGET)
    except (native.NativeBuildError, AttributeError) as err:  # a library built without the XLA FFI handlers
        return f"the native kernel has no XLA FFI handlers ({err})"
    for name, value in params.items():
        array = value.packed if isinstance(value, PackedKernel) else jnp.asarray(value)
        if array.dtype != jnp.float32 or any(d.platform != "cpu" for d in array.devices()):
            return f"it runs float32 parameters on the CPU; {name} is {array.dtype} on {array.devices()}"
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
    """A model's decode step on the native library. Call (inside ``jax.jit`` or not) with ``input_t`` (``(B,)``
    ids or ``(B, F)``), the layers' states ``h`` (``L`` arrays ``(B, H)``, float32) and ``pe_position`` (``(B,)``
    table rows, or ``None``) → ``(out_t (B, V), h)``."""

    state_dtype = jnp.float32  # what a layer decoder hands it (HeadStateStep: the multi-head GateLoop's)

    def __init__(self, program: native_decode.Program, layout: native_decode.Layout, d_h: int, d_output: int,
                 tokens: bool) -> None:
        self._program, self._layout = program, layout
        self._d_h, self._d_output, self._tokens = d_h, d_output, tokens

    def __call__(self, input_t: Array, h: tuple[Array, ...], pe_position: Array | None = None
                 ) -> tuple[Array, tuple[Array, ...]]:
        m = input_t.shape[0]
        if any(h_l.dtype != jnp.float32 for h_l in h):
            raise TypeError(f"the native decode step carries float32 states, got {[str(h_l.dtype) for h_l in h]}")
        inputs = input_t.astype(jnp.int32 if self._tokens else jnp.float32)
        positions = jnp.zeros((m,), jnp.int32) if pe_position is None else pe_position.astype(jnp.int32)
        state = jax.ShapeDtypeStruct((m, self._d_h), jnp.float32)
        shapes = (jax.ShapeDtypeStruct((m, self._d_output), jnp.float32), *[state] * len(h),
                  jax.ShapeDtypeStruct((m * sum(self._layout.scratch),), jnp.float32))
        call = jax.ffi.ffi_call(_TARGET, shapes)
        out, *rest = call(inputs, positions, *h, ops=np.int64(self._program.address),
                          n_ops=np.int64(len(self._program)), widths=np.asarray(self._layout.scratch, np.int64))
        return out, tuple(rest[: len(h)])


def _program_step(build, params: Mapping[str, Any], config: Any, d_h: int, d_output: int, tokens: bool
                  ) -> NativeStep:
    register_targets(_TARGET)  # a step built directly (not through decoder_step's refusal) must find its handler
    hosts = native_decode.host_weights({k: v.kernel if isinstance(v, PackedKernel) else v for k, v in params.items()})
    program, layout = build(config, {k: v.ctypes.data for k, v in hosts.items()}, keep=hosts, tokens32=True)
    return NativeStep(program, layout, d_h, d_output, tokens)


def gated_linear_rnn_lm_step(params: Mapping[str, Any], config: Any) -> NativeStep:
    """The GatedLinearRNN LM's step (``params``: prepared float32 parameters under their canonical names, kernels
    packed or not, that :func:`refusal` accepts)."""
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
    ``(B, H, K, V)`` (complex64 as ``(re, im)`` pairs, float32 for a real gate) as one row of floats per batch row:
    ``(x_t (B, D), (S,)) -> (y_t (B, D), (S',))``, inside ``jax.jit`` or not."""

    def __init__(self, step: NativeStep, config: Any) -> None:
        self._step = step
        self._shape = (config.num_heads, config.d_key, config.d_value)
        self._complex = config.is_complex
        self.state_dtype = jnp.complex64 if config.is_complex else jnp.float32

    def __call__(self, x_t: Array, h: tuple[Array]) -> tuple[Array, tuple[Array]]:
        (state,) = h
        m = state.shape[0]
        rows = jnp.stack([state.real, state.imag], axis=-1) if self._complex else state
        y, (new,) = self._step(x_t, (rows.reshape(m, -1),))
        new = new.reshape(m, *self._shape, *((2,) if self._complex else ()))
        return y, (jax.lax.complex(new[..., 0], new[..., 1]) if self._complex else new,)


def gateloop_mh_step(params: Mapping[str, Any], config: Any) -> HeadStateStep:
    """The multi-head GateLoop layer's step (``params``: float32 CPU parameters, kernels plain or packed) for a
    configuration ``native.decode.gateloop_mh_refusal`` accepts."""
    register_targets(_TARGET)
    arrays = {k: np.asarray(v.kernel if isinstance(v, PackedKernel) else v) for k, v in params.items()}
    program, layout = native_decode.gateloop_mh_build(config, arrays)
    step = NativeStep(program, layout, native_decode.gateloop_mh_state_width(config), config.d_model, False)
    return HeadStateStep(step, config)


def layer_decoder(framework: Callable[[Array, Any], tuple[Array, Any]], native_step: NativeStep | None,
                  checked: Callable[[Array, Any], tuple[Array, Array]], fused: bool | None,
                  native_rows: int = native_dense_kernel.MAX_ROWS) -> Callable[[Array, Any], tuple[Array, Any]]:
    """A layer's ``decode(x_t, state) -> (y_t, State)``: ``native_step`` (one jitted call) for float32 inputs and
    states, else the ``framework`` decoder (``fused=True``: a ``TypeError`` instead). ``checked(x_t, state) ->
    (x_t, h)``: the step's argument checks, with ``h`` in the state dtype. Above ``native_rows`` rows ``fused=None``
    keeps the framework step, as the torch twin says why."""
    if native_step is None:
        return framework
    run = jax.jit(lambda x, h: native_step(x, (h,)))
    # (shape, dtype) of x_t and state.h that passed the checks as they were, float32 JAX arrays the program ran on:
    # the same again skips the eager checks (at batch 1 they cost a third of a token, ~25 us, as much as the program)
    accepted: set[tuple] = set()

    def decode(x_t: Array, state: Any) -> tuple[Array, Any]:
        h_in = state.h if type(state) is State else None
        if isinstance(x_t, jax.Array) and isinstance(h_in, jax.Array):
            key = (x_t.shape, x_t.dtype, h_in.shape, h_in.dtype)
            if key in accepted:
                y, (h,) = run(x_t, h_in)
                return y, State(h)
        if not fused and native_dense_kernel.step_rows(x_t) > native_rows:
            return framework(x_t, state)  # it checks its own arguments: no second pass of checks per token
        x, h = checked(x_t, state)
        rows_fit = fused or x.shape[0] <= native_rows
        if x.dtype == jnp.float32 and h.dtype == native_step.state_dtype and rows_fit:
            if x is x_t and h is h_in:
                accepted.add((x.shape, x.dtype, h.shape, h.dtype))
            y, (h,) = run(x, h)
            return y, State(h)
        if fused:
            raise TypeError(f"decoder(fused=True) runs float32 inputs, got {x.dtype}; use fused=None or False")
        return framework(x_t, state)

    return decode
