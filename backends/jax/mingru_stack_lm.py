"""Token model on the minGRU stack for the JAX backend (``linrec.spec.mingru_stack_lm``): functions and an NNX module.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``I`` embedding width, ``H_l`` layer ``l``'s width.
embedding -> :mod:`linrec.backends.jax.mingru_stack` -> dense head; twin: ``linrec.backends.torch.mingru_stack_lm``.
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
from linrec.backends.jax.mingru_stack import MinGRUStack, mingru_stack, mingru_stack_initial_state, mingru_stack_step
from linrec.spec import mingru_stack_lm as spec
from linrec.spec.mingru_stack import sub_params
from linrec.spec.mingru_stack_lm import MinGRUStackLMConfig
from linrec.spec.state import State

__all__ = ["MinGRUStackLM", "mingru_stack_lm", "mingru_stack_lm_initial_state", "mingru_stack_lm_step"]

Array = jax.Array


def _tokens(tokens: Any, name: str, ndim: int, config: MinGRUStackLMConfig) -> Array:
    tokens = to_jax(tokens, name)
    values = None if isinstance(tokens, jax.core.Tracer) else np.asarray(tokens)  # ids are checked when concrete
    spec.check_tokens(name, tuple(tokens.shape), dtype_name(tokens), ndim, config, values)
    return tokens


def mingru_stack_lm(
    params: Mapping[str, Array],
    tokens: Array,
    *,
    config: MinGRUStackLMConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    dropout_rng: Array | None = None,
    remat: bool = False,
) -> tuple[Array, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(B, H_l) per layer))``; the stack's keywords
    (:func:`linrec.backends.jax.mingru_stack.mingru_stack`; ``dropout_rng`` turns on training-mode dropout)."""
    tokens = _tokens(tokens, "tokens", 2, config)
    spec.check_params(params, config)
    x = jnp.take(to_jax(params["embed.embedding"], "embed.embedding"), tokens, axis=0)
    y, state = mingru_stack(sub_params(params, "rnn."), x, config=config.stack, initial_state=initial_state,
                            lengths=lengths, mode=mode, method=method, dropout_rng=dropout_rng, remat=remat)
    return y @ to_jax(params["head.kernel"], "head.kernel") + to_jax(params["head.bias"], "head.bias"), state


def mingru_stack_lm_step(
    params: Mapping[str, Array], token: Array, state: State | None, *, config: MinGRUStackLMConfig
) -> tuple[Array, State]:
    """One step (evaluation mode): ``token (B,)``, the ``State`` (``None``: default) -> ``(logits (B, V), State)``."""
    token = _tokens(token, "token", 1, config)
    spec.check_params(params, config)
    x_t = jnp.take(to_jax(params["embed.embedding"], "embed.embedding"), token, axis=0)
    y, state = mingru_stack_step(sub_params(params, "rnn."), x_t, state, config=config.stack)
    return y @ to_jax(params["head.kernel"], "head.kernel") + to_jax(params["head.bias"], "head.bias"), state


def mingru_stack_lm_initial_state(config: MinGRUStackLMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The stack's default state (``State(h=...)``, one ``(B, H_l)`` array per layer)."""
    return mingru_stack_initial_state(config.stack, batch_size, dtype)


class MinGRUStackLM(nnx.Module):
    """embedding ``embed`` (``nnx.Embed``) -> ``rnn`` (:class:`MinGRUStack`) -> ``head`` (``nnx.Linear``), Flax NNX.

    ``MinGRUStackLM(vocab_size, input_size, hidden_sizes, num_layers=None, *, <MinGRUStack options>, rngs,
    dtype=None, param_dtype=float32)``. State paths equal the canonical names (``embed.embedding``,
    ``rnn.layers.{l}...``, ``head.{kernel,bias}``). Dropout between layers is on in training mode, off after
    ``.eval()``. Call: ``(tokens (B, T), initial_state=None, *, lengths=None, mode, method) -> (logits, State)``.
    """

    def __init__(self, vocab_size: int, input_size: int, hidden_sizes: Any, num_layers: int | None = None, *,
                 rngs: nnx.Rngs, dtype: Any = None, param_dtype: Any = jnp.float32, **stack_options: Any):
        self.rnn = MinGRUStack(input_size, hidden_sizes, num_layers, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                               **stack_options)
        self._cfg = MinGRUStackLMConfig.from_stack(vocab_size, self.rnn.config)
        self.dtype = dtype
        self.embed = nnx.Embed(vocab_size, input_size, embedding_init=nnx.initializers.normal(1.0),
                               param_dtype=param_dtype, rngs=rngs)
        self.head = nnx.Linear(self._cfg.output_size, vocab_size, param_dtype=param_dtype, rngs=rngs)

    @property
    def config(self) -> MinGRUStackLMConfig:
        return self._cfg

    def _embed(self, tokens: Array) -> Array:
        x = jnp.take(self.embed.embedding[...], tokens, axis=0)
        return x if self.dtype is None else x.astype(self.dtype)

    def _head(self, y: Array) -> Array:
        kernel, bias = self.head.kernel[...], self.head.bias[...]
        return y @ kernel.astype(y.dtype) + bias.astype(y.dtype)

    def __call__(self, tokens: Array, initial_state: State | None = None, *, lengths: Array | None = None,
                 mode: str = "auto", method: str = "auto") -> tuple[Array, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`mingru_stack_lm`."""
        tokens = _tokens(tokens, "tokens", 2, self._cfg)
        y, state = self.rnn(self._embed(tokens), initial_state, lengths=lengths, mode=mode, method=method)
        return self._head(y), state

    def step(self, token: Array, state: State | None = None) -> tuple[Array, State]:
        """``token (B,)``, the ``State`` (``None``: default) -> ``(logits (B, V), State)``; no dropout."""
        token = _tokens(token, "token", 1, self._cfg)
        y, state = self.rnn.step(self._embed(token), state)
        return self._head(y), state

    def initial_state(self, batch_size: int) -> State:
        return self.rnn.initial_state(batch_size)

    @classmethod
    def from_canonical(cls, config: MinGRUStackLMConfig, params: Mapping[str, Any], *,
                       rngs: nnx.Rngs | None = None, **kwargs) -> MinGRUStackLM:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRUStackLMConfig):
            raise TypeError(f"config must be a MinGRUStackLMConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        kwargs.setdefault("param_dtype", jnp.asarray(params["head.kernel"]).dtype)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = nnx.eval_shape(lambda: cls(fields.pop("vocab_size"), fields.pop("input_size"),
                                            list(fields.pop("hidden_sizes")), **fields, rngs=nnx.Rngs(0), **kwargs))
        module.rnn = MinGRUStack.from_canonical(config.stack, sub_params(params, "rnn."), rngs=rngs, **kwargs)
        dtype = kwargs["param_dtype"]
        module.embed.embedding = nnx.Param(jnp.asarray(params["embed.embedding"], dtype))
        module.head.kernel = nnx.Param(jnp.asarray(params["head.kernel"], dtype))
        module.head.bias = nnx.Param(jnp.asarray(params["head.bias"], dtype))
        module._cfg = config
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        out = {"embed.embedding": np.asarray(self.embed.embedding[...])}
        out.update({f"rnn.{k}": v for k, v in self.rnn.canonical_params().items()})
        out.update({"head.kernel": np.asarray(self.head.kernel[...]), "head.bias": np.asarray(self.head.bias[...])})
        return out
