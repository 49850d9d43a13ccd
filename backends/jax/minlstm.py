"""minLSTM for the JAX backend (``spec/minlstm.md``): pure functions and a Flax NNX module.

Shape legend: ``B`` batch, ``T`` time, ``D`` input features, ``H`` state features, ``D_out`` output features.
The sequence machinery and the module body are shared with :mod:`linrec.backends.jax.mingru`; only the
gates differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from linrec.backends.jax import native_decode
from linrec.backends.jax.mingru import (
    FUSED_GATES,
    MinRNNBase,
    candidate,
    initial_state,
    log_g,
    run_sequence,
    run_step,
)
from linrec.spec import minlstm as spec
from linrec.spec.minlstm import MinLSTMConfig
from linrec.spec.state import State

__all__ = ["MinLSTM", "minlstm", "minlstm_gates", "minlstm_initial_state", "minlstm_log_gates", "minlstm_step"]

Array = jax.Array


def _log_ratio(u_f: Array, u_i: Array) -> Array:
    """``d = log(i / f) = softplus(-u_f) - softplus(-u_i)`` (so ``f' = σ(-d)``, ``i' = σ(d)``), as
    ``log σ(u_i) - log σ(u_f)`` (the torch twin's form)."""
    return jax.nn.log_sigmoid(u_i) - jax.nn.log_sigmoid(u_f)


def minlstm_gates(u: Array, config: MinLSTMConfig) -> tuple[Array, Array]:
    """``u (..., 3H)`` -> ``(a, b) = (f', i' h̃)`` with ``f' = f/(f+i) = σ(-d)``, ``i' = σ(d)``."""
    u_f, u_i, u_h = jnp.split(u, 3, axis=-1)
    d = _log_ratio(u_f, u_i)
    return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * candidate(u_h, config.candidate)


def minlstm_log_gates(u: Array, config: MinLSTMConfig) -> tuple[Array, Array]:
    """``(log f', log i' + log g(u_h)) = (-softplus(d), -softplus(-d) + log_g(u_h))``."""
    u_f, u_i, u_h = jnp.split(u, 3, axis=-1)
    d = _log_ratio(u_f, u_i)
    return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(u_h)


FUSED_GATES[minlstm_gates] = "minlstm"


def minlstm(
    params: Mapping[str, Array],
    x: Array,
    *,
    config: MinLSTMConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[Array, State]:
    """minLSTM over a sequence; arguments and results as ``linrec.backends.jax.mingru.mingru``.

    Args:
      params: canonical parameters (``linrec.spec.minlstm.param_shapes``).
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H))`` in the state dtype; ``None``: every entry ``config.default_state``.
      lengths: ``(B,)`` real inputs per row (right padding); ``None``: no padding.
      mode: ``"auto"``, ``"parallel"`` or ``"sequential"``.
      method: ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"`` or ``"log"``.

    Returns:
      ``y (B, T, D_out)`` and ``final_state``, a ``State(h=(B, H))``.
    """
    return run_sequence("minlstm", spec.param_shapes(config), minlstm_gates, minlstm_log_gates, params, x, config,
                        initial_state, lengths, mode, method)


def minlstm_step(
    params: Mapping[str, Array], x_t: Array, state: State | None, *, config: MinLSTMConfig
) -> tuple[Array, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return run_step("minlstm", spec.param_shapes(config), minlstm_gates, params, x_t, state, config)


def minlstm_initial_state(config: MinLSTMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The default state ``State(h=(B, H))`` for inputs of ``dtype``."""
    return initial_state(config, batch_size, dtype)


class MinLSTM(MinRNNBase):
    """minLSTM (``spec/minlstm.md``): ``h_t = f'_t h_{t-1} + i'_t h̃_t`` with ``f' + i' = 1``.

    Constructor: the ``MinLSTMConfig`` fields as keyword arguments, keyword-only ``rngs``, ``dtype``,
    ``param_dtype``, ``remat`` and ``batch_first``. Parameters: ``proj`` (``nnx.Linear`` D -> 3H, columns
    ``[f | i | h̃]``) and ``out_proj`` (H -> D, no bias).
    """

    _layer = "minlstm"
    _config_cls = MinLSTMConfig
    _n_blocks = 3
    _gates = staticmethod(minlstm_gates)
    _log_gates = staticmethod(minlstm_log_gates)
    _native_step = staticmethod(native_decode.minlstm_step)
