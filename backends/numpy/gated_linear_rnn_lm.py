"""GatedLinearRNNLM / GateLoopLM in NumPy: the pure functions of ``spec/gated_linear_rnn_lm.md``.

Shape legend: ``B`` batch, ``T`` time, ``L`` layers, ``D`` model width, ``H`` state width, ``V_out`` output
vocabulary (``D`` without head), ``F`` input features (no word embedding).

This backend exists for conformance: it composes the NumPy time-mixing layer
(``linrec.backends.numpy.gated_linear_rnn``, parallel scan or step loop) exactly as the JAX and torch
twins do. No module classes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.gated_linear_rnn import gated_linear_rnn, gated_linear_rnn_step
from linrec.spec import gated_linear_rnn_lm as spec
from linrec.spec.gated_linear_rnn import activation
from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig
from linrec.spec.state import State

__all__ = ["gated_linear_rnn_lm", "gated_linear_rnn_lm_initial_state", "gated_linear_rnn_lm_step"]

_TM, _CM = "time_mixing", "channel_mixing"


def _prepare_params(params: Mapping[str, np.ndarray], config: GatedLinearRNNLMConfig) -> dict[str, np.ndarray]:
    spec.check_params({k: np.shape(v) for k, v in params.items()}, config)
    dtype = np.result_type(*[np.asarray(v) for v in params.values()])
    if np.dtype(dtype).name not in ("float64", "float32", "bfloat16", "float16"):
        raise TypeError(f"params must be floating arrays, got dtype {dtype}")
    return {k: np.asarray(v).astype(dtype) for k, v in params.items()}


def _state(state, batch: int, compute: str, config: GatedLinearRNNLMConfig, name: str = "initial_state"
           ) -> tuple[list[np.ndarray], np.ndarray]:
    """``(h: L arrays (B, H), position: (B,) int32)`` of a checked ``State`` (zeros for ``None``)."""
    if state is None:
        state = gated_linear_rnn_lm_initial_state(config, batch, compute)
    h, position = spec.state_parts(state, config, name=name)
    h, position = [np.asarray(h_l) for h_l in h], np.asarray(position)
    spec.check_state([h_l.shape for h_l in h], [dtype_name(h_l) for h_l in h], position.shape,
                     dtype_name(position), batch, compute, config, name=name)
    return h, position.astype(np.int32)


def _layer_norm(x: np.ndarray, p: Mapping[str, np.ndarray], prefix: str, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p[prefix + "norm.scale"] + p[prefix + "norm.bias"]


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    return activation("gelu" if approximate else "gelu_exact")(x)


def _residual(x: np.ndarray, branch: np.ndarray, mask: np.ndarray | None, placement: str) -> np.ndarray:
    if mask is None:
        return x + branch
    return x + branch * mask if placement == "branch" else (x + branch) * mask


def _embed(p, inputs: np.ndarray, positions: np.ndarray, config: GatedLinearRNNLMConfig, dtype) -> np.ndarray:
    """``inputs: (B, T)`` ids or ``(B, T, F)``, ``positions: (B, T)`` → ``(B, T, D)`` (before embedding dropout)."""
    if config.use_word_embedding:
        x = p["embed.embedding"][inputs]
    else:
        x = inputs.astype(dtype) @ p["input_proj.kernel"] + p["input_proj.bias"]
    if config.positional_encoding_mode == "learned":
        x = x + p["pos_embed.embedding"][positions]
    elif config.positional_encoding_mode == "sinusoidal":
        x = x + spec.sinusoidal_table(config.max_seq_length, config.d_model).astype(dtype)[positions]
    return x.astype(dtype)


def _channel_mixing(p, prefix: str, x: np.ndarray, config: GatedLinearRNNLMConfig) -> np.ndarray:
    z = _layer_norm(x, p, prefix, config.eps)
    z = _gelu(z @ p[prefix + "fc1.kernel"] + p[prefix + "fc1.bias"], config.gelu_approximate)
    return (z @ p[prefix + "fc2.kernel"] + p[prefix + "fc2.bias"]).astype(x.dtype)


def _head(p, x: np.ndarray, config: GatedLinearRNNLMConfig) -> np.ndarray:
    return (x @ p["head.kernel"] + p["head.bias"]).astype(x.dtype) if config.use_head else x


def _forward(p, inputs, h0, position, masks, config: GatedLinearRNNLMConfig, mode, method, chunk_size,
             lengths: np.ndarray | None = None):
    """One pass over all ``T`` inputs; with ``lengths`` each layer's scan treats the padding as identity steps
    (recurrence.md §0). Returns ``(out, h: L arrays, position)``."""
    n_time = inputs.shape[1]
    dtype = p[next(iter(p))].dtype
    offset = np.zeros_like(position) if config.compat_step_position_zero else position
    positions = offset[:, None] + np.arange(n_time, dtype=np.int32)
    valid = None
    if lengths is not None:
        valid = np.arange(n_time)[None, :] < lengths[:, None]
        positions = np.where(valid, positions, 0)  # a padded position may lie beyond the table: use a valid row
    x = _embed(p, inputs, positions, config, dtype)
    if "embedding" in masks:
        x = x * masks["embedding"]
    hs = []
    for l in range(config.n_layer):
        prefix = f"layers.{l}."
        z = _layer_norm(x, p, prefix + f"{_TM}.", config.eps)
        y, h = gated_linear_rnn(spec.layer_params(p, l), z, config=config.layer_config, initial_state=State(h0[l]),
                                lengths=lengths, mode=mode, method=method, chunk_size=chunk_size)
        hs.append(h.h)
        x = _residual(x, y, masks.get(prefix + _TM), config.dropout_placement)
        x = _residual(x, _channel_mixing(p, prefix + f"{_CM}.", x, config), masks.get(prefix + _CM),
                      config.dropout_placement)
    out = _head(p, x, config)
    if valid is None:
        return out, hs, position + n_time
    return np.where(valid[..., None], out, 0).astype(out.dtype), hs, position + lengths.astype(position.dtype)


def _step(p, input_t, h, position, pe_position, config: GatedLinearRNNLMConfig):
    """One input per row at table row ``pe_position``. Returns ``(out_t, h: L arrays, position)``."""
    dtype = p[next(iter(p))].dtype
    x = _embed(p, input_t[:, None], pe_position[:, None], config, dtype)[:, 0]
    hs = []
    for l in range(config.n_layer):
        prefix = f"layers.{l}."
        z = _layer_norm(x, p, prefix + f"{_TM}.", config.eps)
        y, h_l = gated_linear_rnn_step(spec.layer_params(p, l), z, State(h[l]), config=config.layer_config)
        hs.append(h_l.h)
        x = x + y
        x = x + _channel_mixing(p, prefix + f"{_CM}.", x, config)
    return _head(p, x, config), hs, position + 1


def _checked_positions(position: np.ndarray, counts: np.ndarray, config: GatedLinearRNNLMConfig) -> None:
    """Rows encode positions ``offset .. offset + counts - 1``; the last one must fit the table."""
    used = counts > 0
    if used.any():
        offset = np.zeros_like(position) if config.compat_step_position_zero else position
        spec.check_positions(int((offset + counts - 1)[used].max()), config)


def gated_linear_rnn_lm(
    params: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    *,
    config: GatedLinearRNNLMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    dropout_masks: Mapping[str, np.ndarray] | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[np.ndarray, State]:
    """The model over a sequence: ``inputs: (B, T)`` ids (or ``(B, T, F)``) → ``(out: (B, T, V_out),
    final_state)``; ``initial_state``/``final_state`` are ``State(h=L arrays (B, H), position=(B,) int32)``.

    ``lengths: (B,)`` marks right-padded rows (row ``b`` ends after ``lengths[b]`` inputs): one pass in which
    every layer's scan treats the padding as identity steps; outputs there are zero, the state is the state after
    each row's last real input and ``position`` advances by ``lengths``. ``dropout_masks``: site → ``(B, T, D)``
    multiplier (training). ``mode``/``method``/``chunk_size`` go to the time-mixing layer. ``remat`` is accepted
    for parity with the JAX/torch twins and has no effect (no autodiff here).
    """
    del remat
    inputs = np.asarray(inputs)
    spec.check_input(inputs.shape, dtype_name(inputs), config)
    p = _prepare_params(params, config)
    compute = dtype_name(p[next(iter(p))])
    n_batch, n_time = inputs.shape[:2]
    h0, position = _state(initial_state, n_batch, compute, config)
    masks = {k: np.asarray(v) for k, v in (dropout_masks or {}).items()}
    spec.check_dropout_masks({k: v.shape for k, v in masks.items()}, n_batch, n_time, config)
    masks = {k: v.astype(p[next(iter(p))].dtype) for k, v in masks.items()}
    if lengths is None:
        spec.check_token_values(inputs, config)
        _checked_positions(position, np.full(n_batch, n_time), config)
        out, h, position = _forward(p, inputs, h0, position, masks, config, mode, method, chunk_size)
        return out, State(tuple(h), position)
    if masks:
        raise ValueError("lengths (right-padded rows) cannot be combined with dropout_masks: for training, "
                         "padding after a sequence never changes the outputs before it, so pass no lengths")
    lengths = np.asarray(lengths)
    spec.check_lengths(lengths, n_batch, n_time)
    if method == "log":
        spec.layer_spec.check_lengths(lengths.shape, dtype_name(lengths), n_batch, n_time, method=method)
    valid = np.arange(n_time)[None, :] < lengths[:, None]  # (B, T)
    if config.use_word_embedding:
        spec.check_token_values(inputs[valid], config)
        inputs = np.where(valid, inputs, 0)  # padding may hold any id
    _checked_positions(position, lengths, config)
    out, h, position = _forward(p, inputs, h0, position, {}, config, mode, method, chunk_size, lengths)
    return out, State(tuple(h), position)


def gated_linear_rnn_lm_step(
    params: Mapping[str, np.ndarray], input_t: np.ndarray, state: State | None, *, config: GatedLinearRNNLMConfig
) -> tuple[np.ndarray, State]:
    """One token per row: ``input_t: (B,)`` ids (or ``(B, F)``), ``state`` a ``State`` (``None``: zeros) →
    ``(out_t: (B, V_out), State)`` (no dropout)."""
    input_t = np.asarray(input_t)
    spec.check_step_input(input_t.shape, dtype_name(input_t), config)
    p = _prepare_params(params, config)
    h, position = _state(state, input_t.shape[0], dtype_name(p[next(iter(p))]), config, name="state")
    spec.check_token_values(input_t, config, name="token")
    _checked_positions(position, np.ones_like(position), config)
    pe = np.zeros_like(position) if config.compat_step_position_zero else position
    out, h, position = _step(p, input_t, h, position, pe, config)
    return out, State(tuple(h), position)


def gated_linear_rnn_lm_initial_state(
    config: GatedLinearRNNLMConfig, batch_size: int, dtype: str | np.dtype = "float32"
) -> State:
    """``State(h=L zeros (B, H) in the state dtype, position=zeros (B,) int32)``."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    zeros = np.zeros((batch_size, config.d_h), np_dtype(spec.state_dtype(name)))
    return State(tuple(zeros.copy() for _ in range(config.n_layer)), np.zeros((batch_size,), np.int32))
