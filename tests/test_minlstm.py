"""minLSTM: spec config and reference, the NNX and torch modules, and the ids of its conformance cases.

The module body, runners and option checks are shared with minGRU (``test_mingru.py`` covers remat,
bfloat16 and the option validation in depth); this file checks what minLSTM adds: the normalised gates,
their log-space form, and the layer end to end.
"""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import minlstm_cases as layer_cases
from linrec.conformance.mingru_cases import make_problem
from linrec.spec import minlstm as spec
from linrec.spec.minlstm import MinLSTMConfig
from linrec.spec.state import State

LAYER = "minlstm"
CONFIGS = {name: MinLSTMConfig(**kw) for name, kw in layer_cases.MINLSTM.configs.items()}
F32 = dict(rtol=2e-5, atol=2e-5)


def _problem(config, seed: int = 0, length: int = 7):
    """float64 params, x and initial state, exactly representable in float32."""
    p = make_problem(layer_cases.MINLSTM, config, seed, "float32", length=length)
    return p.params_ref, p.x_ref, p.h0_ref


def _f32(tree: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in tree.items()}


# --- spec ---------------------------------------------------------------------------------------------


def test_config_and_param_shapes():
    cfg = MinLSTMConfig(d_model=4, expansion=1.5, out_proj=True, bias=False)
    assert (cfg.d_inner, cfg.d_out) == (6, 4)
    assert spec.param_shapes(cfg) == {"proj.kernel": (4, 18), "out_proj.kernel": (6, 4)}
    assert spec.param_shapes(MinLSTMConfig(d_model=2)) == {"proj.kernel": (2, 6), "proj.bias": (6,)}
    params = spec.init_params(MinLSTMConfig(d_model=64), seed=1, dtype="float64")
    assert not params["proj.bias"].any() and np.abs(params["proj.kernel"]).max() <= 1 / 8
    with pytest.raises(ValueError, match="candidate"):
        MinLSTMConfig(d_model=4, candidate="relu")
    with pytest.raises(ValueError, match="d_inner"):
        MinLSTMConfig(d_model=4, d_inner=0)


def test_normalized_gates_and_their_logs():
    rng = np.random.default_rng(0)
    u_f, u_i = rng.normal(0, 5, (2, 1000))
    f, i = spec.sigmoid(u_f), spec.sigmoid(u_i)
    log_fp, log_ip = spec.normalized_log_gates(u_f, u_i)
    np.testing.assert_allclose(log_fp, np.log(f / (f + i)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log_ip, np.log(i / (f + i)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.exp(log_fp) + np.exp(log_ip), 1, rtol=1e-14)
    # saturated gates: f = σ(60) ≈ 1, i = σ(-800) underflows to 0 in linear space, but the logs stay exact
    log_fp, log_ip = spec.normalized_log_gates(np.array([60.0]), np.array([-800.0]))
    assert log_fp[0] == pytest.approx(0.0, abs=1e-300) and log_ip[0] == pytest.approx(-800.0)
    # log(i/f) is softplus(-u_f) - softplus(-u_i), not u_i - u_f (that would be exp(u_i)/exp(u_f))
    assert not np.allclose(spec.normalized_log_gates(u_f, u_i)[1], -spec.softplus(u_f - u_i))


def test_backend_gates_match_the_definition():
    np_minlstm = importlib.import_module("linrec.backends.numpy.minlstm")

    cfg = MinLSTMConfig(d_model=2, d_inner=3, candidate="g")
    u = np.random.default_rng(1).normal(0, 4, (5, 9))
    a, b = np_minlstm.minlstm_gates(u, cfg)
    f, i = spec.sigmoid(u[:, :3]), spec.sigmoid(u[:, 3:6])
    np.testing.assert_allclose(a, f / (f + i), rtol=1e-13)
    np.testing.assert_allclose(b, i / (f + i) * spec.g(u[:, 6:]), rtol=1e-13)
    log_a, log_b = np_minlstm.minlstm_log_gates(u, cfg)
    np.testing.assert_allclose(log_a, np.log(a), rtol=1e-12)
    np.testing.assert_allclose(log_b, np.log(b), rtol=1e-12)


def test_reference_hand_example():
    # u_f = u_i = 0: f' = i' = 1/2; h̃ = 2: h_t = h_{t-1}/2 + 1 from 0 -> 1, 1.5, 1.75
    cfg = MinLSTMConfig(d_model=1, d_inner=1)
    params = {"proj.kernel": np.zeros((1, 3)), "proj.bias": np.array([0.0, 0.0, 2.0])}
    y, h = spec.forward(params, np.zeros((1, 3, 1)), cfg)
    np.testing.assert_allclose(y[0, :, 0], [1, 1.5, 1.75])
    assert isinstance(h, State) and h.h[0, 0] == 1.75
    # f = σ(big) ≈ 1 and i = σ(-big) ≈ 0 hold the state: f' → 1
    params = {"proj.kernel": np.zeros((1, 3)), "proj.bias": np.array([30.0, -30.0, 2.0])}
    y, _ = spec.forward(params, np.zeros((1, 3, 1)), cfg, State(np.array([[4.0]])))
    np.testing.assert_allclose(y[0, :, 0], 4.0, rtol=1e-12)


@pytest.mark.parametrize("which", list(CONFIGS))
def test_reference_step_split_and_vjp(which):
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg, length=4)
    y, final = spec.forward(params, x, cfg, State(h0))
    state, ys = State(h0), []
    for t in range(x.shape[1]):
        y_t, state = spec.step(params, x[:, t], state, cfg)
        ys.append(y_t)
    np.testing.assert_allclose(np.stack(ys, 1), y, rtol=1e-14)
    y1, mid = spec.forward(params, x[:, :2], cfg, State(h0))
    y2, final2 = spec.forward(params, x[:, 2:], cfg, mid)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, rtol=1e-14)
    np.testing.assert_allclose(final2.h, final.h, rtol=1e-14)
    # right padding: row 1 holds 2 real inputs; it equals that row alone, its pads output zero
    y_pad, f_pad = spec.forward(params, x, cfg, State(h0), np.array([4, 2]))
    y_row, f_row = spec.forward(params, x[1:, :2], cfg, State(h0[1:]))
    np.testing.assert_allclose(y_pad[1:, :2], y_row, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(f_pad.h[1:], f_row.h, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(y_pad[1, 2:], 0.0)

    rng = np.random.default_rng(3)
    ct_y, ct_f = rng.standard_normal(y.shape), rng.standard_normal(final.h.shape)

    def loss(params, x, h0):
        y, f = spec.forward(params, x, cfg, State(h0))
        return float((y * ct_y).sum() + (f.h * ct_f).sum())

    def fd(value, replace, eps=1e-6):
        out = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            hi, lo = value.copy(), value.copy()
            hi[idx] += eps
            lo[idx] -= eps
            out[idx] = (replace(hi) - replace(lo)) / (2 * eps)
        return out

    p_bar, x_bar, h0_bar = spec.vjp(params, x, cfg, ct_y, ct_f, h0)
    np.testing.assert_allclose(x_bar, fd(x, lambda v: loss(params, v, h0)), atol=1e-7)
    np.testing.assert_allclose(h0_bar, fd(h0, lambda v: loss(params, x, v)), atol=1e-7)
    for name in params:
        np.testing.assert_allclose(p_bar[name], fd(params[name], lambda v, n=name: loss({**params, n: v}, x, h0)),
                                   atol=1e-7, err_msg=name)


def test_layouts():
    cfg = MinLSTMConfig(d_model=2, d_inner=2)
    params = spec.init_params(cfg, seed=2, dtype="float64")
    params["proj.bias"] = np.arange(6.0)
    for layout in spec.PROJ_LAYOUTS:
        back = spec.from_layout(spec.to_layout(params, layout), layout)
        assert all(np.array_equal(back[k], params[k]) for k in params) and set(back) == set(params)
    np.testing.assert_array_equal(spec.to_layout(params, "hidden_f_i")["proj.bias"], [4, 5, 0, 1, 2, 3])
    sep = spec.to_layout(params, "separate")
    np.testing.assert_array_equal(sep["linear_i.bias"], [2, 3])
    assert sep["linear_h.kernel"].shape == (2, 2)


# --- conformance case ids (the cases run in test_conformance.py) ------------------------------------


def test_case_ids_unique_and_named():
    assert_case_ids_named(layer_cases, LAYER, at_least=81)


# --- JAX / Flax NNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.minlstm")

    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


@pytest.mark.parametrize("which", list(CONFIGS))
def test_nnx_module_matches_reference(jx, which):
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    model = jx.mod.MinLSTM.from_canonical(cfg, _f32(params))
    assert model.config == cfg
    x32, h32 = jx.jnp.asarray(x, jx.jnp.float32), State(jx.jnp.asarray(h0, jx.jnp.float32))
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    y, f = model(x32, h32, method="log" if cfg.candidate == "g" else "auto")
    np.testing.assert_allclose(np.asarray(y), y_ref, **F32)
    np.testing.assert_allclose(np.asarray(f.h), f_ref.h, **F32)
    time_major = jx.mod.MinLSTM.from_canonical(cfg, _f32(params), batch_first=False)
    y_tm, f_tm = time_major(jx.jnp.swapaxes(x32, 0, 1), h32)
    np.testing.assert_allclose(np.asarray(y_tm).swapaxes(0, 1), y_ref, **F32)
    np.testing.assert_allclose(np.asarray(f_tm.h), f_ref.h, **F32)
    state, ys = model.initial_state(2), []
    for t in range(x.shape[1]):
        state, y_t = model.cell(state, x32[:, t])
        ys.append(y_t)
    np.testing.assert_allclose(np.stack(ys, 1), spec.forward(params, x, cfg)[0], **F32)
    got = model.canonical_params()
    assert set(got) == set(params) and all(np.array_equal(got[k], params[k].astype(np.float32)) for k in got)


def test_nnx_default_init_jit_grad_vmap(jx):
    jax, jnp, nnx = jx.jax, jx.jnp, jx.nnx
    model = jx.mod.MinLSTM(4, d_inner=6, candidate="g", rngs=nnx.Rngs(0))
    assert {k: v.shape for k, v in model.canonical_params().items()} == spec.param_shapes(model.config)
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    p = {k: jnp.asarray(v) for k, v in params.items()}

    def loss(p, x, h):
        y, f = jx.mod.minlstm(p, x, config=cfg, initial_state=State(h))
        return y.sum() + f.h.sum()

    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(p, jnp.asarray(x), jnp.asarray(h0))
    p_bar, x_bar, h_bar = spec.vjp(params, x, cfg, np.ones_like(y_ref), np.ones_like(f_ref.h), h0)
    np.testing.assert_allclose(np.asarray(grads[1]), x_bar, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grads[2]), h_bar, rtol=1e-10)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[0][name]), p_bar[name], rtol=1e-10, err_msg=name)
    ys, _ = jax.vmap(lambda x: jx.mod.minlstm(p, x, config=cfg))(jnp.stack([jnp.asarray(x), -jnp.asarray(x)]))
    np.testing.assert_allclose(np.asarray(ys[1]), spec.forward(params, -x, cfg)[0], rtol=1e-12)


def test_jax_bad_input(jx):
    jnp = jx.jnp
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    model = jx.mod.MinLSTM.from_canonical(cfg, params)
    with pytest.raises(ValueError, match="d_model"):
        model(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="method='log'"):
        model(jnp.asarray(x), State(-jnp.asarray(h0)), method="log")
    with pytest.raises(ValueError, match="state"):
        model.step(jnp.asarray(x[:, 0]), State(jnp.zeros((2, 7))))
    with pytest.raises(TypeError, match="State"):
        model.step(jnp.asarray(x[:, 0]), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="x must have 3 axes"):
        model(jnp.asarray(x[:, 0]))


# --- PyTorch ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.minlstm")

    return types.SimpleNamespace(torch=torch, mod=mod)


@pytest.mark.parametrize("which", list(CONFIGS))
def test_torch_module_matches_reference(tt, which):
    torch = tt.torch
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    model = tt.mod.MinLSTM.from_canonical(cfg, _f32(params))
    assert set(model.state_dict()) == {k.replace("kernel", "weight") for k in params}
    x32, h32 = torch.from_numpy(x.astype(np.float32)), State(torch.from_numpy(h0.astype(np.float32)))
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    for mode, method in (("auto", "auto"), ("sequential", "auto")) + ((("parallel", "log"),) if cfg.candidate == "g"
                                                                     else ()):
        y, f = model(x32, h32, mode=mode, method=method)
        np.testing.assert_allclose(y.detach().numpy(), y_ref, **F32)
        np.testing.assert_allclose(f.h.detach().numpy(), f_ref.h, **F32)
    time_major = tt.mod.MinLSTM.from_canonical(cfg, _f32(params), batch_first=False)
    y_tm, f_tm = time_major(x32.transpose(0, 1), h32)
    np.testing.assert_allclose(y_tm.transpose(0, 1).detach().numpy(), y_ref, **F32)
    np.testing.assert_allclose(f_tm.h.detach().numpy(), f_ref.h, **F32)
    state, ys = model.initial_state(2), []
    for t in range(x.shape[1]):
        y_t, state = model.step(x32[:, t], state)
        ys.append(y_t)
    np.testing.assert_allclose(torch.stack(ys, 1).detach().numpy(), spec.forward(params, x, cfg)[0], **F32)
    got = model.canonical_params()
    assert set(got) == set(params) and all(np.array_equal(got[k], params[k].astype(np.float32)) for k in got)


def test_torch_compile_and_grad(tt):
    torch = tt.torch
    cfg = CONFIGS["g-expand-out"]
    params, x, h0 = _problem(cfg)
    x32, h32 = torch.from_numpy(x.astype(np.float32)), State(torch.from_numpy(h0.astype(np.float32)))
    model = tt.mod.MinLSTM.from_canonical(cfg, _f32(params), remat=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, h = compiled(x32.requires_grad_(True), h32, method="auto")
    y_ref, h_ref = spec.forward(params, x, cfg, State(h0))
    np.testing.assert_allclose(y.detach().numpy(), y_ref, **F32)
    (y.sum() + h.h.sum()).backward()
    _, x_bar, _ = spec.vjp(params, x, cfg, np.ones_like(y_ref), np.ones_like(h_ref.h), h0)
    np.testing.assert_allclose(x32.grad.numpy(), x_bar, rtol=1e-4, atol=1e-5)


def test_torch_bad_input(tt):
    torch = tt.torch
    cfg = CONFIGS["identity"]
    params, x, _ = _problem(cfg)
    model = tt.mod.MinLSTM.from_canonical(cfg, params)
    with pytest.raises(ValueError, match="candidate='g'"):
        model(torch.from_numpy(x), method="log")
    with pytest.raises(TypeError, match="x"):
        model(torch.ones(2, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x_t"):
        model.step(torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have 3 axes"):
        model(torch.from_numpy(x[0]))
    with pytest.raises(ValueError, match="chunked"):
        model(torch.from_numpy(x), lengths=torch.tensor([3, 2]), method="log")  # before the candidate check
