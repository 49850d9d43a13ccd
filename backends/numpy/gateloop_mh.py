"""Multi-head outer-product GateLoop in NumPy: the pure functions of ``spec/gateloop_mh.md``.

Shape legend: ``B`` batch, ``T`` time, ``D`` d_model, ``H`` heads, ``K`` d_key, ``V`` d_value,
``R`` gate rows per head (``K`` or 1), ``C`` chunk size.

This backend exists for conformance: ``mode="parallel"`` runs ``linrec.backends.numpy.scan`` on
``a: (B, T, H, R, 1)``, ``b = k ⊗ v: (B, T, H, K, V)``; ``method="chunked"`` does the same chunk by chunk,
carrying only ``S``; ``"sequential"`` is the step loop. No module classes, no autodiff.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from linrec.backends.numpy import native_gateloop_mh as _native
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.scan import linear_scan
from linrec.spec import gateloop_mh as spec
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State

__all__ = ["gateloop_mh", "gateloop_mh_initial_state", "gateloop_mh_step"]


def _prepare(params: Mapping[str, np.ndarray], x: np.ndarray, state, config: GateLoopMHConfig, *, ndim: int,
             state_name: str):
    """Check everything; return compute-dtype params, ``x`` and the state in the state dtype."""
    x = np.asarray(x)
    spec.check_x(config, x.shape, dtype_name(x), ndim=ndim, name="x" if ndim == 3 else "x_t")
    spec.check_params(config, {k: np.shape(v) for k, v in params.items()})
    sdt = np_dtype(spec.state_dtype(config, dtype_name(x)))
    state = spec.state_h(state, name=state_name)
    if state is None:
        state = np.zeros(spec.state_shape(config, x.shape[0]), sdt)
    else:
        state = np.asarray(state)
        spec.check_state(config, x.shape[0], state.shape, dtype_name(state), dtype_name(x), name=f"{state_name}.h")
        state = state.astype(sdt)
    params = {k: np.asarray(v).astype(x.dtype) for k, v in params.items()}
    return params, x, state


def _input_norm(x: np.ndarray, config: GateLoopMHConfig) -> np.ndarray:
    """``x̃`` (``spec.input_norm``) computed in at least float32, returned in x's dtype."""
    if config.input_norm == "none":
        return x
    return spec.input_norm(x.astype(np.promote_types(x.dtype, np.float32)), config).astype(x.dtype)


def _read_out(params, o: np.ndarray, x_dtype: np.dtype, config: GateLoopMHConfig, xn: np.ndarray) -> np.ndarray:
    """``o: (..., H, V)`` in the state dtype -> ``y: (..., D)``; ``xn: (..., D)`` feeds the output gate."""
    width = config.num_heads * config.d_value
    if config.is_complex and config.complex_output == "complex":
        real = o.real.dtype
        u = o.reshape(*o.shape[:-2], width)
        return u @ params["out_proj.kernel"].astype(real) + params["out_proj.bias"].astype(real)
    u = o.real if config.is_complex else o
    u = u.reshape(*u.shape[:-2], width)
    if config.sub_norm == "layernorm":  # in the state's real dtype, before the one rounding to x's dtype
        u = spec.layer_norm(u, params["sub_norm.scale"].astype(u.dtype), params["sub_norm.bias"].astype(u.dtype))
    if config.output_gate == "silu":
        g = (xn @ params["output_gate_proj.kernel"]).astype(u.dtype)  # projection in x's dtype
        u = u * spec.silu(g)
    u = u.astype(x_dtype)  # rounded once to x's dtype before out_proj
    y = u @ params["out_proj.kernel"] + params["out_proj.bias"]
    return y.astype(x_dtype)


def _project(params, x: np.ndarray, config: GateLoopMHConfig, sdt: np.dtype):
    """Projections in x's dtype; ``a`` and ``q`` in the state's compute dtype."""
    q, k, v, a = spec.project(params, x, config)
    real = np.real(np.zeros((), sdt)).dtype
    return q.astype(real), k.astype(real), v.astype(real), a.astype(sdt if config.is_complex else real)


def _scan_chunk(q, k, v, a, state, method: str):
    """One scan over the time axis of the given slices: ``-> (o: (B, C, H, V), final S)``."""
    kv = (k[..., :, None] * v[..., None, :]).astype(state.dtype)
    h, state = linear_scan(a, kv, initial_state=state, method=method)
    return np.einsum("bthkv,bthk->bthv", h, q), state


def gateloop_mh(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    config: GateLoopMHConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, State]:
    """The layer over a sequence.

    Args:
      params: canonical name -> array (``spec.param_shapes``).
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H, K, V))`` or ``None`` (zeros).
      lengths: ``(B,)`` right-padded rows (recurrence.md §0): padded positions are identity steps of the scan
        (``a = 1``, ``k ⊗ v = 0``), their outputs zero.
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` (scan) or ``"sequential"`` (steps).
      method: scan method of the parallel mode; ``"chunked"`` scans chunk by chunk carrying only ``S`` (§6).
      chunk_size: steps per chunk for ``method="chunked"`` (default ``config.chunk_size``).

    Returns:
      ``y: (B, T, D)`` and ``final_state``: ``State(h=(B, H, K, V))``.
    """
    mode = spec.check_mode(mode, method, chunk_size)
    params, x, state = _prepare(params, x, initial_state, config, ndim=3, state_name="initial_state")
    valid = None
    if lengths is not None:
        lengths = np.asarray(lengths)
        spec.check_lengths(lengths.shape, dtype_name(lengths), x.shape[0], x.shape[1], lengths, method=method)
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    y, state = _layer(params, x, state, valid, config, mode, method, chunk_size)
    if valid is not None:
        y = np.where(valid[..., None], y, 0).astype(y.dtype)
    return y, State(state)


def _layer(params, x: np.ndarray, state: np.ndarray, valid: np.ndarray | None, config: GateLoopMHConfig, mode: str,
           method: str, chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(y, final S)`` on checked inputs; ``valid: (B, T)`` marks real inputs (``None``: all)."""
    if mode == "sequential":
        ys = []
        for t in range(x.shape[1]):
            y_t, new = _step(params, x[:, t], state, config)
            state = new if valid is None else np.where(valid[:, t, None, None, None], new, state)
            ys.append(y_t)
        empty = np.zeros((x.shape[0], 0, config.num_heads, config.d_value), state.dtype)
        return (np.stack(ys, axis=1) if ys else _read_out(params, empty, x.dtype, config, x)), state
    xn = _input_norm(x, config)
    q, k, v, a = _project(params, xn, config, state.dtype)
    if valid is not None:  # padding: identity steps (a = 1, k ⊗ v = 0) inside the scan
        a = np.where(valid[:, :, None, None, None], a, 1).astype(a.dtype)
        k = np.where(valid[:, :, None, None], k, 0).astype(k.dtype)
    if _native.applies(q, v, method):  # the state kept in the kernel: no k ⊗ v or per-step states in memory
        o, state = _native.native_gateloop_mh(q, k, v, a, state, config.complex_output == "real")
        return _read_out(params, o, x.dtype, config, xn), state
    chunked = method == "chunked"  # the memory-lean path (§6): one scan per chunk, only S carried between them
    size = (chunk_size or config.chunk_size) if chunked else x.shape[1]
    method = "auto" if chunked else method
    outs = []
    for start in range(0, x.shape[1], max(size, 1)):
        part = slice(start, start + size)
        o, state = _scan_chunk(q[:, part], k[:, part], v[:, part], a[:, part], state, method)
        outs.append(o)
    o = np.concatenate(outs, axis=1) if outs else np.zeros((*x.shape[:2], config.num_heads, config.d_value),
                                                           state.dtype)
    return _read_out(params, o, x.dtype, config, xn), state


def _step(params, x_t: np.ndarray, state: np.ndarray, config: GateLoopMHConfig) -> tuple[np.ndarray, np.ndarray]:
    xn = _input_norm(x_t, config)
    q, k, v, a = _project(params, xn, config, state.dtype)
    state = a * state + (k[..., :, None] * v[..., None, :]).astype(state.dtype)
    return _read_out(params, np.einsum("bhkv,bhk->bhv", state, q), x_t.dtype, config, xn), state


def gateloop_mh_step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, *, config: GateLoopMHConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` -> ``(y_t: (B, D), State)``."""
    params, x_t, state = _prepare(params, x_t, state, config, ndim=2, state_name="state")
    y_t, state = _step(params, x_t, state, config)
    return y_t, State(state)


def gateloop_mh_initial_state(config: GateLoopMHConfig, batch_size: int, dtype: str = "float32") -> State:
    """``State(h=zeros (B, H, K, V))`` in the state dtype for inputs of ``dtype`` (``gateloop_mh.md`` §3)."""
    return State(np.zeros(spec.state_shape(config, batch_size), np_dtype(spec.state_dtype(config, dtype))))
