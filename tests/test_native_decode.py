"""The native decode programs (``linrec.backends.native.decode``, ``linrec_decode.cc``) and the torch LM decoders
that run them (``decoder(fused=...)``, ``linrec.backends.torch.native_decode``).

A fused decoder must give what ``decode_step`` gives within the float32 tolerance over a token loop, for every
configuration the program covers and at batch sizes on both sides of the dense kernel's row block; refuse what it
cannot run when asked to run it; and never read outside a table.
"""

from __future__ import annotations

import math
from importlib import import_module

import numpy as np
import pytest

from linrec.backends import native
from linrec.backends.native.dense import MAX_ROWS
from linrec.spec import gated_linear_rnn_lm as glr_spec
from linrec.spec import mingru_lm as mingru_spec
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel not built: {native.build_error()}")

VOCAB = 13
GLR = {
    "default": {},
    "untied, true recurrence, sinusoidal, exact gelu": dict(use_tied_gates=False, use_true_recurrence=True,
                                                           positional_encoding_mode="sinusoidal",
                                                           gelu_approximate=False),
    "learned positions, scalar activations": dict(positional_encoding_mode="learned", input_activation="gelu_exact",
                                                  hidden_activation="softplus", gate_activation="sigmoid"),
    "vector activations": dict(input_activation="silu", hidden_activation="relu", gate_activation="sigmoid",
                               compat_step_position_zero=True, positional_encoding_mode="learned"),
    "features in, no head": dict(use_word_embedding=False, d_input=5, use_head=False),
}
MINGRU = {
    "glu": {},
    "prenorm, g, expansion": dict(block="prenorm", candidate="g", expansion=1.5, mingru_bias=False,
                                  head_bias=False),
    "prenorm, default state": dict(block="prenorm", default_state=0.25),
}


FRAMEWORKS = ["torch", "jax"]


def _perturbed(params: dict, seed: int) -> dict:
    """Biases and norms away from their zero/one init, so every term is exercised."""
    rng = np.random.default_rng(seed)
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}


def _lm(framework: str, model: str, fields: dict, dtype: str = "float32"):
    pytest.importorskip(framework)
    backend = import_module(f"linrec.backends.{framework}")
    if model == "gated_linear_rnn_lm":
        base = dict(n_layer=2, d_model=16, d_channel_mixing=24, d_h=16, max_seq_length=64)
        if fields.get("use_word_embedding", True):
            base.update(input_vocab_size=VOCAB, output_vocab_size=VOCAB)
        elif fields.get("use_head", True):
            base.update(output_vocab_size=VOCAB)
        cfg = glr_spec.GatedLinearRNNLMConfig(**base, **fields)
        params = _perturbed(glr_spec.init_params(cfg, seed=5, dtype=dtype), 1)
        return backend.GatedLinearRNNLM.from_canonical(cfg, params)
    cfg = mingru_spec.MinGRULMConfig(VOCAB, 16, 2, **fields)
    return backend.MinGRULM.from_canonical(cfg, _perturbed(mingru_spec.init_params(cfg, seed=5, dtype=dtype), 1))


def _x64(framework: str):
    """Where float64 exists: JAX's 64-bit mode, scoped (linrec never turns it on globally)."""
    if framework == "jax":
        import jax

        return jax.enable_x64(True)
    import contextlib

    return contextlib.nullcontext()


def _arrays(framework: str):
    return import_module(f"linrec.backends.{framework}.arrays")


def _inputs(framework: str, config, rows: int, rng):
    arrays = _arrays(framework)
    if getattr(config, "use_word_embedding", True):
        return arrays.asarray(rng.integers(0, VOCAB, rows).astype(np.int32))
    return arrays.asarray(rng.standard_normal((rows, config.d_input)).astype(np.float32))


def _close(framework: str, got, want):
    arrays = _arrays(framework)
    err, allowed = max_violation(arrays.to_numpy(got), arrays.to_numpy(want), tolerance_for("float32"))
    assert err <= allowed, (err, allowed)


def _count_native_steps(framework: str, monkeypatch) -> list:
    native_decode = import_module(f"linrec.backends.{framework}.native_decode")
    calls = []
    real = native_decode.NativeStep.__call__
    monkeypatch.setattr(native_decode.NativeStep, "__call__", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize(("model", "fields"), [("gated_linear_rnn_lm", f) for f in GLR.values()]
                         + [("mingru_lm", f) for f in MINGRU.values()], ids=[*GLR, *MINGRU])
def test_fused_decoder_equals_decode_step(model, fields, rows, framework, monkeypatch):
    """Batch 9 spans more rows than the dense kernel's 8-row limit for the framework steps; logits and every
    layer's state within the float32 tolerance after each of 5 tokens, and the native program is what ran (JAX:
    counted while tracing, once per compiled shape)."""
    lm = _lm(framework, model, fields)
    calls = _count_native_steps(framework, monkeypatch)
    decode = lm.decoder()
    rng = np.random.default_rng(rows)
    s1 = s2 = lm.initial_state(rows)
    for _ in range(5):
        x = _inputs(framework, lm.config, rows, rng)
        l1, s1 = lm.decode_step(x, s1)
        l2, s2 = decode(x, s2)
        _close(framework, l2, l1)
        for h1, h2 in zip(s1.h, s2.h):
            _close(framework, h2, h1)
    assert len(calls) == (5 if framework == "torch" else 1)
    if model == "gated_linear_rnn_lm":
        np.testing.assert_array_equal(np.asarray(s2.position), np.asarray(s1.position))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", ["gated_linear_rnn_lm", "mingru_lm"])
def test_fused_true_refuses_what_it_cannot_run_and_false_never_runs_it(framework, model, monkeypatch):
    native_decode = import_module(f"linrec.backends.{framework}.native_decode")
    with _x64(framework), pytest.raises(ValueError, match="float32"):
        _lm(framework, model, {}, dtype="float64").decoder(fused=True)
    lm = _lm(framework, model, {})
    with pytest.raises(TypeError, match="fused"):
        lm.decoder(fused="yes")
    token = _inputs(framework, lm.config, 2, np.random.default_rng(0))
    calls = _count_native_steps(framework, monkeypatch)
    lm.decoder(fused=False)(token, lm.initial_state(2))
    assert not calls
    with _x64(framework):  # float64 under the default: the framework step, no error
        lm64 = _lm(framework, model, {}, dtype="float64")
        lm64.decoder()(token, lm64.initial_state(2))
    assert not calls
    monkeypatch.setattr(native_decode.native, "available", lambda: False)
    monkeypatch.setattr(native_decode.native, "build_error", lambda: "no compiler")
    with pytest.raises(ValueError, match="no compiler"):
        lm.decoder(fused=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_decoder_keeps_refusing_bad_tokens(framework):
    lm = _lm(framework, "mingru_lm", {})
    with pytest.raises(ValueError, match="token"):
        lm.decoder()(_arrays(framework).asarray(np.array([VOCAB, 0], np.int32)), lm.initial_state(2))


@pytest.mark.parametrize("model", ["gated_linear_rnn_lm", "mingru_lm"])
def test_program_never_reads_outside_a_table(model):
    """The decoders check tokens first; the kernel checks again, so a step called without those checks raises
    instead of reading memory past the embedding (or position) table."""
    torch = pytest.importorskip("torch")
    from linrec.backends.native.decode import DecodeError
    from linrec.backends.torch import native_decode
    from linrec.backends.torch.native_dense import pack_kernels

    lm = _lm("torch", model, dict(positional_encoding_mode="learned") if model == "gated_linear_rnn_lm" else {})
    params = pack_kernels({k: v.detach() for k, v in lm._params().items()})
    step = getattr(native_decode, f"{model}_step")(params, lm.config)
    h = lm.initial_state(2).h
    position = torch.zeros(2, dtype=torch.int32)
    for bad in (VOCAB, -1):
        with pytest.raises(DecodeError, match="outside"):
            step(torch.tensor([0, bad]), h, position)
    if model == "gated_linear_rnn_lm":
        with pytest.raises(DecodeError, match="outside"):
            step(torch.tensor([0, 1]), h, torch.tensor([0, 64], dtype=torch.int32))


def test_jax_program_never_reads_outside_a_table():
    """The same through XLA FFI: an error from the call, not a read past the table."""
    jax = pytest.importorskip("jax")
    from linrec.backends.jax import native_decode

    lm = _lm("jax", "mingru_lm", {})
    step = native_decode.mingru_lm_step(lm.canonical_params(), lm.config)
    with pytest.raises(jax.errors.JaxRuntimeError, match="outside its embedding table"):
        step(jax.numpy.array([0, VOCAB], jax.numpy.int32), lm.initial_state(2).h)[0].block_until_ready()


def _activations_reference(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        sig = 1.0 / (1.0 + np.exp(-x))
        return {
            "identity": x,
            "tanh": np.tanh(x),
            "sigmoid": sig,
            "relu": np.where(x < 0, 0.0, x),
            "gelu": 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
            "gelu_exact": 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
            "silu": x * sig,
            "softplus": np.logaddexp(0.0, x),
        }[name]


@pytest.mark.parametrize("name", ["identity", "tanh", "sigmoid", "relu", "gelu", "gelu_exact", "silu", "softplus"])
def test_activations_against_float64(name):
    """Every activation of the programs (eight lanes at a time where the CPU has AVX2, the rest one by one: 997
    inputs exercise both) within a few float32 ulps of float64, relative to the input's scale where the function
    subtracts nearly equal terms (``gelu``'s ``1 + tanh`` for negative inputs); NaN passes; ``±inf`` as IEEE."""
    from linrec.backends.native import decode as nd

    special = [0.0, -0.0, 1e-30, -1e-30, 1e-6, 0.6249, 0.625, 0.6251, 20.5, 44.0, 88.0, 89.0, -88.0, -104.0]
    x = np.concatenate([np.linspace(-30, 30, 983), special]).astype(np.float32)
    y = np.empty_like(x)
    nd.Program([nd.Op(nd.ACT, 1, 0, kind=nd.ACTIVATIONS[name], width=x.size)], 2).run([x.ctypes.data,
                                                                                        y.ctypes.data], 1)
    want = _activations_reference(name, x)
    eps = float(np.finfo(np.float32).eps)
    err = np.abs(y.astype(np.float64) - want)
    allowed = 8 * eps * (np.abs(want) + np.abs(x)) + 1e-37
    bad = err > allowed
    assert not bad.any(), list(zip(x[bad][:5], y[bad][:5], want[bad][:5]))
    edge = np.array([np.nan, np.inf, -np.inf] + [0.0] * 5, np.float32)  # one lane group: the vector path
    out = np.empty_like(edge)
    nd.Program([nd.Op(nd.ACT, 1, 0, kind=nd.ACTIVATIONS[name], width=8)], 2).run([edge.ctypes.data, out.ctypes.data],
                                                                                 1)
    assert np.isnan(out[0])
    if name in ("identity", "tanh", "sigmoid", "relu", "softplus"):
        np.testing.assert_array_equal(out[1:3], _activations_reference(name, edge[1:3]).astype(np.float32))


@pytest.mark.parametrize("candidate", ["identity", "g"])
def test_minlstm_cell_at_extreme_inputs(candidate):
    """The cell's gates from three exps (``linrec_decode.cc``): saturated and opposite gates, ±inf, give the spec's
    ``f' = σ(-d)``, ``i' = σ(d)`` (float64 reference) without 0/0 or inf - inf, in the eight-lane and the scalar
    code (11 columns: one lane group and a tail of 3); a NaN stays in its own column."""
    from linrec.backends.native import decode as nd
    from linrec.spec import minlstm as spec

    pairs = [(-60.0, -60.0), (-60.0, 60.0), (60.0, -60.0), (60.0, 60.0), (-120.0, -60.0), (0.0, -np.inf),
             (-np.inf, 0.0), (np.inf, np.inf), (3.0, -4.0), (-500.0, -400.0), (1e-3, -2.5)]
    u_f, u_i = (np.array([[p[k] for p in pairs]], np.float32) for k in (0, 1))
    u_h = np.linspace(-3, 3, len(pairs), dtype=np.float32)[None]
    h0 = np.linspace(-1, 2, len(pairs), dtype=np.float32)[None]
    width = len(pairs)
    program = nd.Program([nd.Op(nd.MINLSTM_CELL, 2, 0, aux=1, width=width, flag=int(candidate == "g"))], 3)

    def run(u):
        out = np.empty_like(h0)
        program.run([u.ctypes.data, h0.ctypes.data, out.ctypes.data], 1)
        return out

    u = np.ascontiguousarray(np.concatenate([u_f, u_i, u_h], axis=-1))
    got = run(u)
    with np.errstate(over="ignore", invalid="ignore"):
        f64 = u.astype(np.float64)
        d = spec.softplus(-f64[:, :width]) - spec.softplus(-f64[:, width:2 * width])
        want = spec.sigmoid(-d) * h0 + spec.sigmoid(d) * spec.candidate(f64[:, 2 * width:], candidate)
    assert np.all(np.isfinite(got)), got
    err, allowed = max_violation(got, want, tolerance_for("float32"))
    assert err <= allowed, (got, want)
    for column in (0, width - 1):  # a vector lane and the scalar tail
        bad = u.copy()
        bad[0, column] = np.nan
        out = run(bad)
        assert np.isnan(out[0, column]) and np.isfinite(np.delete(out[0], column)).all()


def test_program_refuses_bad_slots_and_operations():
    from linrec.backends.native import decode as nd

    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="slot"):
        nd.Program([nd.Op(nd.ACT, 2, 0, width=4)], 2)
    program = nd.Program([nd.Op(nd.ACT, 1, 0, width=4)], 2)
    with pytest.raises(ValueError, match="2 slots"):
        program.run([x.ctypes.data], 1)
    with pytest.raises(nd.DecodeError, match="status 2"):
        nd.Program([nd.Op(99, 1, 0, width=4)], 2).run([x.ctypes.data, x.ctypes.data], 1)


LAYERS = {
    "gated_linear_rnn": dict(d_model=16, d_h=12),
    "gated_linear_rnn untied, true recurrence, d_in": dict(d_model=16, d_h=12, d_in=10, use_tied_gates=False,
                                                          use_true_recurrence=True, gate_activation="softplus"),
    "mingru": dict(d_model=16, d_inner=24, out_proj=True, candidate="g", bias=False),
    "mingru identity, default state": dict(d_model=16, d_inner=16, default_state=0.5),
    "minlstm": dict(d_model=16, d_inner=24, out_proj=True, candidate="g", bias=True),
    "minlstm identity, default state": dict(d_model=16, d_inner=16, default_state=0.5),
    "gateloop_mh complex heads, cartesian, output gate": dict(d_model=16, num_heads=2, d_key=3, d_value=5,
                                                              gate="complex", gate_parametrization="cartesian",
                                                              gate_granularity="head", output_gate="silu"),
    "gateloop_mh complex, relu phase, sub_norm, biases": dict(d_model=16, num_heads=2, d_key=3, d_value=5,
                                                              gate="complex", phase_activation="relu",
                                                              sub_norm="layernorm", qkv_bias=True),
    "gateloop_mh real, key rows": dict(d_model=16, num_heads=4, d_key=2, d_value=3, gate="real", qkv_bias=True),
}
LAYER_CLASSES = {"gated_linear_rnn": ("GatedLinearRNNConfig", "GatedLinearRNN"), "mingru": ("MinGRUConfig", "MinGRU"),
                 "minlstm": ("MinLSTMConfig", "MinLSTM"), "gateloop_mh": ("GateLoopMHConfig", "GateLoopMH")}


def _layer(framework: str, name: str, fields: dict, dtype: str = "float32"):
    pytest.importorskip(framework)
    backend = import_module(f"linrec.backends.{framework}")
    model = name.split()[0]
    spec = import_module(f"linrec.spec.{model}")
    config_name, class_name = LAYER_CLASSES[model]
    cfg = getattr(spec, config_name)(**fields)
    cls = getattr(backend, class_name)
    return cls.from_canonical(cfg, _perturbed(spec.init_params(cfg, seed=2, dtype=dtype), 3)), cfg


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("rows", [1, 9])
@pytest.mark.parametrize("name", list(LAYERS))
def test_fused_layer_decoder_equals_step(name, rows, framework, monkeypatch):
    layer, cfg = _layer(framework, name, LAYERS[name])
    arrays = _arrays(framework)
    calls = _count_native_steps(framework, monkeypatch)
    decode = layer.decoder(fused=True if rows > _default_rows(framework, cfg) else None)
    rng = np.random.default_rng(rows)
    width = getattr(cfg, "d_in", None) or cfg.d_model
    s1 = s2 = layer.initial_state(rows)
    for _ in range(4):
        x = arrays.asarray(rng.standard_normal((rows, width)).astype(np.float32))
        y1, s1 = layer.step(x, s1)
        y2, s2 = decode(x, s2)
        _close(framework, y2, y1)
        _close(framework, s2.h, s1.h)
    assert len(calls) == (4 if framework == "torch" else 1)
    if framework == "torch":
        assert not y2.requires_grad
    # above its rows the default keeps the framework step (a BLAS product wins there): fused=True runs it
    calls.clear()
    layer.decoder()(arrays.asarray(rng.standard_normal((_default_rows(framework, cfg) + 1, width)).astype(np.float32)),
                    None)
    assert not calls
    # float64 under the default: the framework step, exactly; with fused=True: an error
    with _x64(framework):
        layer64, _ = _layer(framework, name, LAYERS[name], "float64")
        x64 = arrays.asarray(rng.standard_normal((rows, width)))
        np.testing.assert_array_equal(arrays.to_numpy(layer64.decoder()(x64, None)[0]),
                                      arrays.to_numpy(layer64.step(x64, None)[0]))
        with pytest.raises(TypeError, match="float32"):
            layer.decoder(fused=True)(x64, None)


@pytest.mark.parametrize("name", ["minlstm", "gated_linear_rnn"])
def test_jax_layer_decoder_skips_checks_only_for_inputs_it_has_checked(name, monkeypatch):
    """After a float32 token has passed the checks, the JAX layer decoder runs the same shapes straight away; a
    token or state of another shape, dtype or type still goes through the checks and is refused by name."""
    jnp = pytest.importorskip("jax.numpy")
    from linrec.spec.state import State

    native_decode = import_module("linrec.backends.jax.native_decode")
    checks, real = [], native_decode.layer_decoder

    def counting(framework, step, checked, fused):
        return real(framework, step, lambda *a: checks.append(1) or checked(*a), fused)

    monkeypatch.setattr(native_decode, "layer_decoder", counting)
    layer, cfg = _layer("jax", name, LAYERS[name])
    decode = layer.decoder()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, cfg.d_model)).astype(np.float32))
    state = layer.initial_state(2)
    _, s1 = decode(x, state)
    y2, s2 = decode(x, s1)
    assert len(checks) == 1  # the second token skipped them
    want, _ = layer.step(x, s1)
    _close("jax", y2, want)
    with pytest.raises(ValueError, match="x_t"):
        decode(jnp.zeros((2, cfg.d_model + 1), jnp.float32), s2)
    with pytest.raises(ValueError, match="state"):
        decode(x, State(jnp.zeros((3, s2.h.shape[1]), jnp.float32)))
    with pytest.raises((TypeError, ValueError), match="state"):
        decode(x, (s2.h,))
    assert len(checks) >= 3


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_gateloop_mh_default_rows_for_a_complex_and_a_real_state(framework, monkeypatch):
    """At 12 rows ``fused=None`` runs the multi-head GateLoop's program for a real state in both frameworks (up to
    ``MAX_ROWS``) and for a complex one in torch; JAX keeps its XLA step for a complex state above one row (the
    program gets that state restacked as rows of floats inside the jit, and loses there)."""
    pytest.importorskip(framework)
    calls = _count_native_steps(framework, monkeypatch)
    x = _arrays(framework).asarray(np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32))
    for name, runs in (("gateloop_mh complex heads, cartesian, output gate", framework == "torch"),
                       ("gateloop_mh real, key rows", True)):
        layer, _ = _layer(framework, name, LAYERS[name])
        calls.clear()
        y, _ = layer.decoder()(x, None)
        assert bool(calls) == runs, name
        _close(framework, y, layer.step(x, None)[0])


def _default_rows(framework: str, cfg) -> int:
    """The most rows a layer's ``decoder()`` runs on its native program by default (each multi-head GateLoop
    backend states its own for a complex state)."""
    if getattr(cfg, "is_complex", False):
        return import_module(f"linrec.backends.{framework}.gateloop_mh").COMPLEX_STATE_NATIVE_ROWS
    return MAX_ROWS


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_configurations_outside_the_gateloop_mh_program_refuse_fused_true(framework):
    """What the multi-head GateLoop's program does not compute (an RMS input norm, a complex output) runs the
    framework step under ``fused=None`` and raises, saying why, under ``fused=True``."""
    pytest.importorskip(framework)
    backend = import_module(f"linrec.backends.{framework}")
    from linrec.spec import gateloop_mh

    arrays = _arrays(framework)
    x = arrays.asarray(np.ones((2, 8), np.float32))
    for fields, why in ((dict(input_norm="rms"), "input_norm='rms'"), (dict(complex_output="complex"), "complex")):
        cfg = gateloop_mh.GateLoopMHConfig(d_model=8, num_heads=2, d_key=2, d_value=4, gate="complex", **fields)
        layer = backend.GateLoopMH.from_canonical(cfg, gateloop_mh.init_params(cfg))
        with pytest.raises(ValueError, match=why):
            layer.decoder(fused=True)
        y, _ = layer.decoder()(x, None)  # the framework step (its products on the native kernel)
        _close(framework, y, layer.step(x, None)[0])
    with pytest.raises(TypeError, match="fused"):
        layer.decoder(fused=1)
    # sizes beyond the cell's 20-bit fields are refused, never packed into the wrong ones
    from linrec.backends.native.decode import gateloop_mh_refusal

    wide = gateloop_mh.GateLoopMHConfig(d_model=8, num_heads=1, d_key=2, d_value=1 << 20)
    assert "below 1048576" in gateloop_mh_refusal(wide)
