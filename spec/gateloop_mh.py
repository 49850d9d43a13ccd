"""Multi-head outer-product GateLoop: config, canonical parameters, checks and the NumPy reference.

Normative text: ``gateloop_mh.md``. Shape legend: ``B`` batch, ``T`` time, ``D`` d_model, ``H`` heads,
``K`` d_key (state rows), ``V`` d_value (state columns), ``R`` gate rows per head (``K`` or 1).

Per head: ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ`` and ``o_t = S_tᵀ q_t``; carried state ``S: (B, H, K, V)``.
The loops here *define* the layer; backends are fast implementations checked against them.
Everything in this module is framework-free: backends call the ``check_*`` functions with shapes and
canonical dtype names so every backend raises the same message for the same mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from linrec.spec import checks, reference
from linrec.spec.gated_linear_rnn import check_batch_first, check_lengths, state_h
from linrec.spec.state import State

__all__ = [
    "COMPLEX_OUTPUTS",
    "GATES",
    "GATE_BIAS_RANGE",
    "GATE_GRANULARITIES",
    "GATE_PARAMETRIZATIONS",
    "INPUT_NORMS",
    "MODES",
    "OUTPUT_GATES",
    "PHASE_ACTIVATIONS",
    "RMS_EPS",
    "SCAN_METHODS",
    "SUB_NORMS",
    "SUB_NORM_EPS",
    "GateLoopMHConfig",
    "State",
    "cartesian_gate",
    "check_batch_first",
    "check_lengths",
    "check_mode",
    "check_params",
    "check_state",
    "check_x",
    "forward",
    "gate_bias_init",
    "init_params",
    "initial_state",
    "input_norm",
    "layer_norm",
    "param_shapes",
    "project",
    "silu",
    "state_dtype",
    "state_h",
    "state_shape",
    "step",
    "vjp",
]

GATES = ("real", "complex")
GATE_GRANULARITIES = ("key", "head")
PHASE_ACTIVATIONS = ("identity", "relu")
#: complex gate from a magnitude and a phase projection, or from one complex logit z (``σ(|z|)·z/|z|``).
GATE_PARAMETRIZATIONS = ("mag_phase", "cartesian")
#: parameter-free normalisation of x before every projection (``gateloop_mh.md`` §2).
INPUT_NORMS = ("none", "rms")
#: LayerNorm over the concatenated heads' read-out (``u``), before the output gate.
SUB_NORMS = ("none", "layernorm")
#: multiplicative output gate ``u ⊙ silu(x̃ W_g)``.
OUTPUT_GATES = ("none", "silu")
#: ``input_norm="rms"``: ``x / max(‖x‖₂, RMS_EPS) · √D`` (torch ``F.normalize``'s eps).
RMS_EPS = 1e-12
#: ``sub_norm="layernorm"`` epsilon (torch ``nn.LayerNorm``'s default).
SUB_NORM_EPS = 1e-5
COMPLEX_OUTPUTS = ("real", "complex")
#: ``"auto"`` (the default) is ``"parallel"`` (recurrence.md §0); the memory-lean path is ``method="chunked"`` (§6).
MODES = ("auto", "parallel", "sequential")
#: scan methods a layer may request (recurrence.md §7); ``"log"`` is outside this layer's domain.
SCAN_METHODS = ("auto", "sequential", "associative", "chunked", "native", "pallas", "triton")
#: decays at initialisation are spread over this interval (``gateloop_mh.md`` §5).
GATE_BIAS_RANGE = (0.9, 0.999)


def _choice(field: str, value: str, options: tuple[str, ...]) -> None:
    checks.check_choice(f"GateLoopMHConfig.{field}", value, options)


def _positive_int(field: str, value) -> None:
    checks.check_positive_int(f"GateLoopMHConfig.{field}", value)


@dataclass(frozen=True)
class GateLoopMHConfig:
    """Hyper-parameters of the multi-head outer-product GateLoop layer (``gateloop_mh.md`` §5).

    ``d_key``/``d_value`` default to ``d_model // num_heads`` (then ``d_model`` must be divisible).
    """

    d_model: int
    num_heads: int = 1
    d_key: int | None = None
    d_value: int | None = None
    gate: str = "real"
    gate_granularity: str = "key"
    phase_activation: str = "identity"
    complex_output: str = "real"
    qkv_bias: bool = False
    chunk_size: int = 64
    gate_parametrization: str = "mag_phase"
    input_norm: str = "none"
    sub_norm: str = "none"
    output_gate: str = "none"

    def __post_init__(self) -> None:
        _positive_int("d_model", self.d_model)
        _positive_int("num_heads", self.num_heads)
        for field in ("d_key", "d_value"):
            value = getattr(self, field)
            if value is None:
                if self.d_model % self.num_heads:
                    raise ValueError(
                        f"GateLoopMHConfig.{field}: d_model={self.d_model} is not divisible by "
                        f"num_heads={self.num_heads}; pass {field} explicitly"
                    )
                object.__setattr__(self, field, self.d_model // self.num_heads)
            else:
                _positive_int(field, value)
        _choice("gate", self.gate, GATES)
        _choice("gate_granularity", self.gate_granularity, GATE_GRANULARITIES)
        _choice("phase_activation", self.phase_activation, PHASE_ACTIVATIONS)
        _choice("complex_output", self.complex_output, COMPLEX_OUTPUTS)
        if not isinstance(self.qkv_bias, (bool, np.bool_)):
            raise ValueError(f"GateLoopMHConfig.qkv_bias must be a bool, got {self.qkv_bias!r}")
        _positive_int("chunk_size", self.chunk_size)
        _choice("gate_parametrization", self.gate_parametrization, GATE_PARAMETRIZATIONS)
        _choice("input_norm", self.input_norm, INPUT_NORMS)
        _choice("sub_norm", self.sub_norm, SUB_NORMS)
        _choice("output_gate", self.output_gate, OUTPUT_GATES)
        if self.gate_parametrization == "cartesian":
            if self.gate != "complex":
                raise ValueError("GateLoopMHConfig.gate_parametrization='cartesian' is a complex gate; "
                                 f"it needs gate='complex', got gate={self.gate!r}")
            if self.phase_activation != "identity":
                raise ValueError("GateLoopMHConfig.phase_activation must be 'identity' with "
                                 "gate_parametrization='cartesian' (the phase is arg z)")
        if self.gate == "complex" and self.complex_output == "complex":
            for field in ("sub_norm", "output_gate"):
                if getattr(self, field) != "none":
                    raise ValueError(f"GateLoopMHConfig.{field}={getattr(self, field)!r} needs a real read-out "
                                     "(complex_output='real')")

    @property
    def gate_rows(self) -> int:
        """``R``: gate values per head (``K`` for ``"key"``, 1 for ``"head"``)."""
        return self.d_key if self.gate_granularity == "key" else 1

    @property
    def is_complex(self) -> bool:
        return self.gate == "complex"

    @property
    def gate_names(self) -> tuple[str, ...]:
        """Canonical prefixes of the gate projections."""
        if not self.is_complex:
            return ("a_proj",)
        return ("a_re_proj", "a_im_proj") if self.gate_parametrization == "cartesian" else ("a_mag_proj",
                                                                                            "a_phase_proj")


# ---------------------------------------------------------------- parameters


def param_shapes(config: GateLoopMHConfig) -> dict[str, tuple[int, ...]]:
    """Canonical flat names -> shapes (``gateloop_mh.md`` §5); kernels are ``(in, out)``."""
    d, h, k, v, r = config.d_model, config.num_heads, config.d_key, config.d_value, config.gate_rows
    shapes: dict[str, tuple[int, ...]] = {}
    for name, width in (("q_proj", h * k), ("k_proj", h * k), ("v_proj", h * v)):
        shapes[f"{name}.kernel"] = (d, width)
        if config.qkv_bias:
            shapes[f"{name}.bias"] = (width,)
    for name in config.gate_names:
        shapes[f"{name}.kernel"] = (d, h * r)
        shapes[f"{name}.bias"] = (h * r,)
    if config.sub_norm == "layernorm":
        shapes["sub_norm.scale"] = (h * v,)
        shapes["sub_norm.bias"] = (h * v,)
    if config.output_gate != "none":
        shapes["output_gate_proj.kernel"] = (d, h * v)
    shapes["out_proj.kernel"] = (h * v, d)
    shapes["out_proj.bias"] = (d,)
    return shapes


def gate_bias_init(config: GateLoopMHConfig) -> np.ndarray:
    """``logit`` of decays spread over ``GATE_BIAS_RANGE``: per head over its ``K`` rows, or over heads."""
    lo, hi = GATE_BIAS_RANGE
    if config.gate_granularity == "key":
        decays = np.tile(np.linspace(lo, hi, config.d_key), config.num_heads)
    else:
        decays = np.linspace(lo, hi, config.num_heads)
    return np.log(decays) - np.log1p(-decays)


def _lecun_normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    # truncated to [-2, 2] standard deviations, rescaled so the variance after truncation is 1/fan_in (Flax)
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2
    return z * (np.sqrt(1.0 / shape[0]) / 0.87962566103423978)


def init_params(config: GateLoopMHConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Draw parameters with the initialisers of ``gateloop_mh.md`` §5 (reproducible for a ``seed``)."""
    from linrec.backends.numpy.arrays import np_dtype

    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".kernel"):
            value = _lecun_normal(rng, shape)
        elif name in ("a_proj.bias", "a_mag_proj.bias", "a_re_proj.bias"):
            value = gate_bias_init(config)
        elif name == "sub_norm.scale":
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        params[name] = value.astype(np_dtype(dtype))
    return params


def check_params(config: GateLoopMHConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ValueError`` naming a missing, unexpected or misshapen parameter."""
    expected = param_shapes(config)
    missing, extra = map(sorted, checks.missing_and_unexpected(shapes, expected))
    if missing:
        raise ValueError(f"gateloop_mh: missing parameter(s) {missing} for this config (gate={config.gate!r}, "
                         f"qkv_bias={config.qkv_bias})")
    if extra:
        raise ValueError(f"gateloop_mh: unexpected parameter(s) {extra} for this config (gate={config.gate!r}, "
                         f"qkv_bias={config.qkv_bias}); expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"gateloop_mh: parameter {name!r} must have shape {shape}, got {tuple(shapes[name])}")


# ---------------------------------------------------------------- state, dtypes, argument checks


def state_shape(config: GateLoopMHConfig, batch_size: int) -> tuple[int, int, int, int]:
    """``(B, H, K, V)``."""
    return (batch_size, config.num_heads, config.d_key, config.d_value)


def state_dtype(config: GateLoopMHConfig, dtype: str) -> str:
    """The carried state's dtype for inputs of ``dtype`` (``gateloop_mh.md`` §3)."""
    if dtype not in checks.REAL_DTYPES:
        raise TypeError(f"gateloop_mh: x must be real floating {checks.REAL_DTYPES}, got dtype {dtype}")
    real = checks.compute_dtype(dtype)
    if config.is_complex:
        return "complex128" if real == "float64" else "complex64"
    return real


def check_x(config: GateLoopMHConfig, shape: tuple[int, ...], dtype: str, *, name: str = "x", ndim: int = 3) -> None:
    """``x: (B, T, D)`` (``ndim=3``) or ``x_t: (B, D)`` (``ndim=2``), real floating."""
    legend = "(B, T, d_model)" if ndim == 3 else "(B, d_model)"
    if len(shape) != ndim or shape[-1] != config.d_model:
        raise ValueError(f"gateloop_mh: {name} must have shape {legend} with d_model={config.d_model}, "
                         f"got shape {tuple(shape)}")
    if dtype not in checks.REAL_DTYPES:
        raise TypeError(f"gateloop_mh: {name} must be real floating {checks.REAL_DTYPES}, got dtype {dtype}")


def check_state(
    config: GateLoopMHConfig, batch_size: int, shape: tuple[int, ...], dtype: str, x_dtype: str,
    *, name: str = "initial_state",
) -> None:
    """``state: (B, H, K, V)`` in ``state_dtype(config, x_dtype)`` (low-precision real: also ``x_dtype``)."""
    expected = state_shape(config, batch_size)
    if tuple(shape) != expected:
        raise ValueError(f"gateloop_mh: {name} must have shape (B, H, K, V) = {expected}, got {tuple(shape)}")
    want = state_dtype(config, x_dtype)
    allowed = {want} | ({x_dtype} if x_dtype in checks.LOW_PRECISION and not config.is_complex else set())
    if dtype not in allowed:
        kind = "complex (gate='complex')" if config.is_complex else "real (gate='real')"
        raise TypeError(f"gateloop_mh: {name} must be {kind} with dtype {want} for x of dtype {x_dtype}, "
                        f"got dtype {dtype}")


def check_mode(mode: str, method: str, chunk_size) -> str:
    """Validate ``mode``/``method``/``chunk_size`` (``gateloop_mh.md`` §4); return the mode ``"auto"`` stands for
    (``"parallel"``: the layer always has a parallel form). ``method="chunked"`` is the memory-lean path (§6);
    ``chunk_size`` belongs to it alone."""
    if mode not in MODES:
        hint = " (the memory-lean path is mode='parallel', method='chunked')" if mode == "chunked" else ""
        raise ValueError(f"gateloop_mh: unknown mode={mode!r}; valid modes: {MODES}{hint}")
    if method == "log":
        raise ValueError("gateloop_mh: method='log' needs a real gate and positive k⊗v, which this layer does not "
                         "guarantee; use method='associative' (or 'sequential', 'chunked')")
    if method not in SCAN_METHODS:
        raise ValueError(f"gateloop_mh: unknown method={method!r}; valid methods: {SCAN_METHODS}")
    if mode == "sequential" and method not in ("auto", "sequential"):
        raise ValueError(f"gateloop_mh: method={method!r} applies to mode='parallel'; "
                         "mode='sequential' takes method='auto' or 'sequential'")
    if chunk_size is not None:
        if not checks.is_positive_int(chunk_size):
            raise ValueError(f"gateloop_mh: chunk_size must be a positive int or None, got {chunk_size!r}")
        if method != "chunked":
            raise ValueError(f"gateloop_mh: chunk_size={chunk_size!r} is the chunk length of method='chunked'; "
                             f"method={method!r} takes no chunk_size")
    return "parallel" if mode == "auto" else mode


def initial_state(config: GateLoopMHConfig, batch_size: int, dtype: str = "float32") -> State:
    """``State(h=zeros (B, H, K, V))`` in the state dtype for inputs of ``dtype``."""
    return State(np.zeros(state_shape(config, batch_size), state_dtype(config, dtype)))


# ---------------------------------------------------------------- the reference


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))  # exact for every z, no overflow


def _dense(params: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    y = x @ params[f"{name}.kernel"]
    bias = params.get(f"{name}.bias")
    return y if bias is None else y + bias


def _compute_dtype(x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.dtype:
    dtype = np.result_type(*(np.asarray(p).dtype for p in params.values()), np.asarray(x).dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def input_norm(x: np.ndarray, config: GateLoopMHConfig) -> np.ndarray:
    """``x̃``: ``x`` (``input_norm="none"``) or ``x / max(‖x‖₂, RMS_EPS) · √D`` over the last axis (``"rms"``)."""
    if config.input_norm == "none":
        return x
    norm = np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True))
    return x / np.maximum(norm, RMS_EPS) * np.sqrt(config.d_model)


def cartesian_gate(re: np.ndarray, im: np.ndarray) -> np.ndarray:
    """``a = σ(|z|) · z / |z|`` for ``z = re + i·im`` (``z / |z| := 1`` at ``z = 0``, torch's ``angle(0) = 0``)."""
    r = np.hypot(re, im)
    safe = np.where(r > 0, r, 1)
    unit = np.where(r > 0, re / safe, 1) + 1j * np.where(r > 0, im / safe, 0)
    return _sigmoid(r) * unit


def project(params: Mapping[str, np.ndarray], x: np.ndarray, config: GateLoopMHConfig):
    """``x̃: (..., D)`` (after ``input_norm``) -> ``q: (..., H, K)``, ``k: (..., H, K)``, ``v: (..., H, V)``,
    ``a: (..., H, R, 1)``."""
    h, r = config.num_heads, config.gate_rows
    lead = x.shape[:-1]
    q = _dense(params, "q_proj", x).reshape(*lead, h, config.d_key)
    k = _dense(params, "k_proj", x).reshape(*lead, h, config.d_key)
    v = _dense(params, "v_proj", x).reshape(*lead, h, config.d_value)
    if config.is_complex and config.gate_parametrization == "cartesian":
        a = cartesian_gate(_dense(params, "a_re_proj", x), _dense(params, "a_im_proj", x))
    elif config.is_complex:
        phase = _dense(params, "a_phase_proj", x)
        if config.phase_activation == "relu":
            phase = np.maximum(phase, 0)
        a = _sigmoid(_dense(params, "a_mag_proj", x)) * np.exp(1j * phase)
    else:
        a = _sigmoid(_dense(params, "a_proj", x))
    return q, k, v, a.reshape(*lead, h, r, 1)


def silu(z: np.ndarray) -> np.ndarray:
    """``z σ(z)``: the output gate's activation."""
    return z * _sigmoid(z)


def layer_norm(u: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``sub_norm="layernorm"`` over the last axis (``H·V``): biased variance, eps ``SUB_NORM_EPS``."""
    mean = u.mean(axis=-1, keepdims=True)
    var = np.square(u - mean).mean(axis=-1, keepdims=True)  # biased, as torch nn.LayerNorm
    return (u - mean) / np.sqrt(var + SUB_NORM_EPS) * scale + bias


def _read_out(params: Mapping[str, np.ndarray], o: np.ndarray, config: GateLoopMHConfig,
              x: np.ndarray) -> np.ndarray:
    """``o: (..., H, V)`` -> ``y: (..., D)``: the complex-output convention, ``sub_norm``, the output gate on
    ``x̃: (..., D)``, then ``out_proj``."""
    if config.is_complex and config.complex_output == "real":
        o = o.real
    u = o.reshape(*o.shape[:-2], -1)
    if config.sub_norm == "layernorm":
        u = layer_norm(u, params["sub_norm.scale"], params["sub_norm.bias"])
    if config.output_gate == "silu":
        u = u * silu(_dense(params, "output_gate_proj", x))
    return _dense(params, "out_proj", u)


def _prepare(params, x, config, state, *, ndim: int, state_name: str):
    x = np.asarray(x)
    check_x(config, x.shape, x.dtype.name, ndim=ndim,
            name="x" if ndim == 3 else "x_t")
    check_params(config, {n: np.shape(p) for n, p in params.items()})
    ct = _compute_dtype(x, params)
    params = {n: np.asarray(p).astype(ct) for n, p in params.items()}
    sdt = np.result_type(ct, np.complex64) if config.is_complex else ct
    if state is None:
        state = np.zeros(state_shape(config, x.shape[0]), sdt)
    else:
        state = np.asarray(state)
        check_state(config, x.shape[0], state.shape, state.dtype.name, x.dtype.name, name=state_name)
        state = state.astype(sdt)
    return params, x.astype(ct), state


def _out_dtype(config: GateLoopMHConfig, x_dtype: np.dtype, state: np.ndarray) -> np.dtype:
    return state.dtype if config.is_complex and config.complex_output == "complex" else x_dtype


def forward(
    params: Mapping[str, np.ndarray], x: np.ndarray, config: GateLoopMHConfig, initial_state: State | None = None,
    *, lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The defining loop (``gateloop_mh.md`` §2).

    Args:
      params: canonical name -> array (``param_shapes``).
      x: ``(B, T, D)`` real floating; pass float64 (and float64 params) for the reference answer.
      initial_state: ``State(h=(B, H, K, V))``; ``None`` means zeros.
      lengths: ``(B,)``: row ``b`` holds ``lengths[b]`` real inputs followed by padding (recurrence.md §0);
        defined as running each row alone on its real inputs, outputs at padded positions zero.

    Returns:
      ``y: (B, T, D)`` and ``final_state``: ``State(h=(B, H, K, V))`` (the state before read-out).
    """
    x_dtype = np.asarray(x).dtype
    params, x, state = _prepare(params, x, config, state_h(initial_state), ndim=3, state_name="initial_state")
    n_batch, n_time, _ = x.shape
    if lengths is not None:
        lengths = np.asarray(lengths)
        check_lengths(lengths.shape, lengths.dtype.name, n_batch, n_time, lengths)
        ys, states = [], []
        for b in range(n_batch):
            n = int(lengths[b])
            y_b, s_b = forward(params, x[b : b + 1, :n], config, State(state[b : b + 1]))
            ys.append(np.concatenate([y_b[0], np.zeros((n_time - n, *y_b.shape[2:]), y_b.dtype)]))
            states.append(s_b.h[0])
        if not ys:
            return forward(params, x, config, State(state))
        y = np.stack(ys)
        return y.astype(_out_dtype(config, x_dtype, state)), State(np.stack(states))
    ys = []
    for t in range(n_time):
        xn = input_norm(x[:, t], config)
        q, k, v, a = project(params, xn, config)
        state = a * state + k[..., :, None] * v[..., None, :]  # rows of S decayed by a
        ys.append(_read_out(params, np.einsum("bhkv,bhk->bhv", state, q), config, xn))
    y = np.stack(ys, axis=1) if ys else np.zeros((n_batch, 0, config.d_model), x.dtype)
    return y.astype(_out_dtype(config, x_dtype, state)), State(state)


def step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, config: GateLoopMHConfig
) -> tuple[np.ndarray, State]:
    """One iteration of the loop: ``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` -> ``(y_t: (B, D), State)``."""
    x_dtype = np.asarray(x_t).dtype
    params, x_t, state = _prepare(params, x_t, config, state_h(state, name="state"), ndim=2, state_name="state")
    xn = input_norm(x_t, config)
    q, k, v, a = project(params, xn, config)
    state = a * state + k[..., :, None] * v[..., None, :]
    y = _read_out(params, np.einsum("bhkv,bhk->bhv", state, q), config, xn)
    return y.astype(_out_dtype(config, x_dtype, state)), State(state)


# ---------------------------------------------------------------- the analytic VJP


def _dense_vjp(grads: dict, name: str, x: np.ndarray, pre_bar: np.ndarray, params) -> np.ndarray:
    """Accumulate kernel/bias cotangents of ``x @ kernel + bias``; return the contribution to ``x_bar``."""
    xs, gs = x.reshape(-1, x.shape[-1]), pre_bar.reshape(-1, pre_bar.shape[-1])
    grads[f"{name}.kernel"] = np.real(xs.T @ gs)
    if f"{name}.bias" in params:
        grads[f"{name}.bias"] = np.real(gs.sum(axis=0))
    return np.real(pre_bar @ params[f"{name}.kernel"].T)


def vjp(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: GateLoopMHConfig,
    cotangent_y: np.ndarray,
    cotangent_state: np.ndarray | None = None,
    *,
    initial_state: State | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Cotangents of ``(params, x, initial_state)`` for ``forward`` in float64/complex128 (JAX convention).

    With the pairing ``φ = Re Σ ȳ·y + Re Σ S̄·S_T`` (no conjugation), a real primal gets ``∂φ/∂θ`` and a
    complex one ``∂φ/∂Re z − i ∂φ/∂Im z``. The scan part is ``reference.linear_scan_vjp`` (recurrence.md §10).

    ``cotangent_state`` is the cotangent of ``final_state.h`` ``(B, H, K, V)``.
    Returns ``(param_cotangents, x_cotangent, initial_state_cotangent)`` (the last one ``(B, H, K, V)``).
    """
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    check_params(config, {n: v.shape for n, v in p.items()})
    x = np.asarray(x, np.float64)
    n_batch, n_time, _ = x.shape
    h_, r_, v_ = config.num_heads, config.gate_rows, config.d_value
    sdt = np.complex128 if config.is_complex else np.float64
    h0 = state_h(initial_state)
    s0 = np.zeros(state_shape(config, n_batch), sdt) if h0 is None else np.asarray(h0, sdt)
    # forward, keeping what the backward needs
    xn = input_norm(x, config)
    q, k, v, a = project(p, xn, config)
    kv = (k[..., :, None] * v[..., None, :]).astype(sdt)
    states, _ = reference.linear_scan(a, kv, initial_state=s0)
    o = np.einsum("bthkv,bthk->bthv", states, q)
    u0 = (o.real if config.is_complex and config.complex_output == "real" else o).reshape(n_batch, n_time, h_ * v_)
    u1 = layer_norm(u0, p["sub_norm.scale"], p["sub_norm.bias"]) if config.sub_norm == "layernorm" else u0
    gated = config.output_gate == "silu"
    pre_g = _dense(p, "output_gate_proj", xn) if gated else None
    u = u1 * silu(pre_g) if gated else u1
    # backward
    grads: dict[str, np.ndarray] = {}
    y_bar = np.asarray(cotangent_y)
    u_bar = y_bar @ p["out_proj.kernel"].T
    grads["out_proj.kernel"] = np.real(u.reshape(-1, h_ * v_).T @ y_bar.reshape(-1, config.d_model))
    grads["out_proj.bias"] = np.real(y_bar.reshape(-1, config.d_model).sum(axis=0))
    xn_bar = np.zeros_like(xn)
    if gated:
        sig = _sigmoid(pre_g)
        pre_g_bar = np.real(u_bar * u1) * sig * (1 + pre_g * (1 - sig))  # silu'(z) = σ(z)(1 + z(1 − σ(z)))
        xn_bar = xn_bar + _dense_vjp(grads, "output_gate_proj", xn, pre_g_bar, p)
        u_bar = u_bar * silu(pre_g)
    if config.sub_norm == "layernorm":
        u_bar = np.real(u_bar)
        mean = u0.mean(axis=-1, keepdims=True)
        rstd = 1 / np.sqrt(np.square(u0 - mean).mean(axis=-1, keepdims=True) + SUB_NORM_EPS)
        hat = (u0 - mean) * rstd
        grads["sub_norm.scale"] = (u_bar * hat).reshape(-1, h_ * v_).sum(axis=0)
        grads["sub_norm.bias"] = u_bar.reshape(-1, h_ * v_).sum(axis=0)
        d = u_bar * p["sub_norm.scale"]
        u_bar = rstd * (d - d.mean(axis=-1, keepdims=True) - hat * (d * hat).mean(axis=-1, keepdims=True))
    o_bar = u_bar.reshape(n_batch, n_time, h_, v_)
    if not (config.is_complex and config.complex_output == "complex"):
        o_bar = np.real(o_bar)  # a real output (or Re(o)) pulls back a real cotangent
    h_bar = o_bar[..., None, :] * q[..., :, None]
    q_bar = np.real(np.einsum("bthv,bthkv->bthk", o_bar, states))
    ct_state = None if cotangent_state is None else np.asarray(cotangent_state, sdt)
    a_bar, kv_bar, s0_bar = reference.linear_scan_vjp(a, kv, h_bar, ct_state, initial_state=s0)
    k_bar = np.real(np.einsum("bthkv,bthv->bthk", kv_bar, v))
    v_bar = np.real(np.einsum("bthkv,bthk->bthv", kv_bar, k))
    xn_bar = xn_bar + _dense_vjp(grads, "q_proj", xn, q_bar.reshape(n_batch, n_time, -1), p)
    xn_bar = xn_bar + _dense_vjp(grads, "k_proj", xn, k_bar.reshape(n_batch, n_time, -1), p)
    xn_bar = xn_bar + _dense_vjp(grads, "v_proj", xn, v_bar.reshape(n_batch, n_time, -1), p)
    a_bar = a_bar.reshape(n_batch, n_time, h_ * r_)
    a = a.reshape(n_batch, n_time, h_ * r_)
    if config.is_complex and config.gate_parametrization == "cartesian":
        re, im = _dense(p, "a_re_proj", xn), _dense(p, "a_im_proj", xn)
        r = np.hypot(re, im)
        r_bar = np.real(a_bar * a) * (1 - _sigmoid(r))  # a = σ(r) e^{iθ}: ∂a/∂r = a(1 − σ(r)), ∂a/∂θ = i a
        theta_bar = np.real(a_bar * 1j * a)
        safe = np.where(r > 0, r, 1)  # at z = 0 the gradient is taken as 0 (torch's abs/angle at 0)
        re_bar = np.where(r > 0, r_bar * re / safe - theta_bar * im / safe**2, 0)
        im_bar = np.where(r > 0, r_bar * im / safe + theta_bar * re / safe**2, 0)
        xn_bar = xn_bar + _dense_vjp(grads, "a_re_proj", xn, re_bar, p)
        xn_bar = xn_bar + _dense_vjp(grads, "a_im_proj", xn, im_bar, p)
    elif config.is_complex:
        mag = _sigmoid(_dense(p, "a_mag_proj", xn))
        mag_bar = np.real(a_bar * a) * (1 - mag)  # d|a|/dm = σ'(m) = σ(1-σ); a·(1-σ) = σ' e^{iφ}
        phase_bar = np.real(a_bar * 1j * a)
        if config.phase_activation == "relu":
            phase_bar = phase_bar * (_dense(p, "a_phase_proj", xn) > 0)
        xn_bar = xn_bar + _dense_vjp(grads, "a_mag_proj", xn, mag_bar, p)
        xn_bar = xn_bar + _dense_vjp(grads, "a_phase_proj", xn, phase_bar, p)
    else:
        xn_bar = xn_bar + _dense_vjp(grads, "a_proj", xn, np.real(a_bar) * a * (1 - a), p)
    if config.input_norm == "rms":  # x̃ = x·s/n, n = max(‖x‖, eps): J = s/n (I − x̂x̂ᵀ) when ‖x‖ > eps
        norm = np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True))
        n = np.maximum(norm, RMS_EPS)
        unit = x / n
        proj = np.where(norm > RMS_EPS, np.sum(unit * xn_bar, axis=-1, keepdims=True), 0)
        x_bar = np.sqrt(config.d_model) / n * (xn_bar - unit * proj)
    else:
        x_bar = xn_bar
    return grads, x_bar, s0_bar
