"""GatedLinearRNNLM / GateLoopLM: config, canonical parameters, checks and the NumPy reference.

Normative text: ``gated_linear_rnn_lm.md``. Framework-neutral (NumPy only): the backends import the
config, the parameter table, the dropout sites and the argument checks from here, so every backend
raises the same message for the same mistake. The time-mixing layer is
``linrec.spec.gated_linear_rnn`` (its config, parameters and reference are reused, not repeated).

Shape legend: ``B`` batch, ``T`` time, ``L`` layers (``n_layer``), ``D`` model width (``d_model``),
``H`` recurrent state width (``d_h``), ``C`` channel-mixing width (``d_channel_mixing``),
``V_in`` / ``V_out`` input / output vocabulary, ``F`` input features (``d_input``, only without word
embedding), ``P`` positions (``max_seq_length``), ``n`` column blocks of the layer's ``proj``.

The carried state is ``linrec.spec.state.State(h, position)`` (recurrence.md §0): ``h`` a tuple of ``L``
arrays ``(B, H)``, ``h[l]`` layer ``l``'s recurrent state (before its output activation), ``position`` ``(B,)``
int32, the number of tokens each row has consumed (= the position of its next token).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

from linrec.spec import checks
from linrec.spec import gated_linear_rnn as layer_spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig
from linrec.spec.state import State
from linrec.spec.state import check_lengths as _check_lengths

__all__ = [
    "DROPOUT_PLACEMENTS",
    "POSITIONAL_ENCODING_MODES",
    "POSITION_DTYPE",
    "GateLoopLMConfig",
    "GatedLinearRNNLMConfig",
    "State",
    "check_dropout_masks",
    "check_generation",
    "check_input",
    "check_lengths",
    "check_params",
    "check_positions",
    "check_state",
    "check_step_input",
    "check_token_values",
    "dropout_sites",
    "forward",
    "gelu",
    "init_params",
    "initial_state",
    "layer_norm",
    "layer_params",
    "original_param_path",
    "param_shapes",
    "row_generators",
    "sample_tokens",
    "sinusoidal_table",
    "state_dtype",
    "state_parts",
    "step",
    "torch_param",
]

POSITIONAL_ENCODING_MODES = ("none", "learned", "sinusoidal")
#: ``"branch"``: ``x + dropout(branch)`` (linrec); ``"sum"``: ``dropout(x + branch)`` (the originals).
DROPOUT_PLACEMENTS = ("branch", "sum")
#: dtype of ``state.position`` in every backend.
POSITION_DTYPE = "int32"


@dataclass(frozen=True)
class GatedLinearRNNLMConfig:
    """Hyper-parameters of the language model (gated_linear_rnn_lm.md §3). All fields are validated."""

    n_layer: int
    d_model: int
    d_channel_mixing: int
    d_h: int
    input_vocab_size: int | None = None
    output_vocab_size: int | None = None
    max_seq_length: int | None = None
    eps: float = 1e-6
    embedding_dropout: float = 0.0
    time_mixing_dropout: float = 0.0
    channel_mixing_dropout: float = 0.0
    use_word_embedding: bool = True
    d_input: int | None = None
    positional_encoding_mode: str = "none"
    use_head: bool = True
    input_activation: str = "tanh"
    hidden_activation: str = "tanh"
    gate_activation: str = "sigmoid"
    use_true_recurrence: bool = False
    use_tied_gates: bool = True
    dropout_placement: str = "branch"
    gelu_approximate: bool = True
    compat_step_position_zero: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("n_layer", "d_model", "d_channel_mixing", "d_h"):
            checks.check_positive_int(f"{name}.{f}", getattr(self, f))
            object.__setattr__(self, f, int(getattr(self, f)))
        for f in ("use_word_embedding", "use_head", "use_true_recurrence", "use_tied_gates", "gelu_approximate",
                  "compat_step_position_zero"):
            checks.check_bool(f"{name}.{f}", getattr(self, f))
        needs = {
            "input_vocab_size": (self.use_word_embedding, "use_word_embedding=True"),
            "output_vocab_size": (self.use_head, "use_head=True"),
            "max_seq_length": (self.positional_encoding_mode != "none", "a positional encoding"),
            "d_input": (not self.use_word_embedding, "use_word_embedding=False"),
        }
        for f, (needed, why) in needs.items():
            value = getattr(self, f)
            if value is None:
                if needed:
                    raise ValueError(f"{name}.{f} is required with {why} (a positive int), got None")
                continue
            if not checks.is_positive_int(value):
                raise ValueError(f"{name}.{f} must be a positive int or None, got {value!r}")
            object.__setattr__(self, f, int(value))
        if self.d_input is not None and self.use_word_embedding:
            raise ValueError(f"{name}.d_input is the feature size of float inputs; it is only used with "
                             "use_word_embedding=False (token ids go through the embedding)")
        if not checks.is_real_number(self.eps) or not self.eps > 0:
            raise ValueError(f"{name}.eps must be a positive float, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        for f in ("embedding_dropout", "time_mixing_dropout", "channel_mixing_dropout"):
            p = getattr(self, f)
            if not checks.is_real_number(p) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name}.{f} must be a dropout probability in [0, 1), got {p!r}")
            object.__setattr__(self, f, float(p))
        if self.positional_encoding_mode not in POSITIONAL_ENCODING_MODES:
            raise ValueError(f"{name}.positional_encoding_mode={self.positional_encoding_mode!r}; valid: "
                             f"{', '.join(repr(m) for m in POSITIONAL_ENCODING_MODES)}")
        if self.dropout_placement not in DROPOUT_PLACEMENTS:
            raise ValueError(f"{name}.dropout_placement={self.dropout_placement!r}; valid: "
                             f"{', '.join(repr(m) for m in DROPOUT_PLACEMENTS)}")
        try:
            self.layer_config  # noqa: B018 - validates the activation names with the layer's message
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    @property
    def layer_config(self) -> GatedLinearRNNConfig:
        """The config of every time-mixing layer (``d_in = d_model``; ``reversed`` is always False: causal)."""
        return GatedLinearRNNConfig(
            d_model=self.d_model, d_h=self.d_h, d_in=self.d_model, input_activation=self.input_activation,
            hidden_activation=self.hidden_activation, gate_activation=self.gate_activation,
            use_true_recurrence=self.use_true_recurrence, use_tied_gates=self.use_tied_gates,
        )

    @property
    def d_output(self) -> int:
        """Last axis of the output: ``output_vocab_size`` with the head, else ``d_model``."""
        return self.output_vocab_size if self.use_head else self.d_model

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: GateLoopLM is the same model built on the GateLoop layer (the same layer; ``reversed`` has no place in a causal LM).
GateLoopLMConfig = GatedLinearRNNLMConfig


# ---------------------------------------------------------------------------------------------
# Parameters


_TM, _CM = "time_mixing", "channel_mixing"


def param_shapes(config: GatedLinearRNNLMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes (§5); kernels are ``(in, out)``: ``y = x @ kernel + bias``."""
    d = config.d_model
    shapes: dict[str, tuple[int, ...]] = {}
    if config.use_word_embedding:
        shapes["embed.embedding"] = (config.input_vocab_size, d)
    else:
        shapes["input_proj.kernel"] = (config.d_input, d)
        shapes["input_proj.bias"] = (d,)
    if config.positional_encoding_mode == "learned":
        shapes["pos_embed.embedding"] = (config.max_seq_length, d)
    layer_shapes = layer_spec.param_shapes(config.layer_config)
    for l in range(config.n_layer):
        p = f"layers.{l}"
        shapes[f"{p}.{_TM}.norm.scale"] = (d,)
        shapes[f"{p}.{_TM}.norm.bias"] = (d,)
        for name, shape in layer_shapes.items():
            shapes[f"{p}.{_TM}.rnn.{name}"] = shape
        shapes[f"{p}.{_CM}.norm.scale"] = (d,)
        shapes[f"{p}.{_CM}.norm.bias"] = (d,)
        shapes[f"{p}.{_CM}.fc1.kernel"] = (d, config.d_channel_mixing)
        shapes[f"{p}.{_CM}.fc1.bias"] = (config.d_channel_mixing,)
        shapes[f"{p}.{_CM}.fc2.kernel"] = (config.d_channel_mixing, d)
        shapes[f"{p}.{_CM}.fc2.bias"] = (d,)
    if config.use_head:
        shapes["head.kernel"] = (d, config.output_vocab_size)
        shapes["head.bias"] = (config.output_vocab_size,)
    return shapes


def layer_params(params: Mapping[str, Any], l: int) -> dict[str, Any]:
    """Layer ``l``'s time-mixing parameters under the layer's own canonical names (``proj.kernel``, ...)."""
    prefix = f"layers.{l}.{_TM}.rnn."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def torch_param(name: str) -> tuple[str, bool]:
    """``(state_dict key, transposed)`` of a canonical name in the torch modules (§5 table)."""
    if name.endswith(".kernel"):
        return name[: -len("kernel")] + "weight", True
    if name.endswith(".embedding"):
        return name[: -len("embedding")] + "weight", False
    if name.endswith(".norm.scale"):
        return name[: -len("scale")] + "weight", False
    return name, False


def original_param_path(name: str) -> str:
    """Where a canonical parameter lives in the originals' linen ``params`` tree (``flatten_dict`` path joined
    by ``/``), for ``flax_gated_linear_rnn.GatedLinearRNNLM`` and ``flax_gate_loop.GateLoopLM``."""
    parts = name.split(".")
    if parts[0] in ("embed", "input_proj"):
        return "input_function/" + parts[-1]
    if parts[0] == "pos_embed":
        return "wpe/embedding"
    if parts[0] == "head":
        return "head/" + parts[-1]
    l, block, rest = parts[1], parts[2], parts[3:]
    if block == _TM:
        if rest[0] == "norm":
            return f"time_mixing_layers_{l}/layer_norm_function/{rest[1]}"
        sub = rest[1:]  # proj.kernel, out_proj.bias, recurrent_proj.kernel
        inner = "model/model" if sub[0] == "recurrent_proj" else "model"
        return f"time_mixing_layers_{l}/{inner}/{sub[0]}/{sub[1]}"
    if rest[0] == "norm":
        return f"channel_mixing_layers_{l}/layer_norm/{rest[1]}"
    index = {"fc1": 0, "fc2": 1}[rest[0]]
    return f"channel_mixing_layers_{l}/dense_layers_{index}/{rest[1]}"


def _np_dtype(name: str) -> np.dtype:
    return layer_spec._np_dtype(name)


def init_params(config: GatedLinearRNNLMConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Fresh parameters following §5: embeddings N(0, 1/D), kernels lecun_normal, biases 0, norms 1/0, W_r 0."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".embedding"):
            value = rng.standard_normal(shape) / math.sqrt(shape[1])
        elif name.endswith(".norm.scale"):
            value = np.ones(shape)
        elif name.endswith(".bias") or name.endswith("recurrent_proj.kernel"):
            value = np.zeros(shape)
        else:
            value = layer_spec._lecun_normal(rng, shape)
        out[name] = value.astype(_np_dtype(dtype))
    return out


@lru_cache(maxsize=16)
def _sinusoidal(max_seq_length: int, d_model: int) -> np.ndarray:
    position = np.arange(max_seq_length, dtype=np.float64)[:, None]
    k = np.arange(d_model) // 2
    angle = position * np.exp(-2.0 * k * math.log(10000.0) / d_model)
    table = np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))
    table.setflags(write=False)
    return table


def sinusoidal_table(max_seq_length: int, d_model: int) -> np.ndarray:
    """``(P, D)`` float64: column ``2k`` is ``sin(p ω_k)``, column ``2k+1`` is ``cos(p ω_k)``,
    ``ω_k = 10000^(-2k/D)`` (§4.2). Read-only (cached)."""
    return _sinusoidal(int(max_seq_length), int(d_model))


def dropout_sites(config: GatedLinearRNNLMConfig) -> dict[str, float]:
    """Dropout site name → rate (§6). Masks passed to the model functions are keyed by these names."""
    sites = {"embedding": config.embedding_dropout}
    for l in range(config.n_layer):
        sites[f"layers.{l}.{_TM}"] = config.time_mixing_dropout
        sites[f"layers.{l}.{_CM}"] = config.channel_mixing_dropout
    return sites


def state_dtype(compute_dtype: str) -> str:
    """dtype of ``state.h[l]`` for a model computing in ``compute_dtype`` (float32 for bf16/f16)."""
    return layer_spec.state_dtype(compute_dtype)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by every backend (shapes as tuples, dtypes as canonical names).


def check_params(shapes: Mapping[str, tuple[int, ...]], config: GatedLinearRNNLMConfig) -> None:
    """``params`` must hold exactly the names of ``param_shapes(config)`` with those shapes."""
    expected = param_shapes(config)
    missing, extra = checks.missing_and_unexpected(shapes, expected)
    if missing or extra:
        raise ValueError(f"params do not match the config: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {extra[:6]}{'...' if len(extra) > 6 else ''} (see param_shapes(config))")
    checks.check_param_shapes(shapes, expected)


def _is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def check_input(shape: tuple[int, ...], dtype: str, config: GatedLinearRNNLMConfig, *, name: str = "tokens") -> None:
    """Token ids ``(B, T)`` (integer) with word embedding, else features ``(B, T, F)`` (floating)."""
    if config.use_word_embedding:
        if not _is_int(dtype):
            raise TypeError(f"{name} must be integer token ids (use_word_embedding=True), got dtype {dtype}")
        if len(shape) != 2:
            raise ValueError(f"{name} must have shape (B, T), got {tuple(shape)}")
    else:
        if dtype not in checks.REAL_DTYPES:
            raise TypeError(f"inputs must be floating features (use_word_embedding=False), got dtype {dtype}")
        if len(shape) != 3 or shape[-1] != config.d_input:
            raise ValueError(f"inputs must have shape (B, T, d_input) with d_input={config.d_input}, "
                             f"got {tuple(shape)}")


def check_step_input(shape: tuple[int, ...], dtype: str, config: GatedLinearRNNLMConfig) -> None:
    """One step: token ids ``(B,)``, or features ``(B, F)`` without word embedding."""
    if config.use_word_embedding:
        if not _is_int(dtype):
            raise TypeError(f"token must be integer ids (use_word_embedding=True), got dtype {dtype}")
        if len(shape) != 1:
            raise ValueError(f"token must have shape (B,), got {tuple(shape)}")
    else:
        if dtype not in checks.REAL_DTYPES:
            raise TypeError(f"input_t must be floating features (use_word_embedding=False), got dtype {dtype}")
        if len(shape) != 2 or shape[-1] != config.d_input:
            raise ValueError(f"input_t must have shape (B, d_input) with d_input={config.d_input}, got {tuple(shape)}")


def check_token_values(tokens: np.ndarray, config: GatedLinearRNNLMConfig, *, name: str = "tokens") -> None:
    """Token ids must lie in ``[0, input_vocab_size)`` (``tokens`` concrete; padding already excluded)."""
    if not config.use_word_embedding or tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= config.input_vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contain id {bad} outside [0, input_vocab_size={config.input_vocab_size})")


def check_positions(last_position: int, config: GatedLinearRNNLMConfig) -> None:
    """The largest position a call encodes must be below ``max_seq_length`` (learned/sinusoidal tables)."""
    mode = config.positional_encoding_mode
    if mode != "none" and last_position >= config.max_seq_length:
        raise ValueError(
            f"position {last_position} is beyond max_seq_length={config.max_seq_length}: "
            f"positional_encoding_mode={mode!r} has rows 0..{config.max_seq_length - 1} "
            "(use a shorter sequence, or a model with a larger max_seq_length)"
        )


def check_state(
    h_shapes: list[tuple[int, ...]], h_dtypes: list[str], position_shape: tuple[int, ...], position_dtype: str,
    batch: int, compute_dtype: str, config: GatedLinearRNNLMConfig, *, name: str = "initial_state",
) -> None:
    """``state.h``: ``L`` arrays ``(B, H)`` in ``state_dtype(compute_dtype)``; ``state.position``: ``(B,)`` integer."""
    want = (batch, config.d_h)
    for l, (shape, dtype) in enumerate(zip(h_shapes, h_dtypes)):
        if tuple(shape) != want:
            raise ValueError(f"{name}.h[{l}] must have shape (B, d_h) = {want}, got {tuple(shape)} "
                             "(a state from a model with another configuration or batch?)")
        if dtype != state_dtype(compute_dtype):
            raise TypeError(f"{name}.h[{l}] has dtype {dtype}; this model carries its state in "
                            f"{state_dtype(compute_dtype)}")
    if tuple(position_shape) != (batch,):
        raise ValueError(f"{name}.position must have shape (B,) = {(batch,)}, got {tuple(position_shape)}")
    if not _is_int(position_dtype):
        raise TypeError(f"{name}.position must be an integer array, got dtype {position_dtype}")


def state_parts(state: Any, config: GatedLinearRNNLMConfig, *, name: str = "initial_state") -> tuple[tuple, Any]:
    """``(h, position)`` of a carried ``State``: ``h`` a tuple (or list) of ``n_layer`` arrays and ``position`` an
    array (recurrence.md §0); anything else raises ``TypeError`` naming ``name``."""
    if not isinstance(state, State):
        raise TypeError(f"{name} must be a linrec State(h=(L arrays (B, d_h)), position=(B,)) (see initial_state), "
                        f"got {type(state).__name__}")
    if not isinstance(state.h, (tuple, list)) or len(state.h) != config.n_layer:
        got = f"a {type(state.h).__name__} of {len(state.h)}" if isinstance(state.h, (tuple, list)) else \
            type(state.h).__name__
        raise ValueError(f"{name}.h must be a tuple of n_layer={config.n_layer} arrays (B, d_h), got {got}")
    if state.position is None:
        raise ValueError(f"{name}.position must be a (B,) integer array (tokens consumed), got None")
    return tuple(state.h), state.position


def check_lengths(lengths: np.ndarray, batch: int, length: int, *, minimum: int = 0) -> None:
    """``lengths``: ``(B,)`` integers in ``[minimum, T]`` (rows are right-padded); see
    ``linrec.spec.state.check_lengths``."""
    _check_lengths(lengths.shape, lengths.dtype.name, batch, length, lengths, minimum=minimum)


def check_dropout_masks(shapes: Mapping[str, tuple[int, ...]], batch: int, length: int,
                        config: GatedLinearRNNLMConfig) -> None:
    """Masks are keyed by ``dropout_sites(config)`` names and shaped ``(B, T, D)``."""
    sites = dropout_sites(config)
    unknown = [k for k in shapes if k not in sites]
    if unknown:
        raise ValueError(f"dropout_masks has unknown sites {unknown}; valid: {list(sites)}")
    want = (batch, length, config.d_model)
    for k, shape in shapes.items():
        if tuple(shape) != want:
            raise ValueError(f"dropout_masks[{k!r}] must have shape (B, T, d_model) = {want}, got {tuple(shape)}")


def check_generation(config: GatedLinearRNNLMConfig, max_new_tokens: int, temperature: float,
                     top_k: int | None) -> None:
    """Generation feeds sampled ids back: it needs word embedding, a head and ``V_out <= V_in``."""
    if not (config.use_word_embedding and config.use_head):
        raise ValueError("generation needs use_word_embedding=True and use_head=True (it samples token ids "
                         "from the logits and feeds them back)")
    if config.output_vocab_size > config.input_vocab_size:
        raise ValueError(f"generation feeds sampled ids back as inputs: output_vocab_size="
                         f"{config.output_vocab_size} must not exceed input_vocab_size={config.input_vocab_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not checks.is_positive_int(top_k) or top_k > config.output_vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, output_vocab_size={config.output_vocab_size}], "
                         f"got {top_k!r}")


# ---------------------------------------------------------------------------------------------
# Sampling (framework-neutral, so that JAX and torch draw the same tokens from the same logits and seed)


def row_generators(seed: Any, batch: int) -> list[np.random.Generator]:
    """One NumPy generator per row: ``default_rng(seed + b)`` for an int ``seed``, ``default_rng(seed[b])`` for
    a sequence of ``B`` seeds (so a row run alone with ``seed=[s]`` draws what it draws in the batch)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [np.random.default_rng(int(seed) + b) for b in range(batch)]
    seeds = np.asarray(seed)
    if seeds.shape != (batch,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seed must be an int or one int per row (shape {(batch,)}), got {seed!r}")
    return [np.random.default_rng(int(s)) for s in seeds]


def sample_tokens(logits: np.ndarray, generators: list[np.random.Generator], temperature: float,
                  top_k: int | None) -> np.ndarray:
    """``logits: (B, V)`` → ``(B,)`` int32 ids: argmax when ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits (float64, one generator per row)."""
    logits = np.asarray(logits, np.float64)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int32)
    z = logits / temperature
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([g.choice(p.shape[-1], p=row) for g, row in zip(generators, p)], np.int32)


# ---------------------------------------------------------------------------------------------
# The reference (readable; float64 or complex128 for complex-step differentiation).


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, ``var = mean((x - mean)^2)``."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # no abs/conj: holomorphic, so complex step works
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    return layer_spec.activation("gelu" if approximate else "gelu_exact")(x)


def initial_state(config: GatedLinearRNNLMConfig, batch_size: int, dtype: str = "float32") -> State:
    """``State(h=L zeros (B, H) in state_dtype(dtype), position=zeros (B,) int32)``."""
    zeros = np.zeros((batch_size, config.d_h), _np_dtype(state_dtype(dtype)))
    return State(tuple(zeros.copy() for _ in range(config.n_layer)), np.zeros((batch_size,), np.int32))


def _apply_dropout(x: np.ndarray, branch: np.ndarray, mask: np.ndarray | None, placement: str) -> np.ndarray:
    if mask is None:
        return x + branch
    return x + branch * mask if placement == "branch" else (x + branch) * mask


def _forward_rows(params, inputs, config, h0, position, masks):
    """All rows consume all ``T`` inputs (§2)."""
    n_time = inputs.shape[1]
    dtype = np.result_type(*[np.asarray(v) for v in params.values()])
    if config.use_word_embedding:
        x = params["embed.embedding"][inputs]
    else:
        x = inputs.astype(dtype) @ params["input_proj.kernel"] + params["input_proj.bias"]
    offset = np.zeros_like(position) if config.compat_step_position_zero else position
    positions = offset[:, None] + np.arange(n_time)[None, :]  # (B, T)
    if config.positional_encoding_mode == "learned":
        x = x + params["pos_embed.embedding"][positions]
    elif config.positional_encoding_mode == "sinusoidal":
        x = x + sinusoidal_table(config.max_seq_length, config.d_model)[positions]
    if "embedding" in masks:
        x = x * masks["embedding"]
    hs = []
    for l in range(config.n_layer):
        p = f"layers.{l}."
        z = layer_norm(x, params[p + f"{_TM}.norm.scale"], params[p + f"{_TM}.norm.bias"], config.eps)
        y, h = layer_spec.forward(layer_params(params, l), z, config.layer_config, State(h0[l]))
        hs.append(h.h)
        x = _apply_dropout(x, y, masks.get(p + _TM), config.dropout_placement)
        z = layer_norm(x, params[p + f"{_CM}.norm.scale"], params[p + f"{_CM}.norm.bias"], config.eps)
        z = gelu(z @ params[p + f"{_CM}.fc1.kernel"] + params[p + f"{_CM}.fc1.bias"], config.gelu_approximate)
        y = z @ params[p + f"{_CM}.fc2.kernel"] + params[p + f"{_CM}.fc2.bias"]
        x = _apply_dropout(x, y, masks.get(p + _CM), config.dropout_placement)
    out = x @ params["head.kernel"] + params["head.bias"] if config.use_head else x
    return out, State(tuple(hs), (position + n_time).astype(np.int32))


def forward(
    params: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    config: GatedLinearRNNLMConfig,
    initial_state: State | None = None,
    *,
    lengths: np.ndarray | None = None,
    dropout_masks: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, State]:
    """The model over a sequence (§2), as readable loops.

    Args:
      params: canonical name → array (``param_shapes(config)``).
      inputs: token ids ``(B, T)`` (or features ``(B, T, F)`` without word embedding).
      initial_state: ``State(h=L arrays (B, H), position=(B,))``; ``None``: zeros.
      lengths: ``(B,)``: row ``b`` holds ``lengths[b]`` real inputs followed by padding. Defined as running each
        row alone on its first ``lengths[b]`` inputs; outputs at padded positions are zero.
      dropout_masks: site name (``dropout_sites``) → ``(B, T, D)`` multiplier; absent sites are not dropped.

    Returns:
      ``(out, final_state)``: ``out`` is ``(B, T, V_out)`` logits (``(B, T, D)`` hidden without head),
      ``final_state`` a ``State`` like ``initial_state``.
    """
    inputs = np.asarray(inputs)
    check_params({k: np.shape(v) for k, v in params.items()}, config)
    n_batch, n_time = inputs.shape[:2]
    dtype = np.result_type(*[np.asarray(v) for v in params.values()])
    if initial_state is None:
        initial_state = State(tuple(np.zeros((n_batch, config.d_h), dtype) for _ in range(config.n_layer)),
                              np.zeros(n_batch, np.int32))
    h0, position = state_parts(initial_state, config)
    dtype = np.result_type(dtype, *[np.asarray(h) for h in h0])
    if not config.use_word_embedding:
        dtype = np.result_type(dtype, inputs)
    p = {k: np.asarray(v).astype(dtype) for k, v in params.items()}
    h0, position = [np.asarray(h).astype(dtype) for h in h0], np.asarray(position).astype(np.int64)
    masks = {k: np.asarray(v) for k, v in (dropout_masks or {}).items()}
    if lengths is None:
        return _forward_rows(p, inputs, config, h0, position, masks)
    lengths = np.asarray(lengths)
    out = np.zeros((n_batch, n_time, config.d_output), dtype)
    hs, positions = [], []
    for b in range(n_batch):
        n = int(lengths[b])
        row_masks = {k: v[b : b + 1, :n] for k, v in masks.items()}
        o, s = _forward_rows(p, inputs[b : b + 1, :n], config, [h[b : b + 1] for h in h0], position[b : b + 1],
                             row_masks)
        out[b, :n] = o[0]
        hs.append([h[0] for h in s.h])
        positions.append(s.position[0])
    h = tuple(np.stack([row[l] for row in hs]) for l in range(config.n_layer)) if hs else tuple(h0)
    return out, State(h, np.asarray(positions, np.int32))


def step(
    params: Mapping[str, np.ndarray], input_t: np.ndarray, state: State | None,
    config: GatedLinearRNNLMConfig,
) -> tuple[np.ndarray, State]:
    """One token: ``input_t: (B,)`` ids (or ``(B, F)``) → ``(out_t: (B, V_out), state)``; by definition the
    full pass over a length-1 sequence (so the compat option adds position 0, as the original does)."""
    input_t = np.asarray(input_t)
    out, state = forward(params, input_t[:, None], config, state)
    return out[:, 0], state
