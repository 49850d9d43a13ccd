"""minLSTM for the NumPy backend (``spec/minlstm.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``D`` input features, ``H`` state features, ``D_out`` output features.
The sequence machinery is shared with :mod:`linrec.backends.numpy.mingru`; only the gates differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from linrec.backends.numpy.mingru import FUSED_GATES, initial_state, run_sequence, run_step
from linrec.spec import minlstm as spec
from linrec.spec.minlstm import MinLSTMConfig
from linrec.spec.state import State

__all__ = ["minlstm", "minlstm_gates", "minlstm_initial_state", "minlstm_log_gates", "minlstm_step"]


def _log_ratio(u_f: np.ndarray, u_i: np.ndarray) -> np.ndarray:
    """``d = log(i / f) = softplus(-u_f) - softplus(-u_i)`` (so ``f' = σ(-d)``, ``i' = σ(d)``)."""
    return spec.softplus(-u_f) - spec.softplus(-u_i)


def minlstm_gates(u: np.ndarray, config: MinLSTMConfig) -> tuple[np.ndarray, np.ndarray]:
    """``u (..., 3H)`` -> ``(a, b) = (f', i' h̃)`` with ``f' = f/(f+i) = σ(-d)``, ``i' = σ(d)``."""
    u_f, u_i, u_h = np.split(u, 3, axis=-1)
    d = _log_ratio(u_f, u_i)
    return spec.sigmoid(-d), spec.sigmoid(d) * spec.candidate(u_h, config.candidate)


def minlstm_log_gates(u: np.ndarray, config: MinLSTMConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(log f', log i' + log g(u_h)) = (-softplus(d), -softplus(-d) + log_g(u_h))``."""
    u_f, u_i, u_h = np.split(u, 3, axis=-1)
    d = _log_ratio(u_f, u_i)
    return -spec.softplus(d), -spec.softplus(-d) + spec.log_g(u_h)


FUSED_GATES[minlstm_gates] = "minlstm"


def minlstm(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: MinLSTMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[np.ndarray, State]:
    """minLSTM over a sequence; arguments and results as ``linrec.backends.numpy.mingru.mingru``.

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
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, *, config: MinLSTMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return run_step("minlstm", spec.param_shapes(config), minlstm_gates, params, x_t, state, config)


def minlstm_initial_state(config: MinLSTMConfig, batch_size: int, dtype: str = "float32") -> State:
    """The default state ``State(h=(B, H))`` for inputs of ``dtype``."""
    return initial_state(config, batch_size, dtype)
