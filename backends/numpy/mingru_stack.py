"""minGRU stack for the NumPy backend (``spec/mingru_stack.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``I`` input features, ``H_l`` layer ``l``'s features, ``L`` layers.
Each layer runs through the minGRU layer's own functions (``linrec.backends.numpy.mingru``). The NumPy
backend has no training mode, so no dropout.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.mingru import mingru, mingru_step
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

__all__ = ["mingru_stack", "mingru_stack_initial_state", "mingru_stack_step"]


def _check_state(name: str, state, config: MinGRUStackConfig, batch: int, x_dtype: str) -> list:
    """One ``State`` per layer (``None``: that layer's default) from the stack's ``State``."""
    given = spec.state_arrays(name, state, config)
    if given is None:
        return [None] * config.num_layers
    arrays = [np.asarray(h) for h in given]
    spec.check_state(name, config, batch, [a.shape for a in arrays], [dtype_name(a) for a in arrays],
                     mingru_spec.state_dtype(x_dtype))
    return [State(a) for a in arrays]


def _layer(p, x, h0, config: MinGRUStackConfig, layer: int, run):
    z = spec.layer_norm(x, p["norm.scale"].astype(x.dtype), p["norm.bias"].astype(x.dtype),
                        config.norm_eps) if config.norm else x
    y, h = run(spec.sub_params(p, "mingru."), z, h0, config.layer_config(layer))
    if config.residual:
        # the spec's residual branch on parameters cast to the compute dtype
        align = {k: v.astype(x.dtype) for k, v in p.items() if k.startswith("res_align.")}
        y = y + spec.residual_branch(align, x, config, layer)
    return y, h.h


def mingru_stack(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: MinGRUStackConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[np.ndarray, State]:
    """The stack over ``x (B, T, I)`` -> ``(y (B, T, H_{L-1}), State(h=(h_0 (B, H_0), ..., h_{L-1})))``.

    ``initial_state``: a ``State`` whose ``h`` holds ``L`` arrays ``(B, H_l)`` (``None``: the default state);
    ``lengths``: ``(B,)`` real inputs per row (right padding: padded positions keep every layer's state and
    output zeros); ``mode``/``method`` as for the minGRU layer, applied to every layer.
    """
    x = np.asarray(x)
    spec.check_input("x", x.shape, 3, config)
    spec.check_params(params, config)
    states = _check_state("initial_state", initial_state, config, x.shape[0], dtype_name(x))
    finals = []
    for layer in range(config.num_layers):
        x, h = _layer(spec.sub_params(params, f"layers.{layer}."), x, states[layer], config, layer,
                      lambda mp, z, h0, lcfg: mingru(mp, z, config=lcfg, initial_state=h0, lengths=lengths,
                                                     mode=mode, method=method))
        finals.append(h)
    if lengths is not None:  # a residual carries the (nonzero) input through a padded position: zero it
        x = np.where(mingru_spec.padding_mask(lengths, *x.shape[:2])[..., None], x, np.zeros((), x.dtype))
    return x, State(tuple(finals))


def mingru_stack_step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, *, config: MinGRUStackConfig,
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, I)``, the ``State`` (``None``: default) -> ``(y_t (B, H_{L-1}), State)``."""
    x_t = np.asarray(x_t)
    spec.check_input("x_t", x_t.shape, 2, config)
    spec.check_params(params, config)
    states = _check_state("state", state, config, x_t.shape[0], dtype_name(x_t))
    finals = []
    for layer in range(config.num_layers):
        x_t, h = _layer(spec.sub_params(params, f"layers.{layer}."), x_t, states[layer], config, layer,
                        lambda mp, z, h0, lcfg: mingru_step(mp, z, h0, config=lcfg))
        finals.append(h)
    return x_t, State(tuple(finals))


def mingru_stack_initial_state(config: MinGRUStackConfig, batch_size: int, dtype: str = "float32") -> State:
    """The default state: ``State(h=...)`` with one ``(B, H_l)`` array per layer filled with ``default_state``."""
    acc = np_dtype(mingru_spec.state_dtype(dtype))
    return State(tuple(np.full((batch_size, h), config.default_state, acc) for h in config.hidden_sizes))
