"""A token model on the minGRU stack: embedding -> ``mingru_stack`` -> dense head (config, parameters, reference).

This is the ``stack`` model of ``linrec train selective-copy`` (cheind/mingru's selective-copy example):

    x = embed.embedding[tokens]                          # (B, T, I), I = input_size
    y, state = mingru_stack(rnn.*, x, initial_state)     # (B, T, H_{L-1}), spec/mingru_stack.md
    logits = y @ head.kernel + head.bias                 # (B, T, V)

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary (``vocab_size``), ``I`` embedding width
(``input_size``), ``H_l`` layer ``l``'s width, ``L`` layers. The state is the stack's ``State`` (one ``(B, H_l)``
array per layer, ``position`` ``None``). Every stack option is a field of this config with the stack's name and
meaning (``mingru_stack.md`` §3), so the stack's layout rows apply unchanged under the ``rnn.`` prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from linrec.spec import checks
from linrec.spec import mingru_stack as stack_spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

__all__ = ["MinGRUStackLMConfig", "State", "forward", "init_params", "param_shapes", "step"]


@dataclass(frozen=True)
class MinGRUStackLMConfig:
    """``vocab_size`` (``V``: embedding rows and head columns) and the stack's options (``input_size`` is the
    embedding width); see :class:`linrec.spec.mingru_stack.MinGRUStackConfig` for the others."""

    vocab_size: int
    input_size: int
    hidden_sizes: tuple[int, ...]
    bias: bool = True
    dropout: float = 0.0
    residual: bool = False
    norm: bool = False
    candidate: str = "g"
    default_state: float = 0.5
    norm_eps: float = 1e-5
    residual_align: str = "mismatched"
    residual_align_bias: bool = False

    def __post_init__(self) -> None:
        checks.check_positive_int("vocab_size", self.vocab_size)
        object.__setattr__(self, "hidden_sizes", self.stack.hidden_sizes)  # validates every stack field

    @classmethod
    def from_stack(cls, vocab_size: int, stack: MinGRUStackConfig) -> MinGRUStackLMConfig:
        return cls(vocab_size, **{f.name: getattr(stack, f.name) for f in fields(stack)})

    @property
    def stack(self) -> MinGRUStackConfig:
        """The config of the ``rnn`` stack."""
        return MinGRUStackConfig(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "vocab_size"})

    # the stack's derived names, so that its layout rows evaluate on this config
    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    @property
    def output_size(self) -> int:
        return self.hidden_sizes[-1]

    def layer_input_size(self, layer: int) -> int:
        return self.stack.layer_input_size(layer)

    def has_align(self, layer: int) -> bool:
        return self.stack.has_align(layer)

    def layer_config(self, layer: int) -> MinGRUConfig:
        return self.stack.layer_config(layer)


def param_shapes(config: MinGRUStackLMConfig) -> dict[str, tuple[int, ...]]:
    """``embed.embedding (V, I)``, ``rnn.<stack names>``, ``head.kernel (H_{L-1}, V)``, ``head.bias (V,)``."""
    shapes = {"embed.embedding": (config.vocab_size, config.input_size)}
    shapes.update({f"rnn.{k}": v for k, v in stack_spec.param_shapes(config.stack).items()})
    shapes.update({"head.kernel": (config.output_size, config.vocab_size), "head.bias": (config.vocab_size,)})
    return shapes


def init_params(config: MinGRUStackLMConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The stack's initialisers for ``rnn.*``; embedding ``N(0, 1)``; head kernel ``U(±1/sqrt(H))``, bias 0."""
    from linrec.backends.numpy.arrays import np_dtype

    params = {f"rnn.{k}": v for k, v in stack_spec.init_params(config.stack, seed, dtype).items()}
    rng = np.random.default_rng([seed, 1])
    params["embed.embedding"] = rng.standard_normal((config.vocab_size, config.input_size)).astype(np_dtype(dtype))
    bound = 1.0 / math.sqrt(config.output_size)
    params["head.kernel"] = rng.uniform(-bound, bound, (config.output_size, config.vocab_size)).astype(
        np_dtype(dtype))
    params["head.bias"] = np.zeros(config.vocab_size, np_dtype(dtype))
    return params


def check_params(params: Mapping[str, Any], config: MinGRUStackLMConfig) -> None:
    from linrec.spec import mingru as mingru_spec

    mingru_spec.check_params("mingru_stack_lm", params, param_shapes(config))


def check_tokens(name: str, shape: tuple[int, ...], dtype: str, ndim: int, config: MinGRUStackLMConfig,
                 values: np.ndarray | None) -> None:
    """``tokens (B, T)`` (``ndim=2``) / ``token (B,)``: integer ids in ``[0, V)``; ``values`` is ``None`` when
    traced (shape and dtype are still checked)."""
    if np.dtype(dtype).kind not in "iu":
        raise TypeError(f"mingru_stack_lm: {name} must hold integer token ids, got dtype {dtype}")
    if len(shape) != ndim:
        want = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"mingru_stack_lm: {name} must have shape {want}, got {tuple(shape)}")
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"mingru_stack_lm: {name} contains id {bad}, outside [0, vocab_size={config.vocab_size})")


def forward(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    config: MinGRUStackLMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(B, H_l) per layer))`` in evaluation mode (no dropout).

    ``initial_state`` and ``lengths`` are the stack's (``mingru_stack.md``); a padded position's logits are the
    head's bias (the stack outputs zeros there).
    """
    tokens = np.asarray(tokens)
    check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    check_params(params, config)
    x = np.asarray(params["embed.embedding"])[tokens]
    y, state = stack_spec.forward(stack_spec.sub_params(params, "rnn."), x, config.stack, initial_state, lengths)
    return y @ params["head.kernel"] + params["head.bias"], state


def step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, config: MinGRUStackLMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``token (B,)`` and the ``State`` (``None``: default) -> ``(logits (B, V), State)``."""
    token = np.asarray(token)
    check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    logits, state = forward(params, token[:, None], config, state)
    return logits[:, 0], state
