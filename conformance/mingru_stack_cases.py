"""Conformance cases for the minGRU stack (``spec/mingru_stack.md``).

A backend takes part by exposing ``mingru_stack(params, x, *, config, initial_state, lengths, mode, method)``,
``mingru_stack_step(params, x_t, state, *, config)`` and ``mingru_stack_initial_state(config, batch_size,
dtype)``, the states being ``linrec.spec.state.State(h=tuple of L (B, H_l) arrays)`` (recurrence.md §0);
gradient cases also need ``vjp``. All cases run in evaluation mode (dropout is a training-time draw; the
framework tests check it). The judge is the float64 NumPy reference (``linrec.spec.mingru_stack.forward``) on
the same rounded inputs, with the spec tolerance times the gradient factor (a stack is several layers deep).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, CaseFailure, Outcome, log_method_of
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many, to_reference_precision
from linrec.conformance.inputs import rounded
from linrec.conformance.layer_harness import (
    assert_raises,
    backend_params,
    backend_vjp,
    directional_derivative_outcome,
    scan_and_step_paths,
)
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

__all__ = ["CONFIGS", "cases", "make_problem"]

BATCH, LENGTH, INPUT = 2, 7, 3
DTYPES = ("float32", "float64")

#: cheind's example (g, default state 0.5, LayerNorm, residual with res_align where sizes change), a plain
#: identity-candidate stack without bias, an identity residual (equal sizes, no res_align), and cheind v1.3's
#: residual: layer 0 aligned by a Linear with bias even though I == H_0, later layers identity.
CONFIGS = {
    "cheind": dict(input_size=INPUT, hidden_sizes=(5, 5, 4), residual=True, norm=True),
    "plain": dict(input_size=INPUT, hidden_sizes=(4, 4), bias=False, candidate="identity", default_state=0.0),
    "residual-same": dict(input_size=INPUT, hidden_sizes=(3, 3), residual=True, candidate="identity",
                          default_state=0.0),
    "cheind-v1.3": dict(input_size=INPUT, hidden_sizes=(INPUT, INPUT, INPUT), residual=True,
                        residual_align="first", residual_align_bias=True),
}


def config(which: str) -> MinGRUStackConfig:
    return MinGRUStackConfig(**CONFIGS[which])


@dataclass
class Problem:
    params: dict[str, np.ndarray]
    x: np.ndarray
    h0: tuple[np.ndarray, ...] | None
    dtype: str

    @property
    def params_ref(self) -> dict[str, np.ndarray]:
        return {k: to_reference_precision(v) for k, v in self.params.items()}

    @property
    def x_ref(self) -> np.ndarray:
        return to_reference_precision(self.x)

    @property
    def h0_ref(self):
        return None if self.h0 is None else tuple(to_reference_precision(h) for h in self.h0)


def make_problem(cfg: MinGRUStackConfig, seed: int, dtype: str, *, length: int = LENGTH,
                 with_state: bool = True) -> Problem:
    """Kernels ``N(0, 1/fan_in)``, biases ``N(0, 0.5²)``, LayerNorm scale ``1 + N(0, 0.2²)``; a positive state
    for the ``g`` candidate (so that ``method="log"`` applies)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in spec.param_shapes(cfg).items():
        if name.endswith(".kernel"):
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name.endswith("norm.scale"):
            value = 1 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.5 * rng.standard_normal(shape)
        params[name] = rounded(value, dtype)
    x = rounded(rng.standard_normal((BATCH, length, cfg.input_size)), dtype)
    h0 = None
    if with_state:
        draw = (lambda s: rng.uniform(0.1, 2, s)) if cfg.candidate == "g" else rng.standard_normal
        h0 = tuple(rounded(draw((BATCH, h)), mingru_spec.state_dtype(dtype)) for h in cfg.hidden_sizes)
    return Problem(params, x, h0, dtype)


def _bstate(backend, h):
    return None if h is None else State(tuple(as_backend(backend, s) for s in h))


def _arrays(backend, state, cfg: MinGRUStackConfig) -> tuple[np.ndarray, ...]:
    """``state.h`` as NumPy arrays; anything but a ``State`` holding one array per layer fails the case."""
    if not isinstance(state, State) or not isinstance(state.h, tuple) or len(state.h) != cfg.num_layers:
        raise CaseFailure(f"the state must be a State whose h is a tuple of {cfg.num_layers} arrays, got {state!r}")
    if state.position is not None:
        raise CaseFailure(f"the stack's state has position {state.position!r}; it has none")
    return tuple(as_numpy(backend, s) for s in state.h)


def _call(backend, cfg, p: Problem, x=None, h0="given", mode="auto", method="auto", lengths=None):
    h0 = p.h0 if isinstance(h0, str) else h0
    kw = {} if lengths is None else {"lengths": as_backend(backend, lengths)}
    y, h = backend.mingru_stack(backend_params(backend, p.params), as_backend(backend, p.x if x is None else x),
                                config=cfg, initial_state=_bstate(backend, h0), mode=mode, method=method, **kw)
    return as_numpy(backend, y), _arrays(backend, h, cfg)


def _forward(p: Problem, cfg, h0="given", **kw):
    """The float64 reference: ``(y, the layers' final arrays)``."""
    h0 = p.h0_ref if isinstance(h0, str) else h0
    y, final = spec.forward(p.params_ref, p.x_ref, cfg, None if h0 is None else State(h0), **kw)
    return y, final.h


def _steps(backend, cfg, p: Problem, x, h):
    params = backend_params(backend, p.params)
    state = _bstate(backend, h)
    ys = []
    for t in range(x.shape[1]):
        y, state = backend.mingru_stack_step(params, as_backend(backend, x[:, t]), state, config=cfg)
        ys.append(as_numpy(backend, y))
    return np.stack(ys, axis=1), _arrays(backend, state, cfg)


def _judge(y, h, y_ref, h_ref, dtype, *, method=None, label=""):
    kw = dict(method=method, length=LENGTH, grad=True)
    return compare_many([compare(f"{label}y", y, y_ref, dtype, **kw)]
                        + [compare(f"{label}state[{l}]", a, b, dtype, **kw) for l, (a, b) in enumerate(zip(h, h_ref))])


def _equals_reference(backend, which, mode, method, dtype) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 1, dtype)
    if method == "log" and cfg.candidate != "g":
        return assert_raises(ValueError, "candidate='g'", lambda: _call(backend, cfg, p, method=method))
    y, h = _call(backend, cfg, p, mode=mode, method=method)
    y_ref, h_ref = _forward(p, cfg)
    return _judge(y, h, y_ref, h_ref, dtype, method=method)


def _padding(backend, which, mode, method) -> Outcome:
    """Right padding: each row equals that row alone on its real inputs; the outputs at pads are zero."""
    cfg = config(which)
    p = make_problem(cfg, 6, "float32")
    lengths = np.array([LENGTH, 3], np.int32)
    y, h = _call(backend, cfg, p, mode=mode, method=method, lengths=lengths)
    outcomes = []
    for i, n in enumerate(lengths):
        row = Problem(p.params, p.x[i : i + 1, :n], tuple(a[i : i + 1] for a in p.h0), "float32")
        y_ref, h_ref = _forward(row, cfg)
        outcomes.append(_judge(y[i : i + 1, :n], tuple(a[i : i + 1] for a in h), y_ref, h_ref, "float32",
                               method=method, label=f"row {i} (length {n}): "))
    pads = y[1, lengths[1]:]
    if np.any(pads != 0):
        raise CaseFailure(f"outputs at padded positions must be zero, max |y| there = {np.abs(pads).max()}")
    return compare_many(outcomes)


def _step_agrees(backend, which, dtype) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 2, dtype)
    y_ref, h_ref = _forward(p, cfg)
    outcomes = []
    for k in (0, 3):
        y_pre, h = _call(backend, cfg, p, x=p.x[:, :k])
        y_steps, h_steps = _steps(backend, cfg, p, p.x[:, k:], h)
        outcomes.append(_judge(np.concatenate([y_pre, y_steps], axis=1), h_steps, y_ref, h_ref, dtype,
                               label=f"parallel x[:{k}] + steps: "))
        y_rest, h_rest = _call(backend, cfg, p, x=p.x[:, k:], h0=h)
        outcomes.append(_judge(np.concatenate([y_pre, y_rest], axis=1), h_rest, y_ref, h_ref, dtype,
                               label=f"x[:{k}] then x[{k}:]: "))
    return compare_many(outcomes)


def _default_state(backend, which) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 3, "float32", with_state=False)
    init = backend.mingru_stack_initial_state(cfg, BATCH, "float32")
    arrays = list(_arrays(backend, init, cfg))
    for l, (a, h) in enumerate(zip(arrays, cfg.hidden_sizes)):
        if a.shape != (BATCH, h) or a.dtype != np.float32 or not np.all(a == cfg.default_state):
            raise CaseFailure(f"initial state[{l}] is {a!r}, expected ({BATCH}, {h}) filled with {cfg.default_state}")
    y_ref, h_ref = _forward(p, cfg, h0=None)
    y, h = _call(backend, cfg, p, h0=None)
    y_e, h_e = _call(backend, cfg, p, h0=tuple(arrays))
    return compare_many([_judge(y, h, y_ref, h_ref, "float32", label="None: "),
                         _judge(y_e, h_e, y_ref, h_ref, "float32", label="explicit: ")])


def _gradient(backend, which, method) -> Outcome:
    """The VJP w.r.t. params, x and every layer's initial state, contracted with a random direction, against a
    central difference of the float64 reference along that direction."""
    cfg = config(which)
    p = make_problem(cfg, 4, "float64", length=5)
    names = sorted(p.params)
    rng = np.random.default_rng(5)
    ct_y = rng.standard_normal((BATCH, 5, cfg.output_size))
    ct_h = tuple(rng.standard_normal(h.shape) for h in p.h0)
    d_params = {n: rng.standard_normal(p.params[n].shape) for n in names}
    d_x = rng.standard_normal(p.x.shape)
    d_h = tuple(rng.standard_normal(h.shape) for h in p.h0)
    n_p = len(names)

    def fn(*args):
        params = dict(zip(names, args[:n_p]))
        y, h = backend.mingru_stack(params, args[n_p], config=cfg, initial_state=State(tuple(args[n_p + 1:])),
                                    method=method)
        return (y, *h.h)

    primals = tuple(as_backend(backend, v) for v in [*(p.params[n] for n in names), p.x, *p.h0])
    cts = tuple(as_backend(backend, c) for c in (ct_y, *ct_h))
    grads = [as_numpy(backend, g) for g in backend_vjp(backend)(fn, primals, cts)]
    directions = [*(d_params[n] for n in names), d_x, *d_h]
    derivative = sum(float(np.sum(g * d)) for g, d in zip(grads, directions))

    def loss(eps: float) -> float:
        params = {n: p.params[n] + eps * d_params[n] for n in names}
        y, h = spec.forward(params, p.x + eps * d_x, cfg, State(tuple(a + eps * d for a, d in zip(p.h0, d_h))))
        return float(np.sum(y * ct_y) + sum(np.sum(a * c) for a, c in zip(h.h, ct_h)))

    return directional_derivative_outcome(derivative, loss)


def _bad_inputs() -> dict[str, tuple[str, type, str, Callable]]:
    cfg = config("cheind")
    f32 = np.float32

    def call(*, x=None, h0="given", method="auto", params=None, lengths=None):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            if params is not None:
                p.params = params(p.params)
            return _call(backend, cfg, p, x=x, h0=h0, method=method, lengths=lengths)
        return run

    def call_raw_state(state):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            return backend.mingru_stack(backend_params(backend, p.params), as_backend(backend, p.x), config=cfg,
                                        initial_state=state(backend))
        return run

    def step(x_t):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            return backend.mingru_stack_step(backend_params(backend, p.params), as_backend(backend, x_t), None,
                                             config=cfg)
        return run

    states = [np.full((BATCH, h), 0.5, f32) for h in cfg.hidden_sizes]
    return {
        "x-wrong-features": ("x with features != input_size raises ValueError naming input_size.", ValueError,
                             "input_size", call(x=np.zeros((BATCH, 4, INPUT + 1), f32))),
        "state-not-a-State": ("a single array as initial_state raises TypeError asking for a State.", TypeError,
                              "State", call_raw_state(lambda be: as_backend(be, states[0]))),
        "state-bare-tuple": ("a bare tuple of arrays as initial_state raises TypeError asking for a State.",
                             TypeError, "State", call_raw_state(lambda be: tuple(as_backend(be, s) for s in states))),
        "state-too-few-layers": ("a state with one array fewer than layers raises ValueError.", ValueError,
                                 "one array per layer", call(h0=tuple(states[:-1]))),
        "state-wrong-width": ("a layer state of the wrong width raises ValueError naming the layer.", ValueError,
                              "initial_state.h[2]", call(h0=(*states[:2], np.zeros((BATCH, 5), f32)))),
        "state-wrong-dtype": ("a float64 layer state for float32 x raises TypeError.", TypeError,
                              "initial_state.h[0]", call(h0=(states[0].astype(np.float64), *states[1:]))),
        "x-2d": ("a 2-D x (no batch or no time axis) raises ValueError naming x, never guessed.", ValueError,
                 "x must have 3 axes", call(x=np.zeros((4, INPUT), f32))),
        "lengths-with-log": ("lengths with method='log' raises ValueError naming chunked.", ValueError, "chunked",
                             call(method="log", lengths=np.array([2, 1], np.int32))),
        "log-negative-state": ("method='log' with a negative state raises ValueError naming methods that accept it.",
                               ValueError, "associative", call(h0=tuple(-s for s in states), method="log")),
        "params-missing": ("params without a layer's res_align.kernel raise ValueError naming it.", ValueError,
                           "res_align.kernel",
                           call(params=lambda ps: {k: v for k, v in ps.items() if "res_align" not in k})),
        "step-wrong-features": ("x_t with features != input_size raises ValueError.", ValueError, "x_t",
                                step(np.zeros((BATCH, INPUT + 2), f32))),
    }


def cases(backend: ModuleType) -> list[Case]:
    req = ("mingru_stack",)
    out: list[Case] = []

    def add(case_id, prop, doc, fn, requires=req):
        out.append(Case(id=f"mingru_stack/{prop}/{case_id}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"mingru_stack/{prop}/{case_id}")))

    for which in CONFIGS:
        for label, mode, method in scan_and_step_paths(backend):
            for dtype in DTYPES:
                add(f"{which}[{label},{dtype}]", "equals-reference",
                    f"mingru_stack ({which}) via {label}: output and every layer's state equal the float64 reference",
                    lambda be, w=which, mo=mode, me=method, d=dtype: _equals_reference(be, w, mo, me, d))
        for dtype in DTYPES:
            add(f"{which}[{dtype}]", "prefill-then-step",
                f"a parallel pass over x[:k] then mingru_stack_step (or a second pass from the carried state) equals "
                f"one pass, k in 0, 3 ({which})",
                lambda be, w=which, d=dtype: _step_agrees(be, w, d), requires=(*req, "mingru_stack_step"))
        for label, mode, method in scan_and_step_paths(backend):
            if method != "log":  # log refuses lengths: a bad-input case
                add(f"{which}[{label},float32]", "padding",
                    f"right padding (lengths): each row equals that row alone, outputs at pads are zero ({which}, "
                    f"{label})", lambda be, w=which, mo=mode, me=method: _padding(be, w, mo, me))
        add(f"{which}[float32]", "default-state",
            f"initial_state=None equals mingru_stack_initial_state, each layer filled with default_state ({which})",
            lambda be, w=which: _default_state(be, w), requires=(*req, "mingru_stack_initial_state"))
        methods = ("auto", "log") if config(which).candidate == "g" else ("auto",)
        for method in methods:
            add(f"{which}[{method},float64]", "gradient",
                f"the VJP w.r.t. params, x and every layer's state, along a random direction, equals a central "
                f"difference of the reference ({which}, {method})",
                lambda be, w=which, me=method: _gradient(be, w, me), requires=(*req, "vjp"))
    for bad, (doc, exc, needle, fn) in _bad_inputs().items():
        needs = ("mingru_stack_step",) if bad.startswith("step-") else req
        add(bad, "bad-input", doc, lambda be, e=exc, n=needle, f=fn: assert_raises(e, n, lambda: f(be)), requires=needs)
    return out
