"""minGRU language model (``mingru_lm.md``): config, canonical parameters, the NumPy reference and generation.

Shape legend: ``B`` batch, ``T`` time (tokens), ``V`` vocabulary, ``D`` model width (``d_model``),
``H`` minGRU state width (``d_inner``), ``F`` feed-forward width (``d_ff``), ``L`` layers (``n_layers``).

Two block designs share the embedding, the minGRU layers (``linrec.spec.mingru``) and the head:

- ``block="glu"`` (jkyl/nnx-gru): ``h = minGRU(x)``; ``x <- x + glu(h W_l + b_l)``; no normalisation.
- ``block="prenorm"`` (lucidrains' minLM): ``x <- x + minGRU(RMSNorm(x))``; ``x <- x + FF(RMSNorm(x))``;
  a final RMSNorm before the head.

Everything here is framework-free. The reference is a plain loop that computes in the dtype of the
embedding (pass float64 parameters to get the answer conformance uses). Generation (the sampler and the
prefill/decode driver) is also defined here once, so every backend samples the same tokens from the same
logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linrec.spec import checks
from linrec.spec import mingru as mingru_spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.state import State

__all__ = [
    "BLOCKS",
    "MinGRULMConfig",
    "State",
    "check_generate_args",
    "check_lengths",
    "check_mode",
    "check_params",
    "check_state",
    "check_tokens",
    "forward",
    "gelu",
    "generate_loop",
    "init_params",
    "last_real",
    "layer_param_shapes",
    "param_shapes",
    "rms_norm",
    "row_seeds",
    "sample_next",
    "step",
]

#: ``glu``: nnx-gru's residual GLU block; ``prenorm``: minLM's pre-RMSNorm minGRU + feed-forward block.
BLOCKS = ("glu", "prenorm")


# --- config -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinGRULMConfig:
    """Options of the minGRU language model (``mingru_lm.md`` §3).

    Attributes:
      vocab_size: ``V``, number of token ids (valid ids are ``0 .. V-1``).
      d_model: ``D``, width of the residual stream.
      n_layers: ``L``, number of blocks.
      block: ``"glu"`` (nnx-gru) or ``"prenorm"`` (minLM).
      expansion: ``H = int(D * expansion)``, the minGRU state width.
      candidate: minGRU candidate activation, ``"identity"`` (nnx-gru) or ``"g"`` (lucidrains, cheind).
      mingru_bias: bias on the minGRU input projection (nnx-gru: yes; lucidrains: no).
      default_state: every entry of each layer's state before the first token (``0``).
      ff_mult: ``F = int(D * ff_mult)`` (``prenorm`` only).
      norm_eps: RMSNorm epsilon (``prenorm`` only).
      head_bias: bias on the output head (nnx-gru: yes; lucidrains: no).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    block: str = "glu"
    expansion: float = 1.0
    candidate: str = "identity"
    mingru_bias: bool = True
    default_state: float = 0.0
    ff_mult: float = 4.0
    norm_eps: float = 1e-6
    head_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers"):
            checks.check_positive_int(name, getattr(self, name))
        checks.check_choice("block", self.block, BLOCKS)
        for name in ("expansion", "ff_mult", "norm_eps"):
            checks.check_positive_finite(name, getattr(self, name))
        for name in ("mingru_bias", "head_bias"):
            checks.check_bool(name, getattr(self, name))
        if int(self.d_model * self.expansion) < 1:
            raise ValueError(f"expansion={self.expansion} gives d_inner = int(d_model * expansion) < 1")
        if self.block == "prenorm" and self.d_ff < 1:
            raise ValueError(f"ff_mult={self.ff_mult} gives d_ff = int(d_model * ff_mult) < 1")
        self.mingru  # noqa: B018 -- validates candidate and default_state through MinGRUConfig

    @property
    def d_inner(self) -> int:
        """``H``: the minGRU state width of every layer."""
        return int(self.d_model * self.expansion)

    @property
    def d_ff(self) -> int:
        """``F``: the feed-forward hidden width (``prenorm``)."""
        return int(self.d_model * self.ff_mult)

    @property
    def mingru(self) -> MinGRUConfig:
        """The config of every layer's minGRU. ``prenorm`` adds the residual in ``D``, so it projects
        ``H -> D`` (``out_proj``) when ``H != D`` (lucidrains' rule); ``glu`` reads ``h`` directly."""
        return MinGRUConfig(
            d_model=self.d_model, d_inner=self.d_inner,
            out_proj=self.block == "prenorm" and self.d_inner != self.d_model,
            bias=self.mingru_bias, candidate=self.candidate, default_state=self.default_state,
        )

    @classmethod
    def nnx_gru(cls, vocab_size: int, depth: int, dim: int) -> MinGRULMConfig:
        """jkyl/nnx-gru's ``Model(vocab_size, depth, dim)`` (in float32; the original keeps bfloat16 params)."""
        return cls(vocab_size=vocab_size, d_model=dim, n_layers=depth, block="glu")

    @classmethod
    def min_lm(cls, num_tokens: int, dim: int, depth: int, *, ff_mult: float = 4.0,
               expansion: float = 1.5) -> MinGRULMConfig:
        """lucidrains' ``minLM`` (no conv, no dropout); its ``nn.RMSNorm`` eps is float32's machine epsilon."""
        return cls(vocab_size=num_tokens, d_model=dim, n_layers=depth, block="prenorm", expansion=expansion,
                   candidate="g", mingru_bias=False, ff_mult=ff_mult, norm_eps=float(np.finfo(np.float32).eps),
                   head_bias=False)


# --- parameters -------------------------------------------------------------------------------------


def layer_param_shapes(config: MinGRULMConfig) -> dict[str, tuple[int, ...]]:
    """One block's parameters, named relative to ``layers.{l}.`` (the JAX module stacks them on axis 0)."""
    d, h = config.d_model, config.d_inner
    shapes = {f"mingru.{k}": v for k, v in mingru_spec.param_shapes(config.mingru).items()}
    if config.block == "glu":
        shapes.update({"glu.kernel": (h, 2 * d), "glu.bias": (2 * d,)})
    else:
        f = config.d_ff
        shapes.update({
            "norm.scale": (d,), "ff_norm.scale": (d,),
            "ff.fc1.kernel": (d, f), "ff.fc1.bias": (f,), "ff.fc2.kernel": (f, d), "ff.fc2.bias": (d,),
        })
    return shapes


def param_shapes(config: MinGRULMConfig) -> dict[str, tuple[int, ...]]:
    """The canonical parameter table (``mingru_lm.md`` §4): flat dotted names, dense kernels ``(in, out)``."""
    v, d = config.vocab_size, config.d_model
    shapes: dict[str, tuple[int, ...]] = {"embed.embedding": (v, d)}
    for layer in range(config.n_layers):
        shapes.update({f"layers.{layer}.{k}": s for k, s in layer_param_shapes(config).items()})
    if config.block == "prenorm":
        shapes["final_norm.scale"] = (d,)
    shapes["head.kernel"] = (d, v)
    if config.head_bias:
        shapes["head.bias"] = (v,)
    return shapes


def init_params(config: MinGRULMConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Spec initialisers: embedding ``N(0, 1)``; kernels ``U(±1/sqrt(fan_in))``; biases 0; norm scales 1."""
    from linrec.backends.numpy.arrays import np_dtype

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(config).items():
        if name == "embed.embedding":
            value = rng.standard_normal(shape)
        elif name.endswith(".kernel"):
            bound = 1.0 / math.sqrt(shape[0])
            value = rng.uniform(-bound, bound, shape)
        elif name.endswith(".scale"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        out[name] = value.astype(np_dtype(dtype))
    return out


# --- checks shared by every backend -----------------------------------------------------------------

_INT_KINDS = ("i", "u")


def check_tokens(name: str, shape: tuple[int, ...], dtype: str, ndim: int, config: MinGRULMConfig,
                 values: np.ndarray | None) -> None:
    """``tokens (B, T)`` / ``token (B,)``: integer ids in ``[0, V)``; ``values`` is ``None`` when traced."""
    if np.dtype(dtype).kind not in _INT_KINDS:
        raise TypeError(f"mingru_lm: {name} must hold integer token ids, got dtype {dtype}")
    if len(shape) != ndim:
        want = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"mingru_lm: {name} must have shape {want}, got {tuple(shape)}")
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"mingru_lm: {name} contains id {bad}, outside [0, vocab_size={config.vocab_size})")


def check_lengths(shape: tuple[int, ...], dtype: str, batch: int, length: int, values: np.ndarray | None) -> None:
    """``lengths (B,)``: integers in ``[0, T]``, row ``i`` holding ``lengths[i]`` real tokens followed by padding
    (right padding, recurrence.md §0); ``values`` is ``None`` when traced."""
    mingru_spec.check_lengths("mingru_lm", shape, dtype, batch, length, values)


def state_arrays(name: str, state: Any, config: MinGRULMConfig) -> tuple:
    """``state.h``, a tuple of ``L`` arrays, of the model's :class:`State`, else a clear ``TypeError``."""
    if not isinstance(state, State):
        raise TypeError(f"mingru_lm: {name} must be a linrec State(h=tuple of {config.n_layers} (B, d_inner) "
                        f"arrays), got {type(state).__name__}")
    if state.position is not None:
        raise ValueError(f"mingru_lm: {name}.position must be None (the model has no positional encoding)")
    if not isinstance(state.h, (tuple, list)) or len(state.h) != config.n_layers:
        got = f"{len(state.h)} entries" if isinstance(state.h, (tuple, list)) else type(state.h).__name__
        raise ValueError(f"mingru_lm: {name}.h must be a tuple of n_layers={config.n_layers} arrays (B, d_inner), "
                         f"got {got} (a state from a model with a different configuration?)")
    return tuple(state.h)


def check_state(name: str, config: MinGRULMConfig, batch: int, shapes: Sequence[tuple[int, ...]],
                dtypes: Sequence[str], want_dtype: str) -> None:
    """The arrays of :func:`state_arrays`: each ``(B, d_inner)`` in the state dtype, else a clear error."""
    expected = (batch, config.d_inner)
    for layer, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        if tuple(shape) != expected:
            raise ValueError(f"mingru_lm: {name}.h[{layer}] must have shape (B, d_inner) = {expected}, got "
                             f"{tuple(shape)} (a state from a model with a different configuration?)")
        if dtype != want_dtype:
            raise TypeError(f"mingru_lm: {name}.h[{layer}] has dtype {dtype}; this model's state dtype is "
                            f"{want_dtype}")


def check_params(params: Mapping[str, Any], config: MinGRULMConfig) -> None:
    mingru_spec.check_params("mingru_lm", params, param_shapes(config))


def check_mode(mode: str, method: str, methods: Sequence[str], padded: bool) -> None:
    """``mode``/``method`` as for the minGRU layer (``"auto"`` is ``"parallel"``); ``method="log"`` cannot serve
    ``lengths`` (a padded position is an identity step, ``b = 0``)."""
    checks.check_mode(mode, mingru_spec.MODES, function="mingru_lm")
    if mode == "sequential" and method != "auto":
        raise ValueError(f"mingru_lm: method={method!r} selects a scan of mode='parallel'; mode='sequential' runs "
                         "the step loop and takes method='auto'")
    checks.check_method(method, methods, function="mingru_lm")
    if method == "log" and padded:
        raise ValueError(mingru_spec.lengths_log_error("mingru_lm"))


def last_real(logits: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """``logits (B, T, V)`` -> ``(B, V)`` at each row's last real position ``lengths[i] - 1`` (right padding;
    ``None``: the last position)."""
    if lengths is None:
        return logits[:, -1]
    return logits[np.arange(logits.shape[0]), np.asarray(lengths) - 1]


# --- the reference ----------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x², -1) + eps) * scale``."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU ``x Φ(x) = x (1 + erf(x / √2)) / 2`` (PyTorch's default; JAX needs ``approximate=False``)."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _dense(p: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    y = x @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def _layer(params: Mapping[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    prefix = f"layers.{layer}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _block(p: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray, mask: np.ndarray | None,
           config: MinGRULMConfig) -> tuple[np.ndarray, np.ndarray]:
    """One block over ``x (B, T, D)`` from ``h (B, H)``; a masked-out step leaves ``h`` unchanged."""
    mcfg = config.mingru
    inp = x if config.block == "glu" else rms_norm(x, p["norm.scale"], config.norm_eps)
    u = _dense(p, "mingru.proj", inp)
    states = np.zeros((*x.shape[:2], config.d_inner), x.dtype)
    for t in range(x.shape[1]):
        new = mingru_spec.mingru_update(h, u[:, t], mcfg)
        h = new if mask is None else np.where(mask[:, t, None], new, h)
        states[:, t] = h
    y = states @ p["mingru.out_proj.kernel"] if mcfg.out_proj else states
    if config.block == "glu":
        g = _dense(p, "glu", y)
        value, gate = np.split(g, 2, axis=-1)
        return x + value * mingru_spec.sigmoid(gate), h
    x = x + y
    f = _dense(p, "ff.fc2", gelu(_dense(p, "ff.fc1", rms_norm(x, p["ff_norm.scale"], config.norm_eps))))
    return x + f, h


def _head(params: Mapping[str, np.ndarray], x: np.ndarray, config: MinGRULMConfig) -> np.ndarray:
    if config.block == "prenorm":
        x = rms_norm(x, params["final_norm.scale"], config.norm_eps)
    return _dense(params, "head", x)


def _initial_h(config: MinGRULMConfig, batch: int, dtype) -> list[np.ndarray]:
    return [np.full((batch, config.d_inner), config.default_state, dtype) for _ in range(config.n_layers)]


def forward(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    config: MinGRULMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The definition of the model over a sequence, as loops over layers and time.

    Args:
      params: canonical parameters (:func:`param_shapes`); they set the compute dtype.
      tokens: ``(B, T)`` integer ids in ``[0, V)``.
      initial_state: a :class:`State` whose ``h`` is a tuple of ``L`` arrays ``(B, H)``; ``None``: every entry
        ``default_state``.
      lengths: ``(B,)``: row ``b`` holds ``lengths[b]`` real tokens followed by padding (right padding); at a
        padded position every layer keeps its state unchanged and the logits are zero, so the final state and
        the logits at real positions equal those of the unpadded row. ``None``: no padding.

    Returns:
      ``logits (B, T, V)`` and the final :class:`State` (``h[l] (B, H)``: layer ``l``'s minGRU state after
      each row's last real token, before ``out_proj``, the GLU or the residual).
    """
    tokens = np.asarray(tokens)
    check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    check_params(params, config)
    batch, length = tokens.shape
    dtype = np.asarray(params["embed.embedding"]).dtype
    if lengths is not None:
        lengths = np.asarray(lengths)
        check_lengths(lengths.shape, lengths.dtype.name, batch, length, lengths)
    h0 = _initial_h(config, batch, dtype)
    if initial_state is not None:
        h0 = [np.asarray(h) for h in state_arrays("initial_state", initial_state, config)]
        check_state("initial_state", config, batch, [h.shape for h in h0], [h.dtype.name for h in h0], dtype.name)
    mask = mingru_spec.padding_mask(lengths, batch, length)
    x = np.asarray(params["embed.embedding"])[tokens]
    finals = []
    for layer in range(config.n_layers):
        x, h = _block(_layer(params, layer), x, h0[layer], mask, config)
        finals.append(h)
    logits = _head(params, x, config)
    if mask is not None:
        logits = np.where(mask[..., None], logits, 0).astype(logits.dtype)
    return logits, State(tuple(finals))


def step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, config: MinGRULMConfig
) -> tuple[np.ndarray, State]:
    """One token: ``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), state)``."""
    token = np.asarray(token)
    check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    logits, state = forward(params, token[:, None], config, state)
    return logits[:, 0], state


# --- generation (shared by every backend) -----------------------------------------------------------


def check_generate_args(prompt_shape: tuple[int, ...], max_new_tokens: Any, temperature: Any, top_k: Any,
                        config: MinGRULMConfig, lengths: np.ndarray | None = None) -> None:
    """Generation needs at least one real prompt token per row (its logits give the first new token)."""
    if len(prompt_shape) != 2 or prompt_shape[1] < 1:
        raise ValueError(f"mingru_lm: prompt must have shape (B, T) with T >= 1, got {tuple(prompt_shape)}")
    if lengths is not None and np.size(lengths) and np.min(lengths) < 1:
        raise ValueError(f"mingru_lm: every prompt needs at least one real token to generate from; lengths = "
                         f"{np.asarray(lengths).tolist()}")
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"mingru_lm: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not checks.is_real_number(temperature) or not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"mingru_lm: temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not checks.is_positive_int(top_k) or top_k > config.vocab_size):
        raise ValueError(f"mingru_lm: top_k must be None or an int in [1, vocab_size={config.vocab_size}], "
                         f"got {top_k!r}")


def row_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    """Row ``b`` samples from its own stream ``seed + b`` (or ``seed[b]`` for a sequence), so a row draws
    the same tokens whatever else is in the batch: row ``b`` of a batch == that prompt alone with
    ``seed=seed + b``."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + b for b in range(batch)]
    seeds = list(seed)
    if len(seeds) != batch or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(f"mingru_lm: seed must be an int or {batch} ints (one per row), got {seed!r}")
    return [int(s) for s in seeds]


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None,
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Draw one token per row from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest.

    ``temperature == 0`` is greedy (``argmax``, lowest id on ties). Otherwise the Gumbel-max trick with
    float64 noise from row ``b``'s generator: ``argmax(logits / temperature + G)``, ``G = -log(-log U)``.
    """
    logits = np.asarray(logits, np.float64)
    if temperature == 0:
        return np.argmax(logits, axis=-1)  # top_k cannot change the argmax
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    u = np.stack([rng.random(z.shape[-1]) for rng in rngs])
    gumbel = -np.log(-np.log(np.clip(u, np.finfo(np.float64).tiny, 1.0)))
    return np.argmax(z + gumbel, axis=-1)


def generate_loop(
    prefill: Callable[[np.ndarray, np.ndarray | None], tuple[Any, Any]],
    decode_step: Callable[[np.ndarray, Any], tuple[Any, Any]],
    to_numpy: Callable[[Any], np.ndarray],
    prompt: np.ndarray,
    lengths: np.ndarray | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The generation driver every backend shares: one parallel ``prefill`` of the (right-padded) prompt, whose
    logits at each row's last real token (``lengths - 1``) give the first new token, then ``max_new_tokens - 1``
    calls of ``decode_step``.

    Returns ``(tokens (B, N) int64, logits (B, N, V))``: ``logits[:, i]`` is the distribution token ``i``
    was drawn from (the model's logits after the prompt and the first ``i`` new tokens).
    """
    batch = prompt.shape[0]
    rngs = [np.random.default_rng(s) for s in row_seeds(seed, batch)]
    logits, state = prefill(prompt, lengths)
    last = last_real(to_numpy(logits), lengths)
    tokens, seen = [], []
    for i in range(max_new_tokens):
        seen.append(last)
        token = sample_next(last, temperature, top_k, rngs).astype(np.int64)
        tokens.append(token)
        if i + 1 < max_new_tokens:
            logits, state = decode_step(token, state)
            last = to_numpy(logits)
    if not tokens:
        return np.zeros((batch, 0), np.int64), np.zeros((batch, 0, last.shape[-1]), last.dtype)
    return np.stack(tokens, axis=1), np.stack(seen, axis=1)
