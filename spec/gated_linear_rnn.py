"""GatedLinearRNN / GateLoop (SISO): config, canonical parameters and the NumPy reference.

Normative text: ``gated_linear_rnn.md``. This module is framework-neutral (NumPy only); the
backends import its config, parameter table and argument checks so that every backend raises the
same message for the same mistake.

Shape legend: ``B`` batch, ``T`` time, ``D_in`` input features (``config.d_in``), ``H`` state
width (``config.d_h``), ``D`` output features (``config.d_model``), ``n`` number of column blocks
of the fused projection (3 with tied gates, 4 untied).

The reference is a readable loop over time (vectorised over the batch). It computes in the dtype
its inputs promote to, float64 for conformance; it also accepts complex arrays, which is how the
conformance suite differentiates it by complex step (``gated_linear_rnn_cases.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from linrec.spec import checks
from linrec.spec.state import State, layer_h
from linrec.spec.state import check_lengths as _check_lengths

__all__ = [
    "ACTIVATIONS",
    "INPUT_DTYPES",
    "MODES",
    "GateLoopConfig",
    "GatedLinearRNNConfig",
    "State",
    "activation",
    "check_batch_first",
    "check_initial_state",
    "check_input",
    "check_lengths",
    "check_params",
    "check_step_input",
    "forward",
    "fusable",
    "init_params",
    "param_shapes",
    "resolve_mode",
    "state_dtype",
    "state_h",
    "step",
]

#: Activation names accepted by ``input_activation``, ``hidden_activation`` and ``gate_activation``
#: (gated_linear_rnn.md §4), with their definition.
ACTIVATIONS: dict[str, str] = {
    "tanh": "tanh(x)",
    "sigmoid": "1 / (1 + exp(-x))",
    "identity": "x",
    "relu": "max(x, 0)",
    "gelu": "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (tanh approximation, as jax.nn.gelu / flax)",
    "gelu_exact": "0.5 x (1 + erf(x / sqrt(2)))  (as torch.nn.functional.gelu)",
    "silu": "x sigmoid(x)",
    "softplus": "log(1 + exp(x))",
}
#: ``mode=`` values of the layer functions (§6).
MODES = ("auto", "parallel", "sequential")
#: dtypes the layer accepts for ``x`` (§7).
INPUT_DTYPES = checks.REAL_DTYPES
# lecun_normal draws N(0, 1) truncated to [-2, 2] and divides by this (the std of that truncated
# normal), so the kernel has variance exactly 1 / fan_in (same constant as jax.nn.initializers).
_TRUNCATED_STD = 0.87962566103423978


@dataclass(frozen=True)
class GatedLinearRNNConfig:
    """Hyper-parameters of one GatedLinearRNN / GateLoop layer (gated_linear_rnn.md §3).

    ``d_in=None`` means ``d_in = d_model``; after construction ``d_in`` is always an int.
    """

    d_model: int
    d_h: int
    d_in: int | None = None
    reversed: bool = False
    input_activation: str = "tanh"
    hidden_activation: str = "tanh"
    gate_activation: str = "sigmoid"
    use_true_recurrence: bool = False
    use_tied_gates: bool = True

    def __post_init__(self) -> None:
        if self.d_in is None:
            object.__setattr__(self, "d_in", self.d_model)
        for name in ("d_model", "d_h", "d_in"):
            checks.check_positive_int(f"GatedLinearRNNConfig.{name}", getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("reversed", "use_true_recurrence", "use_tied_gates"):
            checks.check_bool(f"GatedLinearRNNConfig.{name}", getattr(self, name))
        for name in ("input_activation", "hidden_activation", "gate_activation"):
            value = getattr(self, name)
            if value not in ACTIVATIONS:
                raise ValueError(
                    f"GatedLinearRNNConfig.{name}={value!r} is not a known activation; "
                    f"valid names: {', '.join(ACTIVATIONS)}"
                )

    @property
    def n_blocks(self) -> int:
        """Column blocks of ``proj``: ``[input | i | o]`` (tied, 3) or ``[input | i | f | o]`` (untied, 4)."""
        return 3 if self.use_tied_gates else 4


#: GateLoop is the same layer; ``reversed`` is the option only the GateLoop original has.
GateLoopConfig = GatedLinearRNNConfig


def param_shapes(config: GatedLinearRNNConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes (§5); kernels are ``(in, out)``: ``y = x @ kernel + bias``."""
    width = config.n_blocks * config.d_h
    shapes = {
        "proj.kernel": (config.d_in, width),
        "proj.bias": (width,),
        "out_proj.kernel": (config.d_h, config.d_model),
        "out_proj.bias": (config.d_model,),
    }
    if config.use_true_recurrence:
        shapes["recurrent_proj.kernel"] = (config.d_h, width)
    return shapes


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _lecun_normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Truncated normal with variance ``1 / fan_in`` (``fan_in = shape[0]``), as flax ``lecun_normal``."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2
    while bad.any():  # rejection sampling keeps exactly the N(0, 1) law restricted to [-2, 2]
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2
    return z * (math.sqrt(1.0 / shape[0]) / _TRUNCATED_STD)


def init_params(config: GatedLinearRNNConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Fresh parameters following §5: kernels lecun_normal, biases zero, ``recurrent_proj.kernel`` zero."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias") or name == "recurrent_proj.kernel":
            value = np.zeros(shape)
        else:
            value = _lecun_normal(rng, shape)
        out[name] = value.astype(_np_dtype(dtype))
    return out


# ---------------------------------------------------------------------------------------------
# Argument checks shared by every backend (shapes as tuples, dtypes as canonical names).


def check_params(shapes: Mapping[str, tuple[int, ...]], config: GatedLinearRNNConfig) -> None:
    """``params`` must hold exactly the canonical names of ``param_shapes(config)`` with those shapes."""
    expected = param_shapes(config)
    missing, extra = checks.missing_and_unexpected(shapes, expected)
    if missing or extra:
        hint = ""
        if "recurrent_proj.kernel" in missing + extra:
            hint = " (recurrent_proj.kernel exists exactly when config.use_true_recurrence is True)"
        raise ValueError(
            f"params do not match the config: missing {missing}, unexpected {extra}{hint}; "
            f"expected names: {list(expected)}"
        )
    checks.check_param_shapes(shapes, expected)


def check_input(x_shape: tuple[int, ...], x_dtype: str, config: GatedLinearRNNConfig) -> None:
    """``x`` must be ``(B, T, d_in)`` of a floating dtype in ``INPUT_DTYPES``."""
    _check_x_dtype("x", x_dtype)
    _check_x_shape("x", x_shape, 3, config)


def check_batch_first(batch_first: object) -> None:
    """The modules' ``batch_first`` option must be a ``bool`` (recurrence.md §0, *layout*)."""
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first must be a bool (True: (B, T, ...), False: (T, B, ...)), got {batch_first!r}")


def state_h(state: object, *, name: str = "initial_state") -> object | None:
    """The array ``h`` of a layer's carried ``State`` (recurrence.md §0); see ``linrec.spec.state.layer_h``."""
    return layer_h(state, name=name)


def check_lengths(
    shape: tuple[int, ...], dtype: str, batch: int, n_time: int, values: np.ndarray | None = None,
    *, method: str = "auto",
) -> None:
    """``lengths``: ``(B,)`` integers in ``[0, T]`` (right padding); see ``linrec.spec.state.check_lengths``."""
    _check_lengths(shape, dtype, batch, n_time, values, method=method)


def check_step_input(x_shape: tuple[int, ...], x_dtype: str, config: GatedLinearRNNConfig) -> None:
    """``x_t`` of the single-step API must be ``(B, d_in)``."""
    _check_x_dtype("x_t", x_dtype)
    _check_x_shape("x_t", x_shape, 2, config)


def _check_x_dtype(name: str, dtype: str) -> None:
    if dtype not in INPUT_DTYPES:
        raise TypeError(f"{name} must be a real floating array ({', '.join(INPUT_DTYPES)}), got dtype {dtype}")


def _check_x_shape(name: str, shape: tuple[int, ...], ndim: int, config: GatedLinearRNNConfig) -> None:
    """``x (B, T, d_in)`` (``ndim=3``) or ``x_t (B, d_in)``; the reference checks only this (it takes complex x)."""
    if len(shape) != ndim or shape[-1] != config.d_in:
        axes = "B, T" if ndim == 3 else "B"
        raise ValueError(f"{name} must have shape ({axes}, d_in) with d_in={config.d_in}, got shape {tuple(shape)}")


def state_dtype(x_dtype: str) -> str:
    """The dtype the state is computed and carried in for inputs of ``x_dtype`` (§7)."""
    return checks.compute_dtype(x_dtype)


def check_initial_state(
    shape: tuple[int, ...], dtype: str, batch: int, x_dtype: str, config: GatedLinearRNNConfig,
    *, name: str = "initial_state",
) -> None:
    """The carried state is ``(B, d_h)`` in the dtype of ``x`` (or float32 when ``x`` is bf16/f16)."""
    if tuple(shape) != (batch, config.d_h):
        raise ValueError(f"{name} must have shape (B, d_h) = {(batch, config.d_h)}, got {tuple(shape)}")
    allowed = checks.state_dtypes_for(x_dtype)
    if dtype not in allowed:
        raise TypeError(f"{name} has dtype {dtype}; for x of dtype {x_dtype} it must be {' or '.join(allowed)}")


def resolve_mode(mode: str, method: str, config: GatedLinearRNNConfig, chunk_size: int | None = None) -> str:
    """Turn ``mode`` into ``"parallel"`` or ``"sequential"`` (§6); refuse combinations that cannot run.

    ``"auto"`` is ``"sequential"`` with true recurrence (the only form that exists) and
    ``"parallel"`` otherwise. ``method`` selects the scan of the parallel mode; the sequential mode is
    the step loop and takes only ``method="auto"`` (or ``"sequential"``).
    """
    checks.check_mode(mode, MODES)
    if mode == "auto":
        mode = "sequential" if config.use_true_recurrence else "parallel"
    if mode == "parallel" and config.use_true_recurrence:
        raise ValueError(
            "use_true_recurrence=True feeds h_{t-1} into the gates, so the layer has no parallel (scan) form; "
            "call it with mode='sequential' (or mode='auto')"
        )
    if mode == "sequential" and (method not in ("auto", "sequential") or chunk_size is not None):
        what = f"method={method!r}" if method not in ("auto", "sequential") else f"chunk_size={chunk_size!r}"
        raise ValueError(
            f"{what} configures the scan of mode='parallel'; mode='sequential' is the step loop "
            "and takes method='auto' and no chunk_size"
        )
    return mode


# ---------------------------------------------------------------------------------------------
# The reference.


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x); no overflow and holomorphic (complex step)


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(x):
        raise TypeError("gelu_exact has no complex extension here (erf of a complex number)")
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(np.asarray(x, np.float64) / math.sqrt(2.0)))).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x)) if np.iscomplexobj(x) else np.logaddexp(0.0, x)


_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "identity": lambda x: x,
    "relu": lambda x: np.where(np.real(x) > 0, x, 0),
    "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "gelu_exact": _gelu_exact,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus,
}


def fusable(config: GatedLinearRNNConfig) -> bool:
    """Whether the native fused kernel computes this layer's parallel mode: the default activations (tanh input,
    sigmoid gates, tanh output) and no true recurrence (``linrec.backends.native.glr_scan``)."""
    return (config.input_activation, config.gate_activation, config.hidden_activation) == ("tanh", "sigmoid", "tanh") \
        and not config.use_true_recurrence


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The NumPy function of an activation name of ``ACTIVATIONS``."""
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}") from None


def _cell(
    params: Mapping[str, np.ndarray], u_t: np.ndarray, h: np.ndarray, config: GatedLinearRNNConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One step from the projected input ``u_t: (B, n H)`` and state ``h: (B, H)`` → ``(y_t: (B, H), h_t)``."""
    if config.use_true_recurrence:
        u_t = u_t + h @ params["recurrent_proj.kernel"]  # r_t = h_{t-1} W_r feeds every block
    d = config.d_h
    candidate = activation(config.input_activation)(u_t[:, :d])
    gates = activation(config.gate_activation)(u_t[:, d:])
    i = gates[:, :d]
    if config.use_tied_gates:
        f, o = 1 - i, gates[:, d : 2 * d]
    else:
        f, o = gates[:, d : 2 * d], gates[:, 2 * d : 3 * d]
    h = f * h + i * candidate
    return activation(config.hidden_activation)(h) * o, h


def _promote(params: Mapping[str, np.ndarray], *arrays: np.ndarray | None) -> np.dtype:
    dtype = np.result_type(*[np.asarray(p) for p in params.values()], *[a for a in arrays if a is not None])
    if dtype.name in checks.LOW_PRECISION:
        return np.dtype(np.float32)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating)):
        raise TypeError(f"the reference needs floating or complex arrays, got {dtype}")
    return dtype


def forward(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: GatedLinearRNNConfig,
    initial_state: State | None = None,
    *,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The layer over a sequence, as the loop of §2.

    Args:
      params: canonical name → array (``param_shapes(config)``).
      x: ``(B, T, D_in)``.
      initial_state: ``State(h=(B, H))``, the state before the first processed step; ``None`` means zeros.
      lengths: ``(B,)``: row ``b`` holds ``lengths[b]`` real inputs followed by padding (recurrence.md §0).
        Defined as running each row alone on its real inputs; outputs at padded positions are zero.

    Returns:
      ``(y, final_state)``: ``(B, T, D)`` and ``State(h=(B, H))``; ``final_state.h`` is the state after the
      last processed step (``t = 0`` when ``config.reversed``), before ``hidden_activation``.
    """
    x = np.asarray(x)
    _check_x_shape("x", x.shape, 3, config)
    check_params({k: np.shape(v) for k, v in params.items()}, config)
    h0 = state_h(initial_state)
    dtype = _promote(params, x, h0)
    p = {k: np.asarray(v).astype(dtype) for k, v in params.items()}
    n_batch, n_time = x.shape[:2]
    h = np.zeros((n_batch, config.d_h), dtype)
    if h0 is not None:
        if np.shape(h0) != (n_batch, config.d_h):
            raise ValueError(f"initial_state.h must have shape (B, d_h) = {(n_batch, config.d_h)}")
        h = np.asarray(h0).astype(dtype)
    if lengths is not None:  # by definition: each row alone on its real inputs
        lengths = np.asarray(lengths)
        check_lengths(lengths.shape, lengths.dtype.name, n_batch, n_time, lengths)
        y = np.zeros((n_batch, n_time, config.d_model), dtype)
        hs = []
        for b in range(n_batch):
            n = int(lengths[b])
            y_b, s_b = forward(p, x[b : b + 1, :n], config, State(h[b : b + 1]))
            y[b, :n] = y_b[0]
            hs.append(s_b.h[0])
        return y, State(np.stack(hs) if hs else h)
    x = x.astype(dtype)
    if config.reversed:
        x = x[:, ::-1]  # GateLoop: flip time, run forward, flip the outputs back
    u = x @ p["proj.kernel"] + p["proj.bias"]
    y = np.zeros((n_batch, n_time, config.d_h), dtype)
    for t in range(n_time):
        y[:, t], h = _cell(p, u[:, t], h, config)
    if config.reversed:
        y = y[:, ::-1]
    return y @ p["out_proj.kernel"] + p["out_proj.bias"], State(h)


def step(
    params: Mapping[str, np.ndarray],
    x_t: np.ndarray,
    state: State | None,
    config: GatedLinearRNNConfig,
) -> tuple[np.ndarray, State]:
    """One step: ``x_t: (B, D_in)``, ``state: State(h=(B, H))`` (``None``: zeros) → ``(y_t: (B, D), State)``.

    The same function serves both directions: a reversed layer is stepped from ``t = T-1`` down to 0.
    """
    x_t = np.asarray(x_t)
    _check_x_shape("x_t", x_t.shape, 2, config)
    check_params({k: np.shape(v) for k, v in params.items()}, config)
    h = state_h(state, name="state")
    dtype = _promote(params, x_t, h)
    p = {k: np.asarray(v).astype(dtype) for k, v in params.items()}
    h = np.zeros((x_t.shape[0], config.d_h), dtype) if h is None else np.asarray(h).astype(dtype)
    u_t = x_t.astype(dtype) @ p["proj.kernel"] + p["proj.bias"]
    y_t, h = _cell(p, u_t, h, config)
    return y_t @ p["out_proj.kernel"] + p["out_proj.bias"], State(h)
