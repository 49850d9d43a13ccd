"""Conformance cases for the minGRU layer (``spec/mingru.md``), and the machinery ``minlstm_cases`` reuses.

A backend takes part by exposing ``mingru(params, x, *, config, initial_state, lengths, mode, method)``,
``mingru_step(params, x_t, state, *, config)`` and ``mingru_initial_state(config, batch_size, dtype)``, the states
being ``linrec.spec.state.State(h=(B, H))`` (recurrence.md §0);
gradient cases also need ``vjp`` (the NumPy backend has none, so it reports them as unsupported).

Every case draws its inputs in NumPy from a fixed seed, rounds them to the case dtype, and judges the
backend against the float64 NumPy reference (``linrec.spec.mingru.forward``/``vjp``) run on the same
rounded numbers, with the tolerances of recurrence.md §9 (the ``log`` method with its ``T``-scaled rtol,
gradients with the ``grad`` factor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, CaseFailure, Outcome, log_method_of
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many, to_reference_precision
from linrec.conformance.inputs import rounded
from linrec.conformance.layer_harness import assert_raises, backend_params, backend_vjp, scan_and_step_paths
from linrec.spec import mingru as mingru_spec
from linrec.spec.state import State

__all__ = ["MINGRU", "LayerUnderTest", "cases", "layer_cases", "make_problem"]

BATCH, LENGTH, D_MODEL = 2, 9, 3
DTYPES = ("float32", "float64")
#: Paths whose gradients are checked: every linear scan method shares the scan's own VJP (checked by the
#: scan cases), so ``auto`` stands for them; ``log`` differentiates through log space, the step loop through
#: the step; ``triton`` is the fused Triton kernel with its own backward (``backends/torch/triton_mingru.py``).
GRADIENT_PATHS = ("auto", "log", "mode=sequential", "triton")


@dataclass(frozen=True)
class LayerUnderTest:
    """What the generic cases need to know about a layer."""

    name: str                   # "mingru": backend functions are <name>, <name>_step, <name>_initial_state
    spec: ModuleType            # forward, step, vjp, param_shapes
    config_cls: type
    configs: dict               # config name -> constructor kwargs

    def config(self, which: str):
        return self.config_cls(**self.configs[which])


#: Three configurations covering the originals: nnx-gru (identity candidate, bias, zero state),
#: lucidrains (g, expansion 2 + out_proj, no bias) and cheind (g, default state g(0) = 0.5, H != D).
CONFIGS = {
    "identity": dict(d_model=D_MODEL, d_inner=4),
    "g-expand-out": dict(d_model=D_MODEL, expansion=2.0, out_proj=True, bias=False, candidate="g"),
    "g-half": dict(d_model=D_MODEL, d_inner=5, candidate="g", default_state=0.5),
}

MINGRU = LayerUnderTest("mingru", mingru_spec, mingru_spec.MinGRUConfig, CONFIGS)


# --- inputs ------------------------------------------------------------------------------------


@dataclass
class Problem:
    """Inputs in the case dtype and their float64 twins for the reference."""

    params: dict[str, np.ndarray]
    x: np.ndarray
    initial_state: np.ndarray | None
    dtype: str

    @property
    def params_ref(self) -> dict[str, np.ndarray]:
        return {k: to_reference_precision(v) for k, v in self.params.items()}

    @property
    def x_ref(self) -> np.ndarray:
        return to_reference_precision(self.x)

    @property
    def h0_ref(self) -> np.ndarray | None:
        return None if self.initial_state is None else to_reference_precision(self.initial_state)


def make_problem(layer: LayerUnderTest, config, seed: int, dtype: str, *, length: int = LENGTH,
                 batch: int = BATCH, with_state: bool = True) -> Problem:
    """Random params (kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.5²)), ``x ~ N(0, 1)`` and a state that
    is positive (``U(0.1, 2)``) for the ``g`` candidate, so that every method's domain holds."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in layer.spec.param_shapes(config).items():
        scale = 1 / np.sqrt(shape[0]) if name.endswith(".kernel") else 0.5
        params[name] = rounded(rng.standard_normal(shape) * scale, dtype)
    x = rounded(rng.standard_normal((batch, length, config.d_model)), dtype)
    h0 = None
    if with_state:
        draw = rng.uniform(0.1, 2, (batch, config.d_inner)) if config.candidate == "g" else rng.standard_normal(
            (batch, config.d_inner))
        h0 = rounded(draw, mingru_spec.state_dtype(dtype))
    return Problem(params, x, h0, dtype)


# --- calling the backend -----------------------------------------------------------------------


def state_h(backend, state) -> np.ndarray:
    """``state.h`` of a backend's ``State`` as NumPy; anything else fails the case (the state type is §0's)."""
    if not isinstance(state, State):
        raise CaseFailure(f"the state is a {type(state).__name__}, not a linrec State (recurrence.md §0)")
    if state.position is not None:
        raise CaseFailure(f"the state's position is {state.position!r}; this layer has none")
    return as_numpy(backend, state.h)


def as_state(backend, h: np.ndarray | None) -> State | None:
    return None if h is None else State(as_backend(backend, h))


def _call(backend, layer, config, p: Problem, x=None, h0="given", mode="auto", method="auto", lengths=None):
    fn = getattr(backend, layer.name)
    x = p.x if x is None else x
    h0 = p.initial_state if isinstance(h0, str) else h0
    kw = {} if lengths is None else {"lengths": as_backend(backend, lengths)}
    y, final = fn(backend_params(backend, p.params), as_backend(backend, x), config=config,
                  initial_state=as_state(backend, h0), mode=mode, method=method, **kw)
    return as_numpy(backend, y), state_h(backend, final)


def _steps(backend, layer, config, p: Problem, x: np.ndarray, state):
    """Run ``<layer>_step`` over every step of ``x``; ``state`` is a NumPy array or ``None`` (default state)."""
    step = getattr(backend, f"{layer.name}_step")
    params = backend_params(backend, p.params)
    state = as_state(backend, state)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = step(params, as_backend(backend, x[:, t]), state, config=config)
        ys.append(as_numpy(backend, y_t))
    y = np.stack(ys, axis=1) if ys else np.zeros((x.shape[0], 0, config.d_out), x.dtype)
    return y, None if state is None else state_h(backend, state)


def _reference(layer, config, p: Problem, h0="given", lengths=None):
    h0 = p.h0_ref if isinstance(h0, str) else h0
    y, final = layer.spec.forward(p.params_ref, p.x_ref, config, None if h0 is None else State(h0), lengths)
    return y, final.h


def _judge(y, final, y_ref, final_ref, dtype, method=None, length=LENGTH, label=""):
    return compare_many([
        compare(f"{label}y", y, y_ref, dtype, method=method, length=length),
        compare(f"{label}final_state", final, final_ref, dtype, method=method, length=length),
    ])


def _in_log_domain(config) -> bool:
    return config.candidate == "g" and config.default_state >= 0


# --- properties ----------------------------------------------------------------------------------


def _equals_reference(backend, layer, which, mode, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 1, dtype)
    if method == "log" and not _in_log_domain(config):
        try:
            _call(backend, layer, config, p, mode=mode, method=method)
        except ValueError as err:
            if "candidate='g'" not in str(err):
                raise CaseFailure(f"the ValueError does not name candidate='g': {err}") from err
            return Outcome(True, detail=f"refused: {err}")
        raise CaseFailure("method='log' with candidate='identity' must raise ValueError naming candidate='g'")
    y, final = _call(backend, layer, config, p, mode=mode, method=method)
    y_ref, final_ref = _reference(layer, config, p)
    return _judge(y, final, y_ref, final_ref, dtype, method=method)


def _step_agrees(backend, layer, which, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 2, dtype)
    y_s, f_s = _steps(backend, layer, config, p, p.x, p.initial_state)
    y_ref, f_ref = _reference(layer, config, p)
    y_p, f_p = _call(backend, layer, config, p)
    return compare_many([
        _judge(y_s, f_s, y_ref, f_ref, dtype, label="steps vs reference: "),
        _judge(y_p, f_p, y_s, f_s, dtype, label="parallel vs steps: "),
    ])


def _prefill_then_step(backend, layer, which, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 3, dtype)
    k = 4
    y_pre, state = _call(backend, layer, config, p, x=p.x[:, :k], method=method)
    y_rest, final = _steps(backend, layer, config, p, p.x[:, k:], state)
    y_ref, f_ref = _reference(layer, config, p)
    return _judge(np.concatenate([y_pre, y_rest], axis=1), final, y_ref, f_ref, dtype, method=method)


def _split_invariance(backend, layer, which, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 4, dtype)
    y_ref, f_ref = _reference(layer, config, p)
    outcomes = []
    for k in (0, 4, LENGTH):
        y1, state = _call(backend, layer, config, p, x=p.x[:, :k], method=method)
        y2, final = _call(backend, layer, config, p, x=p.x[:, k:], h0=state, method=method)
        outcomes.append(_judge(np.concatenate([y1, y2], axis=1), final, y_ref, f_ref, dtype, method=method,
                               label=f"k={k}: "))
    return compare_many(outcomes)


def _default_state(backend, layer, which, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 5, dtype, with_state=False)
    init = getattr(backend, f"{layer.name}_initial_state")(config, BATCH, dtype)
    explicit = state_h(backend, init)
    want = np.full((BATCH, config.d_inner), config.default_state, explicit.dtype)
    if explicit.dtype.name != mingru_spec.state_dtype(dtype) or not np.array_equal(explicit, want):
        raise CaseFailure(f"{layer.name}_initial_state gave {explicit!r}, expected {want!r}")
    y, final = _call(backend, layer, config, p, h0=None, method=method)
    y_ref, final_ref = _reference(layer, config, p, h0=None)
    outcomes = [_judge(y, final, y_ref, final_ref, dtype, method=method, label="None vs reference: ")]
    if method != "log" or config.default_state > 0:  # an explicit zero state is outside the log domain
        y1, f1 = _call(backend, layer, config, p, h0=explicit, method=method)
        outcomes.append(_judge(y1, f1, y_ref, final_ref, dtype, method=method, label="explicit default: "))
    return compare_many(outcomes)


def _empty_sequence(backend, layer, which, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 6, dtype, length=0)
    y, final = _call(backend, layer, config, p, method=method)
    if y.shape != (BATCH, 0, config.d_out):
        raise CaseFailure(f"y has shape {y.shape}, expected {(BATCH, 0, config.d_out)}")
    _, default_final = _call(backend, layer, config, p, h0=None, method=method)
    return compare_many([
        compare("final_state", final, p.h0_ref, dtype),
        compare("default final_state", default_final, np.full((BATCH, config.d_inner), config.default_state), dtype),
    ])


def _padding(backend, layer, which, mode, method, dtype) -> Outcome:
    """Right padding: a padded row equals that row run alone on its real inputs; outputs at pads are zero."""
    config = layer.config(which)
    p = make_problem(layer, config, 10, dtype, batch=3)
    lengths = np.array([LENGTH, 4, 0], np.int32)
    y, final = _call(backend, layer, config, p, mode=mode, method=method, lengths=lengths)
    outcomes = []
    for i, n in enumerate(lengths):
        row = Problem(p.params, p.x[i : i + 1, :n], p.initial_state[i : i + 1], dtype)
        y_ref, f_ref = _reference(layer, config, row)
        outcomes.append(_judge(y[i : i + 1, :n], final[i : i + 1], y_ref, f_ref, dtype, method=method, length=int(n),
                               label=f"row {i} (length {n}): "))
    pads = np.concatenate([y[i, n:].ravel() for i, n in enumerate(lengths)])
    if np.any(pads != 0):
        raise CaseFailure(f"outputs at padded positions must be zero, max |y| there = {np.abs(pads).max()}")
    return compare_many(outcomes)


# --- gradients -------------------------------------------------------------------------------------


def _gradients(backend, layer, which, mode, method, dtype) -> Outcome:
    config = layer.config(which)
    p = make_problem(layer, config, 7, dtype)
    names = sorted(p.params)
    rng = np.random.default_rng(8)
    ct_y = rounded(rng.standard_normal((BATCH, LENGTH, config.d_out)), dtype)
    ct_f = rounded(rng.standard_normal((BATCH, config.d_inner)), mingru_spec.state_dtype(dtype))
    fn_layer = getattr(backend, layer.name)

    def fn(*args):
        params = dict(zip(names, args[: len(names)]))
        y, final = fn_layer(params, args[-2], config=config, initial_state=State(args[-1]), mode=mode, method=method)
        return y, final.h

    primals = tuple(as_backend(backend, v) for v in [*(p.params[n] for n in names), p.x, p.initial_state])
    grads = backend_vjp(backend)(fn, primals, (as_backend(backend, ct_y), as_backend(backend, ct_f)))
    grads = [as_numpy(backend, g) for g in grads]
    p_bar, x_bar, h0_bar = layer.spec.vjp(p.params_ref, p.x_ref, config, to_reference_precision(ct_y),
                                          to_reference_precision(ct_f), p.h0_ref)
    kw = dict(method=method, length=LENGTH, grad=True)
    outcomes = [compare(f"d{n}", g, p_bar[n], dtype, **kw) for n, g in zip(names, grads)]
    outcomes += [compare("dx", grads[-2], x_bar, dtype, **kw),
                 compare("dinitial_state", grads[-1], h0_bar, dtype, **kw)]
    return compare_many(outcomes)


# --- bad input -------------------------------------------------------------------------------------


def _bad_inputs(layer: LayerUnderTest) -> dict[str, tuple[str, type, str, Callable]]:
    """name -> (doc, exception, text the message must contain, fn(backend))."""
    ident, g_cfg = layer.config("identity"), layer.config("g-half")
    neg_default = layer.config_cls(**{**layer.configs["g-half"], "default_state": -0.5})

    def call(config, *, x=None, h0="given", mode="auto", method="auto", params=None, lengths=None,
             raw_state=None):
        def run(backend):
            p = make_problem(layer, config, 9, "float32")
            if params is not None:
                p.params = params(p.params)
            if raw_state is not None:  # a bare array where a State belongs
                fn = getattr(backend, layer.name)
                return fn(backend_params(backend, p.params), as_backend(backend, p.x), config=config,
                          initial_state=as_backend(backend, raw_state))
            return _call(backend, layer, config, p, x=x, h0=h0, mode=mode, method=method, lengths=lengths)
        return run

    def step(config, x_t, state):
        def run(backend):
            p = make_problem(layer, config, 9, "float32")
            fn = getattr(backend, f"{layer.name}_step")
            return fn(backend_params(backend, p.params), as_backend(backend, x_t),
                      as_state(backend, state), config=config)
        return run

    f32 = np.float32
    return {
        "x-wrong-features": ("x with D != d_model raises ValueError naming x.", ValueError, "x",
                             call(ident, x=np.zeros((BATCH, 4, D_MODEL + 1), f32))),
        "x-not-3d": ("x without a time axis raises ValueError.", ValueError, "(B, T, d_model",
                     call(ident, x=np.zeros((BATCH, D_MODEL), f32))),
        "x-integer": ("integer x raises TypeError.", TypeError, "x",
                      call(ident, x=np.zeros((BATCH, 4, D_MODEL), np.int32))),
        "state-wrong-shape": ("initial_state not (B, d_inner) raises ValueError.", ValueError, "initial_state",
                              call(ident, h0=np.zeros((BATCH, ident.d_inner + 1), f32))),
        "state-wrong-dtype": ("a float64 initial_state for float32 x raises TypeError.", TypeError, "initial_state",
                              call(ident, h0=np.zeros((BATCH, ident.d_inner), np.float64))),
        "unknown-method": ("an unknown method raises ValueError listing the valid ones.", ValueError, "associative",
                           call(ident, method="magic")),
        "unknown-mode": ("an unknown mode raises ValueError.", ValueError, "mode", call(ident, mode="fast")),
        "method-with-sequential-mode": ("a scan method with mode='sequential' raises ValueError.", ValueError,
                                        "mode='sequential'", call(ident, mode="sequential", method="associative")),
        "log-identity-candidate": ("method='log' with candidate='identity' raises ValueError naming candidate='g'.",
                                   ValueError, "candidate='g'", call(ident, method="log")),
        "log-negative-state": ("method='log' with a negative initial_state raises ValueError naming the "
                               "methods that accept it.", ValueError, "associative",
                               call(g_cfg, h0=np.full((BATCH, g_cfg.d_inner), -0.5, f32), method="log")),
        "log-zero-state": ("method='log' with an explicit zero initial_state raises ValueError (log 0).",
                           ValueError, "initial_state", call(g_cfg, h0=np.zeros((BATCH, g_cfg.d_inner), f32),
                                                             method="log")),
        "log-negative-default-state": ("method='log' with default_state < 0 raises ValueError naming default_state.",
                                       ValueError, "default_state", call(neg_default, h0=None, method="log")),
        "state-not-a-State": ("a bare array as initial_state raises TypeError naming State.", TypeError, "State",
                              call(ident, raw_state=np.zeros((BATCH, ident.d_inner), f32))),
        "x-time-major-2d": ("a 2-D x (no batch axis) raises ValueError naming x, never taken as unbatched.",
                            ValueError, "x must have 3 axes", call(ident, x=np.zeros((4, D_MODEL), f32))),
        "lengths-with-log": ("lengths with method='log' raises ValueError naming chunked.", ValueError, "chunked",
                             call(g_cfg, method="log", lengths=np.array([2, 1], np.int32))),
        "lengths-out-of-range": ("lengths beyond T raises ValueError naming lengths.", ValueError, "lengths",
                                 call(ident, lengths=np.array([99, 1], np.int32))),
        "lengths-float": ("float lengths raise TypeError naming lengths.", TypeError, "lengths",
                          call(ident, lengths=np.array([2.0, 1.0], f32))),
        "params-missing": ("params without proj.kernel raise ValueError naming it.", ValueError, "proj.kernel",
                           call(ident, params=lambda ps: {k: v for k, v in ps.items() if k != "proj.kernel"})),
        "step-wrong-features": ("x_t with D != d_model raises ValueError.", ValueError, "x_t",
                                step(ident, np.zeros((BATCH, D_MODEL + 1), f32), None)),
        "step-wrong-state": ("a state not (B, d_inner) raises ValueError.", ValueError, "state",
                             step(ident, np.zeros((BATCH, D_MODEL), f32), np.zeros((BATCH + 1, ident.d_inner), f32))),
    }


# --- the case list -------------------------------------------------------------------------------


def layer_cases(backend: ModuleType, layer: LayerUnderTest) -> list[Case]:
    """Every case of ``layer`` on ``backend``."""
    name = layer.name
    req = (name,)
    out: list[Case] = []

    def add(case_id, prop, doc, fn, requires=req):
        out.append(Case(id=f"{name}/{prop}/{case_id}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"{name}/{prop}/{case_id}")))

    for which in layer.configs:
        log_ok = _in_log_domain(layer.config(which))
        for label, mode, method in scan_and_step_paths(backend):
            for dtype in DTYPES:
                add(f"{which}[{label},{dtype}]", "equals-reference",
                    f"{name} ({which}) via {label} equals the float64 reference"
                    + ("; method='log' must refuse the identity candidate" if method == "log" and not log_ok else ""),
                    lambda be, w=which, mo=mode, me=method, d=dtype: _equals_reference(be, layer, w, mo, me, d))
                if method == "log" and not log_ok:
                    continue
                if label in GRADIENT_PATHS:
                    add(f"{which}[{label},{dtype}]", "gradient",
                        f"{name} ({which}) via {label}: VJP w.r.t. params, x and initial_state (cotangents on y and "
                        "final_state) equals the analytic reference VJP",
                        lambda be, w=which, mo=mode, me=method, d=dtype: _gradients(be, layer, w, mo, me, d),
                        requires=(name, "vjp"))
        for label, mode, method in scan_and_step_paths(backend):
            if method == "log":  # refuses lengths: a bad-input case
                continue
            add(f"{which}[{label},float32]", "padding",
                f"right padding (lengths): each row equals that row alone on its real inputs, outputs at pads are "
                f"zero ({which}, {label})",
                lambda be, w=which, mo=mode, me=method: _padding(be, layer, w, mo, me, "float32"))
        for dtype in DTYPES:
            add(f"{which}[{dtype}]", "parallel-equals-step",
                f"{name}_step over every step equals the reference and the parallel pass ({which})",
                lambda be, w=which, d=dtype: _step_agrees(be, layer, w, d), requires=(name, f"{name}_step"))
        methods = ("auto", "log") if log_ok else ("auto",)
        for method in methods:
            add(f"{which}[{method},float32]", "prefill-then-step",
                f"a parallel pass over x[:4] then {name}_step for the rest equals the full reference ({which})",
                lambda be, w=which, me=method: _prefill_then_step(be, layer, w, me, "float32"),
                requires=(name, f"{name}_step"))
            add(f"{which}[{method},float32]", "split-invariance",
                f"running x[:k] then x[k:] from the carried state equals one pass, k in 0, 4, T ({which})",
                lambda be, w=which, me=method: _split_invariance(be, layer, w, me, "float32"))
            add(f"{which}[{method},float32]", "empty-sequence",
                f"T = 0 gives an empty y and final_state = initial_state (or the default state) ({which})",
                lambda be, w=which, me=method: _empty_sequence(be, layer, w, me, "float32"))
            add(f"{which}[{method},float32]", "default-state",
                f"initial_state=None starts from default_state (= {name}_initial_state) ({which})",
                lambda be, w=which, me=method: _default_state(be, layer, w, me, "float32"),
                requires=(name, f"{name}_initial_state"))
    for bad, (doc, exc, needle, fn) in _bad_inputs(layer).items():
        needs = (f"{name}_step",) if bad.startswith("step-") else (name,)
        add(bad, "bad-input", doc, lambda be, e=exc, n=needle, f=fn: assert_raises(e, n, lambda: f(be)), requires=needs)
    return out


def cases(backend: ModuleType) -> list[Case]:
    return layer_cases(backend, MINGRU)
