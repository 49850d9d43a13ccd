"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): config, canonical parameters and the NumPy reference.

Normative text: ``minlstm.md``. Shape legend: ``B`` batch, ``T`` time, ``D`` input features (``d_model``),
``H`` state features (``d_inner``), ``D_out`` output features (``d_model`` with ``out_proj``, else ``H``).

The options, checks, activations and layout helpers are shared with :mod:`linrec.spec.mingru`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from linrec.spec import mingru as _common
from linrec.spec.mingru import (
    CANDIDATES,
    MODES,
    candidate,
    candidate_grad,
    g,
    log_g,
    sigmoid,
    softplus,
    state_dtype,
)
from linrec.spec.state import State

__all__ = [
    "CANDIDATES",
    "MODES",
    "PROJ_LAYOUTS",
    "MinLSTMConfig",
    "forward",
    "from_layout",
    "g",
    "init_params",
    "log_g",
    "minlstm_update",
    "normalized_log_gates",
    "param_shapes",
    "sigmoid",
    "softplus",
    "state_dtype",
    "step",
    "to_layout",
    "vjp",
]

#: Column orders of the fused input projection (canonical: ``f_i_hidden``, the paper's order).
PROJ_LAYOUTS = {
    "f_i_hidden": "one fused projection, columns [f | i | h̃] (canonical; paper order)",
    "hidden_f_i": "one fused projection, columns [h̃ | f | i] (lucidrains/minGRU-pytorch minLSTM)",
    "separate": "three projections linear_f, linear_i and linear_h",
}
_BLOCKS = ("forget", "input", "hidden")
_FUSED = {"hidden_f_i": ("hidden", "forget", "input")}
_SEPARATE = {"forget": "linear_f", "input": "linear_i", "hidden": "linear_h"}


@dataclass(frozen=True)
class MinLSTMConfig:
    """Options of a minLSTM layer (``minlstm.md`` §3); the fields mean what they mean in ``MinGRUConfig``.

    Attributes:
      d_model: ``D``, input features (and output features with ``out_proj``).
      d_inner: ``H``, state features; ``None`` means ``int(d_model * expansion)``.
      expansion: lucidrains' ``expansion_factor``; only used to derive ``d_inner``.
      out_proj: project the state ``(H -> D)`` without bias; else ``y = h``.
      bias: bias on the input projection.
      candidate: ``"identity"`` or ``"g"`` (positive; needed by ``method="log"``).
      default_state: every entry of ``h_{-1}`` when no ``initial_state`` is given.
    """

    d_model: int
    d_inner: int | None = None
    expansion: float = 1.0
    out_proj: bool = False
    bias: bool = True
    candidate: str = "identity"
    default_state: float = 0.0

    def __post_init__(self) -> None:
        _common.validate_common(self)

    @property
    def d_out(self) -> int:
        """Output features: ``d_model`` with ``out_proj``, else ``d_inner``."""
        return self.d_model if self.out_proj else self.d_inner


def param_shapes(config: MinLSTMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameters: ``proj.kernel (D, 3H)`` columns ``[f | i | h̃]``, ``proj.bias (3H,)``,
    ``out_proj.kernel (H, D)`` (each only when its option is on)."""
    return _common._dense_shapes(config, 3)


def init_params(config: MinLSTMConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Draw canonical parameters following the spec initialisers (as minGRU)."""
    return _common.init_dense(param_shapes(config), seed, dtype)


def normalized_log_gates(u_f: np.ndarray, u_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log f', log i')`` with ``f' = f/(f+i)``, ``i' = i/(f+i)``, ``f = σ(u_f)``, ``i = σ(u_i)`` (``minlstm.md`` §5).

    ``d = log(i/f) = softplus(-u_f) - softplus(-u_i)``; ``log f' = -softplus(d)``, ``log i' = -softplus(-d)``.
    """
    d = softplus(-u_f) - softplus(-u_i)
    return -softplus(d), -softplus(-d)


def minlstm_update(h: np.ndarray, u_t: np.ndarray, config) -> np.ndarray:
    """One step of ``minlstm.md`` §2: ``h_t = f'_t h_{t-1} + i'_t h̃_t`` from the projection ``u_t (B, 3H)``."""
    u_f, u_i, u_h = np.split(u_t, 3, axis=-1)
    f, i = sigmoid(u_f), sigmoid(u_i)
    return f / (f + i) * h + i / (f + i) * candidate(u_h, config.candidate)


def forward(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: MinLSTMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The definition of minLSTM over a sequence, as a loop.

    Args:
      params: canonical parameters (:func:`param_shapes`).
      x: ``(B, T, D)``.
      initial_state: ``State(h=(B, H))``; ``None`` means every entry equals ``config.default_state``.
      lengths: ``(B,)`` real inputs per row, right padding (as ``linrec.spec.mingru.forward``); ``None``: none.

    Returns:
      ``y (B, T, D_out)`` and ``final_state``, a ``State(h=(B, H))`` (before ``out_proj``).
    """
    return _common._sequence(params, x, config, initial_state, lengths, "minlstm", param_shapes(config),
                             minlstm_update)


def step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, config: MinLSTMConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return _common._step(params, x_t, state, config, "minlstm", param_shapes(config), minlstm_update)


def vjp(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: MinLSTMConfig,
    cotangent_y: np.ndarray,
    cotangent_state: np.ndarray | None = None,
    initial_state: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Analytic VJP of :func:`forward` (float64): returns ``(params_bar, x_bar, initial_state_bar)``.

    Chain: ``a = p = f/(f+i)``, ``b = (1-p) h̃``; ``p̄ = ā - h̃ b̄``; ``f̄ = p̄ i/(f+i)²``, ``ī = -p̄ f/(f+i)²``;
    ``ū_f = f̄ f(1-f)``, ``ū_i = ī i(1-i)``, ``ū_h = (1-p) b̄ h̃'(u_h)``.
    """

    def gates(u):
        u_f, u_i, u_h = np.split(u, 3, axis=-1)
        f, i = sigmoid(u_f), sigmoid(u_i)
        p = f / (f + i)
        return p, (1 - p) * candidate(u_h, config.candidate)

    def gates_bar(u, a_bar, b_bar):
        u_f, u_i, u_h = np.split(u, 3, axis=-1)
        f, i = sigmoid(u_f), sigmoid(u_i)
        p = f / (f + i)
        c = candidate(u_h, config.candidate)
        p_bar = a_bar - b_bar * c
        f_bar = p_bar * i / (f + i) ** 2
        i_bar = -p_bar * f / (f + i) ** 2
        return np.concatenate(
            [f_bar * f * (1 - f), i_bar * i * (1 - i), b_bar * (1 - p) * candidate_grad(u_h, config.candidate)],
            axis=-1,
        )

    return _common.layer_vjp(params, x, config, cotangent_y, cotangent_state, initial_state, gates, gates_bar)


def to_layout(params: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Canonical params -> the projection layout of an original (:data:`PROJ_LAYOUTS`), dense ``(in, out)``."""
    return _common._to_layout(params, layout, PROJ_LAYOUTS, _BLOCKS, _FUSED, _SEPARATE)


def from_layout(params: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_layout`."""
    return _common._from_layout(params, layout, PROJ_LAYOUTS, _BLOCKS, _FUSED, _SEPARATE)
