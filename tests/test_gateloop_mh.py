"""Tests of the multi-head outer-product GateLoop layer (``spec/gateloop_mh.md``).

The reference (NumPy loop + analytic VJP), the ids of its conformance cases, the Flax NNX
and torch modules (canonical round trip, jit/grad/vmap, torch.compile, remat, the memory-lean method="chunked",
step API, bf16), and an optional comparison with lucidrains' ``gateloop-transformer`` when installed.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import gateloop_mh_cases
from linrec.spec import gateloop_mh as spec
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State

CONFIGS = {
    "real": GateLoopMHConfig(d_model=4, num_heads=2, d_key=3, d_value=2, qkv_bias=True),
    "real-head": GateLoopMHConfig(d_model=4, num_heads=2, d_key=2, d_value=3, gate_granularity="head"),
    "complex": GateLoopMHConfig(d_model=4, num_heads=2, d_key=2, d_value=2, gate="complex"),
    "complex-out": GateLoopMHConfig(d_model=4, num_heads=2, d_key=2, d_value=2, gate="complex",
                                    complex_output="complex", phase_activation="relu", gate_granularity="head"),
    # lucidrains' options (gateloop_mh.md §2, §9): cartesian complex gate, sub-LayerNorm, silu output gate, RMS input
    "cartesian-gated": GateLoopMHConfig(d_model=4, num_heads=2, d_key=2, d_value=2, gate="complex",
                                        gate_parametrization="cartesian", gate_granularity="head",
                                        sub_norm="layernorm", output_gate="silu", input_norm="rms"),
    "rms-subnorm": GateLoopMHConfig(d_model=4, num_heads=2, d_key=3, d_value=2, input_norm="rms",
                                    sub_norm="layernorm"),
}


#: (mode, method, chunk_size) of every path: the default, one scan, the memory-lean chunked scan (§6), the loop.
PATHS = (("auto", "auto", None), ("parallel", "auto", None), ("parallel", "chunked", 4), ("sequential", "auto", None))


def _problem(config: GateLoopMHConfig, seed: int = 0, batch: int = 2, length: int = 6):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float64) for k, v in spec.init_params(config, seed, "float64").items()}
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}  # nonzero biases
    x = rng.standard_normal((batch, length, config.d_model))
    shape = spec.state_shape(config, batch)
    s0 = 0.5 * rng.standard_normal(shape) + (0.5j * rng.standard_normal(shape) if config.is_complex else 0)
    return params, x, s0


# ---------------------------------------------------------------------------------------------
# the reference


def _phi(params, x, s0, config, ct_y, ct_s) -> float:
    y, final = spec.forward(params, x, config, State(s0))
    return float(np.real(np.sum(ct_y * y)) + np.real(np.sum(ct_s * final.h)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_vjp_matches_finite_differences(name):
    config = CONFIGS[name]
    params, x, s0 = _problem(config, length=4)
    rng = np.random.default_rng(1)
    y, final = spec.forward(params, x, config, State(s0))
    s = final.h
    ct_y = rng.standard_normal(y.shape) + (1j * rng.standard_normal(y.shape) if np.iscomplexobj(y) else 0)
    ct_s = rng.standard_normal(s.shape) + (1j * rng.standard_normal(s.shape) if np.iscomplexobj(s) else 0)
    p_bar, x_bar, s_bar = spec.vjp(params, x, config, ct_y, ct_s, initial_state=State(s0))
    eps = 1e-6

    def fd(get, put, units=(1.0,)):
        out = np.zeros(get().shape, np.complex128 if len(units) > 1 else np.float64)
        for idx in np.ndindex(get().shape):
            for unit in units:  # JAX convention for complex primals: dφ/dRe − i dφ/dIm
                base = get().copy()
                plus, minus = base.copy(), base.copy()
                plus[idx] += eps * unit
                minus[idx] -= eps * unit
                diff = (_phi(**put(plus)) - _phi(**put(minus))) / (2 * eps)
                out[idx] += diff * np.conj(unit)
        return out

    common = dict(params=params, x=x, s0=s0, config=config, ct_y=ct_y, ct_s=ct_s)
    for name_p in params:
        want = fd(lambda n=name_p: params[n], lambda v, n=name_p: {**common, "params": {**params, n: v}})
        np.testing.assert_allclose(p_bar[name_p], want, atol=1e-7, err_msg=name_p)
    np.testing.assert_allclose(x_bar, fd(lambda: x, lambda v: {**common, "x": v}), atol=1e-7)
    units = (1.0, 1j) if config.is_complex else (1.0,)
    np.testing.assert_allclose(s_bar, fd(lambda: s0, lambda v: {**common, "s0": v}, units), atol=1e-7)


@pytest.mark.parametrize("name", ["real", "complex"])
def test_reference_equals_surrogate_attention(name):
    """The paper's quadratic form without division: o_n = Σ_{m≤n} Σ_k q_n[k] (Π_{m<j≤n} a_j[k]) k_m[k] v_m."""
    config = CONFIGS[name]
    params, x, _ = _problem(config)
    y, _ = spec.forward(params, x, config)
    q, k, v, a = spec.project(params, x, config)
    a = np.broadcast_to(a[..., 0], q.shape)  # (B, T, H, K): one decay per key row
    length = x.shape[1]
    o = np.zeros((*x.shape[:2], config.num_heads, config.d_value), np.complex128)
    for n in range(length):
        for m in range(n + 1):
            decay = np.prod(a[:, m + 1 : n + 1], axis=1) if n > m else np.ones_like(a[:, 0])
            o[:, n] += np.einsum("bhk,bhk,bhv->bhv", q[:, n], decay * k[:, m], v[:, m])
    u = o.real if not (config.is_complex and config.complex_output == "complex") else o
    want = u.reshape(*u.shape[:2], -1) @ params["out_proj.kernel"] + params["out_proj.bias"]
    np.testing.assert_allclose(y, want, atol=1e-12)


def test_config_defaults_and_validation():
    c = GateLoopMHConfig(d_model=8, num_heads=2)
    assert (c.d_key, c.d_value, c.gate_rows) == (4, 4, 4)
    assert GateLoopMHConfig(d_model=8, num_heads=2, gate_granularity="head").gate_rows == 1
    with pytest.raises(ValueError, match="d_key"):
        GateLoopMHConfig(d_model=5, num_heads=2)
    for field, value in (("gate", "imag"), ("complex_output", "both"), ("phase_activation", "tanh"),
                         ("chunk_size", 0), ("d_model", True), ("qkv_bias", 1)):
        with pytest.raises(ValueError, match=field):
            GateLoopMHConfig(**{"d_model": 4, field: value})


def test_param_shapes_and_init():
    config = GateLoopMHConfig(d_model=64, num_heads=4, d_key=8, d_value=16, qkv_bias=True)
    shapes = spec.param_shapes(config)
    assert shapes["q_proj.kernel"] == (64, 32) and shapes["v_proj.kernel"] == (64, 64)
    assert shapes["a_proj.kernel"] == (64, 32) and shapes["out_proj.kernel"] == (64, 64)
    params = spec.init_params(config, seed=3)
    assert {k: v.shape for k, v in params.items()} == shapes
    assert all(v.dtype == np.float32 for v in params.values())
    kernel = params["q_proj.kernel"]
    assert np.all(np.abs(kernel) <= 2 / np.sqrt(64) / 0.8796 + 1e-6)  # truncated at 2σ
    assert abs(kernel.var() - 1 / 64) < 0.25 / 64  # lecun: variance 1/fan_in
    decays = 1 / (1 + np.exp(-params["a_proj.bias"].reshape(4, 8)))
    np.testing.assert_allclose(decays, np.tile(np.linspace(0.9, 0.999, 8), (4, 1)), rtol=1e-6)
    assert np.all(params["q_proj.bias"] == 0) and np.all(params["out_proj.bias"] == 0)
    complex_shapes = spec.param_shapes(replace(config, gate="complex", gate_granularity="head"))
    assert complex_shapes["a_mag_proj.kernel"] == (64, 4) and complex_shapes["a_phase_proj.bias"] == (4,)
    assert "a_proj.kernel" not in complex_shapes


# ---------------------------------------------------------------------------------------------
# conformance case ids (the cases run in test_conformance.py)


def test_case_ids_unique_and_named():
    assert_case_ids_named(gateloop_mh_cases, "gateloop_mh", at_least=61)


# ---------------------------------------------------------------------------------------------
# JAX / Flax NNX


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.gateloop_mh")

    return SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


@pytest.mark.parametrize("name", ["real", "complex-out", "cartesian-gated"])
def test_nnx_module_matches_reference(jx, name):
    config = CONFIGS[name]
    params, x, s0 = _problem(config)
    y_ref, final_ref = spec.forward(params, x, config, State(s0))
    s_ref = final_ref.h
    module = jx.mod.GateLoopMH.from_canonical(config, params)
    assert module.config == config
    for mode, method, size in PATHS:
        y, final = module(jx.jnp.asarray(x), State(jx.jnp.asarray(s0)), mode=mode, method=method, chunk_size=size)
        assert isinstance(final, State)
        np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-12)
        np.testing.assert_allclose(np.asarray(final.h), s_ref, atol=1e-12)
    out = module.canonical_params()
    assert set(out) == set(params) and all(np.array_equal(out[k], params[k]) for k in params)
    # state paths are the canonical names
    paths = {".".join(map(str, p)) for p, _ in jx.nnx.to_flat_state(jx.nnx.state(module, jx.nnx.Param))}
    assert paths == set(params)
    # step API and the cell convention
    state, ys = State(jx.jnp.asarray(s0)), []
    for t in range(x.shape[1]):
        state, y_t = module.cell(state, jx.jnp.asarray(x[:, t]))
        ys.append(np.asarray(y_t))
    np.testing.assert_allclose(np.stack(ys, 1), y_ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.h), s_ref, atol=1e-12)
    # batch_first=False reads and returns (T, B, D); lengths: identity steps inside the scan
    module_tb = jx.mod.GateLoopMH.from_canonical(config, params, batch_first=False)
    lengths = np.array([6, 2], np.int32)
    y_pad_ref, final_pad_ref = spec.forward(params, x, config, State(s0), lengths=lengths)
    for mode, method, size in PATHS[1:]:
        y, final = module_tb(jx.jnp.asarray(x.transpose(1, 0, 2)), State(jx.jnp.asarray(s0)),
                             lengths=jx.jnp.asarray(lengths), mode=mode, method=method, chunk_size=size)
        np.testing.assert_allclose(np.asarray(y).transpose(1, 0, 2), y_pad_ref, atol=1e-12)
        np.testing.assert_allclose(np.asarray(final.h), final_pad_ref.h, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(T, B, d_model\)"):
        module_tb(jx.jnp.asarray(x[0]))


def test_nnx_module_init(jx):
    module = jx.mod.GateLoopMH(8, 2, gate="complex", rngs=jx.nnx.Rngs(0))
    params = module.canonical_params()
    assert {k: v.shape for k, v in params.items()} == spec.param_shapes(module.config)
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_allclose(params["a_mag_proj.bias"], spec.gate_bias_init(module.config), rtol=1e-6)
    s = module.initial_state(3)
    assert isinstance(s, State) and s.h.shape == (3, 2, 4, 4) and s.h.dtype == np.complex64
    y, s = module(jx.jnp.ones((3, 5, 8), jx.jnp.float32))
    assert y.shape == (3, 5, 8) and y.dtype == np.float32 and s.h.dtype == np.complex64
    assert np.all(np.isfinite(np.asarray(y)))


def test_jax_jit_grad_vmap_remat(jx):
    jax, jnp = jx.jax, jx.jnp
    config = CONFIGS["complex"]
    params, x, s0 = _problem(config)
    p = {k: jnp.asarray(v) for k, v in params.items()}

    def loss(p, x, s0, method="auto", remat=False):
        y, final = jx.mod.gateloop_mh(p, x, config=config, initial_state=State(s0), method=method,
                                      chunk_size=4 if method == "chunked" else None, remat=remat)
        return jnp.sum(y**2) + jnp.sum(jnp.abs(final.h) ** 2)

    args = (p, jnp.asarray(x), jnp.asarray(s0))
    want = jax.grad(loss, argnums=(0, 1))(*args)
    for method, remat in (("chunked", False), ("auto", True)):  # sequential-mode grads: conformance cases
        got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=(3, 4))(*args, method, remat)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-10)
    # vmap over an extra leading axis of x and the state
    xs = jnp.stack([args[1], 2 * args[1]])
    ss = jnp.stack([args[2], -args[2]])
    ys, _ = jax.vmap(lambda x, s: jx.mod.gateloop_mh(p, x, config=config, initial_state=State(s)))(xs, ss)
    for i in range(2):
        y_i, _ = spec.forward(params, np.asarray(xs[i]), config, State(np.asarray(ss[i])))
        np.testing.assert_allclose(np.asarray(ys[i]), y_i, atol=1e-12)
    # the NNX module under nnx.jit and nnx.grad, with remat
    module = jx.mod.GateLoopMH.from_canonical(config, params, remat=True)
    y_mod, _ = jx.nnx.jit(lambda m, x: m(x, method="chunked", chunk_size=2))(module, args[1])
    np.testing.assert_allclose(np.asarray(y_mod), spec.forward(params, x, config)[0], atol=1e-12)
    grads = jx.nnx.grad(lambda m: jnp.sum(m(args[1])[0] ** 2))(module)
    assert np.all(np.isfinite(np.asarray(grads["a_phase_proj"]["kernel"][...])))


def test_jax_chunked_method_saves_only_chunks(jx):
    """method='chunked': no residual kept for the backward pass holds all T·H·K·V states."""
    ad_checkpoint = pytest.importorskip("jax._src.ad_checkpoint")  # saved_residuals backs print_saved_residuals
    saved_residuals = ad_checkpoint.saved_residuals

    jnp = jx.jnp
    config = GateLoopMHConfig(d_model=4, num_heads=2, d_key=4, d_value=4)
    p = {k: jnp.asarray(v) for k, v in spec.init_params(config).items()}
    x = jnp.ones((1, 64, 4), jnp.float32)
    all_states = 64 * 2 * 4 * 4

    def biggest(method):
        def loss(p, x):
            size = 8 if method == "chunked" else None
            return jnp.sum(jx.mod.gateloop_mh(p, x, config=config, method=method, chunk_size=size)[0] ** 2)

        return max(int(np.prod(aval.shape)) for aval, _ in saved_residuals(loss, p, x))

    assert biggest("associative") >= all_states  # one scan: every state at once
    assert biggest("chunked") <= all_states // 4


def test_jax_bfloat16(jx):
    jnp = jx.jnp
    config = CONFIGS["real"]
    params, x, _ = _problem(config)
    module = jx.mod.GateLoopMH.from_canonical(config, params, param_dtype=jnp.bfloat16)
    y, final = module(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and final.h.dtype == jnp.float32
    bf = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in params.items()}
    y_ref, _ = spec.forward(bf, np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), config)
    assert np.max(np.abs(np.asarray(y, np.float64) - y_ref)) < 0.05 * np.max(np.abs(y_ref)) + 0.05


# ---------------------------------------------------------------------------------------------
# PyTorch


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.gateloop_mh")

    return SimpleNamespace(torch=torch, mod=mod)


@pytest.mark.parametrize("name", ["real-head", "complex", "cartesian-gated", "rms-subnorm"])
def test_torch_module_matches_reference(tt, name):
    torch = tt.torch
    config = CONFIGS[name]
    params, x, s0 = _problem(config)
    y_ref, final_ref = spec.forward(params, x, config, State(s0))
    s_ref = final_ref.h
    module = tt.mod.GateLoopMH.from_canonical(config, params)
    assert module.config == config
    keys = set(module.state_dict())
    assert keys == {k.replace(".kernel", ".weight").replace(".scale", ".weight") for k in params}
    np.testing.assert_array_equal(module.q_proj.weight.detach().numpy(), params["q_proj.kernel"].T)
    for mode, method, size in PATHS:
        y, final = module(torch.as_tensor(x), State(torch.as_tensor(s0)), mode=mode, method=method, chunk_size=size)
        assert isinstance(final, State)
        np.testing.assert_allclose(y.detach().numpy(), y_ref, atol=1e-12)
        np.testing.assert_allclose(final.h.detach().numpy(), s_ref, atol=1e-12)
    out = module.canonical_params()
    assert all(np.array_equal(out[k], params[k]) for k in params)
    state, ys = State(torch.as_tensor(s0)), []
    for t in range(x.shape[1]):
        y_t, state = module.step(torch.as_tensor(x[:, t]), state)
        ys.append(y_t.detach().numpy())
    np.testing.assert_allclose(np.stack(ys, 1), y_ref, atol=1e-12)
    np.testing.assert_allclose(state.h.detach().numpy(), s_ref, atol=1e-12)
    # batch_first=False reads and returns (T, B, D); lengths: identity steps inside the scan
    module_tb = tt.mod.GateLoopMH.from_canonical(config, params, batch_first=False)
    lengths = np.array([6, 2], np.int64)
    y_pad_ref, final_pad_ref = spec.forward(params, x, config, State(s0), lengths=lengths)
    for mode, method, size in PATHS[1:]:
        y, final = module_tb(torch.as_tensor(x.transpose(1, 0, 2)), State(torch.as_tensor(s0)),
                             lengths=torch.as_tensor(lengths), mode=mode, method=method, chunk_size=size)
        np.testing.assert_allclose(y.detach().numpy().transpose(1, 0, 2), y_pad_ref, atol=1e-12)
        np.testing.assert_allclose(final.h.detach().numpy(), final_pad_ref.h, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(T, B, d_model\)"):
        module_tb(torch.as_tensor(x[0]))


def test_torch_module_init(tt):
    module = tt.mod.GateLoopMH(8, 2, gate_granularity="head")
    params = module.canonical_params()
    assert {k: v.shape for k, v in params.items()} == spec.param_shapes(module.config)
    np.testing.assert_allclose(params["a_proj.bias"], spec.gate_bias_init(module.config), rtol=1e-6)
    assert np.all(params["out_proj.bias"] == 0)
    s = module.initial_state(3)
    assert isinstance(s, State) and s.h.shape == (3, 2, 4, 4) and s.h.dtype == tt.torch.float32
    assert tt.mod.GateLoopMH(8, 2, gate="complex").initial_state(1).h.dtype == tt.torch.complex64


@pytest.mark.parametrize("remat", [False, True])
def test_torch_gradients_chunked_and_remat(tt, remat):
    torch = tt.torch
    config = CONFIGS["complex-out"]
    params, x, s0 = _problem(config)
    grads = {}
    for mode, method, size in PATHS[1:]:
        module = tt.mod.GateLoopMH.from_canonical(config, params, remat=remat)
        xt = torch.as_tensor(x).requires_grad_()
        st = torch.as_tensor(s0).requires_grad_()
        y, final = module(xt, State(st), mode=mode, method=method, chunk_size=size)
        (y.abs().pow(2).sum() + final.h.abs().pow(2).sum()).backward()
        grads[method if method == "chunked" else mode] = [xt.grad, st.grad] + [p.grad for p in module.parameters()]
    for path in ("chunked", "sequential"):
        for g, w in zip(grads[path], grads["parallel"]):
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-10)


def test_torch_chunked_method_saves_only_chunks(tt):
    """method='chunked': no tensor saved for backward holds all T·H·K·V states (checkpoint per chunk)."""
    torch = tt.torch
    module = tt.mod.GateLoopMH(4, 2, 4, 4)
    x = torch.randn(1, 64, 4)
    all_states = 64 * 2 * 4 * 4

    def biggest(method):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, _ = module(x, method=method, chunk_size=8 if method == "chunked" else None)
        y.pow(2).sum().backward()
        return max(sizes)

    assert biggest("associative") >= all_states  # one scan: every state at once
    assert biggest("chunked") <= all_states // 4


def test_torch_compile(tt):
    torch = tt.torch
    config = CONFIGS["real"]
    params, x, s0 = _problem(config, length=5)
    module = tt.mod.GateLoopMH.from_canonical(config, {k: v.astype(np.float32) for k, v in params.items()})
    # fullgraph: dynamo captures the whole layer (checks included) without a graph break; aot_eager keeps it fast
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    xt, st = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(s0, dtype=torch.float32)
    y, final = compiled(xt, State(st))
    y.sum().backward()
    assert module.q_proj.weight.grad is not None
    y_ref, final_ref = spec.forward(params, x.astype(np.float32).astype(np.float64), config,
                                    State(s0.astype(np.float32).astype(np.float64)))
    np.testing.assert_allclose(y.detach().numpy(), y_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(final.h.detach().numpy(), final_ref.h, atol=1e-4, rtol=1e-4)


def test_torch_bfloat16(tt):
    torch = tt.torch
    config = CONFIGS["complex"]
    params, x, _ = _problem(config)
    module = tt.mod.GateLoopMH.from_canonical(config, params, dtype=torch.bfloat16)
    y, final = module(torch.as_tensor(x).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and final.h.dtype == torch.complex64
    bf = {k: torch.as_tensor(v).to(torch.bfloat16).double().numpy() for k, v in params.items()}
    y_ref, _ = spec.forward(bf, torch.as_tensor(x).to(torch.bfloat16).double().numpy(), config)
    assert np.max(np.abs(y.detach().double().numpy() - y_ref)) < 0.05 * np.max(np.abs(y_ref)) + 0.05


def test_bad_input_messages(tt):
    torch = tt.torch
    module = tt.mod.GateLoopMH(4, 2)
    with pytest.raises(ValueError, match="d_model=4"):
        module(torch.zeros(1, 3, 5))
    with pytest.raises(TypeError, match="initial_state"):
        module(torch.zeros(1, 3, 4), State(torch.zeros(1, 2, 2, 2, dtype=torch.complex64)))
    with pytest.raises(TypeError, match="initial_state"):
        module(torch.zeros(1, 3, 4), torch.zeros(1, 2, 2, 2))  # a bare tensor is not a State
    with pytest.raises(ValueError, match="x must have shape"):
        module(torch.zeros(3, 4))  # 2-D input is never taken as unbatched
    with pytest.raises(ValueError, match="associative"):
        module(torch.zeros(1, 3, 4), method="log")
    with pytest.raises(ValueError, match="method='chunked'"):
        module(torch.zeros(1, 3, 4), mode="chunked")
    with pytest.raises(ValueError, match="chunk_size"):
        module(torch.zeros(1, 3, 4), method="associative", chunk_size=2)
    with pytest.raises(ValueError, match="lengths"):
        module(torch.zeros(2, 3, 4), lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="state"):
        module.step(torch.zeros(1, 4), State(torch.zeros(2, 2, 2, 2)))
    with pytest.raises(TypeError, match="batch_first"):
        tt.mod.GateLoopMH(4, 2, batch_first="yes")


# ---------------------------------------------------------------------------------------------
# optional: lucidrains gateloop-transformer (skipped when not installed)


def test_lucidrains_simple_gateloop_layer(tt):
    """Weights of ``SimpleGateLoopLayer(dim)`` copied by hand into a SISO linrec config (``gateloop_mh.md`` §9)."""
    simplified = pytest.importorskip("gateloop_transformer.simplified_gate_loop")
    torch = tt.torch
    dim, batch, length = 6, 2, 9
    torch.manual_seed(0)
    theirs = simplified.SimpleGateLoopLayer(dim).eval()
    weight = theirs.to_qkva[0].weight.detach().numpy().astype(np.float64)  # (3·dim, dim): rows [q | kv | a]
    # its RMSNorm (gain γ = 1 at init) is the layer's parameter-free input_norm="rms": no step outside the layer
    config = GateLoopMHConfig(d_model=dim, num_heads=dim, d_key=1, d_value=1, qkv_bias=True, input_norm="rms")
    zeros = np.zeros(dim)
    params = {
        "q_proj.kernel": weight[:dim].T, "q_proj.bias": zeros,
        "k_proj.kernel": weight[dim : 2 * dim].T, "k_proj.bias": zeros,
        "v_proj.kernel": np.zeros((dim, dim)), "v_proj.bias": np.ones(dim),  # v ≡ 1 so that k v = kv
        "a_proj.kernel": weight[2 * dim :].T, "a_proj.bias": zeros,
        "out_proj.kernel": np.eye(dim), "out_proj.bias": zeros,
    }
    x = torch.randn(batch, length, dim)
    with torch.no_grad():
        y_theirs, (_, state_theirs) = theirs(x, return_cache=True)
    ours = tt.mod.GateLoopMH.from_canonical(config, params, dtype=torch.float32)
    y, state = ours(x)
    np.testing.assert_allclose(y.detach().numpy(), y_theirs.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.h.detach().numpy().reshape(batch, dim),
                               state_theirs.numpy().reshape(batch, dim), atol=1e-5, rtol=1e-5)


def test_lucidrains_gate_looped_attention_operator(tt):
    """Their multi-head operator (complex a per head, y = q·Re(S)) is this layer's recurrence with
    ``gate_granularity="head"`` and ``complex_output="real"`` (their gate parametrisation differs, §9)."""
    glt = pytest.importorskip("gateloop_transformer.gateloop_transformer")
    torch = tt.torch
    rng = np.random.default_rng(0)
    bh, length, d = 3, 7, 4
    q, k, v = (torch.as_tensor(rng.standard_normal((bh, length, d))) for _ in range(3))
    a = torch.polar(torch.as_tensor(rng.uniform(0.5, 1, (bh, length, 1, 1))),
                    torch.as_tensor(rng.uniform(-np.pi, np.pi, (bh, length, 1, 1))))
    theirs = glt.gate_loop_operator(q, k, v, a)
    # ours: heads as batch rows (B = bh, H = 1), a: (B, T, H, 1, 1), read-out Re(Sᵀ q)
    ours, _ = tt.mod._scan_part(q[:, :, None], k[:, :, None], v[:, :, None], a[:, :, None],
                                torch.zeros(bh, 1, d, d, dtype=torch.complex128), "auto")
    np.testing.assert_allclose(ours.real[:, :, 0].numpy(), theirs.numpy(), atol=1e-10)


# ---------------------------------------------------------------------------------------------
# lucidrains' options: input_norm, the cartesian gate, sub_norm, output_gate (gateloop_mh.md §2)


def test_new_option_validation():
    with pytest.raises(ValueError, match="gate_parametrization"):
        GateLoopMHConfig(d_model=4, gate_parametrization="cartesian")  # a real gate
    with pytest.raises(ValueError, match="phase_activation"):
        GateLoopMHConfig(d_model=4, gate="complex", gate_parametrization="cartesian", phase_activation="relu")
    for field in ("sub_norm", "output_gate"):
        value = {"sub_norm": "layernorm", "output_gate": "silu"}[field]
        with pytest.raises(ValueError, match=field):
            GateLoopMHConfig(d_model=4, gate="complex", complex_output="complex", **{field: value})
    for field, bad in (("input_norm", "layer"), ("sub_norm", "rms"), ("output_gate", "relu")):
        with pytest.raises(ValueError, match=field):
            GateLoopMHConfig(d_model=4, **{field: bad})
    shapes = spec.param_shapes(CONFIGS["cartesian-gated"])
    assert {"a_re_proj.kernel", "a_im_proj.bias", "sub_norm.scale", "output_gate_proj.kernel"} <= set(shapes)
    assert not {"a_mag_proj.kernel", "output_gate_proj.bias"} & set(shapes)
    init = spec.init_params(CONFIGS["cartesian-gated"], 0, "float64")
    np.testing.assert_array_equal(init["sub_norm.scale"], np.ones(4))
    np.testing.assert_allclose(spec.cartesian_gate(init["a_re_proj.bias"], init["a_im_proj.bias"]),
                               np.linspace(0.9, 0.999, 2))  # σ(|z|) in the decay range, phase 0


def test_input_norm_and_cartesian_gate_values():
    config = CONFIGS["rms-subnorm"]
    x = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1e-13, 0.0, 0.0, 0.0]])
    # x / max(‖x‖, 1e-12) · √4, as torch F.normalize(x, dim=-1) * 2
    np.testing.assert_allclose(spec.input_norm(x, config), [[1.2, 1.6, 0, 0], [0, 0, 0, 0], [0.2, 0, 0, 0]])
    a = spec.cartesian_gate(np.array([0.0, 3.0, -1.0]), np.array([0.0, 4.0, 0.0]))
    sig = 1 / (1 + np.exp(-np.array([0.0, 5.0, 1.0])))
    np.testing.assert_allclose(a, sig * np.array([1, 0.6 + 0.8j, -1]))  # z = 0 gives 1/2 (angle 0)


def test_zero_inputs_give_finite_gradients(jx, tt):
    """x = 0 (the RMS norm's eps branch) and z = 0 (the cartesian gate's origin) keep gradients finite and equal to
    the reference's in both autodiff backends."""
    config = CONFIGS["cartesian-gated"]
    params, x, s0 = _problem(config, length=3)
    params = {**params, "a_re_proj.bias": np.zeros(2), "a_im_proj.bias": np.zeros(2)}
    x[:, 1] = 0.0  # z = 0 and ‖x‖ = 0 at step 1
    rng = np.random.default_rng(2)
    y, final = spec.forward(params, x, config, State(s0))
    ct_y = rng.standard_normal(y.shape)
    ct_s = rng.standard_normal(final.h.shape) + 1j * rng.standard_normal(final.h.shape)
    p_bar, x_bar, _ = spec.vjp(params, x, config, ct_y, ct_s, initial_state=State(s0))
    assert np.isfinite(x_bar).all() and all(np.isfinite(v).all() for v in p_bar.values())

    def loss_jax(p, xx):
        yy, ff = jx.mod.gateloop_mh(p, xx, config=config, initial_state=State(jx.jnp.asarray(s0)))
        return jx.jnp.real(jx.jnp.sum(ct_y * yy) + jx.jnp.sum(ct_s * ff.h))

    gp, gx = jx.jax.grad(loss_jax, argnums=(0, 1))({k: jx.jnp.asarray(v) for k, v in params.items()},
                                                 jx.jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(gx), x_bar, atol=1e-9)
    for name, want in p_bar.items():
        np.testing.assert_allclose(np.asarray(gp[name]), want, atol=1e-9, err_msg=name)
    torch = tt.torch
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(x, requires_grad=True)
    yy, ff = tt.mod.gateloop_mh(tp, tx, config=config, initial_state=State(torch.tensor(s0)))
    loss = (yy * torch.tensor(ct_y)).sum() + (ff.h * torch.tensor(ct_s)).sum().real
    loss.backward()
    np.testing.assert_allclose(tx.grad.numpy(), x_bar, atol=1e-9)
    for name, want in p_bar.items():
        np.testing.assert_allclose(tp[name].grad.numpy(), want, atol=1e-9, err_msg=name)
