"""minGRU for the NumPy backend (``spec/mingru.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``D`` input features, ``H`` state features (``d_inner``),
``D_out`` output features. The sequence runners here are shared with ``minlstm``: a layer is its
parameter table plus ``gates(u) -> (a, b)`` and ``log_gates(u) -> (log a, log b)`` of the projection ``u``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from linrec.backends.numpy import native_mingru as _fused
from linrec.backends.numpy import scan as _scan
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.spec import mingru as spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.state import State

__all__ = ["mingru", "mingru_gates", "mingru_initial_state", "mingru_log_gates", "mingru_step"]

Gates = Callable[[np.ndarray, object], tuple[np.ndarray, np.ndarray]]


def mingru_gates(u: np.ndarray, config: MinGRUConfig) -> tuple[np.ndarray, np.ndarray]:
    """``u (..., 2H)`` -> ``(a, b) = (1 - z, z h̃)``; ``1 - z`` as ``σ(-u_z)`` so it keeps its precision near 0."""
    u_z, u_h = np.split(u, 2, axis=-1)
    return spec.sigmoid(-u_z), spec.sigmoid(u_z) * spec.candidate(u_h, config.candidate)


def mingru_log_gates(u: np.ndarray, config: MinGRUConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(log(1 - z), log z + log g(u_h)) = (-softplus(u_z), -softplus(-u_z) + log_g(u_h))``."""
    u_z, u_h = np.split(u, 2, axis=-1)
    return -spec.softplus(u_z), -spec.softplus(-u_z) + spec.log_g(u_h)


#: Gates the fused minGRU kernel (``native_mingru``) computes itself, by its ``gates`` name: minGRU's, and minLSTM's
#: (registered by ``minlstm.py``: ``f' = σ(-d)``, ``i' = σ(d)``, minGRU's gates of ``d = log(i / f)``).
FUSED_GATES: dict[Gates, str] = {mingru_gates: "mingru"}


def initial_state(config, batch_size: int, dtype: str = "float32") -> State:
    """``State(h=(B, H))`` filled with ``config.default_state`` in the state dtype for inputs of ``dtype``."""
    return State(np.full((batch_size, config.d_inner), config.default_state, np_dtype(spec.state_dtype(dtype))))


def _project(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    u = x @ np.asarray(params["proj.kernel"]).astype(x.dtype)
    if "proj.bias" in params:
        u = u + np.asarray(params["proj.bias"]).astype(x.dtype)
    return u


def _output(params: Mapping[str, np.ndarray], config, h: np.ndarray, dtype: np.dtype) -> np.ndarray:
    h = h.astype(dtype)
    return h @ np.asarray(params["out_proj.kernel"]).astype(dtype) if config.out_proj else h


def _log_initial_state(layer: str, config, h0: np.ndarray | None, batch: int, acc: np.dtype) -> np.ndarray | None:
    """``log h_{-1}`` for the log-space scan, or ``None`` for the empty (zero) state."""
    if h0 is not None:
        if not np.all(h0 > 0):
            raise ValueError(spec.log_method_error(layer, "initial_state"))
        return np.log(h0)
    if config.default_state < 0:
        raise ValueError(spec.log_method_error(layer, "default_state"))
    if config.default_state == 0:
        return None
    return np.full((batch, config.d_inner), np.log(config.default_state), acc)


def run_sequence(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    log_gates: Gates,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config,
    initial_state: State | None,
    lengths: np.ndarray | None,
    mode: str,
    method: str,
) -> tuple[np.ndarray, State]:
    """The sequence call shared by the layers: project, gate, scan (or step loop), project out.

    With ``lengths`` (right padding) a padded position is an identity step (``a = 1, b = 0``) of the same scan
    and its output is zero."""
    x = np.asarray(x)
    h0 = spec.state_array(layer, "initial_state", initial_state)
    h0 = None if h0 is None else np.asarray(h0)
    spec.check_call(
        layer, config, x.shape, dtype_name(x), None if h0 is None else h0.shape,
        None if h0 is None else dtype_name(h0), mode=mode, method=method, methods=_scan.METHODS,
        padded=lengths is not None,
    )
    spec.check_params(layer, params, shapes)
    n_batch, n_time = x.shape[:2]
    mask = None
    if lengths is not None:
        lengths = np.asarray(lengths)
        spec.check_lengths(layer, lengths.shape, dtype_name(lengths), n_batch, n_time, lengths)
        mask = spec.padding_mask(lengths, n_batch, n_time)[..., None]
    mode = spec.resolve_mode(mode)
    acc = np_dtype(spec.state_dtype(dtype_name(x)))
    u = _project(params, x).astype(acc)  # projections run in x's dtype; gates and state in `acc`
    h0 = None if h0 is None else h0.astype(acc)
    if mode == "sequential":
        h = np.full((n_batch, config.d_inner), config.default_state, acc) if h0 is None else h0
        states = np.empty((n_batch, n_time, config.d_inner), acc)
        for t in range(n_time):
            a, b = gates(u[:, t], config)
            h = a * h + b if mask is None else np.where(mask[:, t], a * h + b, h)
            states[:, t] = h
        final = h
    elif method == "log":
        log_a, log_b = log_gates(u, config)
        log_h0 = _log_initial_state(layer, config, h0, n_batch, acc)
        log_h, log_final = _scan.log_scan(log_a, log_b, log_initial_state=log_h0)
        states, final = np.exp(log_h), np.exp(log_final)
    elif mask is None and gates in FUSED_GATES and _fused.applies(u, method):  # gates fused into the native scan
        h = np.full((n_batch, config.d_inner), config.default_state, acc) if h0 is None else h0
        states, final = _fused.native_mingru(u, h, config.candidate, FUSED_GATES[gates])
    else:
        a, b = gates(u, config)
        if mask is not None:  # padded positions: identity steps of the same scan
            a, b = np.where(mask, a, np.ones((), acc)), np.where(mask, b, np.zeros((), acc))
        if h0 is None and config.default_state != 0:
            h0 = np.full((n_batch, config.d_inner), config.default_state, acc)
        states, final = _scan.linear_scan(a, b, initial_state=h0, method=method)
    y = _output(params, config, states, x.dtype)
    if mask is not None:
        y = np.where(mask, y, np.zeros((), y.dtype))
    return y, State(final)


def run_step(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    params: Mapping[str, np.ndarray],
    x_t: np.ndarray,
    state: State | None,
    config,
) -> tuple[np.ndarray, State]:
    """One step shared by the layers: ``h = a h + b`` with ``(a, b) = gates(x_t W + bias)``."""
    x_t = np.asarray(x_t)
    state = spec.state_array(layer, "state", state)
    state = None if state is None else np.asarray(state)
    spec.check_step(
        layer, config, x_t.shape, dtype_name(x_t), None if state is None else state.shape,
        None if state is None else dtype_name(state),
    )
    spec.check_params(layer, params, shapes)
    acc = np_dtype(spec.state_dtype(dtype_name(x_t)))
    h = np.full((x_t.shape[0], config.d_inner), config.default_state, acc) if state is None else state.astype(acc)
    a, b = gates(_project(params, x_t).astype(acc), config)
    h = a * h + b
    return _output(params, config, h, x_t.dtype), State(h)


def mingru(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: MinGRUConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[np.ndarray, State]:
    """minGRU over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru.param_shapes``).
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H))`` in the state dtype; ``None``: every entry ``config.default_state``.
      lengths: ``(B,)`` integers: row ``i`` holds ``lengths[i]`` real inputs followed by padding; padded
        positions keep the state and output zeros. Not with ``method="log"``. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` (a scan) or ``"sequential"`` (the step loop).
      method: scan method for ``mode="parallel"``: ``"auto"``, ``"sequential"``, ``"associative"``,
        ``"chunked"`` or ``"log"`` (log-space scan; needs ``candidate="g"`` and a positive state).

    Returns:
      ``y (B, T, D_out)`` in the dtype of ``x`` and ``final_state``, a ``State(h=(B, H))`` in the state dtype.
    """
    return run_sequence("mingru", spec.param_shapes(config), mingru_gates, mingru_log_gates, params, x, config,
                        initial_state, lengths, mode, method)


def mingru_step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, *, config: MinGRUConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return run_step("mingru", spec.param_shapes(config), mingru_gates, params, x_t, state, config)


def mingru_initial_state(config: MinGRUConfig, batch_size: int, dtype: str = "float32") -> State:
    """The default state ``State(h=(B, H))`` for inputs of ``dtype``."""
    return initial_state(config, batch_size, dtype)
