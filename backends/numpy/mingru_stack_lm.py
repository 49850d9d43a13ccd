"""Token model on the minGRU stack for the NumPy backend (``linrec.spec.mingru_stack_lm``): pure functions.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``I`` embedding width, ``H_l`` layer ``l``'s width.
embedding -> :func:`linrec.backends.numpy.mingru_stack.mingru_stack` -> dense head. The NumPy backend has no
training mode, so no dropout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.backends.numpy.mingru_stack import mingru_stack, mingru_stack_initial_state, mingru_stack_step
from linrec.spec import mingru_stack_lm as spec
from linrec.spec.mingru_stack import sub_params
from linrec.spec.mingru_stack_lm import MinGRUStackLMConfig
from linrec.spec.state import State

__all__ = ["mingru_stack_lm", "mingru_stack_lm_initial_state", "mingru_stack_lm_step"]


def mingru_stack_lm(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    *,
    config: MinGRUStackLMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[np.ndarray, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(B, H_l) per layer))``; the stack's keywords."""
    tokens = np.asarray(tokens)
    spec.check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    spec.check_params(params, config)
    x = np.asarray(params["embed.embedding"])[tokens]
    y, state = mingru_stack(sub_params(params, "rnn."), x, config=config.stack, initial_state=initial_state,
                            lengths=lengths, mode=mode, method=method)
    return y @ np.asarray(params["head.kernel"]) + np.asarray(params["head.bias"]), state


def mingru_stack_lm_step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, *, config: MinGRUStackLMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``token (B,)``, the ``State`` (``None``: default) -> ``(logits (B, V), State)``."""
    token = np.asarray(token)
    spec.check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    spec.check_params(params, config)
    x_t = np.asarray(params["embed.embedding"])[token]
    y, state = mingru_stack_step(sub_params(params, "rnn."), x_t, state, config=config.stack)
    return y @ np.asarray(params["head.kernel"]) + np.asarray(params["head.bias"]), state


def mingru_stack_lm_initial_state(config: MinGRUStackLMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The stack's default state (``State(h=...)``, one ``(B, H_l)`` array per layer)."""
    return mingru_stack_initial_state(config.stack, batch_size, dtype)
