"""GatedLinearRNN / GateLoop (SISO) in NumPy: the pure functions of ``spec/gated_linear_rnn.md``.

Shape legend: ``B`` batch, ``T`` time, ``D_in`` input features, ``H`` state width (``d_h``),
``D`` output features (``d_model``), ``n`` column blocks of ``proj`` (3 tied, 4 untied).

This backend exists for conformance: the parallel mode runs ``linrec.backends.numpy.scan`` on
``a = f``, ``b = i ⊙ input_act(u_in)``; the sequential mode is the step loop. No module classes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from linrec.backends.numpy import native_gated_linear_rnn as _fused
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.scan import linear_scan
from linrec.spec import gated_linear_rnn as spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig
from linrec.spec.state import State

__all__ = ["gated_linear_rnn", "gated_linear_rnn_initial_state", "gated_linear_rnn_step"]


def _prepare_params(params: Mapping[str, np.ndarray], dtype: np.dtype, config: GatedLinearRNNConfig):
    spec.check_params({k: np.shape(v) for k, v in params.items()}, config)
    return {k: np.asarray(v).astype(dtype) for k, v in params.items()}


def _state(state, batch: int, x_dtype: str, config: GatedLinearRNNConfig, name: str) -> np.ndarray:
    """``state.h`` checked and in the state dtype (zeros for ``None``)."""
    acc = np_dtype(spec.state_dtype(x_dtype))
    h = spec.state_h(state, name=name)
    if h is None:
        return np.zeros((batch, config.d_h), acc)
    h = np.asarray(h)
    spec.check_initial_state(h.shape, dtype_name(h), batch, x_dtype, config, name=f"{name}.h")
    return h.astype(acc)


def _valid(lengths, n_batch: int, n_time: int, method: str) -> np.ndarray | None:
    """``(B, T)`` bool, ``True`` at real inputs, from right-padding ``lengths: (B,)`` (``None``: no padding)."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    spec.check_lengths(lengths.shape, dtype_name(lengths), n_batch, n_time, lengths, method=method)
    return np.arange(n_time)[None, :] < lengths[:, None]


def _split(u: np.ndarray, config: GatedLinearRNNConfig):
    """Activated blocks of ``u: (..., n H)`` → ``(candidate, i, f, o)``, each ``(..., H)``."""
    d = config.d_h
    candidate = spec.activation(config.input_activation)(u[..., :d])
    gates = spec.activation(config.gate_activation)(u[..., d:])
    i = gates[..., :d]
    if config.use_tied_gates:
        return candidate, i, 1 - i, gates[..., d : 2 * d]
    return candidate, i, gates[..., d : 2 * d], gates[..., 2 * d : 3 * d]


def _cell(p, u_t: np.ndarray, h: np.ndarray, config: GatedLinearRNNConfig):
    """``u_t: (B, n H)``, ``h: (B, H)`` → ``(y_t: (B, H), h_t)`` (before ``out_proj``)."""
    if config.use_true_recurrence:
        u_t = u_t + h @ p["recurrent_proj.kernel"].astype(h.dtype)
    candidate, i, f, o = _split(u_t, config)
    h = f * h + i * candidate
    return spec.activation(config.hidden_activation)(h) * o, h


def gated_linear_rnn(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: GatedLinearRNNConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, State]:
    """The layer over a sequence: ``x: (B, T, D_in)`` → ``(y: (B, T, D), final_state: State(h=(B, H)))``.

    ``initial_state``: ``State(h=(B, H))`` or ``None`` (zeros). ``lengths: (B,)``: right-padded rows (row ``b``
    holds ``lengths[b]`` real inputs); padded positions are identity steps of the same scan (``a = 1, b = 0``),
    their outputs zero, so ``final_state`` is each row's state after its last real input.
    ``mode``: ``"auto"`` (``"parallel"``, or ``"sequential"`` with ``use_true_recurrence``), ``"parallel"``
    (scan, ``method``/``chunk_size`` passed to ``linear_scan``) or ``"sequential"`` (the step loop).
    Projections run in the dtype of ``x``; gates and state in ``state_dtype`` (float32 when ``x`` is
    bf16/f16), and ``final_state`` is returned in that dtype so decoding never rounds the state.
    """
    x = np.asarray(x)
    spec.check_input(x.shape, dtype_name(x), config)
    mode = spec.resolve_mode(mode, method, config, chunk_size)
    valid = _valid(lengths, x.shape[0], x.shape[1], method)
    p = _prepare_params(params, x.dtype, config)
    h0 = _state(initial_state, x.shape[0], dtype_name(x), config, "initial_state")
    acc = h0.dtype
    u = (x @ p["proj.kernel"] + p["proj.bias"]).astype(acc)
    if mode == "parallel" and valid is None and spec.fusable(config) and _fused.applies(u, method):
        y, final = _fused.native_gated_linear_rnn(u, h0, config.use_tied_gates, config.reversed)  # gates fused
    elif mode == "parallel":
        candidate, i, f, o = _split(u, config)
        a, b = f, i * candidate
        if valid is not None:  # padding: identity steps inside the one scan
            a, b = np.where(valid[..., None], a, 1).astype(acc), np.where(valid[..., None], b, 0).astype(acc)
        given = None if initial_state is None else h0
        h, final = linear_scan(a, b, initial_state=given, reverse=config.reversed, method=method,
                               chunk_size=chunk_size)
        y = spec.activation(config.hidden_activation)(h) * o
    else:
        final = h0
        y = np.zeros((*x.shape[:2], config.d_h), acc)
        steps = range(x.shape[1] - 1, -1, -1) if config.reversed else range(x.shape[1])
        for t in steps:
            y[:, t], new = _cell(p, u[:, t], final, config)
            final = new if valid is None else np.where(valid[:, t, None], new, final)  # padding keeps the state
    # (ml_dtypes' bfloat16 matmul returns float32: cast back so y has the dtype of x)
    out = (y.astype(x.dtype) @ p["out_proj.kernel"] + p["out_proj.bias"]).astype(x.dtype)
    if valid is not None:
        out = np.where(valid[..., None], out, 0).astype(x.dtype)
    return out, State(np.asarray(final, acc))


def gated_linear_rnn_step(
    params: Mapping[str, np.ndarray],
    x_t: np.ndarray,
    state: State | None,
    *,
    config: GatedLinearRNNConfig,
) -> tuple[np.ndarray, State]:
    """One step: ``x_t: (B, D_in)``, ``state: State(h=(B, H))`` (``None``: zeros) → ``(y_t: (B, D), State)``."""
    x_t = np.asarray(x_t)
    spec.check_step_input(x_t.shape, dtype_name(x_t), config)
    p = _prepare_params(params, x_t.dtype, config)
    h = _state(state, x_t.shape[0], dtype_name(x_t), config, "state")
    u_t = (x_t @ p["proj.kernel"] + p["proj.bias"]).astype(h.dtype)
    y_t, h = _cell(p, u_t, h, config)
    out = (y_t.astype(x_t.dtype) @ p["out_proj.kernel"] + p["out_proj.bias"]).astype(x_t.dtype)
    return out, State(h)


def gated_linear_rnn_initial_state(
    config: GatedLinearRNNConfig, batch_size: int, dtype: str | np.dtype = "float32"
) -> State:
    """``State(h=zeros (B, H))`` in the state dtype for inputs of ``dtype`` (float32 for bf16/f16)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return State(np.zeros((batch_size, config.d_h), np_dtype(spec.state_dtype(name))))
