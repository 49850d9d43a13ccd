"""GatedLinearRNN / GateLoop (SISO) in JAX: pure functions and a Flax NNX module (``spec/gated_linear_rnn.md``).

Shape legend: ``B`` batch, ``T`` time, ``D_in`` input features, ``H`` state width (``d_h``),
``D`` output features (``d_model``), ``n`` column blocks of ``proj`` (3 tied, 4 untied).

The parallel mode is one ``linear_scan`` over ``a = f``, ``b = i ⊙ input_act(u_in)`` (any method of
``linrec.backends.jax.scan``); the sequential mode is ``lax.scan`` over the step cell, the only form of
``use_true_recurrence``. The pure functions take the config as a static keyword, so they work under
``jax.jit`` (``static_argnames=("config", "mode", "method", "chunk_size")``), ``jax.grad`` and ``jax.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from linrec.backends.jax import native_decode
from linrec.backends.jax import native_gated_linear_rnn as _fused
from linrec.backends.jax import pallas_gated_linear_rnn as _pallas
from linrec.backends.jax.arrays import dtype_name, jnp_dtype, to_jax
from linrec.backends.jax.dense import as_kernel, dense
from linrec.backends.jax.native_dense import layer_decoder
from linrec.backends.jax.scan import linear_scan
from linrec.spec import gated_linear_rnn as spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig
from linrec.spec.state import State

__all__ = [
    "GateLoop",
    "GatedLinearRNN",
    "gated_linear_rnn",
    "gated_linear_rnn_initial_state",
    "gated_linear_rnn_step",
]

Array = jax.Array
Params = Mapping[str, Array]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "gelu": partial(jax.nn.gelu, approximate=True),
    "gelu_exact": partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}
assert set(_ACTIVATIONS) == set(spec.ACTIVATIONS)


def _prepare_params(params: Params, dtype, config: GatedLinearRNNConfig) -> dict[str, Array]:
    arrays = {k: as_kernel(v) for k, v in params.items()}  # (a decoder's packed kernels stay packed)
    spec.check_params({k: tuple(v.shape) for k, v in arrays.items()}, config)
    return {k: v.astype(dtype) for k, v in arrays.items()}


def _state(state, batch: int, x_dtype: str, config: GatedLinearRNNConfig, name: str) -> Array:
    """``state.h`` checked and in the state dtype (zeros for ``None``)."""
    acc = jnp_dtype(spec.state_dtype(x_dtype))
    h = spec.state_h(state, name=name)
    if h is None:
        return jnp.zeros((batch, config.d_h), acc)
    h = to_jax(h, f"{name}.h")
    spec.check_initial_state(tuple(h.shape), dtype_name(h), batch, x_dtype, config, name=f"{name}.h")
    return h.astype(acc)


def _valid(lengths: Any, n_batch: int, n_time: int, method: str) -> Array | None:
    """``(B, T)`` bool, ``True`` at real inputs, from right-padding ``lengths: (B,)`` (``None``: no padding).
    The values are checked when concrete (outside ``jit``)."""
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    values = None if isinstance(lengths, jax.core.Tracer) else np.asarray(lengths)
    spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), n_batch, n_time, values, method=method)
    return jnp.arange(n_time)[None, :] < lengths[:, None]


def _split(u: Array, config: GatedLinearRNNConfig) -> tuple[Array, Array, Array, Array]:
    """Activated blocks of ``u: (..., n H)`` → ``(candidate, i, f, o)``, each ``(..., H)``."""
    d = config.d_h
    candidate = _ACTIVATIONS[config.input_activation](u[..., :d])
    gates = _ACTIVATIONS[config.gate_activation](u[..., d:])
    i = gates[..., :d]
    if config.use_tied_gates:
        return candidate, i, 1 - i, gates[..., d : 2 * d]
    return candidate, i, gates[..., d : 2 * d], gates[..., 2 * d : 3 * d]


def _cell(p: Params, u_t: Array, h: Array, config: GatedLinearRNNConfig) -> tuple[Array, Array]:
    """``u_t: (B, n H)``, ``h: (B, H)`` → ``(y_t: (B, H), h_t)`` (before ``out_proj``)."""
    if config.use_true_recurrence:
        u_t = u_t + dense(h, p["recurrent_proj.kernel"].astype(h.dtype))
    candidate, i, f, o = _split(u_t, config)
    h = f * h + i * candidate
    return _ACTIVATIONS[config.hidden_activation](h) * o, h


# The pieces are jitted with the (hashable, frozen) config static: eager calls then hit the
# compilation cache instead of re-tracing ``lax.scan`` on every call; inside a user's ``jit`` they inline.


def _project(p: Params, x: Array) -> Array:
    """``u = x W_p + b_p: (B, T, n H)`` in the state dtype."""
    return dense(x, p["proj.kernel"], p["proj.bias"]).astype(jnp_dtype(spec.state_dtype(dtype_name(x))))


@partial(jax.jit, static_argnames=("config",))
def _scan_inputs(p: Params, x: Array, config: GatedLinearRNNConfig) -> tuple[Array, Array, Array]:
    """``x: (B, T, D_in)`` → ``(a = f, b = i ⊙ candidate, o)``, each ``(B, T, H)`` in the state dtype."""
    candidate, i, f, o = _split(_project(p, x), config)
    return f, i * candidate, o


@partial(jax.jit, static_argnames=("config",))
def _readout(p: Params, h: Array, o: Array, x: Array, config: GatedLinearRNNConfig) -> Array:
    """``y = (hidden_act(h) ⊙ o) W_o + b_o`` in the dtype of ``x``."""
    y = _ACTIVATIONS[config.hidden_activation](h) * o
    return dense(y.astype(x.dtype), p["out_proj.kernel"], p["out_proj.bias"])


def _masked(out: Array, valid: Array | None) -> Array:
    """Outputs at padded positions are zero (recurrence.md §0)."""
    return out if valid is None else jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))


@partial(jax.jit, static_argnames=("config", "method", "chunk_size"))
def _parallel(
    p: Params, x: Array, h0: Array | None, valid: Array | None, config: GatedLinearRNNConfig, method: str,
    chunk_size: int | None,
) -> tuple[Array, Array]:
    u = _project(p, x)
    if valid is None and spec.fusable(config) and _fused.applies(u, method):  # gates fused into the native scan
        h0 = jnp.zeros((x.shape[0], config.d_h), u.dtype) if h0 is None else h0
        y, final = _fused.native_gated_linear_rnn(u, h0, config.use_tied_gates, config.reversed)
        return dense(y.astype(x.dtype), p["out_proj.kernel"], p["out_proj.bias"]), final
    if valid is None and spec.fusable(config) and _pallas.applies(method):  # gates fused into the Pallas scan
        h0 = jnp.zeros((x.shape[0], config.d_h), u.dtype) if h0 is None else h0
        h, final = _pallas.pallas_gated_linear_rnn(u, h0, config.use_tied_gates, config.reversed)
        return _readout(p, h, _split(u, config)[3], x, config), final
    candidate, i, f, o = _split(u, config)
    a, b = f, i * candidate
    if valid is not None:  # padding: identity steps (a = 1, b = 0) inside the one scan
        a = jnp.where(valid[..., None], a, jnp.ones((), a.dtype))
        b = jnp.where(valid[..., None], b, jnp.zeros((), b.dtype))
    h, final = linear_scan(a, b, initial_state=h0, reverse=config.reversed, method=method, chunk_size=chunk_size)
    return _masked(_readout(p, h, o, x, config), valid), final


@partial(jax.jit, static_argnames=("config",))
def _sequential(p: Params, x: Array, h0: Array, valid: Array | None, config: GatedLinearRNNConfig
                ) -> tuple[Array, Array]:
    """The step loop as ``lax.scan`` (backwards in time when ``config.reversed``); padded steps keep the state."""
    u = dense(x, p["proj.kernel"], p["proj.bias"]).astype(h0.dtype)
    keep = jnp.ones(x.shape[:2], bool) if valid is None else valid

    def body(h, inputs):
        u_t, valid_t = inputs
        y_t, new = _cell(p, u_t, h, config)
        return jnp.where(valid_t[:, None], new, h), y_t

    final, y = lax.scan(body, h0, (jnp.swapaxes(u, 0, 1), jnp.swapaxes(keep, 0, 1)), reverse=config.reversed)
    out = dense(jnp.swapaxes(y, 0, 1).astype(x.dtype), p["out_proj.kernel"], p["out_proj.bias"])
    return _masked(out, valid), final


@partial(jax.jit, static_argnames=("config",))
def _step(p: Params, x_t: Array, h: Array, config: GatedLinearRNNConfig) -> tuple[Array, Array]:
    u_t = dense(x_t, p["proj.kernel"], p["proj.bias"]).astype(h.dtype)
    y_t, h = _cell(p, u_t, h, config)
    return dense(y_t.astype(x_t.dtype), p["out_proj.kernel"], p["out_proj.bias"]), h


def gated_linear_rnn(
    params: Params,
    x: Array,
    *,
    config: GatedLinearRNNConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, State]:
    """The layer over a sequence: ``x: (B, T, D_in)`` → ``(y: (B, T, D), final_state: State(h=(B, H)))``.

    ``initial_state``: ``State(h=(B, H))`` or ``None`` (zeros). ``lengths: (B,)``: right-padded rows (row ``b``
    holds ``lengths[b]`` real inputs); padded positions are identity steps of the same scan (``a = 1, b = 0``),
    their outputs zero, so ``final_state`` is each row's state after its last real input (works under ``jit``;
    the values are checked when concrete). ``mode``: ``"auto"`` (``"parallel"``, or ``"sequential"`` with
    ``use_true_recurrence``), ``"parallel"`` (scan; ``method``/``chunk_size`` go to ``linear_scan``) or
    ``"sequential"`` (``lax.scan`` over the cell). Projections run in the dtype of ``x``; gates and state in
    ``state_dtype`` (float32 for bf16/f16), and ``final_state`` is returned in that dtype.
    """
    x = to_jax(x, "x")
    spec.check_input(tuple(x.shape), dtype_name(x), config)
    mode = spec.resolve_mode(mode, method, config, chunk_size)
    valid = _valid(lengths, x.shape[0], x.shape[1], method)
    p = _prepare_params(params, x.dtype, config)
    h0 = _state(initial_state, x.shape[0], dtype_name(x), config, "initial_state")
    if mode == "sequential":
        y, final = _sequential(p, x, h0, valid, config)
        return y, State(final)
    h0_given = None if initial_state is None else h0
    if method != "log":
        y, final = _parallel(p, x, h0_given, valid, config, method, chunk_size)
        return y, State(final)
    # method="log" checks the values of a, b and h0 (all > 0): outside jit that check raises at once
    a, b, o = _scan_inputs(p, x, config)
    h, final = linear_scan(a, b, initial_state=h0_given, reverse=config.reversed, method=method)
    return _readout(p, h, o, x, config), State(final)


def gated_linear_rnn_step(
    params: Params, x_t: Array, state: State | None, *, config: GatedLinearRNNConfig
) -> tuple[Array, State]:
    """One step: ``x_t: (B, D_in)``, ``state: State(h=(B, H))`` (``None``: zeros) → ``(y_t: (B, D), State)``."""
    x_t = to_jax(x_t, "x_t")
    spec.check_step_input(tuple(x_t.shape), dtype_name(x_t), config)
    p = _prepare_params(params, x_t.dtype, config)
    h = _state(state, x_t.shape[0], dtype_name(x_t), config, "state")
    y_t, h = _step(p, x_t, h, config)
    return y_t, State(h)


def gated_linear_rnn_initial_state(config: GatedLinearRNNConfig, batch_size: int, dtype: Any = "float32") -> State:
    """``State(h=zeros (B, H))`` in the state dtype for inputs of ``dtype`` (float32 for bf16/f16)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return State(jnp.zeros((batch_size, config.d_h), jnp_dtype(spec.state_dtype(name))))


# ---------------------------------------------------------------------------------------------
# Flax NNX module.


class GatedLinearRNN(nnx.Module):
    """GatedLinearRNN layer (Katsch): ``h_t = f_t ⊙ h_{t-1} + i_t ⊙ input_act(u_in)``, ``y_t = hidden_act(h_t) ⊙ o_t``.

    Config fields are keyword arguments (``spec.gated_linear_rnn.GatedLinearRNNConfig``); ``dtype`` is the
    compute dtype (``None``: promote the input with ``param_dtype``), ``param_dtype`` the storage dtype;
    ``remat=True`` recomputes the layer in the backward pass (``jax.checkpoint``).

    Parameters follow the canonical table: ``proj`` (``D_in → n H``), ``out_proj`` (``H → D``) and, with
    ``use_true_recurrence``, ``recurrent_proj`` (``H → n H``, no bias, zero init).
    ``batch_first=False`` reads and returns sequences as ``(T, B, ...)`` (as ``torch.nn.GRU``); steps are ``(B, ...)``.
    """

    def __init__(
        self,
        d_model: int,
        d_h: int,
        d_in: int | None = None,
        *,
        reversed: bool = False,
        input_activation: str = "tanh",
        hidden_activation: str = "tanh",
        gate_activation: str = "sigmoid",
        use_true_recurrence: bool = False,
        use_tied_gates: bool = True,
        batch_first: bool = True,
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
    ) -> None:
        cfg = GatedLinearRNNConfig(
            d_model=d_model, d_h=d_h, d_in=d_in, reversed=reversed, input_activation=input_activation,
            hidden_activation=hidden_activation, gate_activation=gate_activation,
            use_true_recurrence=use_true_recurrence, use_tied_gates=use_tied_gates,
        )
        spec.check_batch_first(batch_first)
        self._config = cfg
        self.batch_first = batch_first
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.remat = remat
        width = cfg.n_blocks * cfg.d_h
        self.proj = nnx.Linear(cfg.d_in, width, param_dtype=param_dtype, rngs=rngs)
        self.out_proj = nnx.Linear(cfg.d_h, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
        self.recurrent_proj = (
            nnx.Linear(
                cfg.d_h, width, use_bias=False, kernel_init=nnx.initializers.zeros_init(),
                param_dtype=param_dtype, rngs=rngs,
            )
            if cfg.use_true_recurrence
            else None
        )

    @property
    def config(self) -> GatedLinearRNNConfig:
        return self._config

    def _params(self) -> dict[str, Array]:
        p = {
            "proj.kernel": self.proj.kernel[...],
            "proj.bias": self.proj.bias[...],
            "out_proj.kernel": self.out_proj.kernel[...],
            "out_proj.bias": self.out_proj.bias[...],
        }
        if self.recurrent_proj is not None:
            p["recurrent_proj.kernel"] = self.recurrent_proj.kernel[...]
        return p

    def _compute_dtype(self, x: Array) -> Any:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a real floating array, got dtype {x.dtype}")
        return self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, self.param_dtype)

    def __call__(
        self,
        x: Array,
        initial_state: State | None = None,
        *,
        lengths: Array | None = None,
        mode: str = "auto",
        method: str = "auto",
        chunk_size: int | None = None,
    ) -> tuple[Array, State]:
        """``x: (B, T, D_in)`` (``(T, B, D_in)`` with ``batch_first=False``), ``initial_state: State(h=(B, H))``
        → ``(y: (B, T, D) or (T, B, D), final_state: State(h=(B, H)))``; ``lengths: (B,)`` right padding."""
        x = to_jax(x, "x")
        if x.ndim != 3:
            layout = "(B, T, d_in)" if self.batch_first else "(T, B, d_in) (batch_first=False)"
            raise ValueError(f"x must have shape {layout}, got shape {tuple(x.shape)}")
        dt = self._compute_dtype(x)
        config = self._config

        def run(params: Params, x: Array, state: State | None, lengths: Array | None) -> tuple[Array, State]:
            return gated_linear_rnn(params, x, config=config, initial_state=state, lengths=lengths, mode=mode,
                                    method=method, chunk_size=chunk_size)

        if self.remat:
            run = jax.checkpoint(run)
        x = x if self.batch_first else jnp.swapaxes(x, 0, 1)
        y, state = run(self._params(), x.astype(dt), initial_state, lengths)
        return (y if self.batch_first else jnp.swapaxes(y, 0, 1)), state

    def step(self, x_t: Array, state: State | None = None) -> tuple[Array, State]:
        """``x_t: (B, D_in)``, ``state: State(h=(B, H))`` → ``(y_t: (B, D), State)``."""
        x_t = to_jax(x_t, "x_t")
        dt = self._compute_dtype(x_t)
        return gated_linear_rnn_step(self._params(), x_t.astype(dt), state, config=self._config)

    def decoder(self, compile: bool = True, fused: bool | None = None):
        """``decode(x_t (B, D_in), state) -> (y_t, State)``: :meth:`step` with the parameters read once, for token
        loops, as one ``jax.jit``-compiled call (``compile=False``: op by op). Build it again after changing the
        parameters.

        ``fused`` (as the LMs' ``decoder``): float32 steps as one native call through XLA FFI (``native_decode``);
        ``None``: where it can, ``True``: raise saying why where it cannot, ``False``: never. Otherwise, at batch
        sizes up to ``native.dense.MAX_ROWS`` its float32 dense products run on the native kernel, from kernels
        packed here once (a copy of those weights; results within the float32 tolerance of :meth:`step`)."""
        cfg = self._config

        def step(p, x_t, state):
            x_t = to_jax(x_t, "x_t")
            return gated_linear_rnn_step(p, x_t.astype(self._compute_dtype(x_t)), state, config=cfg)

        def checked(x_t, state) -> tuple[Array, Array]:
            x_t = to_jax(x_t, "x_t")
            x_t = x_t.astype(self._compute_dtype(x_t))
            spec.check_step_input(tuple(x_t.shape), dtype_name(x_t), cfg)
            return x_t, _state(state, x_t.shape[0], dtype_name(x_t), cfg, "state")

        params = self._params()
        native_step = native_decode.decoder_step(native_decode.gated_linear_rnn_step, params, cfg, fused)
        return native_decode.layer_decoder(layer_decoder(step, params, compile), native_step, checked, fused)

    def cell(self, carry: State, x_t: Array) -> tuple[State, Array]:
        """Flax-NNX cell convention ``(carry, x_t) -> (carry, y_t)``; the carry is a ``State``."""
        y_t, carry = self.step(x_t, carry)
        return carry, y_t

    def initial_state(self, batch_size: int) -> State:
        """``State(h=zeros (B, H))`` in the state dtype of this module's compute dtype."""
        dt = self.dtype if self.dtype is not None else self.param_dtype
        return gated_linear_rnn_initial_state(self._config, batch_size, np.dtype(dt))

    @classmethod
    def from_canonical(
        cls,
        config: GatedLinearRNNConfig,
        params: Mapping[str, Any],
        *,
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
        remat: bool = False,
        batch_first: bool = True,
    ):
        """A module holding ``params`` (canonical names and layout); ``param_dtype`` defaults to theirs."""
        spec.check_params({k: tuple(np.shape(v)) for k, v in params.items()}, config)
        if param_dtype is None:
            param_dtype = np.asarray(params["proj.kernel"]).dtype
        module = cls(
            **{f: getattr(config, f) for f in config.__dataclass_fields__},
            rngs=rngs if rngs is not None else nnx.Rngs(0),
            dtype=dtype, param_dtype=param_dtype, remat=remat, batch_first=batch_first,
        )
        targets = {
            "proj.kernel": module.proj.kernel,
            "proj.bias": module.proj.bias,
            "out_proj.kernel": module.out_proj.kernel,
            "out_proj.bias": module.out_proj.bias,
        }
        if module.recurrent_proj is not None:
            targets["recurrent_proj.kernel"] = module.recurrent_proj.kernel
        for name, var in targets.items():
            var[...] = jnp.asarray(np.asarray(params[name]), dtype=param_dtype)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name → NumPy array (kernels ``(in, out)``)."""
        return {k: np.asarray(jax.device_get(v)) for k, v in self._params().items()}


class GateLoop(GatedLinearRNN):
    """GateLoop (Katsch): the same layer under the name of the original that has ``reversed``.

    ``reversed=True`` runs the recurrence from the last step to the first (``linear_scan(reverse=True)``);
    the returned state is then the state after the reversed pass (at ``t = 0``).
    """
