"""GatedLinearRNN / GateLoop: spec config and reference, the NNX and torch modules, their case ids."""

from __future__ import annotations

import importlib
import types
from dataclasses import replace

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import gated_linear_rnn_cases as glr_cases
from linrec.spec import gated_linear_rnn as spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig, GateLoopConfig
from linrec.spec.state import State

CFG = GatedLinearRNNConfig(d_model=5, d_h=4, d_in=3)
VARIANTS = {
    "tied": CFG,
    "untied": replace(CFG, use_tied_gates=False),
    "reversed": replace(CFG, reversed=True),
    "true-recurrence": replace(CFG, use_true_recurrence=True, use_tied_gates=False),
}
F32 = dict(rtol=2e-5, atol=2e-5)


def _problem(config: GatedLinearRNNConfig, seed: int = 0, batch: int = 2, length: int = 6):
    """float64 params (random, W_r nonzero), x and h0 exactly representable in float32."""
    prob = glr_cases.make_problem(config, "float32", seed, batch=batch, length=length)
    params = {k: v.astype(np.float64) for k, v in prob.params.items()}
    return params, prob.x.astype(np.float64), prob.initial_state.astype(np.float64)


def _f32(tree: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in tree.items()}


# --- spec: config, parameters, reference ----------------------------------------------------------


def test_config_defaults_and_alias():
    cfg = GatedLinearRNNConfig(d_model=8, d_h=16)
    assert cfg.d_in == 8 and cfg.n_blocks == 3 and not cfg.reversed
    assert (cfg.input_activation, cfg.hidden_activation, cfg.gate_activation) == ("tanh", "tanh", "sigmoid")
    assert GateLoopConfig is GatedLinearRNNConfig
    assert replace(cfg, use_tied_gates=False).n_blocks == 4
    assert hash(cfg) == hash(GatedLinearRNNConfig(d_model=8, d_h=16, d_in=8))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(d_h=0), "d_h"),
        (dict(d_model=2.5), "d_model"),
        (dict(d_in=True), "d_in"),
        (dict(reversed=1), "reversed"),
        (dict(input_activation="swish"), "input_activation"),
        (dict(gate_activation=np.tanh), "gate_activation"),
    ],
)
def test_config_rejects_bad_fields(kwargs, field):
    base = dict(d_model=4, d_h=3)
    with pytest.raises(ValueError, match=field):
        GatedLinearRNNConfig(**{**base, **kwargs})


def test_param_shapes_and_init():
    cfg = GatedLinearRNNConfig(d_model=64, d_h=96, d_in=128, use_true_recurrence=True, use_tied_gates=False)
    shapes = spec.param_shapes(cfg)
    assert shapes == {
        "proj.kernel": (128, 384), "proj.bias": (384,), "out_proj.kernel": (96, 64), "out_proj.bias": (64,),
        "recurrent_proj.kernel": (96, 384),
    }
    params = spec.init_params(cfg, seed=1, dtype="float64")
    assert {k: v.shape for k, v in params.items()} == shapes
    for name in ("proj.bias", "out_proj.bias", "recurrent_proj.kernel"):
        assert not params[name].any(), name
    for name in ("proj.kernel", "out_proj.kernel"):
        w, fan_in = params[name], shapes[name][0]
        assert abs(w.var() * fan_in - 1) < 0.05, name  # lecun_normal: variance 1/fan_in
        assert np.abs(w).max() <= 2 / 0.87962566103423978 / np.sqrt(fan_in) + 1e-12  # truncated at 2 std
    assert spec.init_params(cfg, seed=1)["proj.kernel"].dtype == np.float32
    assert "recurrent_proj.kernel" not in spec.param_shapes(replace(cfg, use_true_recurrence=False))


def _hand_params():
    """d = 1, identity candidate and readout, u = [x, 0, 0]: i = f = o = sigmoid(0) = 1/2."""
    return {"proj.kernel": np.array([[1.0, 0.0, 0.0]]), "proj.bias": np.zeros(3),
            "out_proj.kernel": np.ones((1, 1)), "out_proj.bias": np.zeros(1)}


def test_reference_hand_example():
    cfg = GatedLinearRNNConfig(d_model=1, d_h=1, input_activation="identity", hidden_activation="identity")
    # h_t = h_{t-1}/2 + x_t/2 from 0 with x = 2: 1, 1.5, 1.75; y = h/2
    y, final = spec.forward(_hand_params(), np.full((1, 3, 1), 2.0), cfg)
    np.testing.assert_allclose(y[0, :, 0], [0.5, 0.75, 0.875])
    assert isinstance(final, State) and final.position is None
    np.testing.assert_allclose(final.h, [[1.75]])
    # reversed: the state flows from the end; x = [2, 0, 0] only reaches t = 0
    y, final = spec.forward(_hand_params(), np.array([2.0, 0.0, 0.0]).reshape(1, 3, 1),
                            replace(cfg, reversed=True))
    np.testing.assert_allclose(y[0, :, 0], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(final.h, [[1.0]])
    # the initial state decays (h_0 = f h_{-1} + i c), it is not added to every step
    y, final = spec.forward(_hand_params(), np.zeros((1, 2, 1)), cfg, initial_state=State(np.array([[4.0]])))
    np.testing.assert_allclose(final.h, [[1.0]])
    # right padding: row 1 holds one real input (x = 2); its pads are identity steps with zero output
    y, final = spec.forward(_hand_params(), np.full((2, 3, 1), 2.0), cfg, lengths=np.array([3, 1]))
    np.testing.assert_allclose(y[:, :, 0], [[0.5, 0.75, 0.875], [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(final.h, [[1.75], [1.0]])
    with pytest.raises(TypeError, match="initial_state"):
        spec.forward(_hand_params(), np.zeros((1, 2, 1)), cfg, initial_state=np.array([[4.0]]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_step_and_reversal_laws(variant):
    cfg = VARIANTS[variant]
    params, x, h0 = _problem(cfg)
    y, final = spec.forward(params, x, cfg, State(h0))
    state, ys = State(h0), {}
    for t in range(x.shape[1] - 1, -1, -1) if cfg.reversed else range(x.shape[1]):
        ys[t], state = spec.step(params, x[:, t], state, cfg)
    np.testing.assert_allclose(np.stack([ys[t] for t in sorted(ys)], axis=1), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(state.h, final.h, rtol=1e-13, atol=1e-13)
    if cfg.reversed:  # reversed = flip, run forward, flip back
        y_fwd, final_fwd = spec.forward(params, x[:, ::-1], replace(cfg, reversed=False), State(h0))
        np.testing.assert_allclose(y_fwd[:, ::-1], y, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(final_fwd.h, final.h, rtol=1e-13, atol=1e-13)


def test_resolve_mode():
    tr = replace(CFG, use_true_recurrence=True)
    assert spec.resolve_mode("auto", "auto", CFG) == "parallel"
    assert spec.resolve_mode("auto", "auto", tr) == "sequential"
    with pytest.raises(ValueError, match="mode='sequential'"):
        spec.resolve_mode("parallel", "auto", tr)
    with pytest.raises(ValueError, match="valid modes"):
        spec.resolve_mode("scan", "auto", CFG)
    with pytest.raises(ValueError, match="mode='parallel'"):
        spec.resolve_mode("sequential", "chunked", CFG)


# --- conformance case ids (the cases run in test_conformance.py) ------------------------------------


def test_case_ids_unique_and_named():
    ids = assert_case_ids_named(glr_cases, "gated_linear_rnn", at_least=101)
    assert all(i.endswith("]") for i in ids)


# --- JAX / Flax NNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.gated_linear_rnn")

    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


@pytest.mark.parametrize("variant", ["reversed", "true-recurrence"])
def test_nnx_module_matches_reference(jx, variant):
    cfg = VARIANTS[variant]
    params, x, h0 = _problem(cfg)
    model = jx.mod.GateLoop.from_canonical(cfg, _f32(params))
    assert model.config == cfg and isinstance(model, jx.mod.GatedLinearRNN)
    y, final = model(jx.jnp.asarray(x, jx.jnp.float32), State(jx.jnp.asarray(h0, jx.jnp.float32)))
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0))
    assert isinstance(final, State) and y.dtype == jx.jnp.float32 and final.h.dtype == jx.jnp.float32
    np.testing.assert_allclose(y, y_ref, **F32)
    np.testing.assert_allclose(final.h, final_ref.h, **F32)
    # the step API and the NNX cell continue from any state
    state, ys = State(jx.jnp.asarray(h0, jx.jnp.float32)), {}
    for t in range(x.shape[1] - 1, -1, -1) if cfg.reversed else range(x.shape[1]):
        state, ys[t] = model.cell(state, jx.jnp.asarray(x[:, t], jx.jnp.float32))
    np.testing.assert_allclose(np.stack([ys[t] for t in sorted(ys)], 1), y_ref, **F32)
    np.testing.assert_allclose(state.h, final_ref.h, **F32)
    for name, value in model.canonical_params().items():
        np.testing.assert_array_equal(value, params[name].astype(np.float32))


def test_nnx_default_init(jx):
    model = jx.mod.GatedLinearRNN(8, 16, 4, use_true_recurrence=True, rngs=jx.nnx.Rngs(0))
    p = model.canonical_params()
    assert {k: v.shape for k, v in p.items()} == spec.param_shapes(model.config)
    assert not p["recurrent_proj.kernel"].any() and not p["proj.bias"].any() and not p["out_proj.bias"].any()
    assert 0.6 < p["proj.kernel"].std() * np.sqrt(4) < 1.4
    assert model.initial_state(3).h.shape == (3, 16)
    y, final = model(jx.jnp.ones((3, 5, 4)))  # mode="auto" is the sequential loop here
    assert y.shape == (3, 5, 8) and final.h.shape == (3, 16)
    with pytest.raises(ValueError, match="mode='sequential'"):
        model(jx.jnp.ones((3, 5, 4)), mode="parallel")


def test_jax_jit_grad_vmap(jx):
    jax, jnp = jx.jax, jx.jnp
    cfg = VARIANTS["untied"]
    params, x, h0 = _problem(cfg)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    x32, h32 = jnp.asarray(x, jnp.float32), jnp.asarray(h0, jnp.float32)
    fn = jax.jit(jx.mod.gated_linear_rnn, static_argnames=("config", "mode", "method", "chunk_size"))
    y, final = fn(p32, x32, config=cfg, initial_state=State(h32), method="associative")
    h = final.h
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0))
    np.testing.assert_allclose(y, y_ref, **F32)
    np.testing.assert_allclose(h, final_ref.h, **F32)

    def loss(p, x, h0, mode):
        y, final = jx.mod.gated_linear_rnn(p, x, config=cfg, initial_state=State(h0), mode=mode)
        return jnp.sum(y**2) + jnp.sum(final.h)

    g_par = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnames="mode")(p32, x32, h32, "parallel")
    g_seq = jax.grad(loss, argnums=(0, 1, 2))(p32, x32, h32, "sequential")
    for a, b in zip(jax.tree.leaves(g_par), jax.tree.leaves(g_seq)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # vmap over an ensemble of parameter sets, and over an extra leading axis of inputs
    stacked = {k: jnp.stack([v, 2 * v]) for k, v in p32.items()}
    ys, _ = jax.vmap(lambda p: jx.mod.gated_linear_rnn(p, x32, config=cfg, initial_state=State(h32)))(stacked)
    np.testing.assert_allclose(ys[0], y, **F32)
    xs = jnp.stack([x32, -x32])
    ys, finals = jax.vmap(lambda x: jx.mod.gated_linear_rnn(p32, x, config=cfg, initial_state=State(h32)))(xs)
    np.testing.assert_allclose(ys[0], y, **F32)
    np.testing.assert_allclose(finals.h[0], h, **F32)
    # traced lengths under jit: right padding inside the one scan, as the reference defines it
    lengths = np.array([6, 2], np.int32)
    y_pad, final_pad = fn(p32, x32, config=cfg, initial_state=State(h32), lengths=jnp.asarray(lengths))
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0), lengths=lengths)
    np.testing.assert_allclose(y_pad, y_ref, **F32)
    np.testing.assert_allclose(final_pad.h, final_ref.h, **F32)


def test_nnx_jit_and_remat(jx):
    jax, jnp, nnx = jx.jax, jx.jnp, jx.nnx
    cfg = VARIANTS["reversed"]
    params, x, _ = _problem(cfg)
    x32 = jnp.asarray(x, jnp.float32)
    grads = []
    for remat in (False, True):
        model = jx.mod.GateLoop.from_canonical(cfg, _f32(params), remat=remat)

        @nnx.jit
        def loss_grad(model, x):
            return nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(model)

        grads.append(loss_grad(model, x32))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_nnx_bfloat16(jx):
    jnp = jx.jnp
    cfg = CFG
    params, x, _ = _problem(cfg)
    model = jx.mod.GatedLinearRNN.from_canonical(cfg, _f32(params), dtype=jnp.bfloat16)
    y, final = model(jnp.asarray(x, jnp.float32))
    assert y.dtype == jnp.bfloat16 and final.h.dtype == jnp.float32  # the state stays float32 (spec §7)
    y_ref, _ = spec.forward(params, x, cfg)
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=0.05, atol=0.05)
    assert model.initial_state(2).h.dtype == jnp.float32


def test_jax_bad_input(jx):
    jnp = jx.jnp
    model = jx.mod.GatedLinearRNN(5, 4, 3, rngs=jx.nnx.Rngs(0))
    with pytest.raises(TypeError, match="floating"):
        model(jnp.ones((2, 6, 3), jnp.int32))
    with pytest.raises(ValueError, match="d_in=3"):
        model(jnp.ones((2, 6, 4)))
    with pytest.raises(ValueError, match="initial_state"):
        model(jnp.ones((2, 6, 3)), State(jnp.zeros((2, 5))))
    with pytest.raises(TypeError, match="initial_state"):
        model(jnp.ones((2, 6, 3)), jnp.zeros((2, 4)))  # a bare array is not a State
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.ones((6, 3)))  # 2-D input is never taken as unbatched
    with pytest.raises(ValueError, match="x_t"):
        model.step(jnp.ones((2, 6, 3)))
    with pytest.raises(TypeError, match="batch_first"):
        jx.mod.GatedLinearRNN(5, 4, 3, batch_first=0, rngs=jx.nnx.Rngs(0))
    with pytest.raises(ValueError, match="chunked"):
        model(jnp.ones((2, 6, 3)), lengths=jnp.array([6, 2]), method="log")
    with pytest.raises(ValueError, match="lengths"):
        model(jnp.ones((2, 6, 3)), lengths=jnp.array([7, 2]))
    with pytest.raises(ValueError, match=r"recurrent_proj\.kernel"):
        jx.mod.GatedLinearRNN.from_canonical(replace(CFG, use_true_recurrence=True), spec.init_params(CFG))


def test_nnx_batch_first_false_and_lengths(jx):
    jnp = jx.jnp
    cfg = VARIANTS["reversed"]
    params, x, h0 = _problem(cfg)
    model = jx.mod.GateLoop.from_canonical(cfg, _f32(params), batch_first=False)
    assert model.batch_first is False
    lengths = np.array([6, 3], np.int32)
    y, final = model(jnp.asarray(x.transpose(1, 0, 2), jnp.float32), State(jnp.asarray(h0, jnp.float32)),
                     lengths=jnp.asarray(lengths))
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0), lengths=lengths)
    assert y.shape == (x.shape[1], x.shape[0], cfg.d_model)  # (T, B, D) out as in
    np.testing.assert_allclose(np.asarray(y).transpose(1, 0, 2), y_ref, **F32)
    np.testing.assert_allclose(final.h, final_ref.h, **F32)
    with pytest.raises(ValueError, match=r"\(T, B, d_in\)"):
        model(jnp.ones((6, 3)))


# --- torch ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.gated_linear_rnn")

    return types.SimpleNamespace(torch=torch, mod=mod)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torch_module_matches_reference(tt, variant):
    torch = tt.torch
    cfg = VARIANTS[variant]
    params, x, h0 = _problem(cfg)
    model = tt.mod.GateLoop.from_canonical(cfg, params)  # float64 params -> a float64 module
    assert model.proj.weight.dtype == torch.float64 and model.config == cfg
    keys = {"proj.weight", "proj.bias", "out_proj.weight", "out_proj.bias"}
    assert set(model.state_dict()) == keys | ({"recurrent_proj.weight"} if cfg.use_true_recurrence else set())
    y, final = model(torch.from_numpy(x), State(torch.from_numpy(h0)))
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0))
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final.h.detach().numpy(), final_ref.h, rtol=1e-12, atol=1e-12)
    state, ys = State(torch.from_numpy(h0)), {}
    for t in range(x.shape[1] - 1, -1, -1) if cfg.reversed else range(x.shape[1]):
        ys[t], state = model.step(torch.from_numpy(x[:, t]), state)
    np.testing.assert_allclose(torch.stack([ys[t] for t in sorted(ys)], 1).detach().numpy(), y_ref, rtol=1e-12)
    for name, value in model.canonical_params().items():
        np.testing.assert_array_equal(value, params[name])


@pytest.mark.parametrize("variant", ["reversed", "true-recurrence"])
def test_torch_batch_first_false_and_lengths(tt, variant):
    torch = tt.torch
    cfg = VARIANTS[variant]
    params, x, h0 = _problem(cfg)
    model = tt.mod.GateLoop.from_canonical(cfg, params, batch_first=False)
    lengths = np.array([6, 3], np.int64)
    y, final = model(torch.from_numpy(x.transpose(1, 0, 2).copy()), State(torch.from_numpy(h0)),
                     lengths=torch.from_numpy(lengths))
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0), lengths=lengths)
    assert y.shape == (x.shape[1], x.shape[0], cfg.d_model)  # (T, B, D) out as in
    np.testing.assert_allclose(y.detach().numpy().transpose(1, 0, 2), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final.h.detach().numpy(), final_ref.h, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(T, B, d_in\)"):
        model(torch.ones(6, 3, dtype=torch.float64))


def test_torch_default_init_and_modes(tt):
    torch = tt.torch
    torch.manual_seed(0)
    model = tt.mod.GatedLinearRNN(8, 16, 4, use_true_recurrence=True)
    p = model.canonical_params()
    assert {k: v.shape for k, v in p.items()} == spec.param_shapes(model.config)
    assert not p["recurrent_proj.kernel"].any() and not p["proj.bias"].any()
    assert 0.6 < p["proj.kernel"].std() * np.sqrt(4) < 1.4
    y, final = model(torch.ones(3, 5, 4))
    assert y.shape == (3, 5, 8) and final.h.shape == (3, 16) and model.initial_state(3).h.shape == (3, 16)
    with pytest.raises(ValueError, match="mode='sequential'"):
        model(torch.ones(3, 5, 4), mode="parallel")
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        model(np.ones((3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="d_in=4"):
        model(torch.ones(3, 5, 5))
    with pytest.raises(TypeError, match="initial_state"):
        model(torch.ones(3, 5, 4), State(torch.zeros(3, 16, dtype=torch.float64)))
    with pytest.raises(TypeError, match="initial_state"):
        model(torch.ones(3, 5, 4), torch.zeros(3, 16))  # a bare tensor is not a State
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.ones(5, 4))  # 2-D input is never taken as unbatched
    with pytest.raises(TypeError, match="lengths"):
        model(torch.ones(3, 5, 4), lengths=torch.tensor([5.0, 1.0, 2.0]))


def test_torch_remat_and_compile(tt):
    torch = tt.torch
    cfg = VARIANTS["untied"]
    params, x, h0 = _problem(cfg)
    x32 = torch.from_numpy(x.astype(np.float32))
    grads = []
    for remat in (False, True):
        model = tt.mod.GatedLinearRNN.from_canonical(cfg, _f32(params), remat=remat)
        y, final = model(x32, method="associative")
        (y.square().sum() + final.h.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    # one graph, no breaks (aot_eager: Dynamo + AOTAutograd without inductor's slow codegen), both modes
    y_ref, final_ref = spec.forward(params, x, cfg, State(h0))
    for config, mode in ((cfg, "parallel"), (replace(cfg, use_true_recurrence=True), "sequential")):
        zero_w_r = {"recurrent_proj.kernel": np.zeros((4, 16))} if config.use_true_recurrence else {}
        model = tt.mod.GatedLinearRNN.from_canonical(config, _f32({**params, **zero_w_r}))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        y_c, final_c = compiled(x32, State(torch.from_numpy(h0.astype(np.float32))), mode=mode)
        np.testing.assert_allclose(y_c.detach().numpy(), y_ref, **F32)
        np.testing.assert_allclose(final_c.h.detach().numpy(), final_ref.h, **F32)


def test_torch_bfloat16(tt):
    torch = tt.torch
    params, x, _ = _problem(CFG)
    model = tt.mod.GatedLinearRNN.from_canonical(CFG, params, dtype=torch.bfloat16)
    y, final = model(torch.from_numpy(x).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and final.h.dtype == torch.float32
    y_ref, _ = spec.forward(params, x, CFG)
    np.testing.assert_allclose(y.float().detach().numpy(), y_ref, rtol=0.05, atol=0.05)


# --- the original: PyPI flax-gated-linear-rnn ------------------------------------------------------


@pytest.mark.parametrize(("tied", "true_recurrence"), [(True, False), (False, True)])
def test_matches_flax_gated_linear_rnn(tied, true_recurrence):
    """Copy the original's (linen) weights into linrec by hand and compare outputs and carry."""
    original = pytest.importorskip("flax_gated_linear_rnn")
    import jax
    import jax.numpy as jnp

    from linrec.backends.jax.gated_linear_rnn import GatedLinearRNN

    layer = original.GatedLinearRNN(d_model=5, d_h=4, use_tied_gates=tied, use_true_recurrence=true_recurrence)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 3), jnp.float32)
    variables = layer.init(jax.random.PRNGKey(1), x)
    p = jax.tree.map(np.asarray, variables["params"])
    params = {
        "proj.kernel": p["proj"]["kernel"], "proj.bias": p["proj"]["bias"],
        "out_proj.kernel": p["out_proj"]["kernel"], "out_proj.bias": p["out_proj"]["bias"],
    }
    if true_recurrence:  # zero-initialised upstream: make it count
        w_r = np.random.default_rng(0).normal(0, 0.3, p["model"]["recurrent_proj"]["kernel"].shape)
        p["model"]["recurrent_proj"]["kernel"] = w_r.astype(np.float32)
        params["recurrent_proj.kernel"] = w_r.astype(np.float32)
    carry = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    carry_out, y = layer.apply({"params": p}, x, carry=jnp.asarray(carry))

    cfg = GatedLinearRNNConfig(d_model=5, d_h=4, d_in=3, use_tied_gates=tied, use_true_recurrence=true_recurrence)
    y_ref, final_ref = spec.forward({k: v.astype(np.float64) for k, v in params.items()},
                                    np.asarray(x, np.float64), cfg, State(carry.astype(np.float64)))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry_out, final_ref.h, rtol=1e-5, atol=1e-6)
    model = GatedLinearRNN.from_canonical(cfg, params)
    y_l, final_l = model(x, State(jnp.asarray(carry)))
    np.testing.assert_allclose(y_l, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final_l.h, carry_out, rtol=1e-5, atol=1e-6)
