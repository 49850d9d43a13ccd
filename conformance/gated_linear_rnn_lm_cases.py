"""Conformance cases for GatedLinearRNNLM / GateLoopLM (``spec/gated_linear_rnn_lm.md`` §10).

Every case draws parameters, inputs and a starting state in NumPy from a fixed seed, rounds them to the case
dtype, runs the backend's pure functions (``gated_linear_rnn_lm``, ``gated_linear_rnn_lm_step``,
``gated_linear_rnn_lm_initial_state``) and judges the result against the float64 NumPy reference
(``linrec.spec.gated_linear_rnn_lm.forward``) on the same rounded numbers upcast. Cross-backend equality
(reference == jax == torch with the same canonical parameters) follows.

Outputs and ``final_state.h`` use ``tolerance_for(dtype, grad=True)`` (§9 table ×10: a model output is many
matrix products deep); ``final_state.position`` must be exact. Gradients are checked against the reference
differentiated by complex step (exact to float64 rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
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
from linrec.spec import gated_linear_rnn_lm as spec
from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig
from linrec.spec.state import State

__all__ = ["VARIANTS", "cases", "make_problem"]

LM = "gated_linear_rnn_lm"
DTYPES = ("float32", "float64")
BATCH, LENGTH = 2, 6
#: rows start at these positions (a state carried from earlier tokens), so positional encodings are offset
START = (0, 3)

_BASE = GatedLinearRNNLMConfig(n_layer=2, d_model=4, d_channel_mixing=5, d_h=3, input_vocab_size=7,
                               output_vocab_size=6, max_seq_length=12)
_SIN = replace(_BASE, positional_encoding_mode="sinusoidal")
_DROP = replace(_SIN, embedding_dropout=0.1, time_mixing_dropout=0.2, channel_mixing_dropout=0.3)

#: name -> (config, one-line doc). Together they exercise every option of the config.
VARIANTS: dict[str, tuple[GatedLinearRNNLMConfig, str]] = {
    "default": (_BASE, "word embedding, no positions, tied gates, tanh/tanh/sigmoid, GELU (tanh), head"),
    "sinusoidal": (_SIN, "sinusoidal positions at the state's true position"),
    "learned": (replace(_BASE, positional_encoding_mode="learned"), "learned positions (pos_embed)"),
    "untied": (replace(_BASE, use_tied_gates=False), "separate forget gate"),
    "true-recurrence": (replace(_BASE, use_true_recurrence=True, positional_encoding_mode="learned"),
                        "use_true_recurrence (sequential layer) with learned positions"),
    "features-no-head": (replace(_SIN, use_word_embedding=False, input_vocab_size=None, d_input=3, use_head=False,
                                 output_vocab_size=None),
                         "float features through input_proj, no head (returns the hidden (B, T, D))"),
    "gelu-exact-activations": (replace(_BASE, gelu_approximate=False, input_activation="gelu",
                                       hidden_activation="silu", eps=1e-3),
                               "exact (erf) GELU in the MLP, layer activations gelu/silu, eps=1e-3"),
    "compat-position-zero": (replace(_SIN, compat_step_position_zero=True),
                             "compat_step_position_zero: every call adds positions 0..T-1 (the original)"),
    "dropout-branch": (_DROP, "dropout masks on the branches (x + m * branch)"),
    "dropout-sum": (replace(_DROP, dropout_placement="sum"), "dropout masks on the sums (m * (x + branch))"),
}
DROPOUT_VARIANTS = ("dropout-branch", "dropout-sum")
#: variants whose decode path (prefill + steps, split, generation) is checked
DECODE_VARIANTS = tuple(v for v in VARIANTS if v not in DROPOUT_VARIANTS)
GRAD_VARIANTS = ("default", "true-recurrence", "features-no-head", "dropout-sum")
_GRAD_SIZES = dict(d_model=3, d_h=2, d_channel_mixing=3)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Problem:
    """Parameters, inputs, a starting state and (dropout variants) masks, rounded to ``dtype``."""

    config: GatedLinearRNNLMConfig
    params: dict[str, np.ndarray]
    inputs: np.ndarray
    state: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    dtype: str

    def reference(self, inputs=None, state=..., lengths=None, masks=...):
        params = {k: to_reference_precision(v) for k, v in self.params.items()}
        inputs = self.inputs if inputs is None else inputs
        if inputs.dtype.kind == "f":
            inputs = to_reference_precision(inputs)
        state = self.state if state is ... else state
        if state is not None:
            state = _to_state(lambda a: a, {"h": to_reference_precision(state["h"]), "position": state["position"]})
        masks = self.masks if masks is ... else masks
        out, final = spec.forward(params, inputs, self.config, state, lengths=lengths,
                                  dropout_masks={k: to_reference_precision(v) for k, v in masks.items()} or None)
        return out, _from_state(lambda a: a, final)


def _draw_params(config: GatedLinearRNNLMConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initialiser scale, with nonzero biases, norms away from 1/0 and (if present) a nonzero W_r."""
    out = {}
    for name, shape in spec.param_shapes(config).items():
        if name.endswith("recurrent_proj.kernel"):
            out[name] = rng.standard_normal(shape) * (0.5 / np.sqrt(shape[0]))
        elif name.endswith((".kernel", ".embedding")):
            out[name] = rng.standard_normal(shape) / np.sqrt(shape[0] if name.endswith(".kernel") else shape[1])
        elif name.endswith(".scale"):
            out[name] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            out[name] = rng.standard_normal(shape) * 0.3
    return out


def _draw_inputs(config: GatedLinearRNNLMConfig, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    if config.use_word_embedding:
        return rng.integers(0, config.input_vocab_size, (batch, length)).astype(np.int32)
    return rng.standard_normal((batch, length, config.d_input))


def make_problem(config: GatedLinearRNNLMConfig, dtype: str, seed: int, *, batch: int = BATCH,
                 length: int = LENGTH, start: tuple[int, ...] = START) -> Problem:
    rng = np.random.default_rng(seed)
    params = _draw_params(config, rng)
    inputs = _draw_inputs(config, rng, batch, length)
    h = rng.standard_normal((batch, config.n_layer, config.d_h)) * 0.5
    masks = {}
    for site, rate in spec.dropout_sites(config).items():
        if rate > 0:
            masks[site] = (rng.uniform(size=(batch, length, config.d_model)) >= rate) / (1.0 - rate)
    return Problem(
        config=config,
        params={k: rounded(v, dtype) for k, v in params.items()},
        inputs=inputs if inputs.dtype.kind == "i" else rounded(inputs, dtype),
        state={"h": rounded(h, spec.state_dtype(dtype)), "position": np.asarray(start[:batch], np.int32)},
        masks={k: rounded(v, dtype) for k, v in masks.items()},
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------------
# Running the backend


SEQUENTIAL = Path("mode-sequential", "sequential")
PARALLEL = Path("parallel", "parallel")


def _paths(backend: ModuleType, config: GatedLinearRNNLMConfig, *, all_methods: bool = False) -> list[Path]:
    if config.use_true_recurrence:
        return [SEQUENTIAL]
    if not all_methods:
        return [PARALLEL, SEQUENTIAL]
    methods = [m for m in getattr(backend, "METHODS", ()) if m != "log"]
    return [PARALLEL, *[Path(m, "parallel", m, 4 if m == "chunked" else None) for m in methods], SEQUENTIAL]


# The cases keep a state as ``{"h": (B, L, H), "position": (B,)}`` NumPy arrays (one array to compare); the
# models carry ``State(h=L arrays (B, H), position)`` (recurrence.md §0): these two convert at the boundary.


def _to_state(convert: Callable, state: dict[str, np.ndarray]) -> State:
    h = state["h"]
    return State(tuple(convert(np.ascontiguousarray(h[:, l])) for l in range(h.shape[1])), convert(state["position"]))


def _from_state(convert: Callable, state: State) -> dict[str, np.ndarray]:
    if not isinstance(state, State) or not isinstance(state.h, tuple):
        h_type = type(getattr(state, "h", None)).__name__
        raise CaseFailure(f"{LM} returned a state of type {type(state).__name__} (h: {h_type}), expected "
                          "State(h=tuple of L arrays, position)")
    return {"h": np.stack([convert(h) for h in state.h], axis=1), "position": convert(state.position)}


def _b_state(backend: ModuleType, state):
    return None if state is None else _to_state(backend.asarray, state)


def _n_state(backend: ModuleType, state) -> dict[str, np.ndarray]:
    return _from_state(lambda a: as_numpy(backend, a), state)


def _call(backend: ModuleType, prob: Problem, path: Path | None = None, *, inputs=None, state=..., lengths=None,
          masks=..., params=None, config=None):
    path = path or Path("auto", "auto")
    state = prob.state if state is ... else state
    masks = prob.masks if masks is ... else masks
    out, new = getattr(backend, LM)(
        backend_params(backend, prob.params if params is None else params),
        backend.asarray(prob.inputs if inputs is None else inputs),
        config=config or prob.config, initial_state=_b_state(backend, state),
        lengths=None if lengths is None else backend.asarray(lengths),
        dropout_masks={k: backend.asarray(v) for k, v in masks.items()} or None,
        mode=path.mode, method=path.method, chunk_size=path.chunk_size,
    )
    return as_numpy(backend, out), _n_state(backend, new)


def _step(backend: ModuleType, prob: Problem, input_t: np.ndarray, state, params=None):
    out, new = getattr(backend, f"{LM}_step")(backend_params(backend, params or prob.params),
                                               backend.asarray(np.ascontiguousarray(input_t)),
                                               _b_state(backend, state), config=prob.config)
    return as_numpy(backend, out), _n_state(backend, new)


def _steps(backend: ModuleType, prob: Problem, inputs: np.ndarray, state):
    outs = []
    for t in range(inputs.shape[1]):
        out, state = _step(backend, prob, inputs[:, t], state)
        outs.append(out)
    return np.stack(outs, axis=1), state


def _judge(label: str, got: tuple, want: tuple, dtype: str) -> Outcome:
    out, state = got
    want_out, want_state = want
    if out.dtype.name != dtype or state["h"].dtype.name != spec.state_dtype(dtype):
        return Outcome(False, detail=f"{label}: dtypes (out, h) = {(out.dtype.name, state['h'].dtype.name)}, "
                                     f"expected {(dtype, spec.state_dtype(dtype))}")
    if not np.array_equal(state["position"], want_state["position"]):
        return Outcome(False, detail=f"{label}: position {state['position'].tolist()}, "
                                     f"expected {np.asarray(want_state['position']).tolist()}")
    return compare_many([
        compare(f"{label} out", out, want_out, dtype, grad=True),
        compare(f"{label} final_state.h", state["h"], want_state["h"], dtype, grad=True),
    ])


# ---------------------------------------------------------------------------------------------
# Value cases


def _problem(variant: str, dtype: str, *tag: object) -> Problem:
    return make_problem(VARIANTS[variant][0], dtype, case_seed(variant, dtype, *tag))


def _equals_reference(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    prob = _problem(variant, dtype)
    return _judge(path.label, _call(backend, prob, path), prob.reference(), dtype)


def _from_zero_state(backend: ModuleType, dtype: str) -> Outcome:
    prob = _problem("sinusoidal", dtype, "zero")
    return _judge("state=None", _call(backend, prob, state=None), prob.reference(state=None), dtype)


def _prefill_then_decode(backend: ModuleType, variant: str, dtype: str, k: int = 2) -> Outcome:
    """Prefill ``k`` inputs, then one step per input: equals the full pass (compat: the reference's
    prefill + steps, which differ from the full pass as the original's do)."""
    prob = _problem(variant, dtype, "decode")
    out1, state = _call(backend, prob, inputs=prob.inputs[:, :k])
    out2, state = _steps(backend, prob, prob.inputs[:, k:], state)
    got = (np.concatenate([out1, out2], axis=1), state)
    if not prob.config.compat_step_position_zero:
        return _judge("prefill + decode vs full pass", got, prob.reference(), dtype)
    ref1, ref_state = prob.reference(inputs=prob.inputs[:, :k])
    refs = [ref1]
    for t in range(k, LENGTH):
        o, ref_state = prob.reference(inputs=prob.inputs[:, t : t + 1], state=ref_state)
        refs.append(o)
    return _judge("compat prefill + decode vs reference", got, (np.concatenate(refs, axis=1), ref_state), dtype)


def _split_invariance(backend: ModuleType, variant: str, k: int, dtype: str) -> Outcome:
    prob = _problem(variant, dtype, "split")
    out1, state = _call(backend, prob, inputs=prob.inputs[:, :k])
    out2, state = _call(backend, prob, inputs=prob.inputs[:, k:], state=state)
    return _judge(f"split at {k}", (np.concatenate([out1, out2], axis=1), state), prob.reference(), dtype)


def _greedy_generation(backend: ModuleType, variant: str, dtype: str, n_new: int = 4) -> Outcome:
    """Greedy decoding with the pure functions: the logits each token was drawn from equal the full pass over
    prompt + generated tokens (backend and reference) at every generated position."""
    prob = _problem(variant, dtype, "generate")
    prompt = prob.inputs[:, :3]
    logits, state = _call(backend, prob, inputs=prompt, state=None)
    last, tokens, drawn = logits[:, -1], [], []
    for i in range(n_new):
        token = np.argmax(last.astype(np.float64), axis=-1).astype(np.int32)
        tokens.append(token)
        drawn.append(last)
        if i + 1 < n_new:
            last, state = _step(backend, prob, token, state)
    sequence = np.concatenate([prompt, np.stack(tokens[:-1], axis=1)], axis=1)
    full, _ = _call(backend, prob, inputs=sequence, state=None)
    ref, _ = prob.reference(inputs=sequence, state=None)
    got = np.stack(drawn, axis=1)
    window = slice(prompt.shape[1] - 1, None)
    return compare_many([
        compare("generation logits vs backend full pass", got, full[:, window].astype(np.float64), dtype, grad=True),
        compare("generation logits vs reference full pass", got, ref[:, window], dtype, grad=True),
    ])


_LENGTHS = np.array([6, 2, 4], np.int32)


def _lengths(backend: ModuleType, variant: str, dtype: str) -> Outcome:
    """Right-padded rows of lengths 6, 2, 4 (padding ids -1) equal each row run alone; then two decode steps."""
    config = VARIANTS[variant][0]
    prob = make_problem(config, dtype, case_seed(variant, dtype, "lengths"), batch=3, start=(0, 3, 1))
    inputs = prob.inputs.copy()
    valid = np.arange(LENGTH)[None, :] < _LENGTHS[:, None]
    if config.use_word_embedding:
        inputs[~valid] = -1  # padding may hold any id
    got = _call(backend, prob, inputs=inputs, lengths=_LENGTHS)
    want = prob.reference(inputs=inputs, lengths=_LENGTHS)
    outcomes = [_judge("lengths vs each row alone", got, want, dtype)]
    state, ref_state = got[1], want[1]
    for t in range(2):
        x_t = prob.inputs[:, t]
        out, state = _step(backend, prob, x_t, state)
        ref, ref_state = prob.reference(inputs=x_t[:, None], state=ref_state)
        outcomes.append(_judge(f"decode step {t} after lengths", (out, state), (ref[:, 0], ref_state), dtype))
    return compare_many(outcomes)


def _initial_state_fn(backend: ModuleType, dtype: str) -> Outcome:
    state = getattr(backend, f"{LM}_initial_state")(_BASE, BATCH, dtype)
    if not isinstance(state, State) or not isinstance(state.h, tuple) or len(state.h) != _BASE.n_layer:
        return Outcome(False, detail=f"got {type(state).__name__}, want State(h=tuple of n_layer arrays, position)")
    state = _n_state(backend, state)
    h, position = state["h"], state["position"]
    want = spec.state_dtype(dtype)
    if h.shape != (BATCH, 2, 3) or h.dtype.name != want or h.any():
        return Outcome(False, detail=f"h: shape {h.shape} dtype {h.dtype.name}; want zeros {(BATCH, 2, 3)} {want}")
    if position.shape != (BATCH,) or position.dtype.name != spec.POSITION_DTYPE or position.any():
        return Outcome(False, detail=f"position: shape {position.shape} dtype {position.dtype.name}; want zeros int32")
    return Outcome(True, detail="State(h=L zeros (B, H), position=zeros (B,) int32)")


def _empty(backend: ModuleType, dtype: str) -> Outcome:
    prob = _problem("learned", dtype, "empty")
    out, state = _call(backend, prob, inputs=prob.inputs[:, :0])
    if out.shape != (BATCH, 0, 6):
        return Outcome(False, detail=f"out shape {out.shape}, expected {(BATCH, 0, 6)}")
    return _judge("T = 0", (out, state), (out, prob.state), dtype)


# ---------------------------------------------------------------------------------------------
# Bad input

_LEARNED = VARIANTS["learned"][0]
_FEATURES = VARIANTS["features-no-head"][0]


def _bad_input(backend: ModuleType, what: str) -> Outcome:
    prob = make_problem(_LEARNED, "float32", case_seed("bad", what))
    tokens, params, state = prob.inputs, prob.params, prob.state

    def run(**kw):
        return _call(backend, prob, **kw)

    if what == "token-out-of-range":
        return expect_error(lambda: run(inputs=np.full_like(tokens, 7)), ValueError, "input_vocab_size")
    if what == "negative-token":
        return expect_error(lambda: run(inputs=np.full_like(tokens, -1)), ValueError, "outside")
    if what == "step-token-out-of-range":
        return expect_error(lambda: _step(backend, prob, np.full(BATCH, 9, np.int32), state), ValueError,
                             "input_vocab_size")
    if what == "longer-than-max-seq-length":
        long = np.zeros((BATCH, 13), np.int32)
        return expect_error(lambda: run(inputs=long, state=None), ValueError, "max_seq_length")
    if what == "sinusoidal-longer-than-max-seq-length":
        sin = replace(prob, config=VARIANTS["sinusoidal"][0],
                      params={k: v for k, v in params.items() if not k.startswith("pos_embed")})
        return expect_error(lambda: _call(backend, sin, inputs=np.zeros((BATCH, 10), np.int32)), ValueError,
                             "max_seq_length")
    if what == "decode-past-max-seq-length":
        full = dict(state, position=np.full(BATCH, 12, np.int32))
        return expect_error(lambda: _step(backend, prob, tokens[:, 0], full), ValueError, "max_seq_length")
    if what == "state-from-other-config":
        other = dict(state, h=np.zeros((BATCH, 3, 3), state["h"].dtype))
        return expect_error(lambda: run(state=other), ValueError, "n_layer")
    if what == "state-wrong-dtype":
        other = dict(state, h=state["h"].astype(np.float64))
        return expect_error(lambda: run(state=other), TypeError, "initial_state.h[0]")
    if what == "state-without-position":
        lm = getattr(backend, LM)
        no_position = State(_b_state(backend, state).h)
        return expect_error(lambda: lm(backend_params(backend, params), backend.asarray(tokens), config=prob.config,
                                       initial_state=no_position), ValueError, "position")
    if what == "state-not-a-State":
        lm = getattr(backend, LM)
        as_dict = {"h": backend.asarray(state["h"]), "position": backend.asarray(state["position"])}
        return expect_error(lambda: lm(backend_params(backend, params), backend.asarray(tokens), config=prob.config,
                                       initial_state=as_dict), TypeError, "initial_state")
    if what == "lengths-with-log":
        return expect_error(lambda: run(lengths=np.array([6, 1], np.int32), path=Path("log", "parallel", "log")),
                             ValueError, "chunked")
    if what == "lengths-float":
        return expect_error(lambda: run(lengths=np.array([6.0, 1.0], np.float32)), TypeError, "lengths")
    if what == "float-inputs-with-word-embedding":
        return expect_error(lambda: run(inputs=tokens.astype(np.float32)), TypeError, "token")
    if what == "tokens-without-word-embedding":
        feat = make_problem(_FEATURES, "float32", case_seed("bad-features"))
        return expect_error(lambda: _call(backend, feat, inputs=tokens), TypeError, "floating")
    if what == "wrong-feature-size":
        feat = make_problem(_FEATURES, "float32", case_seed("bad-features"))
        return expect_error(lambda: _call(backend, feat, inputs=np.zeros((BATCH, 3, 4), np.float32)), ValueError,
                             "d_input")
    if what == "missing-param":
        short = {k: v for k, v in params.items() if k != "head.bias"}
        return expect_error(lambda: run(params=short), ValueError, "head.bias")
    if what == "param-wrong-shape":
        bad = dict(params, **{"layers.1.channel_mixing.fc1.kernel": np.zeros((4, 6), np.float32)})
        return expect_error(lambda: run(params=bad), ValueError, "layers.1.channel_mixing.fc1.kernel")
    if what == "lengths-out-of-range":
        return expect_error(lambda: run(lengths=np.array([7, 1], np.int32)), ValueError, "lengths")
    if what == "lengths-with-dropout-masks":
        masks = {"embedding": np.ones((BATCH, LENGTH, 4), np.float32)}
        return expect_error(lambda: run(lengths=np.array([6, 1], np.int32), masks=masks), ValueError,
                             "dropout_masks")
    if what == "dropout-mask-unknown-site":
        return expect_error(lambda: run(masks={"layers.5.time_mixing": np.ones((BATCH, LENGTH, 4), np.float32)}),
                             ValueError, "valid")
    if what == "dropout-mask-wrong-shape":
        return expect_error(lambda: run(masks={"embedding": np.ones((BATCH, LENGTH, 5), np.float32)}), ValueError,
                             "d_model")
    if what == "parallel-with-true-recurrence":
        tr = make_problem(VARIANTS["true-recurrence"][0], "float32", case_seed("bad-tr"))
        return expect_error(lambda: _call(backend, tr, PARALLEL), ValueError, "mode='sequential'")
    if what == "unknown-mode":
        return expect_error(lambda: run(path=Path("bogus", "bogus")), ValueError, "mode")
    raise CaseFailure(f"unknown bad-input case {what!r}")


BAD_INPUTS = (
    "token-out-of-range", "negative-token", "step-token-out-of-range", "longer-than-max-seq-length",
    "sinusoidal-longer-than-max-seq-length", "decode-past-max-seq-length", "state-from-other-config",
    "state-wrong-dtype", "state-without-position", "state-not-a-State", "lengths-with-log", "lengths-float",
    "float-inputs-with-word-embedding",
    "tokens-without-word-embedding", "wrong-feature-size", "missing-param", "param-wrong-shape",
    "lengths-out-of-range", "lengths-with-dropout-masks", "dropout-mask-unknown-site", "dropout-mask-wrong-shape",
    "parallel-with-true-recurrence", "unknown-mode",
)


# ---------------------------------------------------------------------------------------------
# Gradients


def _grad_problem(variant: str, dtype: str) -> tuple[Problem, np.ndarray, np.ndarray]:
    config = replace(VARIANTS[variant][0], **_GRAD_SIZES)
    prob = make_problem(config, dtype, case_seed("grad", variant, dtype), length=3)
    rng = np.random.default_rng(case_seed("grad-cotangent", variant, dtype))
    ct_out = rounded(rng.standard_normal((BATCH, 3, config.d_output)), dtype)
    ct_h = rounded(rng.standard_normal(prob.state["h"].shape), dtype)
    return prob, ct_out, ct_h


def _float_inputs(prob: Problem) -> bool:
    return not prob.config.use_word_embedding


@cache
def _reference_grads(variant: str, dtype: str) -> tuple[np.ndarray, ...]:
    """Complex-step gradients of ``sum(ct_out * out) + sum(ct_h * h)`` w.r.t. params, (float inputs) and h0."""
    prob, ct_out, ct_h = _grad_problem(variant, dtype)
    names = sorted(prob.params)
    base = [to_reference_precision(prob.params[k]) for k in names]
    if _float_inputs(prob):
        base.append(to_reference_precision(prob.inputs))
    base.append(to_reference_precision(prob.state["h"]))
    masks = {k: to_reference_precision(v) for k, v in prob.masks.items()} or None

    def loss(arrays: list[np.ndarray]) -> complex:
        inputs = arrays[len(names)] if _float_inputs(prob) else prob.inputs
        state = _to_state(lambda a: a, {"h": arrays[-1], "position": prob.state["position"]})
        out, new = spec.forward(dict(zip(names, arrays[: len(names)])), inputs, prob.config, state,
                                dropout_masks=masks)
        h = np.stack(new.h, axis=1)
        return np.sum(to_reference_precision(ct_out) * out) + np.sum(to_reference_precision(ct_h) * h)

    return tuple(complex_step_grads(loss, base))


def _gradient(backend: ModuleType, variant: str, path: Path, dtype: str) -> Outcome:
    prob, ct_out, ct_h = _grad_problem(variant, dtype)
    names = sorted(prob.params)
    fn_lm = getattr(backend, LM)
    position = prob.state["position"]
    masks = {k: backend.asarray(v) for k, v in prob.masks.items()} or None
    float_inputs = _float_inputs(prob)

    n_layer = prob.config.n_layer

    def fn(*arrays):
        inputs = arrays[len(names)] if float_inputs else backend.asarray(prob.inputs)
        state = State(tuple(arrays[len(arrays) - n_layer:]), backend.asarray(position))
        out, new = fn_lm(dict(zip(names, arrays[: len(names)])), inputs, config=prob.config, initial_state=state,
                         dropout_masks=masks, mode=path.mode, method=path.method)
        return (out, *new.h)

    primals = [backend.asarray(prob.params[k]) for k in names]
    labels = list(names)
    if float_inputs:
        primals.append(backend.asarray(prob.inputs))
        labels.append("inputs")
    primals += [backend.asarray(np.ascontiguousarray(prob.state["h"][:, l])) for l in range(n_layer)]
    labels += [f"initial_state.h[{l}]" for l in range(n_layer)]
    cotangents = (backend.asarray(ct_out), *(backend.asarray(np.ascontiguousarray(ct_h[:, l]))
                                             for l in range(n_layer)))
    got = backend_vjp(backend)(fn, tuple(primals), cotangents)
    *want, want_h = _reference_grads(variant, dtype)
    want += [want_h[:, l] for l in range(n_layer)]
    return compare_many([compare(f"d{label}", as_numpy(backend, g), w, dtype, grad=True)
                         for label, g, w in zip(labels, got, want)])


# ---------------------------------------------------------------------------------------------


def cases(backend: ModuleType) -> list[Case]:
    out: list[Case] = []
    req, req_step = (LM,), (LM, f"{LM}_step")

    def add(id_: str, prop: str, doc: str, fn: Callable[[ModuleType], Outcome], requires=req) -> None:
        out.append(Case(id=f"{LM}/{id_}", property=prop, doc=doc, fn=fn, requires=requires,
                        methods=log_method_of(f"{LM}/{id_}")))

    for variant, (config, doc) in VARIANTS.items():
        for path in _paths(backend, config, all_methods=variant == "default"):
            for dtype in DTYPES:
                add(f"equals-reference/{variant}[{path.label},{dtype}]", "equals-reference",
                    f"{doc}: logits and state equal the float64 reference.",
                    lambda be, v=variant, p=path, d=dtype: _equals_reference(be, v, p, d))
    for dtype in DTYPES:
        add(f"equals-reference/state-none[auto,{dtype}]", "none-equals-zeros",
            "state=None is zeros h and position 0.", lambda be, d=dtype: _from_zero_state(be, d))
        add(f"empty-sequence[auto,{dtype}]", "empty-sequence", "T = 0 returns (B, 0, V) and the state unchanged.",
            lambda be, d=dtype: _empty(be, d))

    for variant in DECODE_VARIANTS:
        for dtype in DTYPES:
            add(f"prefill-then-decode/{variant}[step,{dtype}]", "prefill-then-step",
                "Prefill 2 inputs, then one decode step per input: equals the full pass (compat: the reference's "
                "own prefill + steps).", lambda be, v=variant, d=dtype: _prefill_then_decode(be, v, d), req_step)
    for variant in ("sinusoidal", "learned", "true-recurrence"):
        for k in (0, 4):
            add(f"split-invariance/{variant}[k={k},float64]", "split-invariance",
                "Two calls joined through the state (h and position) equal one call.",
                lambda be, v=variant, k=k: _split_invariance(be, v, k, "float64"))
    for variant in ("default", "sinusoidal", "learned", "true-recurrence"):
        for dtype in DTYPES:
            add(f"generation/greedy-logits-equal-full-pass/{variant}[step,{dtype}]", "generation",
                "Greedy decoding: the logits of every generated token equal the full forward at that position.",
                lambda be, v=variant, d=dtype: _greedy_generation(be, v, d), req_step)
    for variant in ("default", "learned", "true-recurrence", "compat-position-zero", "features-no-head"):
        for dtype in DTYPES:
            add(f"lengths/batched-equals-alone/{variant}[mixed,{dtype}]", "batched-equals-alone",
                "Right-padded rows of different lengths equal each row run alone; decoding continues per row.",
                lambda be, v=variant, d=dtype: _lengths(be, v, d), req_step)
    for dtype in (*DTYPES, "bfloat16"):
        add(f"initial-state/function[{dtype}]", "initial-state",
            "initial_state gives h zeros (B, L, H) in the state dtype and position zeros (B,) int32.",
            lambda be, d=dtype: _initial_state_fn(be, d), (f"{LM}_initial_state",))
    for what in BAD_INPUTS:
        add(f"bad-input/{what}[float32]", "bad-input", f"{what}: raises a clear error naming the problem.",
            lambda be, w=what: _bad_input(be, w), req_step)
    for variant in GRAD_VARIANTS:
        config = VARIANTS[variant][0]
        for dtype in ("float64", "float32") if variant == "default" else ("float64",):
            path = _paths(backend, config)[0]
            add(f"gradient/{variant}[{path.label},{dtype}]", "gradient",
                "VJP w.r.t. every parameter, float inputs and initial_state.h equals the complex-step reference.",
                lambda be, v=variant, p=path, d=dtype: _gradient(be, v, p, d), (LM, "vjp"))
    return out
