"""Token model on the minGRU stack for the PyTorch backend (``linrec.spec.mingru_stack_lm``): functions and a module.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``I`` embedding width, ``H_l`` layer ``l``'s width.
embedding -> :mod:`linrec.backends.torch.mingru_stack` -> dense head; twin: ``linrec.backends.jax.mingru_stack_lm``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from linrec.backends.torch.arrays import dtype_name, to_numpy
from linrec.backends.torch.mingru_stack import MinGRUStack, mingru_stack, mingru_stack_initial_state, mingru_stack_step
from linrec.spec import mingru_stack_lm as spec
from linrec.spec.mingru_stack import sub_params
from linrec.spec.mingru_stack_lm import MinGRUStackLMConfig
from linrec.spec.state import State

__all__ = ["MinGRUStackLM", "mingru_stack_lm", "mingru_stack_lm_initial_state", "mingru_stack_lm_step"]


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _tokens(tokens: Any, name: str, ndim: int, config: MinGRUStackLMConfig) -> Tensor:
    tokens = _as_tensor(tokens)
    spec.check_tokens(name, tuple(tokens.shape), dtype_name(tokens), ndim, config, to_numpy(tokens))
    return tokens.long()


def mingru_stack_lm(
    params: Mapping[str, Tensor],
    tokens: Tensor,
    *,
    config: MinGRUStackLMConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    training: bool = False,
    remat: bool = False,
) -> tuple[Tensor, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(B, H_l) per layer))``; the stack's keywords
    (:func:`linrec.backends.torch.mingru_stack.mingru_stack`; ``training`` turns on dropout)."""
    tokens = _tokens(tokens, "tokens", 2, config)
    spec.check_params(params, config)
    p = {k: _as_tensor(v) for k, v in params.items()}
    x = p["embed.embedding"][tokens]
    y, state = mingru_stack(sub_params(p, "rnn."), x, config=config.stack, initial_state=initial_state,
                            lengths=lengths, mode=mode, method=method, training=training, remat=remat)
    return y @ p["head.kernel"] + p["head.bias"], state


def mingru_stack_lm_step(
    params: Mapping[str, Tensor], token: Tensor, state: State | None, *, config: MinGRUStackLMConfig
) -> tuple[Tensor, State]:
    """One step (evaluation mode): ``token (B,)``, the ``State`` (``None``: default) -> ``(logits (B, V), State)``."""
    token = _tokens(token, "token", 1, config)
    spec.check_params(params, config)
    p = {k: _as_tensor(v) for k, v in params.items()}
    y, state = mingru_stack_step(sub_params(p, "rnn."), p["embed.embedding"][token], state, config=config.stack)
    return y @ p["head.kernel"] + p["head.bias"], state


def mingru_stack_lm_initial_state(config: MinGRUStackLMConfig, batch_size: int, dtype: Any = torch.float32,
                                  device: Any = None) -> State:
    """The stack's default state (``State(h=...)``, one ``(B, H_l)`` tensor per layer)."""
    return mingru_stack_initial_state(config.stack, batch_size, dtype, device)


class MinGRUStackLM(nn.Module):
    """embedding ``embed`` (``nn.Embedding``) -> ``rnn`` (:class:`MinGRUStack`) -> ``head`` (``nn.Linear``).

    ``MinGRUStackLM(vocab_size, input_size, hidden_sizes, num_layers=None, *, <MinGRUStack options>, device=None,
    dtype=None)``. ``state_dict`` keys: ``embed.weight``, ``rnn.layers.{l}...`` (the stack's), ``head.{weight,
    bias}``. Dropout between layers follows ``self.training``. Call: ``(tokens (B, T), initial_state=None, *,
    lengths=None, mode, method) -> (logits, State)``.
    """

    def __init__(self, vocab_size: int, input_size: int, hidden_sizes: Any, num_layers: int | None = None, *,
                 device: Any = None, dtype: torch.dtype | None = None, **stack_options: Any):
        super().__init__()
        self.rnn = MinGRUStack(input_size, hidden_sizes, num_layers, device=device, dtype=dtype, **stack_options)
        self._cfg = MinGRUStackLMConfig.from_stack(vocab_size, self.rnn.config)
        self.embed = nn.Embedding(vocab_size, input_size, device=device, dtype=dtype)
        self.head = nn.Linear(self._cfg.output_size, vocab_size, device=device, dtype=dtype)

    @property
    def config(self) -> MinGRUStackLMConfig:
        return self._cfg

    def _head(self, y: Tensor) -> Tensor:
        return y @ self.head.weight.T.to(y.dtype) + self.head.bias.to(y.dtype)

    def forward(self, tokens: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                mode: str = "auto", method: str = "auto") -> tuple[Tensor, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`mingru_stack_lm`."""
        tokens = _tokens(tokens, "tokens", 2, self._cfg)
        y, state = self.rnn(self.embed.weight[tokens], initial_state, lengths=lengths, mode=mode, method=method)
        return self._head(y), state

    def step(self, token: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``token (B,)``, the ``State`` (``None``: default) -> ``(logits (B, V), State)``; no dropout."""
        token = _tokens(token, "token", 1, self._cfg)
        y, state = self.rnn.step(self.embed.weight[token], state)
        return self._head(y), state

    def initial_state(self, batch_size: int) -> State:
        return self.rnn.initial_state(batch_size)

    @classmethod
    def from_canonical(cls, config: MinGRUStackLMConfig, params: Mapping[str, Any], *, device: Any = None,
                       dtype: torch.dtype | None = None, **kwargs) -> MinGRUStackLM:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRUStackLMConfig):
            raise TypeError(f"config must be a MinGRUStackLMConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        tensors = {k: _as_tensor(v) for k, v in params.items()}
        dtype = dtype or tensors["head.kernel"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(fields.pop("vocab_size"), fields.pop("input_size"), list(fields.pop("hidden_sizes")), **fields,
                     device=device, dtype=dtype, **kwargs)
        module.rnn = MinGRUStack.from_canonical(config.stack, sub_params(tensors, "rnn."), device=device,
                                                dtype=dtype, **kwargs)
        with torch.no_grad():
            module.embed.weight.copy_(tensors["embed.embedding"])
            module.head.weight.copy_(tensors["head.kernel"].T)
            module.head.bias.copy_(tensors["head.bias"])
        module._cfg = config
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        out = {"embed.embedding": np.ascontiguousarray(to_numpy(self.embed.weight))}
        out.update({f"rnn.{k}": v for k, v in self.rnn.canonical_params().items()})
        out.update({"head.kernel": np.ascontiguousarray(to_numpy(self.head.weight.T)),
                    "head.bias": np.ascontiguousarray(to_numpy(self.head.bias))})
        return out
