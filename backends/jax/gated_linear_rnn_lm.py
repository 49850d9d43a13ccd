"""GatedLinearRNNLM / GateLoopLM in JAX: pure functions and Flax NNX modules (``spec/gated_linear_rnn_lm.md``).

Shape legend: ``B`` batch, ``T`` time, ``L`` layers, ``D`` model width, ``H`` state width, ``V_out`` output
vocabulary (``D`` without head), ``F`` input features (no word embedding).

The pure functions compose the JAX time-mixing layer (``linrec.backends.jax.gated_linear_rnn``) with
pre-LayerNorm residual blocks; they work eagerly and under ``jax.jit``/``grad``/``vmap`` (config static).
Value checks (token range, positions) run when the values are concrete; inside a user's ``jit`` they cannot
raise, so out-of-range lookups produce NaN (``mode="fill"``) instead of a silently clamped row.
The decode step is one ``jax.jit``-compiled function (``_step_core``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linrec.backends.jax import native_decode
from linrec.backends.jax.arrays import as_jax, dtype_name, eager_unless, jnp_dtype, to_jax
from linrec.backends.jax.dense import dense
from linrec.backends.jax.gated_linear_rnn import GatedLinearRNN, GateLoop, gated_linear_rnn, gated_linear_rnn_step
from linrec.backends.jax.native_dense import pack_kernels
from linrec.spec import gated_linear_rnn_lm as spec
from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig
from linrec.spec.state import State

__all__ = [
    "GateLoopLM",
    "GatedLinearRNNLM",
    "gated_linear_rnn_lm",
    "gated_linear_rnn_lm_initial_state",
    "gated_linear_rnn_lm_step",
]

Array = jax.Array
Params = Mapping[str, Array]
_TM, _CM = "time_mixing", "channel_mixing"
_FLOATS = ("float64", "float32", "bfloat16", "float16")


def _concrete(x) -> np.ndarray | None:
    """``x`` as NumPy when its value is known (eager), ``None`` under tracing."""
    return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _prepare_params(params: Params, config: GatedLinearRNNLMConfig) -> dict[str, Array]:
    spec.check_params({k: tuple(jnp.shape(v)) for k, v in params.items()}, config)
    dtype = jnp.result_type(*params.values())
    if np.dtype(dtype).name not in _FLOATS:
        raise TypeError(f"params must be floating arrays, got dtype {dtype}")
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def _compute(p: Params) -> str:
    return np.dtype(next(iter(p.values())).dtype).name


def _state(state, batch: int, compute: str, config: GatedLinearRNNLMConfig, name: str = "initial_state"
           ) -> tuple[tuple[Array, ...], Array]:
    """``(h: L arrays (B, H), position: (B,) int32)`` of a checked ``State`` (zeros for ``None``)."""
    if state is None:
        state = gated_linear_rnn_lm_initial_state(config, batch, compute)
    h, position = spec.state_parts(state, config, name=name)
    h, position = tuple(as_jax(h_l) for h_l in h), as_jax(position)
    spec.check_state([tuple(h_l.shape) for h_l in h], [dtype_name(h_l) for h_l in h], tuple(position.shape),
                     dtype_name(position), batch, compute, config, name=name)
    return h, position if position.dtype == jnp.int32 else position.astype(jnp.int32)


def _lookup(table: Array, index: Array) -> Array:
    # out of range only under jit (eager calls are checked): NaN, never a silently clamped row
    return jnp.take(table, index, axis=0, mode="fill", fill_value=jnp.nan)


def _layer_norm(x: Array, p: Params, prefix: str, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p[prefix + "norm.scale"] + p[prefix + "norm.bias"]


def _residual(x: Array, branch: Array, mask: Array | None, placement: str) -> Array:
    if mask is None:
        return x + branch
    return x + branch * mask if placement == "branch" else (x + branch) * mask


def _embed(p: Params, inputs: Array, positions: Array, config: GatedLinearRNNLMConfig) -> Array:
    """``inputs: (B, T)`` ids or ``(B, T, F)``, ``positions: (B, T)`` → ``(B, T, D)``."""
    dtype = p[next(iter(p))].dtype
    if config.use_word_embedding:
        x = _lookup(p["embed.embedding"], inputs)
    else:
        x = dense(inputs.astype(dtype), p["input_proj.kernel"], p["input_proj.bias"])
    if config.positional_encoding_mode == "learned":
        x = x + _lookup(p["pos_embed.embedding"], positions)
    elif config.positional_encoding_mode == "sinusoidal":
        table = jnp.asarray(spec.sinusoidal_table(config.max_seq_length, config.d_model), dtype)
        x = x + _lookup(table, positions)
    return x.astype(dtype)


def _channel_mixing(p: Params, prefix: str, x: Array, config: GatedLinearRNNLMConfig) -> Array:
    z = _layer_norm(x, p, prefix, config.eps)
    z = jax.nn.gelu(dense(z, p[prefix + "fc1.kernel"], p[prefix + "fc1.bias"]), approximate=config.gelu_approximate)
    return dense(z, p[prefix + "fc2.kernel"], p[prefix + "fc2.bias"])


def _head(p: Params, x: Array, config: GatedLinearRNNLMConfig) -> Array:
    return dense(x, p["head.kernel"], p["head.bias"]) if config.use_head else x


def _forward(p, inputs, h0, position, masks, config: GatedLinearRNNLMConfig, mode, method, chunk_size,
             remat: bool = False, lengths: Array | None = None):
    """One pass over all ``T`` inputs; with ``lengths`` each layer's scan treats the padding as identity steps
    (recurrence.md §0). Returns ``(out, h: L arrays, position)``.

    Compiled as one function (``_forward_jit``) except for ``method="log"``, whose domain check needs the values.
    """
    if method == "log":
        return _forward_body(p, inputs, h0, position, masks, lengths, config, mode, method, chunk_size, remat)
    return _forward_jit(p, inputs, h0, position, masks, lengths, config, mode, method, chunk_size, remat)


def _forward_body(p, inputs, h0, position, masks, lengths, config: GatedLinearRNNLMConfig, mode, method, chunk_size,
                  remat: bool):
    n_time = inputs.shape[1]
    offset = jnp.zeros_like(position) if config.compat_step_position_zero else position
    positions = offset[:, None] + jnp.arange(n_time, dtype=jnp.int32)
    valid = None
    if lengths is not None:
        valid = jnp.arange(n_time)[None, :] < lengths[:, None]
        positions = jnp.where(valid, positions, 0)  # a padded position may lie beyond the table: use a valid row
    x = _embed(p, inputs, positions, config)
    if "embedding" in masks:
        x = x * masks["embedding"]
    hs = []
    for l in range(config.n_layer):
        prefix = f"layers.{l}."

        def block(bp, x, h_l, m_tm, m_cm, prefix=prefix, l=l):
            z = _layer_norm(x, bp, prefix + f"{_TM}.", config.eps)
            y, h = gated_linear_rnn(spec.layer_params(bp, l), z, config=config.layer_config,
                                    initial_state=State(h_l), lengths=lengths, mode=mode, method=method,
                                    chunk_size=chunk_size)
            x = _residual(x, y, m_tm, config.dropout_placement)
            x = _residual(x, _channel_mixing(bp, prefix + f"{_CM}.", x, config), m_cm, config.dropout_placement)
            return x, h.h

        bp = {k: v for k, v in p.items() if k.startswith(prefix)}
        run = jax.checkpoint(block) if remat else block  # recompute each block in the backward pass
        x, h = run(bp, x, h0[l], masks.get(prefix + _TM), masks.get(prefix + _CM))
        hs.append(h)
    out = _head(p, x, config)
    if valid is None:
        return out, tuple(hs), position + n_time
    return jnp.where(valid[..., None], out, jnp.zeros((), out.dtype)), tuple(hs), position + lengths.astype(jnp.int32)


_forward_jit = jax.jit(_forward_body, static_argnames=("config", "mode", "method", "chunk_size", "remat"))


@partial(jax.jit, static_argnames=("config",))
def _step_core(p: Params, input_t: Array, h: tuple[Array, ...], position: Array, config: GatedLinearRNNLMConfig
               ) -> tuple[Array, tuple[Array, ...], Array]:
    """One input per row (the compiled decode step) at table row ``position`` (0 with
    ``compat_step_position_zero``, as the original). Returns ``(out_t, h: L arrays, position + 1)``."""
    pe_position = jnp.zeros_like(position) if config.compat_step_position_zero else position
    x = _embed(p, input_t[:, None], pe_position[:, None], config)[:, 0]
    hs = []
    for l in range(config.n_layer):
        prefix = f"layers.{l}."
        z = _layer_norm(x, p, prefix + f"{_TM}.", config.eps)
        y, h_l = gated_linear_rnn_step(spec.layer_params(p, l), z, State(h[l]), config=config.layer_config)
        hs.append(h_l.h)
        x = x + y
        x = x + _channel_mixing(p, prefix + f"{_CM}.", x, config)
    return _head(p, x, config), tuple(hs), position + 1


def _check_positions(position: Array, counts: np.ndarray, config: GatedLinearRNNLMConfig) -> None:
    if config.positional_encoding_mode == "none":
        return
    offset = np.zeros(counts.shape, np.int64) if config.compat_step_position_zero else _concrete(position)
    used = counts > 0
    if offset is not None and used.any():
        spec.check_positions(int((offset + counts - 1)[used].max()), config)


def gated_linear_rnn_lm(
    params: Params,
    inputs: Array,
    *,
    config: GatedLinearRNNLMConfig,
    initial_state: State | None = None,
    lengths: Any = None,
    dropout_masks: Mapping[str, Array] | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Array, State]:
    """The model over a sequence: ``inputs: (B, T)`` ids (or ``(B, T, F)``) → ``(out: (B, T, V_out),
    final_state)``; ``initial_state``/``final_state`` are ``State(h=L arrays (B, H), position=(B,) int32)``.

    ``lengths: (B,)`` marks right-padded rows (row ``b`` ends after ``lengths[b]`` inputs): one pass in which every
    layer's scan treats the padding as identity steps; outputs there are zero, the state is the state after each
    row's last real input and ``position`` advances by ``lengths`` (values checked when concrete).
    ``dropout_masks``: site → ``(B, T, D)`` multiplier (training). ``mode``/``method``/``chunk_size`` go to the
    time-mixing layer; ``remat=True`` recomputes each block in the backward pass (``jax.checkpoint``).
    """
    inputs = to_jax(inputs, "inputs")
    spec.check_input(tuple(inputs.shape), dtype_name(inputs), config)
    p = _prepare_params(params, config)
    n_batch, n_time = inputs.shape[:2]
    h0, position = _state(initial_state, n_batch, _compute(p), config)
    masks = dict(dropout_masks or {})
    spec.check_dropout_masks({k: tuple(jnp.shape(v)) for k, v in masks.items()}, n_batch, n_time, config)
    masks = {k: jnp.asarray(v, p[next(iter(p))].dtype) for k, v in masks.items()}
    if lengths is None:
        tokens = _concrete(inputs) if config.use_word_embedding else None
        if tokens is not None:
            spec.check_token_values(tokens, config)
        _check_positions(position, np.full(n_batch, n_time), config)
        out, h, position = _forward(p, inputs, h0, position, masks, config, mode, method, chunk_size, remat)
        return out, State(h, position)
    if masks:
        raise ValueError("lengths (right-padded rows) cannot be combined with dropout_masks: for training, "
                         "padding after a sequence never changes the outputs before it, so pass no lengths")
    lengths = as_jax(lengths)
    lengths_np = _concrete(lengths)
    if lengths_np is not None:
        spec.check_lengths(lengths_np, n_batch, n_time)
    spec.layer_spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), n_batch, n_time, method=method)
    valid = jnp.arange(n_time)[None, :] < lengths[:, None]
    if config.use_word_embedding:
        tokens = _concrete(inputs)
        if tokens is not None and lengths_np is not None:
            spec.check_token_values(tokens[np.asarray(valid)], config)
        inputs = jnp.where(valid, inputs, 0)  # padding may hold any id
    if lengths_np is not None:
        _check_positions(position, lengths_np, config)
    out, h, position = _forward(p, inputs, h0, position, {}, config, mode, method, chunk_size, remat,
                                lengths.astype(jnp.int32))
    return out, State(h, position)


def gated_linear_rnn_lm_step(
    params: Params, input_t: Array, state: State | None, *, config: GatedLinearRNNLMConfig
) -> tuple[Array, State]:
    """One token per row: ``input_t: (B,)`` ids (or ``(B, F)``), ``state`` a ``State`` (``None``: zeros) →
    ``(out_t: (B, V_out), State)`` (no dropout)."""
    return _prepared_step(_prepare_params(params, config), input_t, state, config)


def _prepared_step(p: Params, input_t, state: State | None, config: GatedLinearRNNLMConfig
                   ) -> tuple[Array, State]:
    """:func:`gated_linear_rnn_lm_step` on parameters already through ``_prepare_params``."""
    input_t, h, position = _checked_step_inputs(p, input_t, state, config)
    out, h, position = _step_core(p, input_t, h, position, config)
    return out, State(h, position)


def _checked_step_inputs(p: Params, input_t, state: State | None, config: GatedLinearRNNLMConfig
                         ) -> tuple[Array, tuple[Array, ...], Array]:
    """The checks of a decode step on prepared parameters → ``(input_t, h, position)``."""
    input_t = as_jax(input_t)
    spec.check_step_input(tuple(input_t.shape), dtype_name(input_t), config)
    h, position = _state(state, input_t.shape[0], _compute(p), config, name="state")
    tokens = _concrete(input_t) if config.use_word_embedding else None
    if tokens is not None:
        spec.check_token_values(tokens, config, name="token")
    _check_positions(position, np.ones(input_t.shape[0], np.int64), config)
    return input_t, h, position


def gated_linear_rnn_lm_initial_state(config: GatedLinearRNNLMConfig, batch_size: int,
                                      dtype: Any = "float32") -> State:
    """``State(h=L zeros (B, H) in the state dtype, position=zeros (B,) int32)``."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    zeros = jnp.zeros((batch_size, config.d_h), jnp_dtype(spec.state_dtype(name)))
    return State(tuple(zeros for _ in range(config.n_layer)), jnp.zeros((batch_size,), jnp.int32))


@partial(jax.jit, static_argnames=("rates", "shape", "dtype"))
def _draw_masks(key: Array, rates: tuple[float, ...], shape: tuple[int, ...], dtype: Any) -> tuple[Array, ...]:
    keys = jax.random.split(key, len(rates))
    return tuple(jax.random.bernoulli(k, 1.0 - r, shape).astype(dtype) / jnp.asarray(1.0 - r, dtype)
                 for k, r in zip(keys, rates))


# ---------------------------------------------------------------------------------------------
# Flax NNX modules (attribute paths are the canonical parameter names)


class _TimeMixing(nnx.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, layer_cls: type, *, rngs: nnx.Rngs, param_dtype: Any):
        lc = config.layer_config
        self.norm = nnx.LayerNorm(config.d_model, epsilon=config.eps, param_dtype=param_dtype, rngs=rngs)
        self.rnn = layer_cls(
            lc.d_model, lc.d_h, lc.d_in, input_activation=lc.input_activation,
            hidden_activation=lc.hidden_activation, gate_activation=lc.gate_activation,
            use_true_recurrence=lc.use_true_recurrence, use_tied_gates=lc.use_tied_gates,
            rngs=rngs, param_dtype=param_dtype,
        )


class _ChannelMixing(nnx.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, *, rngs: nnx.Rngs, param_dtype: Any):
        d, c = config.d_model, config.d_channel_mixing
        self.norm = nnx.LayerNorm(d, epsilon=config.eps, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(d, c, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = nnx.Linear(c, d, param_dtype=param_dtype, rngs=rngs)


class _Block(nnx.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, layer_cls: type, *, rngs: nnx.Rngs, param_dtype: Any):
        self.time_mixing = _TimeMixing(config, layer_cls, rngs=rngs, param_dtype=param_dtype)
        self.channel_mixing = _ChannelMixing(config, rngs=rngs, param_dtype=param_dtype)


class GatedLinearRNNLM(nnx.Module):
    """The GatedLinearRNN language model (Katsch): embedding (+ positions) → ``n_layer`` × [pre-LN time mixing,
    pre-LN GELU MLP, both residual] → head.

    Constructor: the ``GatedLinearRNNLMConfig`` fields as keyword arguments, keyword-only ``rngs`` (stream
    ``"dropout"`` or ``"default"`` draws dropout masks), ``dtype`` (compute; ``None``: ``param_dtype``),
    ``param_dtype`` and ``remat`` (recompute each block in the backward pass). Like ``nnx.Dropout`` the module
    starts in training mode (``deterministic=False``); ``model.eval()`` turns dropout off. ``prefill``,
    ``decode_step`` and ``generate`` never apply dropout.
    """

    _layer_cls: type = GatedLinearRNN

    def __init__(self, n_layer: int, d_model: int, d_channel_mixing: int, d_h: int, *, rngs: nnx.Rngs,
                 dtype: Any = None, param_dtype: Any = jnp.float32, remat: bool = False, **fields: Any) -> None:
        cfg = GatedLinearRNNLMConfig(n_layer=n_layer, d_model=d_model, d_channel_mixing=d_channel_mixing, d_h=d_h,
                                     **fields)
        self._config = cfg
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.remat = remat
        self.deterministic = False
        if cfg.use_word_embedding:
            self.embed = nnx.Embed(cfg.input_vocab_size, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
        else:
            self.input_proj = nnx.Linear(cfg.d_input, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
        if cfg.positional_encoding_mode == "learned":
            self.pos_embed = nnx.Embed(cfg.max_seq_length, cfg.d_model, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List([_Block(cfg, self._layer_cls, rngs=rngs, param_dtype=param_dtype)
                                for _ in range(cfg.n_layer)])
        if cfg.use_head:
            self.head = nnx.Linear(cfg.d_model, cfg.output_vocab_size, param_dtype=param_dtype, rngs=rngs)
        self.dropout_rngs = rngs["dropout"].fork()

    @classmethod
    def from_config(cls, config: GatedLinearRNNLMConfig, *, rngs: nnx.Rngs, **kwargs: Any):
        return cls(**config.to_dict(), rngs=rngs, **kwargs)

    @property
    def config(self) -> GatedLinearRNNLMConfig:
        return self._config

    def _variables(self) -> dict[str, nnx.Param]:
        return {".".join(map(str, path)): node for path, node in nnx.iter_graph(self) if isinstance(node, nnx.Param)}

    def _params(self) -> dict[str, Array]:
        """Canonical name → array in the compute dtype (the NNX paths are the canonical names)."""
        dt = self.dtype if self.dtype is not None else self.param_dtype
        return {k: v[...].astype(dt) for k, v in self._variables().items()}

    def _compute_dtype(self) -> str:
        return np.dtype(self.dtype if self.dtype is not None else self.param_dtype).name

    def _masks(self, batch: int, length: int) -> dict[str, Array]:
        """``Bernoulli(1 - rate) / (1 - rate)`` masks ``(B, T, D)`` for every site with a nonzero rate."""
        sites = {k: r for k, r in spec.dropout_sites(self._config).items() if r > 0}
        if not sites:
            return {}
        masks = _draw_masks(self.dropout_rngs(), tuple(sites.values()), (batch, length, self._config.d_model),
                            np.dtype(self._compute_dtype()))
        return dict(zip(sites, masks))

    def __call__(self, inputs: Array, initial_state: State | None = None, *, lengths: Any = None,
                 mode: str = "auto", method: str = "auto", chunk_size: int | None = None,
                 training: bool | None = None) -> tuple[Array, State]:
        """``inputs: (B, T)`` ids (or ``(B, T, F)``) → ``(out: (B, T, V_out), final_state: State)``; dropout iff
        training (default: ``not self.deterministic``)."""
        inputs = to_jax(inputs, "inputs")
        training = (not self.deterministic) if training is None else training
        masks = self._masks(*inputs.shape[:2]) if training and lengths is None and inputs.ndim >= 2 else None
        return gated_linear_rnn_lm(self._params(), inputs, config=self._config, initial_state=initial_state,
                                   lengths=lengths, dropout_masks=masks, mode=mode, method=method,
                                   chunk_size=chunk_size, remat=self.remat)

    def step(self, input_t: Array, state: State | None = None) -> tuple[Array, State]:
        """One input per row: ``(B,)`` ids (or ``(B, F)``) → ``(out_t: (B, V_out), State)``."""
        return gated_linear_rnn_lm_step(self._params(), input_t, state, config=self._config)

    def initial_state(self, batch_size: int) -> State:
        """``State(h=L zeros (B, H), position=zeros (B,) int32)`` in this module's state dtype."""
        return gated_linear_rnn_lm_initial_state(self._config, batch_size, self._compute_dtype())

    # --- generation ---------------------------------------------------------------------------------

    def prefill(self, tokens: Array, initial_state: State | None = None, lengths: Any = None
                ) -> tuple[Array, State]:
        """One parallel pass over right-padded prompts ``(B, T)`` (``lengths``: real tokens per row) →
        ``(logits (B, T, V), State)``; no dropout."""
        return self(tokens, initial_state, lengths=lengths, training=False)

    def decode_step(self, token: Array, state: State) -> tuple[Array, State]:
        """One token per row ``(B,)`` → ``(logits (B, V), state)`` through the compiled step.

        Reads the parameters out of the module on every call; in a token loop use :meth:`decoder`."""
        return self.step(token, state)

    def decoder(self, compile: bool = True, fused: bool | None = None):
        """``decode(token (B,), state) -> (logits (B, V), state)``: :meth:`decode_step` with the parameters read
        once, for token loops (reading them out of the NNX graph costs more than the compiled step itself).
        It keeps the parameters it was built with: build it again after changing them.

        ``fused`` (the twin of the PyTorch decoder's): run the whole float32 step as one call into the native
        library through XLA FFI (``native_decode``: its products stream the weights on every core). ``None``
        (default): where it can (float32 CPU parameters, the kernel built with its FFI handlers), else the XLA
        step; ``True``: raise ``ValueError`` saying why where it cannot; ``False``: the XLA step, whose dense
        products at batch sizes up to ``native.dense.MAX_ROWS`` still run on the native kernel (``native_dense``,
        float32 kernels packed here once, a copy of those weights).

        ``compile=True`` (the default here) runs the step as one ``jax.jit``-compiled call; ``compile=False`` runs
        it op by op under ``jax.disable_jit()``, for debugging. The argument is the twin of the PyTorch
        ``decoder(compile=...)``, whose default is eager.
        """
        p, cfg = pack_kernels(_prepare_params(self._params(), self._config)), self._config
        native_step = native_decode.decoder_step(native_decode.gated_linear_rnn_lm_step, p, cfg, fused)
        if native_step is None:
            return eager_unless(compile, lambda token, state: _prepared_step(p, token, state, cfg))

        def core(token: Array, h: tuple[Array, ...], position: Array):
            out, h = native_step(token, h, jnp.zeros_like(position) if cfg.compat_step_position_zero else position)
            return out, h, position + 1

        run = jax.jit(core) if compile else eager_unless(False, core)

        def decode(token, state: State) -> tuple[Array, State]:
            token, h, position = _checked_step_inputs(p, token, state, cfg)
            out, h, position = run(token, h, position)
            return out, State(h, position)

        return decode

    def generate(self, prompt: Array, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: Any = 0, *, lengths: Any = None, initial_state: State | None = None,
                 return_logits: bool = False):
        """Sample ``max_new_tokens`` after each prompt row → new tokens ``(B, max_new_tokens)`` int32.

        ``prompt: (B, T)`` right-padded with ``lengths`` (default: all ``T``, ≥ 1 each). ``temperature=0`` is
        greedy; ``top_k`` keeps the ``k`` largest logits; sampling is ``spec.sample_tokens`` with NumPy
        generators ``spec.row_generators(seed, B)`` (row ``b``: ``seed + b``, or ``seed[b]`` for a sequence), so
        JAX and torch draw the same tokens and a row's tokens do not depend on the rest of the batch.
        With ``return_logits`` also returns the logits each token was drawn from, ``(B, max_new_tokens, V)``.
        """
        cfg = self._config
        spec.check_generation(cfg, max_new_tokens, temperature, top_k)
        prompt = jnp.asarray(prompt)
        spec.check_input(tuple(prompt.shape), dtype_name(prompt), cfg, name="prompt")
        n_batch, n_time = prompt.shape
        lengths_np = np.full(n_batch, n_time) if lengths is None else np.asarray(lengths)
        spec.check_lengths(lengths_np, n_batch, n_time, minimum=1)
        if initial_state is None:
            # the whole generation must fit the position table: fail before computing anything
            _check_positions(jnp.zeros(n_batch, jnp.int32), lengths_np + max(max_new_tokens - 1, 0), cfg)
        generators = spec.row_generators(seed, n_batch)
        logits, state = self.prefill(prompt, initial_state, lengths_np if lengths is not None else None)
        last = logits[jnp.arange(n_batch), jnp.asarray(lengths_np - 1)]
        p = self._params()
        tokens, all_logits = [], []
        for i in range(max_new_tokens):
            token = spec.sample_tokens(np.asarray(last), generators, float(temperature), top_k)
            tokens.append(token)
            all_logits.append(last)
            if i + 1 < max_new_tokens:
                _check_positions(state.position, np.ones(n_batch, np.int64), cfg)
                last, h, position = _step_core(p, jnp.asarray(token), state.h, state.position, cfg)
                state = State(h, position)
        new = jnp.asarray(np.stack(tokens, axis=1) if tokens else np.zeros((n_batch, 0), np.int32))
        if not return_logits:
            return new
        return new, (jnp.stack(all_logits, axis=1) if all_logits else jnp.zeros((n_batch, 0, cfg.d_output)))

    # --- canonical parameters -----------------------------------------------------------------------

    @classmethod
    def from_canonical(cls, config: GatedLinearRNNLMConfig, params: Mapping[str, Any], *,
                       rngs: nnx.Rngs | None = None, dtype: Any = None, param_dtype: Any = None,
                       remat: bool = False):
        """A module holding ``params`` (canonical names and layout); ``param_dtype`` defaults to theirs."""
        if not isinstance(config, GatedLinearRNNLMConfig):
            raise TypeError(f"config must be a GatedLinearRNNLMConfig, got {type(config).__name__}")
        spec.check_params({k: tuple(np.shape(v)) for k, v in params.items()}, config)
        if param_dtype is None:
            param_dtype = np.result_type(*[np.asarray(v) for v in params.values()])
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        # build the structure without drawing (and compiling) random initialisers, then fill in the values
        module = nnx.eval_shape(lambda: cls.from_config(config, rngs=nnx.Rngs(0), dtype=dtype,
                                                        param_dtype=param_dtype, remat=remat))
        variables = module._variables()
        assert set(variables) == set(params), "module paths must be the canonical names"
        for name, var in variables.items():
            var.set_value(jnp.asarray(np.asarray(params[name]), dtype=param_dtype))
        module.dropout_rngs = rngs["dropout"].fork()
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name → NumPy array (kernels ``(in, out)``), in the parameter dtype."""
        return {k: np.asarray(jax.device_get(v[...])) for k, v in self._variables().items()}


class GateLoopLM(GatedLinearRNNLM):
    """GateLoopLM (Katsch): the same model on the GateLoop layer (a causal LM never uses ``reversed``)."""

    _layer_cls = GateLoop
