"""minGRU: spec config and reference, the NNX and torch modules, and the ids of its conformance cases."""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import mingru_cases as layer_cases
from linrec.spec import mingru as spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.state import State
from linrec.spec.tolerances import tolerance_for

LAYER = "mingru"
CONFIGS = {name: MinGRUConfig(**kw) for name, kw in layer_cases.CONFIGS.items()}
F32 = dict(rtol=2e-5, atol=2e-5)


def _problem(config, seed: int = 0, length: int = 7):
    """float64 params, x and initial state, exactly representable in float32."""
    p = layer_cases.make_problem(layer_cases.MINGRU, config, seed, "float32", length=length)
    return p.params_ref, p.x_ref, p.h0_ref


def _f32(tree: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in tree.items()}


# --- spec: config, parameters, activations, reference ---------------------------------------------


def test_config_resolves_d_inner():
    assert MinGRUConfig(d_model=4).d_inner == 4
    assert MinGRUConfig(d_model=4, expansion=1.5).d_inner == 6
    assert MinGRUConfig(d_model=4, d_inner=8, expansion=2.0).d_inner == 8
    cfg = MinGRUConfig(d_model=4, expansion=2.0, out_proj=True)
    assert (cfg.d_inner, cfg.d_out) == (8, 4)
    assert MinGRUConfig(d_model=3, d_inner=5).d_out == 5
    assert hash(cfg) == hash(MinGRUConfig(d_model=4, expansion=2.0, out_proj=True))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(d_model=0), "d_model"),
        (dict(d_model=2.5), "d_model"),
        (dict(d_inner=True), "d_inner"),
        (dict(expansion=-1.0), "expansion"),
        (dict(d_inner=5, expansion=2.0), "d_inner"),
        (dict(out_proj=1), "out_proj"),
        (dict(bias="yes"), "bias"),
        (dict(candidate="tanh"), "candidate"),
        (dict(default_state=float("nan")), "default_state"),
    ],
)
def test_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MinGRUConfig(**{"d_model": 4, **kwargs})


def test_param_shapes_and_init():
    cfg = MinGRUConfig(d_model=64, expansion=2.0, out_proj=True)
    shapes = spec.param_shapes(cfg)
    assert shapes == {"proj.kernel": (64, 256), "proj.bias": (256,), "out_proj.kernel": (128, 64)}
    assert spec.param_shapes(MinGRUConfig(d_model=3, bias=False)) == {"proj.kernel": (3, 6)}
    params = spec.init_params(cfg, seed=1, dtype="float64")
    assert {k: v.shape for k, v in params.items()} == shapes
    assert not params["proj.bias"].any()
    for name in ("proj.kernel", "out_proj.kernel"):
        w, bound = params[name], 1 / np.sqrt(shapes[name][0])
        assert np.abs(w).max() <= bound and w.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert spec.init_params(cfg, dtype="bfloat16")["proj.kernel"].dtype.name == "bfloat16"


def test_g_and_log_g():
    x = np.array([-800.0, -30.0, -1.0, -1e-9, 0.0, 1e-9, 2.0, 1e6])
    g = spec.g(x)
    assert g[4] == 0.5 and np.all(g[1:] > 0) and np.all(np.diff(g) >= 0)  # positive, monotone, g(0) = 0.5
    np.testing.assert_allclose(g[[2, 6]], [1 / (1 + np.e), 2.5])
    log_g = spec.log_g(x)
    assert np.all(np.isfinite(log_g))
    np.testing.assert_allclose(log_g[1:], np.log(g[1:]), rtol=1e-12)
    assert log_g[0] == pytest.approx(-800.0)  # where g itself underflows to 0


def test_log_gates_are_logs_of_gates():
    np_mingru = importlib.import_module("linrec.backends.numpy.mingru")

    cfg = MinGRUConfig(d_model=2, d_inner=3, candidate="g")
    u = np.random.default_rng(0).normal(0, 4, (5, 6))
    a, b = np_mingru.mingru_gates(u, cfg)
    log_a, log_b = np_mingru.mingru_log_gates(u, cfg)
    np.testing.assert_allclose(log_a, np.log(a), rtol=1e-12)
    np.testing.assert_allclose(log_b, np.log(b), rtol=1e-12)
    z = spec.sigmoid(u[:, :3])
    np.testing.assert_allclose(a, 1 - z, rtol=1e-13)  # a = σ(-u_z) is 1 - z


def test_reference_hand_example():
    # z = σ(0) = 1/2, h̃ = 2: h_t = h_{t-1}/2 + 1 from h_{-1} = 0 -> 1, 1.5, 1.75
    cfg = MinGRUConfig(d_model=1, d_inner=1)
    params = {"proj.kernel": np.array([[0.0, 0.0]]), "proj.bias": np.array([0.0, 2.0])}
    y, h = spec.forward(params, np.zeros((1, 3, 1)), cfg)
    np.testing.assert_allclose(y[0, :, 0], [1, 1.5, 1.75])
    assert isinstance(h, State) and h.position is None
    assert h.h.shape == (1, 1) and h.h[0, 0] == 1.75
    # cheind's default state g(0) = 0.5 and the g candidate g(2) = 2.5: 1.5, 2, 2.25
    cfg = MinGRUConfig(d_model=1, d_inner=1, candidate="g", default_state=0.5)
    y, _ = spec.forward(params, np.zeros((1, 3, 1)), cfg)
    np.testing.assert_allclose(y[0, :, 0], [1.5, 2.0, 2.25])


@pytest.mark.parametrize("which", list(CONFIGS))
def test_reference_step_and_split(which):
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    y, final = spec.forward(params, x, cfg, State(h0))
    state, ys = State(h0), []
    for t in range(x.shape[1]):
        y_t, state = spec.step(params, x[:, t], state, cfg)
        ys.append(y_t)
    np.testing.assert_allclose(np.stack(ys, 1), y, rtol=1e-14)
    np.testing.assert_allclose(state.h, final.h, rtol=1e-14)
    y1, mid = spec.forward(params, x[:, :3], cfg, State(h0))
    y2, final2 = spec.forward(params, x[:, 3:], cfg, mid)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, rtol=1e-14)
    np.testing.assert_allclose(final2.h, final.h, rtol=1e-14)
    y_none, _ = spec.forward(params, x, cfg)
    y_full, _ = spec.forward(params, x, cfg, State(np.full_like(h0, cfg.default_state)))
    np.testing.assert_array_equal(y_none, y_full)


@pytest.mark.parametrize("which", list(CONFIGS))
def test_reference_right_padding(which):
    """lengths: a padded row equals the row alone on its real inputs; pads output zero and keep the state."""
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    lengths = np.array([7, 3])
    y, final = spec.forward(params, x, cfg, State(h0), lengths)
    for i, n in enumerate(lengths):
        y_i, f_i = spec.forward(params, x[i : i + 1, :n], cfg, State(h0[i : i + 1]))
        np.testing.assert_allclose(y[i : i + 1, :n], y_i, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(final.h[i : i + 1], f_i.h, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(y[1, 3:], 0.0)
    with pytest.raises(ValueError, match="lengths"):
        spec.forward(params, x, cfg, lengths=np.array([8, 1]))
    with pytest.raises(TypeError, match="lengths"):
        spec.forward(params, x, cfg, lengths=np.array([1.0, 2.0]))


@pytest.mark.parametrize("which", list(CONFIGS))
def test_reference_vjp_matches_finite_differences(which):
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg, length=4)
    rng = np.random.default_rng(3)
    ct_y, ct_f = rng.standard_normal((2, 4, cfg.d_out)), rng.standard_normal((2, cfg.d_inner))

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
    assert set(p_bar) == set(params)
    for name in params:
        np.testing.assert_allclose(p_bar[name], fd(params[name], lambda v, n=name: loss({**params, n: v}, x, h0)),
                                   atol=1e-7, err_msg=name)


def test_layouts_round_trip_and_reorder():
    cfg = MinGRUConfig(d_model=2, d_inner=3, out_proj=True)
    params = spec.init_params(cfg, seed=2, dtype="float64")
    params["proj.bias"] = np.arange(6.0)
    for layout in spec.PROJ_LAYOUTS:
        back = spec.from_layout(spec.to_layout(params, layout), layout)
        assert set(back) == set(params) and all(np.array_equal(back[k], params[k]) for k in params)
    lucid = spec.to_layout(params, "hidden_gate")
    np.testing.assert_array_equal(lucid["proj.bias"], [3, 4, 5, 0, 1, 2])
    sep = spec.to_layout(params, "separate")
    assert sorted(sep) == ["linear_h.bias", "linear_h.kernel", "linear_z.bias", "linear_z.kernel", "out_proj.kernel"]
    np.testing.assert_array_equal(sep["linear_z.bias"], [0, 1, 2])
    with pytest.raises(ValueError, match="unknown layout"):
        spec.to_layout(params, "fortran")


def test_reference_bad_input():
    cfg = CONFIGS["identity"]
    params, x, h0 = _problem(cfg)
    with pytest.raises(ValueError, match="d_model"):
        spec.forward(params, x[..., :2], cfg)
    with pytest.raises(ValueError, match=r"proj\.bias"):
        spec.forward({"proj.kernel": params["proj.kernel"]}, x, cfg)
    with pytest.raises(ValueError, match="unexpected"):
        spec.forward({**params, "out_proj.kernel": np.zeros((4, 3))}, x, cfg)
    with pytest.raises(TypeError, match="initial_state"):
        spec.forward(params, x, cfg, State(h0.astype(np.float32)))
    with pytest.raises(TypeError, match="State"):  # the state type is linrec's State, never a bare array
        spec.forward(params, x, cfg, h0)
    with pytest.raises(ValueError, match="x must have 3 axes"):  # 2-D is never taken as unbatched
        spec.forward(params, x[0], cfg)


# --- conformance case ids (the cases run in test_conformance.py) ------------------------------------


def test_case_ids_unique_and_named():
    assert_case_ids_named(layer_cases, LAYER, at_least=110, properties=(
        "equals-reference", "gradient", "parallel-equals-step", "prefill-then-step", "split-invariance",
        "default-state", "empty-sequence", "padding", "bad-input"))


# --- JAX / Flax NNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.mingru")

    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


@pytest.mark.parametrize("which", list(CONFIGS))
def test_nnx_module_matches_reference(jx, which):
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    model = jx.mod.MinGRU.from_canonical(cfg, _f32(params))
    assert model.config == cfg
    x32, h32 = jx.jnp.asarray(x, jx.jnp.float32), State(jx.jnp.asarray(h0, jx.jnp.float32))
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    paths = (("auto", "auto"), ("sequential", "auto"), ("parallel", "log")) if which == "g-half" else (
        ("auto", "auto"),)
    for mode, method in paths:
        y, f = model(x32, h32, mode=mode, method=method)
        np.testing.assert_allclose(np.asarray(y), y_ref, **F32)
        np.testing.assert_allclose(np.asarray(f.h), f_ref.h, **F32)
    state, ys = model.initial_state(2), []
    np.testing.assert_array_equal(np.asarray(state.h), np.full((2, cfg.d_inner), cfg.default_state))
    for t in range(x.shape[1]):
        state, y_t = model.cell(state, x32[:, t])
        ys.append(y_t)
    y_none, _ = spec.forward(params, x, cfg)
    np.testing.assert_allclose(np.stack(ys, 1), y_none, **F32)
    got = model.canonical_params()
    assert set(got) == set(params) and all(np.array_equal(got[k], params[k].astype(np.float32)) for k in got)


def test_nnx_default_init(jx):
    model = jx.mod.MinGRU(16, expansion=2.0, out_proj=True, rngs=jx.nnx.Rngs(0))
    params = model.canonical_params()
    assert {k: v.shape for k, v in params.items()} == spec.param_shapes(model.config)
    assert not params["proj.bias"].any()
    assert np.abs(params["proj.kernel"]).max() <= 1 / 4 and np.abs(params["out_proj.kernel"]).max() <= 1 / np.sqrt(32)
    y, h = model(jx.jnp.ones((2, 3, 16)))
    assert y.shape == (2, 3, 16) and h.h.shape == (2, 32)


def test_jax_jit_grad_vmap(jx):
    jax, jnp = jx.jax, jx.jnp
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    fn = jax.jit(lambda p, x, s: jx.mod.mingru(p, x, config=cfg, initial_state=s, method="log"))
    y, f = fn(p, jnp.asarray(x), State(jnp.asarray(h0)))  # the State is a pytree: it passes through jit
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f.h), f_ref.h, rtol=1e-12)

    def loss(p, x, h):  # (the log path's gradient is a conformance case)
        y, f = jx.mod.mingru(p, x, config=cfg, initial_state=State(h))
        return y.sum() + f.h.sum()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(p, jnp.asarray(x), jnp.asarray(h0))
    p_bar, x_bar, h_bar = spec.vjp(params, x, cfg, np.ones_like(y_ref), np.ones_like(f_ref.h), h0)
    np.testing.assert_allclose(np.asarray(grads[1]), x_bar, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grads[2]), h_bar, rtol=1e-10)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[0][name]), p_bar[name], rtol=1e-10, err_msg=name)
    # vmap over an ensemble of inputs (extra leading axis)
    xs = jnp.stack([jnp.asarray(x), -jnp.asarray(x)])
    ys, _ = jax.vmap(lambda x: jx.mod.mingru(p, x, config=cfg))(xs)
    np.testing.assert_allclose(np.asarray(ys[1]), spec.forward(params, -x, cfg)[0], rtol=1e-12)
    # step under jit
    y_t, _ = jax.jit(lambda p, x, s: jx.mod.mingru_step(p, x, s, config=cfg))(p, jnp.asarray(x[:, 0]), None)
    np.testing.assert_allclose(np.asarray(y_t), spec.forward(params, x[:, :1], cfg)[0][:, 0], rtol=1e-12)


def test_nnx_jit_and_remat(jx):
    jax, jnp, nnx = jx.jax, jx.jnp, jx.nnx
    cfg = CONFIGS["g-expand-out"]
    params, x, _ = _problem(cfg)
    x32 = jnp.asarray(x, jnp.float32)
    grads = []
    for remat in (False, True):
        model = jx.mod.MinGRU.from_canonical(cfg, _f32(params), remat=remat)

        @nnx.jit
        def loss(model, x):
            y, h = model(x)
            return jnp.square(y).sum() + h.h.sum()

        grads.append(nnx.grad(loss)(model, x32))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_nnx_bfloat16(jx):
    jnp = jx.jnp
    cfg = CONFIGS["identity"]
    params, x, _ = _problem(cfg)
    model = jx.mod.MinGRU.from_canonical(cfg, _f32(params), dtype=jnp.bfloat16)
    y, h = model(jnp.asarray(x, jnp.float32))
    assert y.dtype == jnp.bfloat16 and h.h.dtype == jnp.float32  # the carried state keeps float32
    assert model.initial_state(2).h.dtype == jnp.float32
    y_ref, _ = spec.forward(params, x, cfg)
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=0, atol=0.1)


def test_jax_bad_input(jx):
    jax, jnp = jx.jax, jx.jnp
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    model = jx.mod.MinGRU.from_canonical(cfg, params)
    with pytest.raises(ValueError, match="d_model"):
        model(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="method='log'"):
        model(jnp.asarray(x), State(-jnp.asarray(h0)), method="log")
    with pytest.raises(ValueError, match="candidate='g'"):
        jx.mod.MinGRU(3, rngs=jx.nnx.Rngs(0))(jnp.ones((1, 2, 3)), method="log")
    with pytest.raises(TypeError, match="MinGRUConfig"):
        jx.mod.MinGRU.from_canonical(dict(d_model=3), params)
    with pytest.raises(ValueError, match="x must have 3 axes"):
        model(jnp.asarray(x[0]))
    with pytest.raises(ValueError, match="chunked"):
        model(jnp.asarray(x), lengths=jnp.array([3, 2]), method="log")
    with pytest.raises(ValueError, match="batch_first"):
        jx.mod.MinGRU(3, batch_first="no", rngs=jx.nnx.Rngs(0))
    # under jit a negative state is refused when the computation runs (never a silent NaN)
    fn = jax.jit(lambda h: model(jnp.asarray(x), State(h), method="log")[0])
    with pytest.raises(Exception, match="log_initial_state"):
        jax.block_until_ready(fn(-jnp.asarray(h0)))


# --- PyTorch ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.mingru")

    return types.SimpleNamespace(torch=torch, mod=mod)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_candidate_is_the_specs_g_at_its_edges(tt, dtype):
    """The scalar-free ``g`` of the PyTorch backend: the where-form's values bit for bit (zeros of both signs,
    infinities, NaN, tiny values) and the spec's one-sided gradient, ``g'(0) = 1``."""
    torch = tt.torch
    edges = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 3.5, -20.0, 1e30, -1e30, np.inf, -np.inf, np.nan]
    u = torch.tensor(edges, dtype=getattr(torch, dtype), requires_grad=True)
    h = tt.mod.candidate(u, "g")
    (grad,) = torch.autograd.grad(h.sum(), u)
    with torch.no_grad():
        where_form = torch.where(u >= 0, u + 0.5, torch.sigmoid(u))
    np.testing.assert_array_equal(h.detach().numpy(), where_form.numpy())
    u_np = u.detach().numpy()
    tol = tolerance_for(dtype, grad=True)  # the spec's table; NaN where the input is NaN, on both sides
    np.testing.assert_allclose(grad.numpy(), spec.candidate_grad(u_np, "g"), rtol=tol.rtol, atol=tol.atol)
    assert grad[0] == 1.0 and grad[1] == 1.0  # one-sided at zero, as the spec's VJP


@pytest.mark.parametrize("which", list(CONFIGS))
def test_torch_module_matches_reference(tt, which):
    torch = tt.torch
    cfg = CONFIGS[which]
    params, x, h0 = _problem(cfg)
    model = tt.mod.MinGRU.from_canonical(cfg, _f32(params))
    assert model.config == cfg
    assert set(model.state_dict()) == {k.replace("kernel", "weight") for k in params}
    x32, h32 = torch.from_numpy(x.astype(np.float32)), State(torch.from_numpy(h0.astype(np.float32)))
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0))
    for mode, method in (("auto", "auto"), ("sequential", "auto")) + ((("parallel", "log"),) if cfg.candidate == "g"
                                                                     else ()):
        y, f = model(x32, h32, mode=mode, method=method)
        np.testing.assert_allclose(y.detach().numpy(), y_ref, **F32)
        np.testing.assert_allclose(f.h.detach().numpy(), f_ref.h, **F32)
    state, ys = model.initial_state(2), []
    for t in range(x.shape[1]):
        y_t, state = model.step(x32[:, t], state)
        ys.append(y_t)
    np.testing.assert_allclose(torch.stack(ys, 1).detach().numpy(), spec.forward(params, x, cfg)[0], **F32)
    got = model.canonical_params()
    assert set(got) == set(params) and all(np.array_equal(got[k], params[k].astype(np.float32)) for k in got)


def test_torch_default_init(tt):
    model = tt.mod.MinGRU(16, expansion=2.0, out_proj=True)
    params = model.canonical_params()
    assert {k: v.shape for k, v in params.items()} == spec.param_shapes(model.config)
    assert not params["proj.bias"].any() and np.abs(params["proj.kernel"]).max() <= 1 / 4
    y, h = model(tt.torch.ones(2, 3, 16))
    assert y.shape == (2, 3, 16) and h.h.shape == (2, 32)


def test_torch_remat_and_compile(tt):
    torch = tt.torch
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    x32, h32 = torch.from_numpy(x.astype(np.float32)), State(torch.from_numpy(h0.astype(np.float32)))
    grads = []
    for remat in (False, True):
        model = tt.mod.MinGRU.from_canonical(cfg, _f32(params), remat=remat)
        y, h = model(x32, h32, method="log")
        (y.square().sum() + h.h.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    # one graph, no breaks (aot_eager: Dynamo + AOTAutograd without inductor's slow codegen)
    y_ref, h_ref = spec.forward(params, x, cfg, State(h0))
    model = tt.mod.MinGRU.from_canonical(cfg, _f32(params))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_c, h_c = compiled(x32, h32, method="log")  # the log path also traces the in-graph domain assert
    np.testing.assert_allclose(y_c.detach().numpy(), y_ref, **F32)
    np.testing.assert_allclose(h_c.h.detach().numpy(), h_ref.h, **F32)


def test_torch_bfloat16(tt):
    torch = tt.torch
    cfg = CONFIGS["identity"]
    params, x, _ = _problem(cfg)
    model = tt.mod.MinGRU.from_canonical(cfg, params, dtype=torch.bfloat16)
    y, h = model(torch.from_numpy(x).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and h.h.dtype == torch.float32
    assert model.initial_state(2).h.dtype == torch.float32
    np.testing.assert_allclose(y.float().detach().numpy(), spec.forward(params, x, cfg)[0], rtol=0, atol=0.1)


def test_torch_bad_input(tt):
    torch = tt.torch
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    model = tt.mod.MinGRU.from_canonical(cfg, params)
    with pytest.raises(ValueError, match="d_model"):
        model(torch.ones(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="method='log'"):
        model(torch.from_numpy(x), State(-torch.from_numpy(h0)), method="log")
    with pytest.raises(TypeError, match="initial_state"):
        model(torch.from_numpy(x), State(torch.from_numpy(h0).float()))
    with pytest.raises(TypeError, match="State"):
        model(torch.from_numpy(x), torch.from_numpy(h0))
    with pytest.raises(ValueError, match="mode"):
        model(torch.from_numpy(x), mode="fast")
    with pytest.raises(ValueError, match="x must have 3 axes"):
        model(torch.from_numpy(x[0]))
    with pytest.raises(ValueError, match="chunked"):
        model(torch.from_numpy(x), lengths=torch.tensor([3, 2]), method="log")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_modules_batch_first_and_lengths(request, backend):
    """batch_first=False reads and returns (T, B, D), as torch.nn.GRU; lengths right-pads ragged rows."""
    cfg = CONFIGS["g-half"]
    params, x, h0 = _problem(cfg)
    lengths = np.array([7, 4])
    y_ref, f_ref = spec.forward(params, x, cfg, State(h0), lengths)
    if backend == "jax":
        jx = request.getfixturevalue("jx")
        cls, arr = jx.mod.MinGRU, jx.jnp.asarray
    else:
        tt = request.getfixturevalue("tt")
        cls, arr = tt.mod.MinGRU, tt.torch.from_numpy
    time_major = cls.from_canonical(cfg, _f32(params), batch_first=False)
    assert time_major.batch_first is False
    x_tm = arr(np.ascontiguousarray(x.transpose(1, 0, 2)).astype(np.float32))
    y, f = time_major(x_tm, State(arr(h0.astype(np.float32))), lengths=arr(lengths))
    y = np.asarray(y.detach() if hasattr(y, "detach") else y)
    assert y.shape == (7, 2, cfg.d_out)
    np.testing.assert_allclose(y.transpose(1, 0, 2), y_ref, **F32)
    np.testing.assert_allclose(np.asarray(f.h.detach() if hasattr(f.h, "detach") else f.h), f_ref.h, **F32)
    np.testing.assert_array_equal(y[4:, 1], 0.0)


def test_verify_agreement(jx, tt):
    agreement = pytest.importorskip("linrec.conformance.agreement")
    del agreement
    from linrec.backends.jax.verify import verify_agreement as jax_verify
    from linrec.backends.torch.verify import verify_agreement as torch_verify

    cfg = CONFIGS["g-half"]
    params, x, _ = _problem(cfg)
    report = torch_verify(tt.mod.MinGRU.from_canonical(cfg, _f32(params)), tt.torch.from_numpy(x.astype(np.float32)))
    assert report.ok and 0 <= report.max_error_state <= report.allowed_state
    report = jax_verify(jx.mod.MinGRU.from_canonical(cfg, _f32(params)), jx.jnp.asarray(x, jx.jnp.float32))
    assert report.ok and 0 <= report.max_error_state <= report.allowed_state
    # a time-major module: its input is (T, B, D), its steps (B, D)
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2)).astype(np.float32)
    report = torch_verify(tt.mod.MinGRU.from_canonical(cfg, _f32(params), batch_first=False), tt.torch.from_numpy(x_tm))
    assert report.ok and report.length == x.shape[1], str(report)
    report = jax_verify(jx.mod.MinGRU.from_canonical(cfg, _f32(params), batch_first=False), jx.jnp.asarray(x_tm))
    assert report.ok and report.length == x.shape[1], str(report)
