"""Conformance cases for the multi-head outer-product GateLoop layer (``spec/gateloop_mh.md``).

Every case draws its inputs in NumPy from a fixed seed, rounds them to the case dtype, runs the
backend's pure functions (``gateloop_mh``, ``gateloop_mh_step``, ``gateloop_mh_initial_state``) and
judges the result against the float64/complex128 NumPy reference (``linrec.spec.gateloop_mh.forward``)
run on the same rounded numbers upcast.

Gradients (``requires=("gateloop_mh", "vjp")``) are judged against the reference's analytic VJP
(``linrec.spec.gateloop_mh.vjp``: the reverse scan of recurrence.md §10 chained through the projections;
the tests check it against central finite differences). Complex gradients use the JAX convention.

Outputs pass through several matmuls, so outputs, states and gradients use
``tolerance_for(dtype, grad=True)`` (the §9 table ×10; ``gateloop_mh.md`` §8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, CaseFailure, Outcome, log_method_of
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many, to_reference_precision
from linrec.conformance.inputs import rounded
from linrec.conformance.layer_harness import Path, backend_params, backend_vjp, case_seed, expect_error
from linrec.spec import gateloop_mh as spec
from linrec.spec import reference
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State

__all__ = ["GRAD_VARIANTS", "VARIANTS", "cases", "make_problem"]

LAYER = "gateloop_mh"
DTYPES = ("float32", "float64")
#: Sizes of the value cases; T = 7 with chunks of 3 ends on a short chunk.
BATCH, LENGTH, D_MODEL, HEADS, D_KEY, D_VALUE = 2, 7, 5, 2, 3, 2
CHUNK = 3
#: Smaller sizes for gradient cases.
GRAD_LENGTH = 5

_BASE = GateLoopMHConfig(d_model=D_MODEL, num_heads=HEADS, d_key=D_KEY, d_value=D_VALUE, chunk_size=CHUNK)

#: name -> (config, one-line doc)
VARIANTS: dict[str, tuple[GateLoopMHConfig, str]] = {
    "real": (_BASE, "real gate a = σ(·) per head and key row, (B,T,H,K,1)"),
    "real-head-bias": (
        replace(_BASE, gate_granularity="head", qkv_bias=True),
        "real gate per head (B,T,H,1,1), q/k/v projections with biases",
    ),
    "complex": (
        replace(_BASE, gate="complex"),
        "complex gate σ(m)·e^{iφ} per key row, output Re(Sᵀq) (complex_output='real')",
    ),
    "complex-out-relu-head": (
        replace(_BASE, gate="complex", complex_output="complex", phase_activation="relu", gate_granularity="head"),
        "complex gate per head with relu phase, complex output through out_proj",
    ),
    "rms-input": (
        replace(_BASE, input_norm="rms"),
        "real gate on the parameter-free RMS-normalised input x / max(‖x‖, 1e-12) · √D",
    ),
    "cartesian-subnorm-silu": (
        replace(_BASE, gate="complex", gate_parametrization="cartesian", gate_granularity="head",
                sub_norm="layernorm", output_gate="silu"),
        "complex gate σ(|z|)·z/|z| per head, LayerNorm on the read-out, silu output gate (GateLoopedAttention)",
    ),
    "cartesian-rms-subnorm": (
        replace(_BASE, gate="complex", gate_parametrization="cartesian", input_norm="rms", sub_norm="layernorm"),
        "complex cartesian gate per key row, RMS-normalised input, LayerNorm on the read-out",
    ),
    "wide-real-head": (
        replace(_BASE, d_value=8, gate_granularity="head"),
        "d_value = 8, real gate per head: wide enough for a native kernel that keeps each head's state (linrec's "
        "serves d_value >= 8)",
    ),
    "wide-complex": (
        replace(_BASE, d_value=8, gate="complex"),
        "d_value = 8, complex gate per key row: a native kernel's complex state, its conjugated gradients",
    ),
}
#: Variants run on every path; the others on parallel-auto and method="chunked" only (keeps compile time down).
FULL_PATH_VARIANTS = ("real", "complex")
GRAD_VARIANTS = tuple(VARIANTS)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Problem:
    """Parameters, input and initial state of one case, already rounded to ``dtype``."""

    config: GateLoopMHConfig
    params: dict[str, np.ndarray]
    x: np.ndarray
    initial_state: np.ndarray | None
    dtype: str

    def ref_params(self) -> dict[str, np.ndarray]:
        return {k: to_reference_precision(v) for k, v in self.params.items()}

    def reference(self, x: np.ndarray | None = None, initial_state=..., lengths: np.ndarray | None = None):
        """The float64 reference ``(y, final S)`` on the (rounded) inputs, or on a replacement ``x`` /
        ``initial_state`` (an array ``(B, H, K, V)``), right-padded by ``lengths`` when given."""
        h0 = self.initial_state if initial_state is ... else initial_state
        y, final = spec.forward(self.ref_params(), to_reference_precision(self.x if x is None else x), self.config,
                                None if h0 is None else State(to_reference_precision(h0)), lengths=lengths)
        return y, final.h


def _draw_params(config: GateLoopMHConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random parameters at initialiser scale; gate biases around +1 (decays ≈ 0.7), other biases nonzero."""
    out = {}
    for name, shape in spec.param_shapes(config).items():
        if name.endswith(".kernel"):
            out[name] = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name in ("a_proj.bias", "a_mag_proj.bias", "a_re_proj.bias"):
            out[name] = 1.0 + 0.5 * rng.standard_normal(shape)
        elif name == "sub_norm.scale":
            out[name] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            out[name] = 0.5 * rng.standard_normal(shape)
    return out


def _state_dtype(config: GateLoopMHConfig, dtype: str) -> str:
    return spec.state_dtype(config, dtype)


def _draw_state(config: GateLoopMHConfig, rng: np.random.Generator, batch: int) -> np.ndarray:
    shape = spec.state_shape(config, batch)
    s = 0.5 * rng.standard_normal(shape)
    return s + 0.5j * rng.standard_normal(shape) if config.is_complex else s


def make_problem(
    config: GateLoopMHConfig, dtype: str, seed: int, *, batch: int = BATCH, length: int = LENGTH,
    with_initial_state: bool = True,
) -> Problem:
    rng = np.random.default_rng(seed)
    params = _draw_params(config, rng)
    x = rng.standard_normal((batch, length, config.d_model))
    s0 = _draw_state(config, rng, batch)
    return Problem(
        config=config,
        params={k: rounded(v, dtype) for k, v in params.items()},
        x=rounded(x, dtype),
        initial_state=rounded(s0, _state_dtype(config, dtype)) if with_initial_state else None,
        dtype=dtype,
    )


def _out_dtype(config: GateLoopMHConfig, dtype: str) -> str:
    """The dtype tolerances are looked up for (complex rows for complex outputs/states)."""
    return _state_dtype(config, dtype) if config.is_complex else dtype


# ---------------------------------------------------------------------------------------------
# Running the backend


AUTO = Path("parallel-auto", "parallel")
SEQUENTIAL_MODE = Path("mode-sequential", "sequential")


def _chunked_path(size: int = CHUNK) -> Path:
    """The memory-lean path (``gateloop_mh.md`` §6): ``mode="parallel", method="chunked"`` with chunks of ``size``."""
    return Path(f"method-chunked-{size}", "parallel", "chunked", size)


def _kernel_paths(backend: ModuleType) -> list[Path]:
    """``method="triton"`` (the fused outer-product kernel, ``backends/torch/triton_gateloop_mh.py``) where the
    backend lists it: its own backward, so it gets the gradient and padding cases too."""
    return [Path("parallel-triton", "parallel", "triton")] if "triton" in _methods(backend) else []


def _methods(backend: ModuleType) -> list[str]:
    return [m for m in getattr(backend, "METHODS", ("sequential", "associative", "chunked")) if m != "log"]


def _paths(backend: ModuleType, variant: str, dtype: str) -> list[Path]:
    """Every path in float64 (tight tolerance: the logic); the default paths of each mode in float32 (dtypes)."""
    default = [AUTO, _chunked_path(), SEQUENTIAL_MODE]
    if variant not in FULL_PATH_VARIANTS:
        return default[:2]
    if dtype != "float64":
        return default
    parallel = [Path(f"parallel-{m}", "parallel", m) for m in _methods(backend) if m != "chunked"]
    return [*default, *parallel]


def _call(backend: ModuleType, prob: Problem, path: Path = AUTO, *, x=None, initial_state=..., config=None,
          params=None, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The backend's layer (``initial_state``: an array wrapped in a ``State``) → ``(y, final_state.h)``."""
    h0 = prob.initial_state if initial_state is ... else initial_state
    kw = {} if lengths is None else {"lengths": backend.asarray(lengths)}
    y, s = getattr(backend, LAYER)(
        backend_params(backend, prob.params if params is None else params),
        backend.asarray(prob.x if x is None else x),
        config=config or prob.config, initial_state=None if h0 is None else State(as_backend(backend, h0)),
        mode=path.mode, method=path.method, chunk_size=path.chunk_size, **kw,
    )
    if not isinstance(s, State):
        raise CaseFailure(f"{LAYER} returned final_state of type {type(s).__name__}, expected State")
    return as_numpy(backend, y), as_numpy(backend, s.h)


def _steps(backend: ModuleType, prob: Problem, x: np.ndarray, state) -> tuple[np.ndarray, np.ndarray]:
    step = getattr(backend, f"{LAYER}_step")
    params = backend_params(backend, prob.params)
    state = None if state is None else State(as_backend(backend, state))
    ys = []
    for t in range(x.shape[1]):
        y_t, state = step(params, backend.asarray(np.ascontiguousarray(x[:, t])), state, config=prob.config)
        ys.append(as_numpy(backend, y_t))
    return np.stack(ys, axis=1), as_numpy(backend, state.h)


def _compare_pair(label: str, got: tuple, want: tuple, prob: Problem) -> Outcome:
    dtype = _out_dtype(prob.config, prob.dtype)
    return compare_many([
        compare(f"{label} y", got[0], want[0], dtype, grad=True),
        compare(f"{label} final_state", got[1], want[1], dtype, grad=True),
    ])


# ---------------------------------------------------------------------------------------------
# Value cases


def _equals_reference(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed(variant, dtype))
    return _compare_pair(path.label, _call(backend, prob, path), prob.reference(), prob)


def _chunk_sizes(backend: ModuleType, size: int, dtype: str) -> Outcome:
    prob = make_problem(_BASE, dtype, case_seed("chunk-size", dtype))
    chunked = _call(backend, prob, _chunked_path(size))
    return compare_many([
        _compare_pair(f"chunk {size} vs reference", chunked, prob.reference(), prob),
        _compare_pair(f"chunk {size} vs parallel", chunked, _call(backend, prob, AUTO), prob),
    ])


def _step_equals_full(backend: ModuleType, variant: str, dtype: str) -> Outcome:
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed("step", variant, dtype))
    return _compare_pair("step loop vs full pass", _steps(backend, prob, prob.x, prob.initial_state),
                         _call(backend, prob), prob)


def _prefill_then_step(backend: ModuleType, variant: str, dtype: str, k: int = 4) -> Outcome:
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed("prefill", variant, dtype))
    y1, state = _call(backend, prob, x=np.ascontiguousarray(prob.x[:, :k]))
    y2, final = _steps(backend, prob, prob.x[:, k:], state)
    return _compare_pair("prefill + steps vs full pass", (np.concatenate([y1, y2], 1), final), prob.reference(),
                         prob)


def _split_invariance(backend: ModuleType, variant: str, path: Path, k: int, dtype: str) -> Outcome:
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed("split", variant, dtype))
    y1, state = _call(backend, prob, path, x=np.ascontiguousarray(prob.x[:, :k]))
    y2, final = _call(backend, prob, path, x=np.ascontiguousarray(prob.x[:, k:]), initial_state=state)
    return _compare_pair(f"split at {k}", (np.concatenate([y1, y2], 1), final), prob.reference(), prob)


def _none_equals_zeros(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    config = VARIANTS[variant][0]
    prob = make_problem(config, dtype, case_seed("zeros", variant, dtype), with_initial_state=False)
    zeros = np.zeros(spec.state_shape(config, BATCH), _state_dtype(config, dtype))
    got = _call(backend, prob, path)
    same = _call(backend, prob, path, initial_state=zeros)
    return compare_many([_compare_pair("None vs zeros", got, same, prob),
                         _compare_pair("None vs reference", got, prob.reference(), prob)])


def _empty_sequence(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed("empty", variant, dtype), length=0)
    y, s = _call(backend, prob, path)
    if y.shape != (BATCH, 0, D_MODEL):
        return Outcome(False, detail=f"y has shape {y.shape}, expected {(BATCH, 0, D_MODEL)}")
    return compare("final_state", s, to_reference_precision(prob.initial_state), _out_dtype(prob.config, dtype))


def _initial_state_fn(backend: ModuleType, variant: str, dtype: str) -> Outcome:
    config = VARIANTS[variant][0]
    state = getattr(backend, f"{LAYER}_initial_state")(config, BATCH, dtype)
    if not isinstance(state, State) or state.position is not None:
        return Outcome(False, detail=f"got {type(state).__name__}, want State(h=(B, H, K, V), position=None)")
    s = as_numpy(backend, state.h)
    shape, want = spec.state_shape(config, BATCH), spec.state_dtype(config, dtype)
    if s.shape != shape or s.dtype.name != want or np.any(s != 0):
        return Outcome(False, detail=f"got shape {s.shape} dtype {s.dtype.name}; want zeros {shape} {want}")
    return Outcome(True, detail=f"zeros {shape} {want}")


PAD_LENGTHS = np.array([LENGTH, 3], np.int32)


def _padding(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    """Each padded row equals that row run alone on its real inputs (the reference's definition); pads give 0."""
    prob = make_problem(VARIANTS[variant][0], dtype, case_seed("padding", variant, dtype))
    y, s = _call(backend, prob, path, lengths=PAD_LENGTHS)
    pads = np.concatenate([y[i, n:].ravel() for i, n in enumerate(PAD_LENGTHS)])
    if np.any(pads != 0):
        return Outcome(False, detail=f"outputs at padded positions are not zero (max |y| {np.abs(pads).max()})")
    return _compare_pair(f"{path.label} lengths={PAD_LENGTHS.tolist()}", (y, s), prob.reference(lengths=PAD_LENGTHS),
                         prob)


def _siso_reduction(backend: ModuleType, gate: str, path: Path, dtype: str) -> Outcome:
    """K = V = 1, H = D, out_proj = identity: the layer is ``q ⊙ linear_scan(a, k ⊙ v)`` over (B, T, D)."""
    config = GateLoopMHConfig(d_model=4, num_heads=4, d_key=1, d_value=1, gate=gate, chunk_size=CHUNK)
    prob = make_problem(config, dtype, case_seed("siso", gate, dtype))
    params = dict(prob.params, **{"out_proj.kernel": np.eye(4, dtype=prob.x.dtype),
                                  "out_proj.bias": np.zeros(4, prob.x.dtype)})
    prob = replace(prob, params=params)
    q, k, v, a = spec.project(prob.ref_params(), to_reference_precision(prob.x), config)
    flat = (BATCH, LENGTH, 4)
    a, kv, q = a.reshape(flat), (k * v).reshape(flat), q.reshape(flat)
    h0 = to_reference_precision(prob.initial_state).reshape(BATCH, 4)
    kv = kv.astype(a.dtype)
    h, final = reference.linear_scan(a, kv, initial_state=h0)
    want = (np.real(q * h), final.reshape(spec.state_shape(config, BATCH)))
    got = _call(backend, prob, path)
    out = [_compare_pair("layer vs elementwise reference scan", got, want, prob)]
    if hasattr(backend, "linear_scan"):  # the backend's own elementwise scan on the same projections
        sdt = _state_dtype(config, dtype)
        h_be, f_be = backend.linear_scan(backend.asarray(rounded(a, sdt)), backend.asarray(rounded(kv, sdt)),
                                         initial_state=backend.asarray(prob.initial_state.reshape(BATCH, 4)))
        elementwise = (np.real(rounded(q, dtype) * as_numpy(backend, h_be)),
                       as_numpy(backend, f_be).reshape(spec.state_shape(config, BATCH)))
        out.append(_compare_pair("layer vs backend elementwise scan", got, elementwise, prob))
    return compare_many(out)


# ---------------------------------------------------------------------------------------------
# Bad input


def _bad_input(backend: ModuleType, what: str) -> Outcome:
    prob = make_problem(_BASE, "float32", case_seed("bad", what))
    x, s0, params = prob.x, prob.initial_state, prob.params
    complex_prob = make_problem(VARIANTS["complex"][0], "float32", case_seed("bad-complex", what))
    checks: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
        "wrong-feature-size": (lambda: _call(backend, prob, x=np.zeros((BATCH, LENGTH, D_MODEL + 1), x.dtype)),
                               ValueError, "d_model"),
        "wrong-rank": (lambda: _call(backend, prob, x=x[0]), ValueError, "(B, T, d_model)"),
        "integer-input": (lambda: _call(backend, prob, x=x.astype(np.int32)), TypeError, "x"),
        "state-wrong-shape": (
            lambda: _call(backend, prob, initial_state=np.zeros((BATCH, HEADS, D_VALUE, D_KEY), s0.dtype)),
            ValueError, "initial_state"),
        "state-complex-for-real-gate": (lambda: _call(backend, prob, initial_state=s0.astype(np.complex64)),
                                        TypeError, "initial_state"),
        "state-real-for-complex-gate": (
            lambda: _call(backend, complex_prob, initial_state=complex_prob.initial_state.real.copy()),
            TypeError, "initial_state"),
        "state-wrong-precision": (lambda: _call(backend, prob, initial_state=s0.astype(np.float64)), TypeError,
                                  "initial_state"),
        "state-not-a-State": (
            lambda: getattr(backend, LAYER)(backend_params(backend, params), backend.asarray(x), config=_BASE,
                                            initial_state=backend.asarray(s0)),
            TypeError, "initial_state"),
        "lengths-out-of-range": (lambda: _call(backend, prob, lengths=np.array([LENGTH + 1, 1], np.int32)),
                                 ValueError, "lengths"),
        "lengths-float": (lambda: _call(backend, prob, lengths=np.array([2.0, 1.0], np.float32)), TypeError,
                          "lengths"),
        "step-state-wrong-shape": (
            lambda: getattr(backend, f"{LAYER}_step")(
                backend_params(backend, params), backend.asarray(x[:, 0]),
                State(backend.asarray(np.zeros((BATCH + 1, HEADS, D_KEY, D_VALUE), x.dtype))), config=_BASE),
            ValueError, "state"),
        "step-wrong-feature-size": (
            lambda: getattr(backend, f"{LAYER}_step")(
                backend_params(backend, params), backend.asarray(x[:, 0, :-1]), None, config=_BASE),
            ValueError, "x_t"),
        "unknown-mode": (lambda: _call(backend, prob, Path("bogus", "bogus")), ValueError, "mode"),
        "unknown-method": (lambda: _call(backend, prob, Path("bogus", "parallel", "bogus")), ValueError, "method"),
        "log-method": (lambda: _call(backend, prob, Path("log", "parallel", "log")), ValueError, "associative"),
        "method-with-sequential-mode": (
            lambda: _call(backend, prob, Path("associative", "sequential", "associative")),
            ValueError, "mode='parallel'"),
        "mode-chunked-refused": (lambda: _call(backend, prob, Path("mc", "chunked", "auto")), ValueError,
                                 "method='chunked'"),
        "chunk-size-without-chunked-method": (lambda: _call(backend, prob, Path("c4", "parallel", "associative", 4)),
                                              ValueError, "chunk_size"),
        "chunk-size-zero": (lambda: _call(backend, prob, Path("c0", "parallel", "chunked", 0)), ValueError,
                            "chunk_size"),
        "missing-param": (lambda: _call(backend, prob, params={k: v for k, v in params.items()
                                                                if k != "out_proj.bias"}),
                          ValueError, "out_proj.bias"),
        "param-wrong-shape": (
            lambda: _call(backend, prob, params=dict(params, **{"q_proj.kernel": params["q_proj.kernel"][:, :-1]})),
            ValueError, "q_proj.kernel"),
        "real-gate-params-for-complex-config": (
            lambda: _call(backend, prob, config=VARIANTS["complex"][0]), ValueError, "a_mag_proj"),
    }
    if what not in checks:
        raise CaseFailure(f"unknown bad-input case {what!r}")
    fn, error, mention = checks[what]
    return expect_error(fn, error, mention)


BAD_INPUTS = (
    "wrong-feature-size", "wrong-rank", "integer-input", "state-wrong-shape", "state-complex-for-real-gate",
    "state-real-for-complex-gate", "state-wrong-precision", "state-not-a-State", "lengths-out-of-range",
    "lengths-float", "step-state-wrong-shape", "step-wrong-feature-size",
    "unknown-mode", "unknown-method", "log-method", "method-with-sequential-mode", "chunk-size-zero",
    "mode-chunked-refused", "chunk-size-without-chunked-method",
    "missing-param", "param-wrong-shape", "real-gate-params-for-complex-config",
)


def _bad_config(_backend: ModuleType, field: str) -> Outcome:
    bad = {"gate": {"gate": "imaginary"}, "gate_granularity": {"gate_granularity": "value"},
           "complex_output": {"complex_output": "imag"}, "d_key": {"d_model": 5, "num_heads": 2},
           "chunk_size": {"chunk_size": 0}, "num_heads": {"num_heads": 0},
           "input_norm": {"input_norm": "layer"}, "sub_norm": {"sub_norm": "rms"},
           "output_gate": {"output_gate": "sigmoid"}, "gate_parametrization": {"gate_parametrization": "polar"}}[field]
    kwargs = {"d_model": D_MODEL, **bad}
    return expect_error(lambda: GateLoopMHConfig(**kwargs), ValueError, field)


# ---------------------------------------------------------------------------------------------
# Gradients


def _gradient(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    config = VARIANTS[variant][0]
    prob = make_problem(config, dtype, case_seed("grad", variant, dtype), length=GRAD_LENGTH)
    rng = np.random.default_rng(case_seed("grad-cotangent", variant, dtype))
    out_dtype = _out_dtype(config, dtype) if config.complex_output == "complex" else dtype
    ct_y = rng.standard_normal((BATCH, GRAD_LENGTH, D_MODEL))
    ct_y = rounded(ct_y + 1j * rng.standard_normal(ct_y.shape) if config.complex_output == "complex"
                   and config.is_complex else ct_y, out_dtype)
    ct_s = rounded(_draw_state(config, rng, BATCH), _state_dtype(config, dtype))
    names = sorted(prob.params)
    layer = getattr(backend, LAYER)

    def fn(*arrays):
        y, final = layer(dict(zip(names, arrays[:-2])), arrays[-2], config=config, initial_state=State(arrays[-1]),
                         mode=path.mode, method=path.method, chunk_size=path.chunk_size)
        return y, final.h

    primals = (*(backend.asarray(prob.params[k]) for k in names), backend.asarray(prob.x),
               backend.asarray(prob.initial_state))
    got = backend_vjp(backend)(fn, primals, (backend.asarray(ct_y), backend.asarray(ct_s)))
    p_bar, x_bar, s_bar = spec.vjp(prob.ref_params(), to_reference_precision(prob.x), config,
                                   to_reference_precision(ct_y), to_reference_precision(ct_s),
                                   initial_state=State(to_reference_precision(prob.initial_state)))
    want = [*(p_bar[k] for k in names), x_bar, s_bar]
    labels = [*names, "x", "initial_state"]
    return compare_many([
        compare(f"d{label}", as_numpy(backend, g), w, _out_dtype(config, dtype) if label == "initial_state"
                else dtype, grad=True)
        for label, g, w in zip(labels, got, want)
    ])


def _grad_paths(variant: str, dtype: str, backend: ModuleType | None = None) -> list[Path]:
    """Each mode in float64 for the main variants (and the Pallas kernel's own VJP where the backend has it); the
    default path otherwise."""
    if variant not in FULL_PATH_VARIANTS or dtype != "float64":
        return [AUTO]
    kernels = [Path("parallel-pallas", "parallel", "pallas")] if backend and "pallas" in _methods(backend) else []
    return [AUTO, _chunked_path(), SEQUENTIAL_MODE, *kernels]


# ---------------------------------------------------------------------------------------------


def cases(backend: ModuleType) -> list[Case]:
    out: list[Case] = []
    req = (LAYER,)
    req_step = (LAYER, f"{LAYER}_step")

    def add(id_: str, prop: str, doc: str, fn: Callable[[ModuleType], Outcome], requires=req) -> None:
        out.append(Case(id=f"{LAYER}/{id_}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"{LAYER}/{id_}")))

    for variant, (_, doc) in VARIANTS.items():
        for dtype in DTYPES:
            for path in _paths(backend, variant, dtype):
                add(f"equals-reference/{variant}[{path.label},{dtype}]", "equals-reference",
                    f"{doc}: equals the float64 loop.",
                    lambda be, v=variant, p=path, d=dtype: _equals_reference(be, v, p, d))

    for size, dtype in ((1, "float64"), (2, "float64"), (16, "float64"), (2, "float32")):
        add(f"chunked/chunk-size-{size}[method-chunked,{dtype}]", "chunked-equals-parallel",
            f"method='chunked' with chunks of {size} steps (T={LENGTH}) equals the reference and one scan.",
            lambda be, s=size, d=dtype: _chunk_sizes(be, s, d))

    for variant in VARIANTS:
        for dtype in DTYPES:
            add(f"step-equals-full-pass/{variant}[step,{dtype}]", "step-equals-parallel",
                "Feeding the steps one at a time equals the full pass.",
                lambda be, v=variant, d=dtype: _step_equals_full(be, v, d), req_step)
            add(f"prefill-then-step/{variant}[step,{dtype}]", "prefill-then-step",
                "A full pass over the first 4 steps, then single steps, equals the reference.",
                lambda be, v=variant, d=dtype: _prefill_then_step(be, v, d), req_step)

    for variant in FULL_PATH_VARIANTS:
        for path in (AUTO, _chunked_path()):
            for k, dtype in ((0, "float64"), (3, "float64"), (LENGTH, "float64"), (3, "float32")):
                add(f"split-invariance/{variant}[k={k},{path.label},{dtype}]", "split-invariance",
                    "Two passes joined through the carried state S equal one pass.",
                    lambda be, v=variant, p=path, k=k, d=dtype: _split_invariance(be, v, p, k, d))
        for path in (AUTO, _chunked_path(), SEQUENTIAL_MODE):
            for dtype in DTYPES:
                add(f"initial-state/none-equals-zeros/{variant}[{path.label},{dtype}]", "none-equals-zeros",
                    "initial_state=None is exactly an explicit zero state.",
                    lambda be, v=variant, p=path, d=dtype: _none_equals_zeros(be, v, p, d))
                add(f"empty-sequence/{variant}[{path.label},{dtype}]", "empty-sequence",
                    "T = 0 returns y of shape (B, 0, d_model) and final_state = initial_state.",
                    lambda be, v=variant, p=path, d=dtype: _empty_sequence(be, v, p, d))
        for dtype in (*DTYPES, "bfloat16"):
            add(f"initial-state/function/{variant}[{dtype}]", "initial-state",
                "gateloop_mh_initial_state gives zeros (B, H, K, V) in the state dtype.",
                lambda be, v=variant, d=dtype: _initial_state_fn(be, v, d), (f"{LAYER}_initial_state",))

    for variant in FULL_PATH_VARIANTS:
        for path in (AUTO, _chunked_path(), SEQUENTIAL_MODE, *_kernel_paths(backend)):
            for dtype in DTYPES:
                add(f"padding/{variant}[{path.label},{dtype}]", "padding",
                    "right padding (lengths): each row equals that row alone on its real inputs, outputs at pads "
                    "are zero, final_state is S after the last real input (a = 1, k ⊗ v = 0 inside the scan).",
                    lambda be, v=variant, p=path, d=dtype: _padding(be, v, p, d))

    for gate in ("real", "complex"):
        for path, dtype in ((AUTO, "float64"), (SEQUENTIAL_MODE, "float64"), (AUTO, "float32")):
            add(f"siso-reduction/{gate}[{path.label},{dtype}]", "siso-reduction",
                "d_key = d_value = 1 with H = D heads is the elementwise scan q ⊙ linear_scan(a, k ⊙ v).",
                lambda be, g=gate, p=path, d=dtype: _siso_reduction(be, g, p, d))

    for what in BAD_INPUTS:
        add(f"bad-input/{what}[float32]", "bad-input", f"{what.replace('-', ' ')} raises a clear error.",
            lambda be, w=what: _bad_input(be, w), req_step if what.startswith("step") else req)
    for field in ("gate", "gate_granularity", "complex_output", "d_key", "chunk_size", "num_heads", "input_norm",
                  "sub_norm", "output_gate", "gate_parametrization"):
        add(f"bad-config/{field}", "bad-input", f"an invalid GateLoopMHConfig.{field} raises ValueError naming it.",
            lambda be, f=field: _bad_config(be, f), ())

    for variant in GRAD_VARIANTS:
        for dtype in DTYPES:
            kernel = _kernel_paths(backend) if dtype == "float64" else []
            for path in (*_grad_paths(variant, dtype, backend), *kernel):
                add(f"gradient/{variant}[{path.label},{dtype}]", "gradient",
                    "VJP w.r.t. every parameter, x and initial_state (cotangents on y and final_state) equals "
                    "the reference's analytic VJP.",
                    lambda be, v=variant, p=path, d=dtype: _gradient(be, v, p, d), (LAYER, "vjp"))
    return out
