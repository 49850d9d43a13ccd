"""GateLoop language model for the NumPy backend (``linrec.spec.gateloop_mh_lm``): pure functions.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` d_model, ``L`` layers, ``H`` heads, ``K`` head
width. embedding -> ``L`` blocks [:func:`linrec.backends.numpy.gateloop_mh.gateloop_mh` time mixing,
feed-forward] -> (final RMSNorm) -> head. Norms and GELU run in at least float32 and are rounded once to the
parameters' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.backends.numpy.arrays import dtype_name
from linrec.backends.numpy.gateloop_mh import gateloop_mh, gateloop_mh_initial_state, gateloop_mh_step
from linrec.spec import gateloop_mh_lm as spec
from linrec.spec.gateloop_mh_lm import GateLoopMHLMConfig
from linrec.spec.state import State, check_lengths

__all__ = ["gateloop_mh_lm", "gateloop_mh_lm_initial_state", "gateloop_mh_lm_step"]

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _wide(x: np.ndarray) -> np.ndarray:
    return x.astype(np.promote_types(x.dtype, np.float32))


def _norm(p: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    if f"{name}.bias" in p:
        y = spec.layer_norm(w, _wide(p[f"{name}.scale"]), _wide(p[f"{name}.bias"]))
    else:
        y = spec.rms_norm(w, _wide(p[f"{name}.scale"]))
    return y.astype(x.dtype)


def _ff(p: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = _wide(x @ p["ff.fc1.kernel"] + p["ff.fc1.bias"])
    g = (z * 0.5 * (1.0 + _ERF(z / math.sqrt(2.0)))).astype(x.dtype)
    return g @ p["ff.fc2.kernel"] + p["ff.fc2.bias"]


def _run(params, x: np.ndarray, states, config: GateLoopMHLMConfig, mixer) -> tuple[np.ndarray, State]:
    """The blocks, final norm and head on embedded ``x`` (``(B, T, D)`` or ``(B, D)``), norms in this dtype."""
    logits, hs = spec.run_blocks(params, x, states, config, mixer, norm=_norm, ff=_ff)
    return logits, State(tuple(hs))


def _params(params: Mapping[str, Any], config: GateLoopMHLMConfig) -> dict[str, np.ndarray]:
    spec.check_params(params, config)
    return {k: np.asarray(v) for k, v in params.items()}


def gateloop_mh_lm(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    *,
    config: GateLoopMHLMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(S_0, …, S_{L-1})))``, ``S_l: (B, H, K, K)`` complex.

    ``mode``/``method``/``chunk_size`` are every layer's (``gateloop_mh.md`` §4); ``lengths`` right-pads rows
    (padded positions are identity steps of every layer's scan, their logits zero).
    """
    tokens = np.asarray(tokens)
    spec.check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    params = _params(params, config)
    states = spec.layer_states(initial_state, config)
    if lengths is not None:
        lengths = np.asarray(lengths)
        check_lengths(lengths.shape, dtype_name(lengths), tokens.shape[0], tokens.shape[1], lengths,
                      where="gateloop_mh_lm", method=method)
    x = params["embed.embedding"][tokens]

    def mixer(p, x, s):
        return gateloop_mh(p, x, config=config.layer, initial_state=s, lengths=lengths, mode=mode, method=method,
                           chunk_size=chunk_size)

    logits, state = _run(params, x, states, config, mixer)
    if lengths is not None:
        valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        logits = np.where(valid[..., None], logits, 0).astype(logits.dtype)
    return logits, state


def gateloop_mh_lm_step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, *, config: GateLoopMHLMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``token (B,)``, the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
    token = np.asarray(token)
    spec.check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    params = _params(params, config)
    states = spec.layer_states(state, config, name="state")

    def mixer(p, x_t, s):
        return gateloop_mh_step(p, x_t, s, config=config.layer)

    return _run(params, params["embed.embedding"][token], states, config, mixer)


def gateloop_mh_lm_initial_state(config: GateLoopMHLMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """Zeros: ``State(h=(S_0, …, S_{L-1}))``, ``S_l: (B, H, K, K)`` in the complex state dtype for ``dtype``."""
    one = gateloop_mh_initial_state(config.layer, batch_size, np.dtype(dtype).name if dtype != "bfloat16"
                                    else "bfloat16")
    return State(tuple(one.h.copy() for _ in range(config.n_layers)))
