"""Conformance cases for the GatedLinearRNN / GateLoop layer (``spec/gated_linear_rnn.md`` §9).

Every case draws its inputs in NumPy from a fixed seed, rounds them to the case dtype, runs the
backend's pure functions (``gated_linear_rnn``, ``gated_linear_rnn_step``,
``gated_linear_rnn_initial_state``) and judges the result against the float64 NumPy reference
(``linrec.spec.gated_linear_rnn.forward``) run on the same rounded numbers upcast.

Gradients are checked against the reference differentiated by **complex step**
(``dL/dθ = Im L(θ + iε) / ε``, ``ε = 1e-20``): no subtractive cancellation, so the reference gradient
is exact to float64 rounding and float64 backends are held to the float64 table. The
variants used for gradients only use activations with a complex extension (not ``gelu_exact``).

Layer outputs pass through two projections and three activations, so outputs and states use
``tolerance_for(dtype, grad=True)`` (the §9 table ×10), and so do gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, CaseFailure, Outcome, log_method_of
from linrec.conformance.compare import as_numpy, compare, compare_many, to_reference_precision
from linrec.conformance.inputs import rounded
from linrec.conformance.layer_harness import (
    Path,
    backend_params,
    backend_vjp,
    case_seed,
    complex_step_grads,
    expect_error,
)
from linrec.spec import gated_linear_rnn as spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig
from linrec.spec.state import State

__all__ = ["GRAD_VARIANTS", "VARIANTS", "cases"]

LAYER = "gated_linear_rnn"
DTYPES = ("float32", "float64")
#: Sizes of the value cases and (smaller) of the gradient cases.
BATCH, LENGTH, D_IN, D_H, D_MODEL = 2, 7, 3, 4, 5
GRAD_SIZES = dict(batch=2, length=4, d_in=2, d_h=3, d_model=2)
#: ``method="chunked"`` runs with chunks this long so that T = 7 crosses chunk boundaries.
CHUNK = 3

_BASE = GatedLinearRNNConfig(d_model=D_MODEL, d_h=D_H, d_in=D_IN)

#: name -> (config, one-line doc). The activation variants together use every name of ``ACTIVATIONS``.
VARIANTS: dict[str, tuple[GatedLinearRNNConfig, str]] = {
    "tied": (_BASE, "defaults: tied gates f = 1 - i, tanh / tanh / sigmoid"),
    "untied": (replace(_BASE, use_tied_gates=False), "separate forget gate: blocks [input | i | f | o]"),
    "reversed": (replace(_BASE, reversed=True), "GateLoop reversed=True: the recurrence runs from t = T-1 to 0"),
    "act-gelu-silu": (
        replace(_BASE, input_activation="gelu", hidden_activation="silu"),
        "input gelu (tanh approximation), hidden silu",
    ),
    "act-identity-gelu_exact": (
        replace(_BASE, input_activation="identity", hidden_activation="gelu_exact"),
        "linear candidate, hidden gelu_exact (erf)",
    ),
    "act-relu-softplus-tanh-untied": (
        replace(_BASE, input_activation="relu", hidden_activation="softplus", gate_activation="tanh",
                use_tied_gates=False),
        "gates through tanh: a forget gate in (-1, 1) flips the sign of the state",
    ),
    "true-recurrence-tied": (
        replace(_BASE, use_true_recurrence=True),
        "use_true_recurrence: r_t = h_{t-1} W_r added to every pre-activation (random nonzero W_r)",
    ),
    "true-recurrence-untied": (
        replace(_BASE, use_true_recurrence=True, use_tied_gates=False),
        "true recurrence with a separate forget gate",
    ),
    "true-recurrence-reversed": (
        replace(_BASE, use_true_recurrence=True, reversed=True),
        "true recurrence run from t = T-1 to 0",
    ),
}
#: Variants whose gradients are checked (complex-step friendly activations only).
GRAD_VARIANTS = (
    "tied", "untied", "reversed", "act-gelu-silu",
    "true-recurrence-tied", "true-recurrence-untied", "true-recurrence-reversed",
)
#: Variants run through every path (every scan method and the sequential mode). The other variants and the
#: other laws use two paths (``_few_paths``): the scan methods themselves are the scan cases' business.
ALL_PATH_VARIANTS = ("tied", "reversed")
#: Variants for the step / prefill / split laws: both directions, with and without true recurrence.
STATEFUL_VARIANTS = ("tied", "reversed", "true-recurrence-reversed")


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Problem:
    """Parameters, input and initial state of one case, already rounded to ``dtype``."""

    config: GatedLinearRNNConfig
    params: dict[str, np.ndarray]
    x: np.ndarray
    initial_state: np.ndarray | None
    dtype: str

    def reference(self, x: np.ndarray | None = None, initial_state=..., lengths: np.ndarray | None = None):
        """The float64 reference ``(y, final h)`` on the (rounded) inputs, or on a replacement ``x`` /
        ``initial_state`` (an array ``(B, H)``), right-padded by ``lengths`` when given."""
        h0 = self.initial_state if initial_state is ... else initial_state
        params = {k: to_reference_precision(v) for k, v in self.params.items()}
        y, final = spec.forward(params, to_reference_precision(self.x if x is None else x), self.config,
                                None if h0 is None else State(to_reference_precision(h0)), lengths=lengths)
        return y, final.h


def _draw_params(config: GatedLinearRNNConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random parameters at initialiser scale, with nonzero biases and (if present) a nonzero W_r."""
    out = {}
    for name, shape in spec.param_shapes(config).items():
        if name == "recurrent_proj.kernel":
            out[name] = rng.standard_normal(shape) * (0.5 / np.sqrt(shape[0]))
        elif name.endswith(".kernel"):
            out[name] = rng.standard_normal(shape) / np.sqrt(shape[0])
        else:
            out[name] = rng.standard_normal(shape) * 0.5
    return out


def make_problem(
    config: GatedLinearRNNConfig, dtype: str, seed: int, *, batch: int = BATCH, length: int = LENGTH,
    with_initial_state: bool = True, positive_state: bool = False,
) -> Problem:
    rng = np.random.default_rng(seed)
    params = _draw_params(config, rng)
    x = rng.standard_normal((batch, length, config.d_in))
    h0 = rng.uniform(0.1, 1.0, (batch, config.d_h)) if positive_state else rng.standard_normal((batch, config.d_h))
    return Problem(
        config=config,
        params={k: rounded(v, dtype) for k, v in params.items()},
        x=rounded(x, dtype),
        initial_state=rounded(h0 * 0.5, dtype) if with_initial_state else None,
        dtype=dtype,
    )


def _grad_config(config: GatedLinearRNNConfig) -> GatedLinearRNNConfig:
    s = GRAD_SIZES
    return replace(config, d_in=s["d_in"], d_h=s["d_h"], d_model=s["d_model"])


# ---------------------------------------------------------------------------------------------
# Running the backend


SEQUENTIAL_MODE = Path("mode-sequential", "sequential")


def _parallel_paths(backend: ModuleType) -> list[Path]:
    methods = [m for m in getattr(backend, "METHODS", ("auto",)) if m != "log"]
    return [Path(m, "parallel", m, CHUNK if m == "chunked" else None) for m in methods]


def _paths(backend: ModuleType, config: GatedLinearRNNConfig) -> list[Path]:
    if config.use_true_recurrence:
        return [SEQUENTIAL_MODE]
    return [*_parallel_paths(backend), SEQUENTIAL_MODE]


def _few_paths(backend: ModuleType, config: GatedLinearRNNConfig) -> list[Path]:
    """One parallel path (``associative`` when offered) and the sequential mode: for the cases about the layer's
    own maths (activations, gradients), where every scan method is already covered by the ``tied`` variant."""
    if config.use_true_recurrence:
        return [SEQUENTIAL_MODE]
    parallel = _parallel_paths(backend)
    pick = [p for p in parallel if p.method == "associative"] or parallel[:1]
    return [*pick, SEQUENTIAL_MODE]


def _call(backend: ModuleType, prob: Problem, path: Path | None = None, *, x=None, initial_state=..., config=None,
          params=None, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The backend's layer on ``prob`` (``initial_state``: an array ``(B, H)`` wrapped in a ``State``) →
    ``(y, final_state.h)`` as NumPy; the returned state must be a ``State``."""
    path = path or Path("auto", "auto")
    h0 = prob.initial_state if initial_state is ... else initial_state
    kw = {} if lengths is None else {"lengths": backend.asarray(lengths)}
    y, final = getattr(backend, LAYER)(
        backend_params(backend, prob.params if params is None else params),
        backend.asarray(prob.x if x is None else x),
        config=config or prob.config, initial_state=None if h0 is None else State(backend.asarray(h0)),
        mode=path.mode, method=path.method, chunk_size=path.chunk_size, **kw,
    )
    if not isinstance(final, State):
        raise CaseFailure(f"{LAYER} returned final_state of type {type(final).__name__}, expected State")
    return as_numpy(backend, y), as_numpy(backend, final.h)


def _steps(backend: ModuleType, prob: Problem, x: np.ndarray, state) -> tuple[np.ndarray, np.ndarray]:
    """Feed ``x`` one step at a time in processing order (from the end when reversed); ``state``: ``(B, H)``."""
    step = getattr(backend, f"{LAYER}_step")
    params = backend_params(backend, prob.params)
    order = range(x.shape[1] - 1, -1, -1) if prob.config.reversed else range(x.shape[1])
    ys: dict[int, np.ndarray] = {}
    state = None if state is None else State(backend.asarray(state))
    for t in order:
        y_t, state = step(params, backend.asarray(np.ascontiguousarray(x[:, t])), state, config=prob.config)
        ys[t] = as_numpy(backend, y_t)
    y = np.stack([ys[t] for t in range(x.shape[1])], axis=1) if ys else np.zeros((x.shape[0], 0, prob.config.d_model))
    return y, as_numpy(backend, state.h)


def _compare_pair(label: str, got: tuple, want: tuple, dtype: str, *, method: str | None = None) -> Outcome:
    return compare_many([
        compare(f"{label} y", got[0], want[0], dtype, grad=True, method=method, length=LENGTH),
        compare(f"{label} final_state", got[1], want[1], dtype, grad=True, method=method, length=LENGTH),
    ])


# ---------------------------------------------------------------------------------------------
# Value cases


def _check_dtypes(y: np.ndarray, h: np.ndarray, dtype: str) -> Outcome | None:
    """``y`` comes back in the dtype of ``x``, the state in the state dtype (float32 for bf16/f16)."""
    want = (dtype, spec.state_dtype(dtype))
    if (y.dtype.name, h.dtype.name) != want:
        return Outcome(False, detail=f"dtypes (y, final_state) = {(y.dtype.name, h.dtype.name)}, expected {want}")
    return None


def _equals_reference(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    config, _ = VARIANTS[variant]
    prob = make_problem(config, dtype, case_seed(variant, dtype))
    got = _call(backend, prob, path)
    return _check_dtypes(*got, dtype) or _compare_pair(path.label, got, prob.reference(), dtype)


def _zero_kernel_equals_parallel(backend: ModuleType, gates: str, path: Path, dtype: str) -> Outcome:
    config = replace(_BASE, use_tied_gates=gates == "tied")
    prob = make_problem(config, dtype, case_seed("zero-kernel", gates, dtype))
    parallel = _call(backend, prob, path)
    recurrent = replace(config, use_true_recurrence=True)
    params = dict(prob.params, **{"recurrent_proj.kernel": np.zeros((config.d_h, config.n_blocks * config.d_h),
                                                                      prob.x.dtype)})
    sequential = _call(backend, prob, SEQUENTIAL_MODE, config=recurrent, params=params)
    return _compare_pair("W_r = 0 sequential vs parallel", sequential, parallel, dtype)


def _parallel_refused(backend: ModuleType, method: str) -> Outcome:
    config, _ = VARIANTS["true-recurrence-tied"]
    prob = make_problem(config, "float32", case_seed("refused"))
    return expect_error(lambda: _call(backend, prob, Path(method, "parallel", method)), ValueError,
                         "mode='sequential'")


def _step_equals_full(backend: ModuleType, variant: str, dtype: str) -> Outcome:
    config, _ = VARIANTS[variant]
    prob = make_problem(config, dtype, case_seed("step", variant, dtype))
    return _compare_pair("step loop vs full pass", _steps(backend, prob, prob.x, prob.initial_state),
                         _call(backend, prob), dtype)


def _first_part(prob: Problem, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x`` after ``k`` steps *in processing order*: (processed first, processed second)."""
    x = prob.x
    if prob.config.reversed:
        return x[:, x.shape[1] - k :], x[:, : x.shape[1] - k]
    return x[:, :k], x[:, k:]


def _join(prob: Problem, y_first: np.ndarray, y_second: np.ndarray) -> np.ndarray:
    return np.concatenate([y_second, y_first] if prob.config.reversed else [y_first, y_second], axis=1)


def _prefill_then_step(backend: ModuleType, variant: str, dtype: str, k: int = 4) -> Outcome:
    config, _ = VARIANTS[variant]
    prob = make_problem(config, dtype, case_seed("prefill", variant, dtype))
    first, second = _first_part(prob, k)
    y1, state = _call(backend, prob, x=np.ascontiguousarray(first))
    y2, final = _steps(backend, prob, second, state)
    return _compare_pair("prefill + steps vs full pass", (_join(prob, y1, y2), final), _call(backend, prob), dtype)


def _split_invariance(backend: ModuleType, variant: str, k: int, dtype: str) -> Outcome:
    config, _ = VARIANTS[variant]
    prob = make_problem(config, dtype, case_seed("split", variant, dtype))
    first, second = _first_part(prob, k)
    y1, state = _call(backend, prob, x=np.ascontiguousarray(first))
    y2, final = _call(backend, prob, x=np.ascontiguousarray(second), initial_state=state)
    return _compare_pair(f"split at {k}", (_join(prob, y1, y2), final), _call(backend, prob), dtype)


def _none_equals_zeros(backend: ModuleType, path: Path, dtype: str) -> Outcome:
    prob = make_problem(_BASE, dtype, case_seed("zeros", dtype), with_initial_state=False)
    zeros = np.zeros((BATCH, D_H), prob.x.dtype)
    return _compare_pair("None vs zeros", _call(backend, prob, path), _call(backend, prob, path, initial_state=zeros),
                         dtype)


def _empty_sequence(backend: ModuleType, path: Path, dtype: str) -> Outcome:
    config = _BASE if path.mode == "parallel" else VARIANTS["true-recurrence-tied"][0]
    prob = make_problem(config, dtype, case_seed("empty", dtype), length=0)
    y, h = _call(backend, prob, path)
    if y.shape != (BATCH, 0, D_MODEL):
        return Outcome(False, detail=f"y has shape {y.shape}, expected {(BATCH, 0, D_MODEL)}")
    return compare("final_state", h, to_reference_precision(prob.initial_state), dtype)


def _initial_state_fn(backend: ModuleType, dtype: str) -> Outcome:
    state = getattr(backend, f"{LAYER}_initial_state")(_BASE, BATCH, dtype)
    if not isinstance(state, State) or state.position is not None:
        return Outcome(False, detail=f"got {type(state).__name__}, want State(h=(B, d_h), position=None)")
    h = as_numpy(backend, state.h)
    want = spec.state_dtype(dtype)
    if h.shape != (BATCH, D_H) or h.dtype.name != want or np.any(h != 0):
        return Outcome(False, detail=f"got shape {h.shape} dtype {h.dtype.name}; want zeros {(BATCH, D_H)} {want}")
    return Outcome(True, detail="State(h=zeros (B, d_h))")


# ---------------------------------------------------------------------------------------------
# Right padding (recurrence.md §0): identity steps inside the one scan


PAD_LENGTHS = np.array([LENGTH, 3], np.int32)


def _padding(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    """Each padded row equals that row run alone on its real inputs (the reference's definition); pads give 0."""
    config, _ = VARIANTS[variant]
    prob = make_problem(config, dtype, case_seed("padding", variant, dtype))
    y, h = _call(backend, prob, path, lengths=PAD_LENGTHS)
    want_y, want_h = prob.reference(lengths=PAD_LENGTHS)
    pads = np.concatenate([y[i, n:].ravel() for i, n in enumerate(PAD_LENGTHS)])
    if np.any(pads != 0):
        return Outcome(False, detail=f"outputs at padded positions are not zero (max |y| {np.abs(pads).max()})")
    return _compare_pair(f"{path.label} lengths={PAD_LENGTHS.tolist()}", (y, h), (want_y, want_h), dtype)


# ---------------------------------------------------------------------------------------------
# The log-space scan: allowed where a = f > 0, b = i * candidate > 0 and h_0 > 0, refused elsewhere


_LOG_CONFIG = replace(_BASE, input_activation="sigmoid")


def _log_equals_reference(backend: ModuleType, dtype: str) -> Outcome:
    prob = make_problem(_LOG_CONFIG, dtype, case_seed("log", dtype), positive_state=True)
    return _compare_pair("log", _call(backend, prob, Path("log", "parallel", "log")), prob.reference(), dtype,
                         method="log")


def _log_refused(backend: ModuleType, what: str) -> Outcome:
    if what == "negative-candidate":
        prob = make_problem(_BASE, "float32", case_seed("log-refused", what), positive_state=True)
    else:
        prob = make_problem(_LOG_CONFIG, "float32", case_seed("log-refused", what))
        prob = replace(prob, initial_state=-np.abs(prob.initial_state) - 0.1)
    return expect_error(lambda: _call(backend, prob, Path("log", "parallel", "log")), ValueError, "method=")


# ---------------------------------------------------------------------------------------------
# Bad input


def _bad_input(backend: ModuleType, what: str) -> Outcome:
    prob = make_problem(_BASE, "float32", case_seed("bad", what))
    x, h0, params = prob.x, prob.initial_state, prob.params
    if what == "wrong-feature-size":
        return expect_error(lambda: _call(backend, prob, x=np.zeros((BATCH, LENGTH, D_IN + 1), x.dtype)),
                             ValueError, "d_in")
    if what == "wrong-rank":
        return expect_error(lambda: _call(backend, prob, x=x[0]), ValueError, "(B, T, d_in)")
    if what == "integer-input":
        return expect_error(lambda: _call(backend, prob, x=x.astype(np.int32)), TypeError, "x")
    if what == "state-wrong-shape":
        return expect_error(lambda: _call(backend, prob, initial_state=np.zeros((BATCH, D_H + 1), x.dtype)),
                             ValueError, "initial_state")
    if what == "state-not-a-State":
        return expect_error(
            lambda: getattr(backend, LAYER)(backend_params(backend, params), backend.asarray(x), config=_BASE,
                                            initial_state=backend.asarray(h0)),
            TypeError, "initial_state")
    if what == "lengths-with-log":
        log = make_problem(_LOG_CONFIG, "float32", case_seed("bad", what), positive_state=True)
        return expect_error(lambda: _call(backend, log, Path("log", "parallel", "log"), lengths=PAD_LENGTHS),
                             ValueError, "chunked")
    if what == "lengths-out-of-range":
        return expect_error(lambda: _call(backend, prob, lengths=np.array([LENGTH + 1, 1], np.int32)), ValueError,
                             "lengths")
    if what == "lengths-float":
        return expect_error(lambda: _call(backend, prob, lengths=np.array([2.0, 1.0], np.float32)), TypeError,
                             "lengths")
    if what == "state-wrong-dtype":
        return expect_error(lambda: _call(backend, prob, initial_state=h0.astype(np.float64)), TypeError,
                             "initial_state")
    if what == "step-state-wrong-shape":
        step = getattr(backend, f"{LAYER}_step")
        return expect_error(
            lambda: step(backend_params(backend, params), backend.asarray(x[:, 0]),
                         State(backend.asarray(np.zeros((BATCH + 1, D_H), x.dtype))), config=_BASE),
            ValueError, "state")
    if what == "unknown-mode":
        return expect_error(lambda: _call(backend, prob, Path("bogus", "bogus")), ValueError, "mode")
    if what == "unknown-method":
        return expect_error(lambda: _call(backend, prob, Path("bogus", "parallel", "bogus")), ValueError, "method")
    if what == "method-with-sequential-mode":
        return expect_error(lambda: _call(backend, prob, Path("associative", "sequential", "associative")),
                             ValueError, "mode='parallel'")
    if what == "missing-param":
        short = {k: v for k, v in params.items() if k != "out_proj.bias"}
        return expect_error(lambda: _call(backend, prob, params=short), ValueError, "out_proj.bias")
    if what == "param-wrong-shape":
        bad = dict(params, **{"proj.kernel": params["proj.kernel"][:, :-1]})
        return expect_error(lambda: _call(backend, prob, params=bad), ValueError, "proj.kernel")
    if what == "recurrent-kernel-without-true-recurrence":
        extra = dict(params, **{"recurrent_proj.kernel": np.zeros((D_H, 3 * D_H), x.dtype)})
        return expect_error(lambda: _call(backend, prob, params=extra), ValueError, "use_true_recurrence")
    raise CaseFailure(f"unknown bad-input case {what!r}")


BAD_INPUTS = (
    "wrong-feature-size", "wrong-rank", "integer-input", "state-wrong-shape", "state-wrong-dtype",
    "state-not-a-State", "lengths-out-of-range", "lengths-float", "step-state-wrong-shape", "unknown-mode",
    "unknown-method", "method-with-sequential-mode", "missing-param",
    "param-wrong-shape", "recurrent-kernel-without-true-recurrence",
)


# ---------------------------------------------------------------------------------------------
# Gradients


def _complex_step_grads(prob: Problem, names: list[str], ct_y: np.ndarray, ct_h: np.ndarray) -> list[np.ndarray]:
    """d/d(each primal) of ``sum(ct_y * y) + sum(ct_h * final_state)`` of the reference, by complex step."""
    base = [to_reference_precision(prob.params[k]) for k in names]
    base += [to_reference_precision(prob.x), to_reference_precision(prob.initial_state)]

    def loss(arrays: list[np.ndarray]) -> complex:
        y, final = spec.forward(dict(zip(names, arrays[:-2])), arrays[-2], prob.config, State(arrays[-1]))
        return np.sum(ct_y * y) + np.sum(ct_h * final.h)

    return complex_step_grads(loss, base)


def _gradient(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    config = _grad_config(VARIANTS[variant][0])
    s = GRAD_SIZES
    prob = make_problem(config, dtype, case_seed("grad", variant, dtype), batch=s["batch"], length=s["length"])
    rng = np.random.default_rng(case_seed("grad-cotangent", variant, dtype))
    ct_y = rounded(rng.standard_normal((s["batch"], s["length"], config.d_model)), dtype)
    ct_h = rounded(rng.standard_normal((s["batch"], config.d_h)), dtype)
    names = sorted(prob.params)
    fn_layer = getattr(backend, LAYER)

    def fn(*arrays):
        y, final = fn_layer(dict(zip(names, arrays[:-2])), arrays[-2], config=config,
                            initial_state=State(arrays[-1]), mode=path.mode, method=path.method,
                            chunk_size=path.chunk_size)
        return y, final.h

    primals = [backend.asarray(prob.params[k]) for k in names] + [backend.asarray(prob.x),
                                                                   backend.asarray(prob.initial_state)]
    got = backend_vjp(backend)(fn, tuple(primals), (backend.asarray(ct_y), backend.asarray(ct_h)))
    want = _complex_step_grads(prob, names, to_reference_precision(ct_y), to_reference_precision(ct_h))
    labels = [*names, "x", "initial_state"]
    return compare_many([
        compare(f"d{label}", as_numpy(backend, g), w, dtype, grad=True) for label, g, w in zip(labels, got, want)
    ])


# ---------------------------------------------------------------------------------------------


def cases(backend: ModuleType) -> list[Case]:
    out: list[Case] = []
    req = (LAYER,)
    req_step = (LAYER, f"{LAYER}_step")

    def add(id_: str, prop: str, doc: str, fn: Callable[[ModuleType], Outcome], requires=req) -> None:
        out.append(Case(id=f"{LAYER}/{id_}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"{LAYER}/{id_}")))

    for variant, (config, doc) in VARIANTS.items():
        paths = _paths(backend, config) if variant in ALL_PATH_VARIANTS else _few_paths(backend, config)
        if variant.startswith("act-"):
            paths = paths[:1]  # both modes share the activation code, which tied[mode-sequential] runs
        for path in paths:
            for dtype in DTYPES:
                add(f"equals-reference/{variant}[{path.label},{dtype}]", "equals-reference",
                    f"{doc}: equals the float64 loop.",
                    lambda be, v=variant, p=path, d=dtype: _equals_reference(be, v, p, d))

    for path in _few_paths(backend, _BASE):
        add(f"equals-reference/tied[{path.label},bfloat16]", "equals-reference",
            "bfloat16 input: projections in bfloat16, gates and state in float32, y in bfloat16.",
            lambda be, p=path: _equals_reference(be, "tied", p, "bfloat16"))

    for gates in ("tied", "untied"):
        for path in _few_paths(backend, _BASE)[:-1]:
            for dtype in DTYPES:
                add(f"true-recurrence/zero-kernel-equals-parallel/{gates}[{path.label},{dtype}]",
                    "true-recurrence-zero-kernel",
                    "use_true_recurrence with W_r = 0 (sequential) equals the plain layer's parallel mode.",
                    lambda be, g=gates, p=path, d=dtype: _zero_kernel_equals_parallel(be, g, p, d))
    for path in _parallel_paths(backend):
        add(f"true-recurrence/parallel-refused[{path.label},float32]", "no-silent-fallback",
            "mode='parallel' with use_true_recurrence raises ValueError naming mode='sequential'.",
            lambda be, m=path.method: _parallel_refused(be, m))

    for variant in STATEFUL_VARIANTS:
        for dtype in DTYPES:
            add(f"step-equals-full-pass/{variant}[step,{dtype}]", "step-equals-parallel",
                "Feeding the steps one at a time (from the end when reversed) equals the full pass.",
                lambda be, v=variant, d=dtype: _step_equals_full(be, v, d), req_step)
            add(f"prefill-then-step/{variant}[step,{dtype}]", "prefill-then-step",
                "A full pass over the first 4 processed steps, then single steps, equals the full pass.",
                lambda be, v=variant, d=dtype: _prefill_then_step(be, v, d), req_step)
            for k in (0, 3, LENGTH):
                add(f"split-invariance/{variant}[k={k},{dtype}]", "split-invariance",
                    "Two passes joined through the carried state equal one pass.",
                    lambda be, v=variant, k=k, d=dtype: _split_invariance(be, v, k, d))

    for path in _few_paths(backend, _BASE):
        for dtype in DTYPES:
            add(f"initial-state/none-equals-zeros[{path.label},{dtype}]", "none-equals-zeros",
                "initial_state=None is exactly an explicit zero state.",
                lambda be, p=path, d=dtype: _none_equals_zeros(be, p, d))
            add(f"empty-sequence[{path.label},{dtype}]", "empty-sequence",
                "T = 0 returns y of shape (B, 0, d_model) and final_state = initial_state.",
                lambda be, p=path, d=dtype: _empty_sequence(be, p, d))
    for dtype in (*DTYPES, "bfloat16"):
        add(f"initial-state/function[{dtype}]", "initial-state",
            "gated_linear_rnn_initial_state gives zeros (B, d_h) in the state dtype (float32 for bf16).",
            lambda be, d=dtype: _initial_state_fn(be, d), (f"{LAYER}_initial_state",))

    for variant in ("tied", "reversed", "true-recurrence-tied"):
        for path in _few_paths(backend, VARIANTS[variant][0]):
            for dtype in DTYPES:
                add(f"padding/{variant}[{path.label},{dtype}]", "padding",
                    "right padding (lengths): each row equals that row alone on its real inputs, outputs at pads "
                    "are zero, final_state is the state after the last real input (identity steps of one scan).",
                    lambda be, v=variant, p=path, d=dtype: _padding(be, v, p, d))

    if "log" in getattr(backend, "METHODS", ()):
        add("bad-input/lengths-with-log[log,float32]", "bad-input",
            "lengths with method='log' raises ValueError naming chunked (an identity step has b = 0).",
            lambda be: _bad_input(be, "lengths-with-log"))
        for dtype in DTYPES:
            add(f"equals-reference/log-domain[log,{dtype}]", "equals-reference",
                "sigmoid candidate and positive h_0 lie in the log-space domain; method='log' equals the loop.",
                lambda be, d=dtype: _log_equals_reference(be, d))
        for what in ("negative-candidate", "negative-initial-state"):
            add(f"bad-input/log-{what}[log,float32]", "bad-input",
                "method='log' refuses b = i * tanh(.) < 0 or h_0 < 0 with a ValueError naming the methods that fit.",
                lambda be, w=what: _log_refused(be, w))

    for what in BAD_INPUTS:
        add(f"bad-input/{what}[float32]", "bad-input", f"{what}: raises a clear error naming the argument.",
            lambda be, w=what: _bad_input(be, w), req_step)

    for variant in GRAD_VARIANTS:
        config = VARIANTS[variant][0]
        # every scan method's own gradient is covered by the scan cases: here one parallel path and the
        # step loop check the layer around it; float64 is the sharp test (exact reference), float32 once.
        paths = _few_paths(backend, config)
        # method="triton" takes the fused Triton kernel, whose backward is its own (triton_gated_linear_rnn.py)
        fused = [p for p in _parallel_paths(backend) if p.method == "triton" and not config.use_true_recurrence]
        for path in paths[:1] if variant.startswith("act-") else paths + fused:
            for dtype in DTYPES if variant == "tied" else ("float64",):
                add(f"gradient/{variant}[{path.label},{dtype}]", "gradient",
                    "VJP w.r.t. every parameter, x and initial_state equals the complex-step reference.",
                    lambda be, v=variant, p=path, d=dtype: _gradient(be, v, p, d), (LAYER, "vjp"))
    return out
