"""GateLoop language model for the JAX backend (``linrec.spec.gateloop_mh_lm``): pure functions and an NNX module.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` d_model, ``F`` d_ff, ``L`` layers, ``H`` heads,
``K`` head width. embedding -> ``L`` blocks [:func:`linrec.backends.jax.gateloop_mh.gateloop_mh` time mixing,
GELU feed-forward] -> (final RMSNorm) -> head; twin: ``linrec.backends.torch.gateloop_mh_lm``. The module's NNX
state paths are the canonical names and it hands its parameters to the pure function (one code path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linrec.backends.jax.arrays import dtype_name, to_jax
from linrec.backends.jax.gateloop_mh import GateLoopMH, gateloop_mh, gateloop_mh_initial_state, gateloop_mh_step
from linrec.spec import gateloop_mh_lm as spec
from linrec.spec.gateloop_mh_lm import GateLoopMHLMConfig
from linrec.spec.state import State, check_lengths

__all__ = ["GateLoopMHLM", "gateloop_mh_lm", "gateloop_mh_lm_initial_state", "gateloop_mh_lm_step"]

Array = jax.Array


def _tokens(tokens: Any, name: str, ndim: int, config: GateLoopMHLMConfig) -> Array:
    tokens = to_jax(tokens, name)
    values = None if isinstance(tokens, jax.core.Tracer) else np.asarray(tokens)  # ids are checked when concrete
    spec.check_tokens(name, tuple(tokens.shape), dtype_name(tokens), ndim, config, values)
    return tokens


def _wide(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _norm(p: Mapping[str, Array], name: str, x: Array) -> Array:
    """RMSNorm (``scale``) or, with a ``bias``, LayerNorm; in at least float32, rounded once to ``x``'s dtype."""
    w = _wide(x)
    scale = _wide(p[f"{name}.scale"])
    if f"{name}.bias" in p:
        mean = w.mean(axis=-1, keepdims=True)
        var = jnp.square(w - mean).mean(axis=-1, keepdims=True)
        y = (w - mean) / jnp.sqrt(var + spec.LN_EPS) * scale + _wide(p[f"{name}.bias"])
    else:
        norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=-1, keepdims=True))
        y = w / jnp.maximum(norm, spec.RMS_EPS) * np.sqrt(w.shape[-1]) * scale
    return y.astype(x.dtype)


def _ff(p: Mapping[str, Array], x: Array) -> Array:
    z = jax.nn.gelu(_wide(x @ p["ff.fc1.kernel"] + p["ff.fc1.bias"]), approximate=False).astype(x.dtype)
    return z @ p["ff.fc2.kernel"] + p["ff.fc2.bias"]


def _run(params: Mapping[str, Array], x: Array, states, config: GateLoopMHLMConfig, mixer) -> tuple[Array, State]:
    """The blocks, final norm and head on embedded ``x`` (``(B, T, D)`` or ``(B, D)``)."""
    hs = []
    for l in range(config.n_layers):
        p = spec.sub_params(params, f"layers.{l}.")
        mix = spec.sub_params(p, "mixer.")
        if config.block == "prenorm":
            y, s = mixer(mix, _norm(p, "norm", x), states[l])
            x = x + y
            x = x + _ff(p, _norm(p, "ff_norm", x))
        else:
            y, s = mixer(mix, x, states[l])
            x = _norm(p, "norm", x + y)
            x = _norm(p, "ff_norm", x + _ff(p, x))
        hs.append(s.h)
    if config.block == "prenorm":
        x = _norm(params, "final_norm", x)
    return x @ params["head.kernel"], State(tuple(hs))


def _params(params: Mapping[str, Any], config: GateLoopMHLMConfig) -> dict[str, Array]:
    spec.check_params(params, config)
    return {k: to_jax(v, k) for k, v in params.items()}


def gateloop_mh_lm(
    params: Mapping[str, Array],
    tokens: Array,
    *,
    config: GateLoopMHLMConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Array, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(S_0, …, S_{L-1})))``, ``S_l: (B, H, K, K)`` complex.

    ``mode``/``method``/``chunk_size``/``remat`` are every layer's (``gateloop_mh.md`` §4); ``lengths`` right-pads
    rows (padded positions are identity steps of every layer's scan, their logits zero).
    """
    tokens = _tokens(tokens, "tokens", 2, config)
    params = _params(params, config)
    states = spec.layer_states(initial_state, config)
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        values = None if isinstance(lengths, jax.core.Tracer) else np.asarray(lengths)
        check_lengths(tuple(lengths.shape), dtype_name(lengths), tokens.shape[0], tokens.shape[1], values,
                      where="gateloop_mh_lm", method=method)
    x = jnp.take(params["embed.embedding"], tokens, axis=0)

    def mixer(p, x, s):
        return gateloop_mh(p, x, config=config.layer, initial_state=s, lengths=lengths, mode=mode, method=method,
                           chunk_size=chunk_size, remat=remat)

    logits, state = _run(params, x, states, config, mixer)
    if lengths is not None:
        valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
        logits = jnp.where(valid[..., None], logits, jnp.zeros((), logits.dtype))
    return logits, state


def gateloop_mh_lm_step(
    params: Mapping[str, Array], token: Array, state: State | None, *, config: GateLoopMHLMConfig
) -> tuple[Array, State]:
    """One step: ``token (B,)``, the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
    token = _tokens(token, "token", 1, config)
    params = _params(params, config)
    states = spec.layer_states(state, config, name="state")

    def mixer(p, x_t, s):
        return gateloop_mh_step(p, x_t, s, config=config.layer)

    return _run(params, jnp.take(params["embed.embedding"], token, axis=0), states, config, mixer)


def gateloop_mh_lm_initial_state(config: GateLoopMHLMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """Zeros: ``State(h=(S_0, …, S_{L-1}))``, ``S_l: (B, H, K, K)`` in the complex state dtype for ``dtype``."""
    return State(tuple(gateloop_mh_initial_state(config.layer, batch_size, dtype).h
                       for _ in range(config.n_layers)))


# ---------------------------------------------------------------- the NNX module


class _RMSNorm(nnx.Module):
    """lucidrains' RMSNorm ``x / max(‖x‖, 1e-12) · √D · scale`` (state path ``scale``)."""

    def __init__(self, d: int, *, param_dtype: Any):
        self.scale = nnx.Param(jnp.ones((d,), param_dtype))


class _FeedForward(nnx.Module):
    def __init__(self, d: int, d_ff: int, *, rngs: nnx.Rngs, param_dtype: Any):
        self.fc1 = nnx.Linear(d, d_ff, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = nnx.Linear(d_ff, d, param_dtype=param_dtype, rngs=rngs)


class _Block(nnx.Module):
    def __init__(self, cfg: GateLoopMHLMConfig, *, rngs: nnx.Rngs, param_dtype: Any):
        def norm() -> nnx.Module:
            if cfg.block == "postnorm":
                return nnx.LayerNorm(cfg.d_model, epsilon=spec.LN_EPS, param_dtype=param_dtype, rngs=rngs)
            return _RMSNorm(cfg.d_model, param_dtype=param_dtype)

        layer = cfg.layer
        self.norm = norm()
        self.mixer = GateLoopMH(**{f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}, rngs=rngs,
                                param_dtype=param_dtype)
        self.ff_norm = norm()
        self.ff = _FeedForward(cfg.d_model, cfg.d_ff, rngs=rngs, param_dtype=param_dtype)


class GateLoopMHLM(nnx.Module):
    """``embed`` (``nnx.Embed``) -> ``layers`` (``nnx.List`` of blocks ``norm``, ``mixer`` (:class:`GateLoopMH`),
    ``ff_norm``, ``ff.fc1``/``ff.fc2``) -> ``final_norm`` (``block="prenorm"``) -> ``head`` (``nnx.Linear``, no bias).

    ``GateLoopMHLM(vocab_size, d_model, n_layers, *, num_heads=None, d_inner=None, ff_mult=4, block="prenorm",
    output_gate="silu", sub_norm="none", chunk_size=64, rngs, param_dtype=float32)``; the state paths are the
    canonical names. Call: ``(tokens (B, T), initial_state=None, *, lengths=None, mode, method, chunk_size) ->
    (logits, State)``; ``step``, ``prefill``, ``decode_step``, ``initial_state``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, *, num_heads: int | None = None,
                 d_inner: int | None = None, ff_mult: int = 4, block: str = "prenorm", output_gate: str = "silu",
                 sub_norm: str = "none", chunk_size: int = 64, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        cfg = GateLoopMHLMConfig(vocab_size, d_model, n_layers, num_heads=num_heads, d_inner=d_inner,
                                 ff_mult=ff_mult, block=block, output_gate=output_gate, sub_norm=sub_norm,
                                 chunk_size=chunk_size)
        self._config = cfg
        self.embed = nnx.Embed(vocab_size, d_model, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List([_Block(cfg, rngs=rngs, param_dtype=param_dtype) for _ in range(n_layers)])
        if cfg.block == "prenorm":
            self.final_norm = _RMSNorm(d_model, param_dtype=param_dtype)
        self.head = nnx.Linear(d_model, vocab_size, use_bias=False, param_dtype=param_dtype, rngs=rngs)

    @property
    def config(self) -> GateLoopMHLMConfig:
        return self._config

    def _variables(self) -> dict[str, nnx.Param]:
        return {".".join(map(str, path)): node for path, node in nnx.iter_graph(self) if isinstance(node, nnx.Param)}

    def _params(self) -> dict[str, Array]:
        """Canonical name -> array (the NNX state paths are the canonical names)."""
        return {k: v[...] for k, v in self._variables().items()}

    def __call__(self, tokens: Array, initial_state: State | None = None, *, lengths: Any = None,
                 mode: str = "auto", method: str = "auto", chunk_size: int | None = None) -> tuple[Array, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`gateloop_mh_lm`."""
        return gateloop_mh_lm(self._params(), tokens, config=self._config, initial_state=initial_state,
                              lengths=lengths, mode=mode, method=method, chunk_size=chunk_size)

    def step(self, token: Array, state: State | None = None) -> tuple[Array, State]:
        """``token (B,)``, the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
        return gateloop_mh_lm_step(self._params(), token, state, config=self._config)

    def prefill(self, tokens: Array, initial_state: State | None = None, lengths: Any = None
                ) -> tuple[Array, State]:
        """The parallel path over a prompt: ``(logits (B, T, V), state)`` to continue with :meth:`decode_step`."""
        return self(tokens, initial_state, lengths=lengths)

    def decode_step(self, token: Array, state: State) -> tuple[Array, State]:
        """One token after :meth:`prefill`: ``(logits (B, V), state)``."""
        return self.step(token, state)

    def initial_state(self, batch_size: int, dtype: Any = None) -> State:
        dtype = dtype or self.head.kernel[...].dtype
        return gateloop_mh_lm_initial_state(self._config, batch_size, np.dtype(dtype).name)

    @classmethod
    def from_canonical(cls, config: GateLoopMHLMConfig, params: Mapping[str, Any], *, rngs: nnx.Rngs | None = None,
                       param_dtype: Any = None) -> GateLoopMHLM:
        """Build a module holding ``params`` (canonical names and layout; stored in ``param_dtype`` or theirs)."""
        if not isinstance(config, GateLoopMHLMConfig):
            raise TypeError(f"config must be a GateLoopMHLMConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        if param_dtype is None:
            param_dtype = np.asarray(params["head.kernel"]).dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(fields.pop("vocab_size"), fields.pop("d_model"), fields.pop("n_layers"), **fields,
                     rngs=rngs or nnx.Rngs(0), param_dtype=param_dtype)
        for name, var in module._variables().items():
            var[...] = jnp.asarray(params[name], param_dtype)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (kernels ``(in, out)``)."""
        return {name: np.asarray(value) for name, value in self._params().items()}
