"""Conformance cases for the minGRU language model (``spec/mingru_lm.md``).

A backend takes part by exposing ``mingru_lm(params, tokens, *, config, initial_state, lengths, mode, method)``,
``mingru_lm_step(params, token, state, *, config)``, ``mingru_lm_initial_state(config, batch_size, dtype)`` and
``mingru_lm_generate(params, prompt, *, config, max_new_tokens, temperature, top_k, seed, lengths,
return_logits)``; gradient cases also need ``vjp``. States are ``linrec.spec.state.State(h=tuple of L (B, H)
arrays)``; ragged batches are right-padded with ``lengths`` (recurrence.md §0).

Inputs are drawn in NumPy from fixed seeds and rounded to the case dtype; the judge is the float64 NumPy
reference (``linrec.spec.mingru_lm.forward``) on the same rounded numbers. A model output passes through
several matrix products, so outputs use the spec tolerance with the gradient factor (recurrence.md §9).
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
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.state import State

__all__ = ["CONFIGS", "cases", "make_problem"]

BATCH, LENGTH, VOCAB = 2, 7, 11
DTYPES = ("float32", "float64")

#: nnx-gru (GLU blocks, identity candidate, biases), a GLU variant with the g candidate, a wider state and
#: cheind's default state, and lucidrains' minLM (pre-RMSNorm + feed-forward, g, no biases, out_proj).
CONFIGS = {
    "glu": dict(vocab_size=VOCAB, d_model=4, n_layers=2),
    "glu-g": dict(vocab_size=VOCAB, d_model=4, n_layers=2, expansion=1.5, candidate="g", default_state=0.5,
                  mingru_bias=False),
    "prenorm": dict(vocab_size=VOCAB, d_model=4, n_layers=2, block="prenorm", expansion=1.5, candidate="g",
                    mingru_bias=False, head_bias=False, ff_mult=2.0),
}


def config(which: str) -> MinGRULMConfig:
    return MinGRULMConfig(**CONFIGS[which])


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    params: dict[str, np.ndarray]
    tokens: np.ndarray
    h0: np.ndarray | None  # (L, B, H); the State holds its L slices
    dtype: str

    @property
    def params_ref(self) -> dict[str, np.ndarray]:
        return {k: to_reference_precision(v) for k, v in self.params.items()}

    @property
    def state_ref(self) -> State | None:
        return None if self.h0 is None else State(tuple(to_reference_precision(self.h0)))


def make_params(cfg: MinGRULMConfig, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """Kernels ``N(0, 1/fan_in)``, biases ``N(0, 0.5²)``, norm scales ``1 + N(0, 0.2²)``, embedding ``N(0, 1)``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.param_shapes(cfg).items():
        if name.endswith(".kernel"):
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name.endswith(".scale"):
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif name == "embed.embedding":
            value = rng.standard_normal(shape)
        else:
            value = 0.5 * rng.standard_normal(shape)
        out[name] = rounded(value, dtype)
    return out


def make_problem(cfg: MinGRULMConfig, seed: int, dtype: str, *, batch: int = BATCH, length: int = LENGTH,
                 with_state: bool = True) -> Problem:
    rng = np.random.default_rng([seed, 1])
    tokens = rng.integers(0, cfg.vocab_size, (batch, length))
    h0 = None
    if with_state:
        shape = (cfg.n_layers, batch, cfg.d_inner)
        draw = rng.uniform(0.1, 2, shape) if cfg.candidate == "g" else rng.standard_normal(shape)
        h0 = rounded(draw, mingru_spec.state_dtype(dtype))
    return Problem(make_params(cfg, seed, dtype), tokens, h0, dtype)


# --- calling the backend ----------------------------------------------------------------------------------


def _state(backend, h):
    """``(L, B, H)`` NumPy -> the backend's ``State`` of ``L`` arrays."""
    return None if h is None else State(tuple(as_backend(backend, a) for a in h))


def _stacked(backend, state, cfg: MinGRULMConfig) -> np.ndarray:
    """A backend ``State`` -> ``(L, B, H)`` NumPy; anything but a ``State`` of ``L`` arrays fails the case."""
    if not isinstance(state, State) or not isinstance(state.h, tuple) or len(state.h) != cfg.n_layers:
        raise CaseFailure(f"the state must be a State whose h is a tuple of {cfg.n_layers} arrays, got "
                          f"{type(state).__name__}")
    if state.position is not None:
        raise CaseFailure(f"the model's state has position {state.position!r}; it has none")
    return np.stack([as_numpy(backend, a) for a in state.h])


def _call(backend, cfg, p: Problem, tokens=None, h0="given", lengths=None, mode="auto", method="auto"):
    h0 = p.h0 if isinstance(h0, str) else h0
    logits, state = backend.mingru_lm(
        backend_params(backend, p.params), as_backend(backend, p.tokens if tokens is None else tokens), config=cfg,
        initial_state=_state(backend, h0), lengths=as_backend(backend, lengths), mode=mode, method=method)
    return as_numpy(backend, logits), _stacked(backend, state, cfg)


def _forward(params, tokens, cfg, state=None, lengths=None):
    """The float64 reference: ``(logits, (L, B, H))``."""
    logits, final = spec.forward(params, tokens, cfg, state, lengths)
    return logits, np.stack(final.h)


def _steps(backend, cfg, p: Problem, tokens, h):
    params = backend_params(backend, p.params)
    state = _state(backend, h)
    out = []
    for t in range(tokens.shape[1]):
        logits, state = backend.mingru_lm_step(params, as_backend(backend, tokens[:, t]), state, config=cfg)
        out.append(as_numpy(backend, logits))
    return np.stack(out, axis=1), _stacked(backend, state, cfg)


def _judge(logits, h, logits_ref, h_ref, dtype, *, method=None, label=""):
    kw = dict(method=method, length=LENGTH, grad=True)
    return compare_many([compare(f"{label}logits", logits, logits_ref, dtype, **kw),
                         compare(f"{label}state.h", h, h_ref, dtype, **kw)])


# --- properties --------------------------------------------------------------------------------------------


def _equals_reference(backend, which, mode, method, dtype) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 1, dtype)
    if method == "log" and cfg.candidate != "g":
        return assert_raises(ValueError, "candidate='g'", lambda: _call(backend, cfg, p, method=method))
    logits, h = _call(backend, cfg, p, mode=mode, method=method)
    ref_logits, ref_h = _forward(p.params_ref, p.tokens, cfg, p.state_ref)
    return _judge(logits, h, ref_logits, ref_h, dtype, method=method)


def _padded(cfg: MinGRULMConfig, seed: int, dtype: str):
    """Three prompts of lengths 7, 4, 1, right-padded with random tokens into one ``(3, 7)`` batch."""
    p = make_problem(cfg, seed, dtype, batch=3, with_state=False)
    lengths = np.array([LENGTH, 4, 1])
    return p, lengths


def _padding_equals_alone(backend, which, mode, method, dtype) -> Outcome:
    cfg = config(which)
    p, lengths = _padded(cfg, 2, dtype)
    logits, h = _call(backend, cfg, p, lengths=lengths, mode=mode, method=method)
    outcomes = []
    for row, n in enumerate(lengths):
        alone_logits, alone_h = _forward(p.params_ref, p.tokens[row:row + 1, :n], cfg)
        outcomes.append(_judge(logits[row:row + 1, :n], h[:, row:row + 1], alone_logits, alone_h,
                               dtype, method=method, label=f"row {row} (length {n}): "))
    pads = np.concatenate([logits[row, n:].ravel() for row, n in enumerate(lengths)])
    if np.any(pads != 0):
        raise CaseFailure(f"logits at padded positions must be zero, max |logits| there = {np.abs(pads).max()}")
    return compare_many(outcomes)


def _prefill_then_decode(backend, which, dtype) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 3, dtype)
    ref_logits, ref_h = _forward(p.params_ref, p.tokens, cfg, p.state_ref)
    outcomes = []
    for k in (1, 4):
        pre_logits, h = _call(backend, cfg, p, tokens=p.tokens[:, :k])
        step_logits, h_steps = _steps(backend, cfg, p, p.tokens[:, k:], h)
        outcomes.append(_judge(np.concatenate([pre_logits, step_logits], axis=1), h_steps, ref_logits, ref_h,
                               dtype, label=f"prefill {k} + decode: "))
        rest_logits, h_rest = _call(backend, cfg, p, tokens=p.tokens[:, k:], h0=h)
        outcomes.append(_judge(np.concatenate([pre_logits, rest_logits], axis=1), h_rest, ref_logits, ref_h,
                               dtype, label=f"prefill {k} + prefill rest: "))
    return compare_many(outcomes)


def _default_state(backend, which, dtype) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 4, dtype, with_state=False)
    init = backend.mingru_lm_initial_state(cfg, BATCH, dtype)
    h_init = _stacked(backend, init, cfg)
    want = np.full((cfg.n_layers, BATCH, cfg.d_inner), cfg.default_state, mingru_spec.state_dtype(dtype))
    if h_init.dtype != want.dtype or not np.array_equal(h_init, want):
        raise CaseFailure(f"mingru_lm_initial_state gave {h_init!r}, expected {want!r}")
    ref_logits, ref_h = _forward(p.params_ref, p.tokens, cfg)
    logits, h = _call(backend, cfg, p, h0=None)
    logits_e, h_e = _call(backend, cfg, p, h0=h_init)
    return compare_many([_judge(logits, h, ref_logits, ref_h, dtype, label="None: "),
                         _judge(logits_e, h_e, ref_logits, ref_h, dtype, label="explicit: ")])


def _empty(backend, which) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 5, "float32", length=0)
    logits, h = _call(backend, cfg, p)
    if logits.shape != (BATCH, 0, cfg.vocab_size):
        raise CaseFailure(f"logits have shape {logits.shape}, expected {(BATCH, 0, cfg.vocab_size)}")
    return compare("state.h", h, p.h0, "float32")


def _generation(backend, which, dtype) -> Outcome:
    """Right-padded batched generation: the logits each token was drawn from == the full forward's logits at
    that position (reference, each row's real prompt then the backend's own tokens); in float64 the tokens also
    equal those the shared sampler draws from the reference's logits."""
    cfg = config(which)
    p, lengths = _padded(cfg, 6, dtype)
    n_new = 5
    tokens, logits = backend.mingru_lm_generate(
        backend_params(backend, p.params), as_backend(backend, p.tokens), config=cfg, max_new_tokens=n_new,
        temperature=0.8, top_k=6, seed=11, lengths=as_backend(backend, lengths), return_logits=True)
    tokens, logits = as_numpy(backend, tokens), as_numpy(backend, logits)
    if tokens.shape != (3, n_new) or logits.shape != (3, n_new, cfg.vocab_size):
        raise CaseFailure(f"generate returned shapes {tokens.shape}, {logits.shape}")
    outcomes = []
    for row, n in enumerate(lengths):
        full = np.concatenate([p.tokens[row, :n], tokens[row, :-1]])[None]
        ref_logits, _ = spec.forward(p.params_ref, full, cfg)
        outcomes.append(compare(f"row {row} generation logits", logits[row], ref_logits[0, n - 1:], dtype, grad=True))
    if dtype == "float64":
        ref_tokens, _ = spec.generate_loop(
            lambda t, n: spec.forward(p.params_ref, t, cfg, lengths=n),
            lambda t, s: spec.step(p.params_ref, t, s, cfg),
            np.asarray, p.tokens, lengths, n_new, 0.8, 6, 11)
        if not np.array_equal(tokens, ref_tokens):
            raise CaseFailure(f"tokens {tokens.tolist()} != reference sampler's {ref_tokens.tolist()}")
    return compare_many(outcomes)


def _batch_equals_alone(backend, which) -> Outcome:
    """Row ``b`` of a batched (padded) generation == that prompt alone with ``seed + b`` (greedy and sampled)."""
    cfg = config(which)
    p, lengths = _padded(cfg, 7, "float64")
    params = backend_params(backend, p.params)
    for temperature, top_k in ((0.0, None), (1.0, None), (0.7, 3)):
        batched = as_numpy(backend, backend.mingru_lm_generate(
            params, as_backend(backend, p.tokens), config=cfg, max_new_tokens=4, temperature=temperature,
            top_k=top_k, seed=5, lengths=as_backend(backend, lengths)))
        for row, n in enumerate(lengths):
            alone = as_numpy(backend, backend.mingru_lm_generate(
                params, as_backend(backend, p.tokens[row:row + 1, :n]), config=cfg, max_new_tokens=4,
                temperature=temperature, top_k=top_k, seed=5 + row))
            if not np.array_equal(batched[row], alone[0]):
                raise CaseFailure(f"temperature={temperature}, top_k={top_k}: row {row} of the batch generated "
                                  f"{batched[row].tolist()}, alone {alone[0].tolist()}")
    return Outcome(True, detail="batched == alone for greedy and sampled generation")


# --- gradients: the VJP against a central difference of the reference along a random direction ------------


def _gradient(backend, which) -> Outcome:
    cfg = config(which)
    p = make_problem(cfg, 8, "float64", length=5)
    names = sorted(p.params)
    n_p = len(names)
    rng = np.random.default_rng(9)
    ct_logits = rng.standard_normal((BATCH, 5, cfg.vocab_size))
    ct_h = rng.standard_normal(p.h0.shape)
    direction = {n: rng.standard_normal(p.params[n].shape) for n in names}
    dir_h0 = rng.standard_normal(p.h0.shape)

    def fn(*args):
        params = dict(zip(names, args[:n_p]))
        logits, state = backend.mingru_lm(params, as_backend(backend, p.tokens), config=cfg,
                                          initial_state=State(tuple(args[n_p:])))
        return (logits, *state.h)

    primals = tuple(as_backend(backend, v) for v in [*(p.params[n] for n in names), *p.h0])
    cts = tuple(as_backend(backend, c) for c in (ct_logits, *ct_h))
    grads = [as_numpy(backend, g) for g in backend_vjp(backend)(fn, primals, cts)]
    derivative = (sum(float(np.sum(g * direction[n])) for n, g in zip(names, grads))
                  + float(np.sum(np.stack(grads[n_p:]) * dir_h0)))

    def loss(eps: float) -> float:
        params = {n: p.params[n] + eps * direction[n] for n in names}
        logits, h = _forward(params, p.tokens, cfg, State(tuple(p.h0 + eps * dir_h0)))
        return float(np.sum(logits * ct_logits) + np.sum(h * ct_h))

    return directional_derivative_outcome(derivative, loss)


# --- bad input ------------------------------------------------------------------------------------------------


def _bad_inputs() -> dict[str, tuple[str, type, str, Callable]]:
    cfg = config("glu")
    other = MinGRULMConfig(**{**CONFIGS["glu"], "n_layers": 3})
    wider = MinGRULMConfig(**{**CONFIGS["glu"], "expansion": 2.0})

    def call(*, tokens=None, h0="given", lengths=None, mode="auto", method="auto", params=None):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            if params is not None:
                p.params = params(p.params)
            return _call(backend, cfg, p, tokens=tokens, h0=h0, lengths=lengths, mode=mode, method=method)
        return run

    def call_state(state):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            return backend.mingru_lm(backend_params(backend, p.params), as_backend(backend, p.tokens), config=cfg,
                                     initial_state=state(backend))
        return run

    def step(token, h=None):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            return backend.mingru_lm_step(backend_params(backend, p.params), as_backend(backend, token),
                                          _state(backend, p.h0 if h is None else h), config=cfg)
        return run

    def generate(lengths=None, **kw):
        def run(backend):
            p = make_problem(cfg, 9, "float32")
            args = dict(max_new_tokens=2, temperature=1.0, top_k=None, seed=0)
            args.update(kw)
            return backend.mingru_lm_generate(backend_params(backend, p.params), as_backend(backend, p.tokens),
                                              config=cfg, lengths=as_backend(backend, lengths), **args)
        return run

    f32 = np.float32
    toks = np.zeros((BATCH, LENGTH), np.int64)
    return {
        "token-too-large": ("a token id >= vocab_size raises ValueError naming vocab_size.", ValueError, "vocab_size",
                            call(tokens=np.full((BATCH, LENGTH), VOCAB, np.int64))),
        "token-negative": ("a negative token id raises ValueError.", ValueError, "outside",
                           call(tokens=np.full((BATCH, LENGTH), -1, np.int64))),
        "tokens-float": ("float tokens raise TypeError.", TypeError, "integer", call(tokens=toks.astype(f32))),
        "tokens-1d": ("tokens without a time axis raise ValueError.", ValueError, "(B, T)",
                      call(tokens=np.zeros(BATCH, np.int64))),
        "state-other-depth": ("a state from a model with another n_layers raises ValueError.", ValueError,
                              "different configuration",
                              call_state(lambda be: _state(be, np.zeros((other.n_layers, BATCH, other.d_inner),
                                                                        f32)))),
        "state-other-width": ("a state from a model with another d_inner raises ValueError.", ValueError,
                              "different configuration",
                              call_state(lambda be: _state(be, np.zeros((wider.n_layers, BATCH, wider.d_inner),
                                                                        f32)))),
        "state-not-a-state": ("a bare array as state raises TypeError naming State.", TypeError, "State",
                              call_state(lambda be: as_backend(be, np.zeros((cfg.n_layers, BATCH, cfg.d_inner), f32)))),
        "state-wrong-dtype": ("a float64 state for float32 params raises TypeError.", TypeError, "state",
                              call(h0=np.zeros((cfg.n_layers, BATCH, cfg.d_inner)))),
        "lengths-too-long": ("lengths above T raise ValueError.", ValueError, "lengths",
                             call(lengths=np.array([LENGTH + 1, 1]))),
        "lengths-wrong-shape": ("lengths not (B,) raise ValueError.", ValueError, "lengths",
                                call(lengths=np.array([1, 2, 3]))),
        "lengths-with-log": ("method='log' with lengths raises ValueError naming chunked.", ValueError,
                             "chunked", call(lengths=np.array([3, 2]), method="log")),
        "unknown-method": ("an unknown method raises ValueError listing the valid ones.", ValueError, "associative",
                           call(method="magic")),
        "unknown-mode": ("an unknown mode raises ValueError.", ValueError, "mode", call(mode="fast")),
        "params-missing": ("params without head.kernel raise ValueError naming it.", ValueError, "head.kernel",
                           call(params=lambda ps: {k: v for k, v in ps.items() if k != "head.kernel"})),
        "step-token-out-of-range": ("decode_step with a token id >= vocab_size raises ValueError.", ValueError,
                                    "vocab_size", step(np.full(BATCH, VOCAB, np.int64))),
        "step-state-other-depth": ("decode_step with another model's state raises ValueError.", ValueError,
                                   "different configuration",
                                   step(np.zeros(BATCH, np.int64), np.zeros((3, BATCH, cfg.d_inner), f32))),
        "generate-empty-prompt": ("generation from a row with no real token raises ValueError.", ValueError,
                                  "at least one real token", generate(lengths=np.array([3, 0]))),
        "generate-bad-temperature": ("a negative temperature raises ValueError.", ValueError, "temperature",
                                     generate(temperature=-1.0)),
        "generate-bad-top-k": ("top_k above vocab_size raises ValueError.", ValueError, "top_k",
                               generate(top_k=VOCAB + 1)),
    }


# --- the case list ---------------------------------------------------------------------------------------------


def cases(backend: ModuleType) -> list[Case]:
    req = ("mingru_lm",)
    out: list[Case] = []

    def add(case_id, prop, doc, fn, requires=req):
        out.append(Case(id=f"mingru_lm/{prop}/{case_id}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"mingru_lm/{prop}/{case_id}")))

    for which in CONFIGS:
        for label, mode, method in scan_and_step_paths(backend):
            for dtype in DTYPES:
                add(f"{which}[{label},{dtype}]", "equals-reference",
                    f"mingru_lm ({which}) via {label}: logits and final state equal the float64 reference",
                    lambda be, w=which, mo=mode, me=method, d=dtype: _equals_reference(be, w, mo, me, d))
        for label, mode, method in (("auto", "parallel", "auto"), ("mode=sequential", "sequential", "auto")):
            for dtype in DTYPES:
                add(f"{which}[{label},{dtype}]", "padding",
                    f"right-padded prompts of lengths 7, 4, 1 in one batch give each row's logits and state "
                    f"as that prompt alone, and zero logits at pads ({which}, {label})",
                    lambda be, w=which, mo=mode, me=method, d=dtype: _padding_equals_alone(be, w, mo, me, d))
        add(f"{which}[float32]", "prefill-then-decode",
            f"prefill of tokens[:k] then decode_step (or a second prefill from the carried state) equals one "
            f"full pass, k in 1, 4 ({which})",
            lambda be, w=which: _prefill_then_decode(be, w, "float32"), requires=(*req, "mingru_lm_step"))
        add(f"{which}[float32]", "default-state",
            f"initial_state=None equals mingru_lm_initial_state, filled with default_state ({which})",
            lambda be, w=which: _default_state(be, w, "float32"), requires=(*req, "mingru_lm_initial_state"))
        add(f"{which}", "empty-sequence", f"T = 0 gives (B, 0, V) logits and the initial state back ({which})",
            lambda be, w=which: _empty(be, w))
        for dtype in DTYPES:
            add(f"{which}[{dtype}]", "generation-logits",
                f"batched right-padded generation: the logits of every generated token equal the full-sequence "
                f"forward logits at that position; float64 tokens equal the reference sampler's ({which})",
                lambda be, w=which, d=dtype: _generation(be, w, d), requires=("mingru_lm_generate",))
        add(f"{which}", "generation-batch-isolation",
            f"each row of a batched generation equals that prompt generated alone with seed + row ({which})",
            lambda be, w=which: _batch_equals_alone(be, w), requires=("mingru_lm_generate",))
        add(f"{which}[float64]", "gradient",
            f"the VJP (params and initial state; cotangents on logits and state) contracted with a random "
            f"direction equals a central difference of the reference ({which})",
            lambda be, w=which: _gradient(be, w), requires=(*req, "vjp"))
    for bad, (doc, exc, needle, fn) in _bad_inputs().items():
        if bad.startswith("step-"):
            needs = ("mingru_lm_step",)
        elif bad.startswith("generate-"):
            needs = ("mingru_lm_generate",)
        else:
            needs = req
        add(bad, "bad-input", doc, lambda be, e=exc, n=needle, f=fn: assert_raises(e, n, lambda: f(be)), requires=needs)
    return out
