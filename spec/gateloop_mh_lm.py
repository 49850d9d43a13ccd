"""A token language model on the multi-head GateLoop: config, canonical parameters, checks and the NumPy reference.

Normative text: ``gateloop_mh_lm.md``. It is lucidrains' gateloop-transformer ``Transformer`` (GateLoopedAttention
blocks): a token embedding, ``L`` blocks of [GateLoop time mixing, feed-forward] each wrapped pre-RMSNorm +
residual (``block="prenorm"``) or residual + post-LayerNorm (``block="postnorm"``), a final RMSNorm
(``prenorm`` only) and a head without bias::

    x = embed.embedding[tokens]                                   # (B, T, D)
    for l in range(L):
        prenorm:  y, S[l] = gateloop_mh(mixer_l, rms_l(x), S0[l]);  x = x + y;  x = x + ff_l(rms'_l(x))
        postnorm: y, S[l] = gateloop_mh(mixer_l, x, S0[l]);  x = ln_l(x + y);  x = ln'_l(x + ff_l(x))
    logits = final_rms(x) @ head.kernel   (postnorm: x @ head.kernel)

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` d_model, ``F`` d_ff = ``D · ff_mult``, ``L``
layers, ``H`` heads, ``K`` = ``d_inner / H`` (the square per-head state is ``K × K``). The carried state is
``State(h=(S_0, …, S_{L-1}))`` with ``S_l: (B, H, K, K)`` complex, ``position`` ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linrec.spec import checks
from linrec.spec import gateloop_mh as layer_spec
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State, check_lengths

__all__ = [
    "BLOCKS",
    "LN_EPS",
    "RMS_EPS",
    "GateLoopMHLMConfig",
    "State",
    "check_params",
    "check_tokens",
    "forward",
    "gelu",
    "init_params",
    "layer_norm",
    "layer_states",
    "param_shapes",
    "rms_norm",
    "step",
    "sub_params",
]

#: ``"prenorm"``: ``x + f(RMSNorm(x))`` and a final RMSNorm; ``"postnorm"``: ``LayerNorm(x + f(x))``, no final norm
BLOCKS = ("prenorm", "postnorm")
#: RMSNorm: ``x / max(‖x‖₂, RMS_EPS) · √D · γ`` (torch ``F.normalize``'s eps)
RMS_EPS = layer_spec.RMS_EPS
#: LayerNorm eps (torch ``nn.LayerNorm``'s default)
LN_EPS = layer_spec.SUB_NORM_EPS


@dataclass(frozen=True)
class GateLoopMHLMConfig:
    """Hyper-parameters (``gateloop_mh_lm.md`` §3); the original ``Transformer``'s names in brackets.

    ``vocab_size`` (``num_tokens``), ``d_model`` (``dim``), ``n_layers`` (``depth``), ``num_heads``
    (``gate_loop_heads``; ``None``: ``d_inner``, one channel per head), ``d_inner`` (``dim_gate_looped_attn``;
    ``None``: ``d_model``), ``ff_mult`` (``ff_mult``), ``block`` (``post_ln_norm``), ``output_gate``
    (``attn_add_swish_gating``: ``"silu"``/``"none"``), ``sub_norm`` (``sub_ln``: ``"layernorm"``/``"none"``),
    ``chunk_size`` (the GateLoop layer's ``method="chunked"``).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    num_heads: int | None = None
    d_inner: int | None = None
    ff_mult: int = 4
    block: str = "prenorm"
    output_gate: str = "silu"
    sub_norm: str = "none"
    chunk_size: int = 64

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "ff_mult", "chunk_size"):
            checks.check_positive_int(f"GateLoopMHLMConfig.{name}", getattr(self, name))
        if self.d_inner is None:
            object.__setattr__(self, "d_inner", self.d_model)
        checks.check_positive_int("GateLoopMHLMConfig.d_inner", self.d_inner)
        if self.num_heads is None:
            object.__setattr__(self, "num_heads", self.d_inner)
        checks.check_positive_int("GateLoopMHLMConfig.num_heads", self.num_heads)
        if self.d_inner % self.num_heads:
            raise ValueError(f"GateLoopMHLMConfig.num_heads={self.num_heads} must divide d_inner={self.d_inner}")
        checks.check_choice("GateLoopMHLMConfig.block", self.block, BLOCKS)
        checks.check_choice("GateLoopMHLMConfig.output_gate", self.output_gate, layer_spec.OUTPUT_GATES)
        checks.check_choice("GateLoopMHLMConfig.sub_norm", self.sub_norm, layer_spec.SUB_NORMS)

    @property
    def d_ff(self) -> int:
        """``F = d_model · ff_mult``: the feed-forward width."""
        return self.d_model * self.ff_mult

    @property
    def d_head(self) -> int:
        """``K = d_inner / num_heads``: a head's state is ``K × K``."""
        return self.d_inner // self.num_heads

    @property
    def layer(self) -> GateLoopMHConfig:
        """Every block's time mixing: ``gateloop_mh`` with the complex cartesian gate, one gate per head."""
        return GateLoopMHConfig(
            d_model=self.d_model, num_heads=self.num_heads, d_key=self.d_head, d_value=self.d_head, gate="complex",
            gate_granularity="head", gate_parametrization="cartesian", complex_output="real", qkv_bias=False,
            chunk_size=self.chunk_size, sub_norm=self.sub_norm, output_gate=self.output_gate)


# ---------------------------------------------------------------- parameters


def param_shapes(config: GateLoopMHLMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical flat names -> shapes (``gateloop_mh_lm.md`` §4); kernels are ``(in, out)``."""
    d, f, post = config.d_model, config.d_ff, config.block == "postnorm"
    shapes: dict[str, tuple[int, ...]] = {"embed.embedding": (config.vocab_size, d)}
    mixer = layer_spec.param_shapes(config.layer)
    for l in range(config.n_layers):
        p = f"layers.{l}."
        for norm in ("norm", "ff_norm"):
            shapes[f"{p}{norm}.scale"] = (d,)
            if post:
                shapes[f"{p}{norm}.bias"] = (d,)
        shapes.update({f"{p}mixer.{k}": v for k, v in mixer.items()})
        shapes.update({f"{p}ff.fc1.kernel": (d, f), f"{p}ff.fc1.bias": (f,), f"{p}ff.fc2.kernel": (f, d),
                       f"{p}ff.fc2.bias": (d,)})
    if not post:
        shapes["final_norm.scale"] = (d,)
    shapes["head.kernel"] = (d, config.vocab_size)
    return shapes


def init_params(config: GateLoopMHLMConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Embedding ``N(0, 1)``, norms 1 / 0, the GateLoop layer's initialisers, dense ``U(±1/√in)`` with zero biases."""
    from linrec.backends.numpy.arrays import np_dtype

    rng = np.random.default_rng([seed, 7])
    out: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if ".mixer." in name:
            continue
        if name == "embed.embedding":
            value = rng.standard_normal(shape)
        elif name.endswith(".scale"):
            value = np.ones(shape)
        elif name.endswith(".kernel"):
            bound = 1.0 / math.sqrt(shape[0])
            value = rng.uniform(-bound, bound, shape)
        else:
            value = np.zeros(shape)
        out[name] = value.astype(np_dtype(dtype))
    for l in range(config.n_layers):
        mixer = layer_spec.init_params(config.layer, seed=seed * 1000 + l, dtype=dtype)
        out.update({f"layers.{l}.mixer.{k}": v for k, v in mixer.items()})
    return out


def check_params(params: Mapping[str, Any], config: GateLoopMHLMConfig) -> None:
    """Raise ``ValueError`` naming a missing, unexpected or misshapen parameter."""
    expected = param_shapes(config)
    missing, extra = map(sorted, checks.missing_and_unexpected({k: np.shape(v) for k, v in params.items()}, expected))
    if missing:
        raise ValueError(f"gateloop_mh_lm: missing parameter(s) {missing[:6]} for this config "
                         f"(n_layers={config.n_layers}, block={config.block!r})")
    if extra:
        raise ValueError(f"gateloop_mh_lm: unexpected parameter(s) {extra[:6]} for this config "
                         f"(n_layers={config.n_layers}, block={config.block!r})")
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"gateloop_mh_lm: parameter {name!r} must have shape {shape}, "
                             f"got {tuple(np.shape(params[name]))}")


def sub_params(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- inputs and state


def check_tokens(name: str, shape: tuple[int, ...], dtype: str, ndim: int, config: GateLoopMHLMConfig,
                 values: np.ndarray | None) -> None:
    """``tokens (B, T)`` (``ndim=2``) / ``token (B,)``: integer ids in ``[0, V)``; ``values`` ``None`` when traced."""
    if np.dtype(dtype).kind not in "iu":
        raise TypeError(f"gateloop_mh_lm: {name} must hold integer token ids, got dtype {dtype}")
    if len(shape) != ndim:
        want = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"gateloop_mh_lm: {name} must have shape {want}, got {tuple(shape)}")
    if values is not None and np.size(values):
        lo, hi = int(np.min(values)), int(np.max(values))
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"gateloop_mh_lm: {name} contains id {bad}, outside [0, vocab_size={config.vocab_size})")


def layer_states(state: object, config: GateLoopMHLMConfig, *, name: str = "initial_state") -> list[State | None]:
    """Split a model ``State(h=(S_0, …, S_{L-1}))`` into one layer ``State`` per block (``None``: ``[None] * L``)."""
    if state is None:
        return [None] * config.n_layers
    if not isinstance(state, State):
        raise TypeError(f"gateloop_mh_lm: {name} must be a linrec State(h=(S_0, ..., S_{{L-1}})) or None, "
                        f"got {type(state).__name__}")
    if state.position is not None:
        raise ValueError(f"gateloop_mh_lm: {name}.position must be None (the model has no positional encoding)")
    if not isinstance(state.h, (tuple, list)) or len(state.h) != config.n_layers:
        got = len(state.h) if isinstance(state.h, (tuple, list)) else type(state.h).__name__
        raise ValueError(f"gateloop_mh_lm: {name}.h must be a tuple of n_layers={config.n_layers} arrays "
                         f"(B, H, K, K), got {got} (a state from a model with a different configuration?)")
    return [State(h) for h in state.h]


# ---------------------------------------------------------------- the reference


def rms_norm(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``x / max(‖x‖₂, RMS_EPS) · √D · scale`` over the last axis (lucidrains' ``RMSNorm``)."""
    norm = np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True))
    return x / np.maximum(norm, RMS_EPS) * np.sqrt(x.shape[-1]) * scale


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis: biased variance, eps ``LN_EPS`` (torch ``nn.LayerNorm``)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * scale + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU ``x Φ(x)`` (torch ``nn.GELU()``)."""
    from math import erf

    return x * 0.5 * (1.0 + np.vectorize(erf, otypes=[x.dtype])(x / math.sqrt(2.0)))


def _norm(p: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    if f"{name}.bias" in p:
        return layer_norm(x, p[f"{name}.scale"], p[f"{name}.bias"])
    return rms_norm(x, p[f"{name}.scale"])


def _ff(p: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return gelu(x @ p["ff.fc1.kernel"] + p["ff.fc1.bias"]) @ p["ff.fc2.kernel"] + p["ff.fc2.bias"]


def run_blocks(params, x, states: Sequence[State | None], config: GateLoopMHLMConfig, mixer, *,
               norm=_norm, ff=_ff) -> tuple[np.ndarray, list]:
    """The ``L`` blocks, the final norm and the head on embedded ``x``: ``mixer(layer params, x, state) ->
    (y, State)`` is the layer's call, ``norm(p, name, x)`` and ``ff(p, x)`` the block's norms and feed-forward
    (a backend passes its own, e.g. rounded to the parameters' dtype). Returns ``(logits, [h per layer])``."""
    out = []
    for l in range(config.n_layers):
        p = sub_params(params, f"layers.{l}.")
        mix = sub_params(p, "mixer.")
        if config.block == "prenorm":
            y, s = mixer(mix, norm(p, "norm", x), states[l])
            x = x + y
            x = x + ff(p, norm(p, "ff_norm", x))
        else:
            y, s = mixer(mix, x, states[l])
            x = norm(p, "norm", x + y)
            x = norm(p, "ff_norm", x + ff(p, x))
        out.append(s.h)
    if config.block == "prenorm":
        x = norm(params, "final_norm", x)
    return x @ params["head.kernel"], out


def forward(
    params: Mapping[str, np.ndarray], tokens: np.ndarray, config: GateLoopMHLMConfig,
    initial_state: State | None = None, lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The definition (``gateloop_mh_lm.md`` §2), float64: ``tokens (B, T)`` -> ``(logits (B, T, V), State)``.

    With ``lengths`` each row is run alone on its real tokens; logits at padded positions are zero.
    """
    tokens = np.asarray(tokens)
    check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    check_params(params, config)
    states = layer_states(initial_state, config)
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    if lengths is not None:
        lengths = np.asarray(lengths)
        check_lengths(lengths.shape, lengths.dtype.name, tokens.shape[0], tokens.shape[1], lengths,
                      where="gateloop_mh_lm")
        rows, finals = [], []
        for b in range(tokens.shape[0]):
            n = int(lengths[b])
            row_state = None if initial_state is None else State(tuple(s.h[b:b + 1] for s in states))
            logits, s = forward(params, tokens[b:b + 1, :n], config, row_state)
            pad = np.zeros((1, tokens.shape[1] - n, config.vocab_size))
            rows.append(np.concatenate([logits, pad], axis=1))
            finals.append(s.h)
        if not rows:
            return forward(params, tokens, config, initial_state)
        return np.concatenate(rows), State(tuple(np.concatenate([f[l] for f in finals])
                                                 for l in range(config.n_layers)))
    x = params["embed.embedding"][tokens]

    def mixer(p, x, s):
        return layer_spec.forward(p, x, config.layer, s)

    logits, hs = run_blocks(params, x, states, config, mixer)
    return logits, State(tuple(hs))


def step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, config: GateLoopMHLMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``token (B,)`` and the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
    token = np.asarray(token)
    check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    logits, state = forward(params, token[:, None], config, state)
    return logits[:, 0], state
