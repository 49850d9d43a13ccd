"""minGRU stack (nn.GRU-like): config, reference, the NNX and torch modules (dropout, batch_first, state), case ids."""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import mingru_stack_cases as stack_cases
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

CONFIGS = {name: MinGRUStackConfig(**kw) for name, kw in stack_cases.CONFIGS.items()}
JAX_CONFIG = "cheind"


def _problem(cfg, seed=0):
    """float32 params and x, and the initial ``State`` (one array per layer)."""
    p = stack_cases.make_problem(cfg, seed, "float32")
    return p.params, p.x, State(p.h0)


def _f64_state(state: State) -> State:
    return State(tuple(s.astype(np.float64) for s in state.h))


# --- spec -----------------------------------------------------------------------------------------------------


def test_hidden_sizes_like_nn_gru():
    assert MinGRUStackConfig.create(3, 8).hidden_sizes == (8,)
    assert MinGRUStackConfig.create(3, 8, num_layers=3).hidden_sizes == (8, 8, 8)
    cfg = MinGRUStackConfig.create(3, [8, 6], num_layers=2)
    assert (cfg.num_layers, cfg.output_size, cfg.layer_input_size(1)) == (2, 6, 8)
    with pytest.raises(ValueError, match="num_layers"):
        MinGRUStackConfig.create(3, [8, 6], num_layers=3)
    with pytest.raises(ValueError, match="num_layers"):
        MinGRUStackConfig.create(3, 8, num_layers=0)


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(input_size=0), "input_size"), (dict(hidden_sizes=()), "hidden_sizes"),
    (dict(hidden_sizes=(4, 0)), "hidden_sizes"), (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"),
    (dict(residual="yes"), "residual"), (dict(norm_eps=0.0), "norm_eps"), (dict(candidate="relu"), "candidate"),
])
def test_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MinGRUStackConfig(**{"input_size": 3, "hidden_sizes": (4,), **kwargs})


def test_param_table():
    cfg = CONFIGS["cheind"]  # 3 -> 5 -> 5 -> 4, residual, norm
    assert spec.param_shapes(cfg) == {
        "layers.0.norm.scale": (3,), "layers.0.norm.bias": (3,),
        "layers.0.mingru.proj.kernel": (3, 10), "layers.0.mingru.proj.bias": (10,),
        "layers.0.res_align.kernel": (3, 5),
        "layers.1.norm.scale": (5,), "layers.1.norm.bias": (5,),
        "layers.1.mingru.proj.kernel": (5, 10), "layers.1.mingru.proj.bias": (10,),  # 5 -> 5: identity residual
        "layers.2.norm.scale": (5,), "layers.2.norm.bias": (5,),
        "layers.2.mingru.proj.kernel": (5, 8), "layers.2.mingru.proj.bias": (8,),
        "layers.2.res_align.kernel": (5, 4),
    }
    params = spec.init_params(cfg, seed=1, dtype="float64")
    assert np.all(params["layers.1.norm.scale"] == 1) and not params["layers.2.mingru.proj.bias"].any()
    assert np.abs(params["layers.0.res_align.kernel"]).max() <= 1 / np.sqrt(3)


def test_reference_matches_hand_composition():
    """Two layers, residual + norm, by hand from the minGRU reference."""
    from linrec.spec import mingru as mingru_spec

    cfg = CONFIGS["cheind"]
    params, x, h0 = _problem(cfg)
    params = {k: v.astype(np.float64) for k, v in params.items()}
    x, h0 = x.astype(np.float64), _f64_state(h0)
    y, state = spec.forward(params, x, cfg, h0)
    assert isinstance(state, State) and state.position is None
    inp = x
    for l in range(cfg.num_layers):
        p = spec.sub_params(params, f"layers.{l}.")
        z = spec.layer_norm(inp, p["norm.scale"], p["norm.bias"], cfg.norm_eps)
        out, h = mingru_spec.forward(spec.sub_params(p, "mingru."), z, cfg.layer_config(l), State(h0.h[l]))
        np.testing.assert_allclose(state.h[l], h.h, rtol=1e-12)
        inp = out + (inp @ p["res_align.kernel"] if "res_align.kernel" in p else inp)
    np.testing.assert_allclose(y, inp, rtol=1e-12)
    y_step, state_step = spec.step(params, x[:, 0], h0, cfg)
    np.testing.assert_allclose(y_step, spec.forward(params, x[:, :1], cfg, h0)[0][:, 0], rtol=1e-12)
    assert len(state_step.h) == cfg.num_layers
    # right padding: row 1 has 3 real inputs; equal to that row alone, zero output at its pads
    y_pad, s_pad = spec.forward(params, x, cfg, h0, np.array([x.shape[1], 3]))
    y_row, s_row = spec.forward(params, x[1:, :3], cfg, State(tuple(a[1:] for a in h0.h)))
    np.testing.assert_allclose(y_pad[1:, :3], y_row, rtol=1e-12, atol=1e-12)
    for a, b in zip(s_pad.h, s_row.h):
        np.testing.assert_allclose(a[1:], b, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y_pad[1, 3:], 0.0)


# --- conformance case ids (the cases run in test_conformance.py) ---------------------------------------------


def test_case_ids_unique_and_named():
    assert_case_ids_named(stack_cases, "mingru_stack")


# --- JAX / Flax NNX --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.mingru_stack")
    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


def test_nnx_module_matches_reference_and_batch_first(jx):
    cfg = CONFIGS[JAX_CONFIG]
    params, x, h0 = _problem(cfg)
    model = jx.mod.MinGRUStack.from_canonical(cfg, params)
    assert model.config == cfg
    canon = model.canonical_params()
    assert set(canon) == set(params) and all(np.array_equal(canon[k], params[k]) for k in params)
    y, h = model(x, h0)  # training mode, but dropout is 0
    y_ref, h_ref = spec.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), cfg,
                                _f64_state(h0))
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=2e-4, atol=2e-4)
    assert isinstance(h, State) and [s.shape for s in h.h] == [(2, 5), (2, 5), (2, 4)]
    for got, want in zip(h.h, h_ref.h):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)
    seq_first = jx.mod.MinGRUStack.from_canonical(cfg, params, batch_first=False)
    y_t, _ = seq_first(np.swapaxes(x, 0, 1), h0)
    np.testing.assert_allclose(np.swapaxes(np.asarray(y_t), 0, 1), np.asarray(y), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="x must have 3 axes"):
        seq_first(x[0])
    # ragged rows: right padding with lengths, padded outputs zero
    y_pad, h_pad = model(x, h0, lengths=np.array([7, 3]))
    y_ref_pad, h_ref_pad = spec.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64),
                                        cfg, _f64_state(h0), np.array([7, 3]))
    np.testing.assert_allclose(np.asarray(y_pad), y_ref_pad, rtol=2e-4, atol=2e-4)
    for got, want in zip(h_pad.h, h_ref_pad.h):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)
    # the nn.GRU-like constructor
    fresh = jx.mod.MinGRUStack(3, 6, num_layers=2, residual=True, norm=True, rngs=jx.nnx.Rngs(0))
    assert fresh.config.hidden_sizes == (6, 6)
    assert set(fresh.canonical_params()) == set(spec.param_shapes(fresh.config))
    assert [s.shape for s in fresh.initial_state(4).h] == [(4, 6), (4, 6)]


def test_nnx_dropout_train_and_eval(jx):
    jax, jnp, nnx = jx.jax, jx.jnp, jx.nnx
    cfg = MinGRUStackConfig(input_size=3, hidden_sizes=(16, 16), dropout=0.5)
    params = spec.init_params(cfg, seed=2)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    model = jx.mod.MinGRUStack.from_canonical(cfg, params, rngs=nnx.Rngs(dropout=3))
    y1, _ = model(x)
    y2, _ = model(x)
    assert not np.allclose(y1, y2)  # training mode: a fresh mask per call
    model.eval()
    y_eval, _ = model(x)
    y_ref, _ = spec.forward(params, x, cfg)
    np.testing.assert_allclose(np.asarray(y_eval), y_ref, rtol=2e-4, atol=2e-4)
    model.train()
    assert not np.allclose(model(x)[0], y_eval)
    # inverted dropout: survivors scaled by 1/(1-p), about p of them zeroed
    z = jnp.ones((200, 50), jnp.float32)
    dropped = np.asarray(jx.mod._dropout(z, 0.25, jax.random.key(0)))
    assert set(np.unique(dropped)) == {0.0, np.float32(1 / 0.75)}
    assert np.mean(dropped == 0) == pytest.approx(0.25, abs=0.02)
    # a single layer has no layer after it: dropout never applies
    one = MinGRUStackConfig(input_size=3, hidden_sizes=(4,), dropout=0.5)
    p1 = spec.init_params(one)
    np.testing.assert_allclose(jx.mod.mingru_stack(p1, x, config=one, dropout_rng=jax.random.key(1))[0],
                               jx.mod.mingru_stack(p1, x, config=one)[0])


def test_jax_jit_grad_and_remat(jx):
    jax, jnp = jx.jax, jx.jnp
    cfg = CONFIGS[JAX_CONFIG]
    params, x, h0 = _problem(cfg)
    params = {k: jnp.asarray(v) for k, v in params.items()}

    def loss(p, remat=False):
        y, h = jx.mod.mingru_stack(p, x, config=cfg, initial_state=h0, remat=remat)
        return jnp.sum(y ** 2) + sum(jnp.sum(s) for s in h.h)

    grads = jax.jit(jax.grad(loss))(params)
    grads_remat = jax.jit(jax.grad(lambda p: loss(p, True)))(params)
    for name in params:
        np.testing.assert_allclose(grads_remat[name], grads[name], rtol=1e-5, atol=1e-6)


# --- PyTorch ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.mingru_stack")
    return types.SimpleNamespace(torch=torch, mod=mod)


def test_torch_module_matches_reference_and_interface(tt):
    torch = tt.torch
    cfg = CONFIGS["cheind"]
    params, x, h0 = _problem(cfg)
    model = tt.mod.MinGRUStack.from_canonical(cfg, params)
    canon = model.canonical_params()
    assert all(np.array_equal(canon[k], params[k]) for k in params)
    assert set(model.state_dict()) == {
        "layers.0.norm.weight", "layers.0.norm.bias", "layers.0.mingru.proj.weight", "layers.0.mingru.proj.bias",
        "layers.0.res_align.weight", "layers.1.norm.weight", "layers.1.norm.bias", "layers.1.mingru.proj.weight",
        "layers.1.mingru.proj.bias", "layers.2.norm.weight", "layers.2.norm.bias", "layers.2.mingru.proj.weight",
        "layers.2.mingru.proj.bias", "layers.2.res_align.weight"}
    x_t = torch.as_tensor(x)
    h0_t = State(tuple(torch.as_tensor(s) for s in h0.h))
    with torch.no_grad():
        y, h = model(x_t, h0_t)
        y_ref, _ = spec.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), cfg,
                                _f64_state(h0))
        np.testing.assert_allclose(y.numpy(), y_ref, rtol=2e-4, atol=2e-4)
        # carry the state: two calls == one
        y1, h1 = model(x_t[:, :3], h0_t)
        y2, h2 = model(x_t[:, 3:], h1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y)
        assert isinstance(h2, State)
        for a, b in zip(h2.h, h.h):
            torch.testing.assert_close(a, b)
        seq_first = tt.mod.MinGRUStack.from_canonical(cfg, params, batch_first=False)
        torch.testing.assert_close(seq_first(x_t.transpose(0, 1), h0_t)[0].transpose(0, 1), y)
        # ragged rows: right padding with lengths
        y_pad, h_pad = model(x_t, h0_t, lengths=torch.tensor([7, 3]))
        y_ref_pad, h_ref_pad = spec.forward({k: v.astype(np.float64) for k, v in params.items()},
                                            x.astype(np.float64), cfg, _f64_state(h0), np.array([7, 3]))
        np.testing.assert_allclose(y_pad.numpy(), y_ref_pad, rtol=2e-4, atol=2e-4)
        for a, b in zip(h_pad.h, h_ref_pad.h):
            np.testing.assert_allclose(a.numpy(), b, rtol=2e-4, atol=2e-4)
    gru_like = tt.mod.MinGRUStack(3, 8, num_layers=2, dropout=0.1, residual=True)
    assert gru_like.config.hidden_sizes == (8, 8) and gru_like.training
    assert not gru_like.layers[0].mingru.proj.bias.any()  # spec init: zero biases


def test_torch_dropout_remat_and_compile(tt):
    torch = tt.torch
    cfg = MinGRUStackConfig(input_size=3, hidden_sizes=(16, 16), dropout=0.5, norm=True)
    params = spec.init_params(cfg, seed=2)
    x = torch.randn(2, 5, 3)
    model = tt.mod.MinGRUStack.from_canonical(cfg, params)
    torch.manual_seed(0)
    assert not torch.allclose(model(x)[0], model(x)[0])
    model.eval()
    with torch.no_grad():
        y_eval = model(x)[0]
    np.testing.assert_allclose(y_eval.numpy(), spec.forward(params, x.numpy(), cfg)[0], rtol=2e-4, atol=2e-4)
    model.remat = True
    model(x)[0].square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.remat = False
    model(x)[0].square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], y_eval)


def test_torch_bad_input(tt):
    torch = tt.torch
    model = tt.mod.MinGRUStack(3, [4, 5])
    with pytest.raises(ValueError, match="input_size"):
        model(torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="one array per layer"):
        model(torch.zeros(2, 4, 3), State((torch.zeros(2, 4),)))
    with pytest.raises(ValueError, match=r"initial_state\.h\[1\]"):
        model(torch.zeros(2, 4, 3), State((torch.zeros(2, 4), torch.zeros(2, 4))))
    with pytest.raises(TypeError, match="State"):  # a bare tuple is not the state type
        model(torch.zeros(2, 4, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="x must have 3 axes"):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="chunked"):
        model(torch.zeros(2, 4, 3), lengths=torch.tensor([4, 2]), method="log")
    with pytest.raises(ValueError, match="num_layers"):
        tt.mod.MinGRUStack(3, [4, 5], num_layers=3)


def test_verify_agreement(jx, tt):
    from linrec.backends.jax.verify import verify_agreement as jax_verify
    from linrec.backends.torch.verify import verify_agreement as torch_verify

    cfg = CONFIGS[JAX_CONFIG]
    params, x, h0 = _problem(cfg)
    jm = jx.mod.MinGRUStack.from_canonical(cfg, params)
    tm = tt.mod.MinGRUStack.from_canonical(cfg, params).eval()
    assert jax_verify(jm, jx.jnp.asarray(x), initial_state=h0).ok
    with tt.torch.no_grad():
        report = torch_verify(tm, tt.torch.as_tensor(x))
    assert report.ok, str(report)


def test_residual_align_first_with_bias_in_both_modules(jx, tt):
    """cheind v1.3's residual (``residual_align='first'``, ``residual_align_bias``): the modules' own constructors
    make ``layers.0.res_align.{kernel,bias}`` only, and both modules equal the reference (spec tolerance)."""
    from linrec.spec.tolerances import tolerance_for

    cfg = CONFIGS["cheind-v1.3"]  # 3 -> 3 -> 3 -> 3: layer 0 aligned although I == H_0
    assert [k for k in spec.param_shapes(cfg) if "res_align" in k] == ["layers.0.res_align.kernel",
                                                                        "layers.0.res_align.bias"]
    params, x, h0 = _problem(cfg, seed=3)
    params["layers.0.res_align.bias"] = np.linspace(-0.5, 0.5, 3).astype(np.float32)  # spec init is 0: make it count
    y_ref, h_ref = spec.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), cfg,
                                _f64_state(h0))
    no_bias = {**params, "layers.0.res_align.bias": np.zeros(3, np.float32)}
    assert not np.allclose(spec.forward(no_bias, x, cfg, h0)[0], y_ref, atol=1e-3)  # the bias is used
    tol = tolerance_for("float32", length=x.shape[1], grad=True)  # mingru_stack.md §5
    fresh_t = tt.mod.MinGRUStack(3, 3, num_layers=3, residual=True, residual_align="first", residual_align_bias=True)
    assert {k for k in fresh_t.state_dict() if "res_align" in k} == {"layers.0.res_align.weight",
                                                                    "layers.0.res_align.bias"}
    fresh_j = jx.mod.MinGRUStack(3, 3, num_layers=3, residual=True, residual_align="first", residual_align_bias=True,
                                 rngs=jx.nnx.Rngs(0))
    assert set(fresh_j.canonical_params()) == set(spec.param_shapes(cfg))
    with tt.torch.no_grad():
        y_t, h_t = tt.mod.MinGRUStack.from_canonical(cfg, params)(tt.torch.as_tensor(x),
                                                                  State(tuple(tt.torch.as_tensor(s) for s in h0.h)))
    y_j, h_j = jx.mod.MinGRUStack.from_canonical(cfg, params)(x, h0)
    for name, y, h in (("torch", y_t.numpy(), [s.numpy() for s in h_t.h]),
                       ("jax", np.asarray(y_j), [np.asarray(s) for s in h_j.h])):
        np.testing.assert_allclose(y, y_ref, rtol=tol.rtol, atol=tol.atol, err_msg=name)
        for got, want in zip(h, h_ref.h):
            np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol, err_msg=name)
