"""minGRU stack for the NumPy backend (``spec/mingru_stack.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``I`` input features, ``H_l`` layer ``l``'s features, ``L`` layers.
Each layer runs through the minGRU layer's own functions (``linrec.backends.numpy.mingru``). The NumPy
backend has no training mode, so no dropout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.mingru import mingru, mingru_step
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig

__all__ = ["mingru_stack", "mingru_stack_initial_state", "mingru_stack_step"]


def _check_state(state, config: MinGRUStackConfig, batch: int, x_dtype: str):
    if state is None:
        return [None] * config.num_layers
    arrays = [np.asarray(s) for s in state] if isinstance(state, (tuple, list)) else None
    spec.check_state(state, config, batch, None if arrays is None else [a.shape for a in arrays],
                     None if arrays is None else [dtype_name(a) for a in arrays], mingru_spec.state_dtype(x_dtype))
    return arrays


def _layer(p, x, h0, config: MinGRUStackConfig, layer: int, run):
    z = spec.layer_norm(x, p["norm.scale"].astype(x.dtype), p["norm.bias"].astype(x.dtype),
                        config.norm_eps) if config.norm else x
    y, h = run(spec.sub_params(p, "mingru."), z, h0, config.layer_config(layer))
    if config.residual:
        y = y + (x @ p["res_align.kernel"].astype(x.dtype) if config.has_align(layer) else x)
    return y, h


def mingru_stack(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: MinGRUStackConfig,
    initial_state: Sequence[np.ndarray] | None = None,
    mode: str = "parallel",
    method: str = "auto",
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The stack over ``x (B, T, I)`` -> ``(y (B, T, H_{L-1}), (h_0 (B, H_0), ..., h_{L-1}))``.

    ``initial_state``: ``L`` arrays ``(B, H_l)`` (``None``: the default state); ``mode``/``method`` as for
    the minGRU layer, applied to every layer.
    """
    x = np.asarray(x)
    spec.check_input("x", x.shape, 3, config)
    spec.check_params(params, config)
    states = _check_state(initial_state, config, x.shape[0], dtype_name(x))
    finals = []
    for layer in range(config.num_layers):
        x, h = _layer(spec.sub_params(params, f"layers.{layer}."), x, states[layer], config, layer,
                      lambda mp, z, h0, lcfg: mingru(mp, z, config=lcfg, initial_state=h0, mode=mode, method=method))
        finals.append(h)
    return x, tuple(finals)


def mingru_stack_step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: Sequence[np.ndarray] | None, *,
    config: MinGRUStackConfig,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """One step: ``x_t (B, I)``, the state (``None``: default) -> ``(y_t (B, H_{L-1}), state)``."""
    x_t = np.asarray(x_t)
    spec.check_input("x_t", x_t.shape, 2, config)
    spec.check_params(params, config)
    states = _check_state(state, config, x_t.shape[0], dtype_name(x_t))
    finals = []
    for layer in range(config.num_layers):
        x_t, h = _layer(spec.sub_params(params, f"layers.{layer}."), x_t, states[layer], config, layer,
                        lambda mp, z, h0, lcfg: mingru_step(mp, z, h0, config=lcfg))
        finals.append(h)
    return x_t, tuple(finals)


def mingru_stack_initial_state(config: MinGRUStackConfig, batch_size: int,
                               dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """The default state: one ``(B, H_l)`` array per layer filled with ``default_state``."""
    acc = np_dtype(mingru_spec.state_dtype(dtype))
    return tuple(np.full((batch_size, h), config.default_state, acc) for h in config.hidden_sizes)
