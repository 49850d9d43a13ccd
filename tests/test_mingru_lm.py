"""minGRU language model: spec config and reference, the NNX and torch modules, generation, case ids."""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import mingru_lm_cases as lm_cases
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.state import State

CONFIGS = {name: MinGRULMConfig(**kw) for name, kw in lm_cases.CONFIGS.items()}
#: the config the JAX tests use (each JAX config compiles its own programs)
JAX_CONFIG = "prenorm"


def _problem(cfg, seed=0, batch=2, length=lm_cases.LENGTH):
    p = lm_cases.make_problem(cfg, seed, "float32", batch=batch, length=length)
    return p.params_ref, p.tokens, State(tuple(p.h0.astype(np.float64)))


def _stacked(state: State, to_numpy=np.asarray) -> np.ndarray:
    """The layers' states ``(L, B, H)`` of a model ``State``."""
    assert isinstance(state, State) and isinstance(state.h, tuple) and state.position is None
    return np.stack([to_numpy(h) for h in state.h])


# --- spec ---------------------------------------------------------------------------------------------------


def test_config_derived_sizes_and_presets():
    cfg = MinGRULMConfig(vocab_size=10, d_model=8, n_layers=3, block="prenorm", expansion=1.5, ff_mult=2.0)
    assert (cfg.d_inner, cfg.d_ff) == (12, 16)
    assert cfg.mingru.out_proj and cfg.mingru.d_inner == 12
    assert not MinGRULMConfig(10, 8, 2, block="glu", expansion=2.0).mingru.out_proj  # the GLU reads h
    assert not MinGRULMConfig(10, 8, 2, block="prenorm").mingru.out_proj  # H == D: no projection
    nnx_gru = MinGRULMConfig.nnx_gru(vocab_size=50, depth=4, dim=16)
    assert (nnx_gru.block, nnx_gru.candidate, nnx_gru.mingru_bias, nnx_gru.head_bias) == ("glu", "identity", True, True)
    min_lm = MinGRULMConfig.min_lm(num_tokens=256, dim=32, depth=2)
    assert (min_lm.block, min_lm.candidate, min_lm.mingru_bias, min_lm.head_bias, min_lm.d_inner) == (
        "prenorm", "g", False, False, 48)


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(vocab_size=0), "vocab_size"), (dict(n_layers=1.5), "n_layers"), (dict(block="mlp"), "block"),
    (dict(expansion=0.0), "expansion"), (dict(candidate="tanh"), "candidate"), (dict(norm_eps=-1.0), "norm_eps"),
    (dict(head_bias=1), "head_bias"), (dict(default_state=float("inf")), "default_state"),
])
def test_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MinGRULMConfig(**{"vocab_size": 5, "d_model": 4, "n_layers": 2, **kwargs})


def test_param_table_and_init():
    glu = MinGRULMConfig(vocab_size=7, d_model=4, n_layers=2)
    assert spec.param_shapes(glu) == {
        "embed.embedding": (7, 4),
        "layers.0.mingru.proj.kernel": (4, 8), "layers.0.mingru.proj.bias": (8,),
        "layers.0.glu.kernel": (4, 8), "layers.0.glu.bias": (8,),
        "layers.1.mingru.proj.kernel": (4, 8), "layers.1.mingru.proj.bias": (8,),
        "layers.1.glu.kernel": (4, 8), "layers.1.glu.bias": (8,),
        "head.kernel": (4, 7), "head.bias": (7,),
    }
    pre = CONFIGS["prenorm"]
    shapes = spec.param_shapes(pre)
    assert shapes["layers.1.mingru.out_proj.kernel"] == (6, 4) and shapes["final_norm.scale"] == (4,)
    assert "head.bias" not in shapes and "layers.0.mingru.proj.bias" not in shapes
    params = spec.init_params(MinGRULMConfig.min_lm(64, 32, 2), seed=3, dtype="float64")
    assert params["embed.embedding"].std() == pytest.approx(1.0, rel=0.1)
    assert np.abs(params["layers.0.ff.fc1.kernel"]).max() <= 1 / np.sqrt(32)
    assert np.all(params["layers.1.norm.scale"] == 1) and not params["layers.0.ff.fc2.bias"].any()


def test_reference_glu_block_by_hand():
    # one layer, identity candidate: z = σ(0) = 1/2, h̃ = 2 from the bias -> h = 1, 1.5; GLU with value = h,
    # gate = 0 -> x += h / 2; head = identity on D = 1 -> logits = x
    cfg = MinGRULMConfig(vocab_size=2, d_model=1, n_layers=1, head_bias=False)
    params = {"embed.embedding": np.array([[0.0], [0.0]]), "layers.0.mingru.proj.kernel": np.zeros((1, 2)),
              "layers.0.mingru.proj.bias": np.array([0.0, 2.0]), "layers.0.glu.kernel": np.array([[1.0, 0.0]]),
              "layers.0.glu.bias": np.zeros(2), "head.kernel": np.array([[1.0, -1.0]])}
    logits, state = spec.forward(params, np.zeros((1, 2), np.int64), cfg)
    np.testing.assert_allclose(logits[0, :, 0], [0.5, 0.75])
    np.testing.assert_allclose(_stacked(state), [[[1.5]]])


@pytest.mark.parametrize("which", list(CONFIGS))
def test_reference_step_padding_and_generation(which):
    cfg = CONFIGS[which]
    params, tokens, state = _problem(cfg)
    logits, final = spec.forward(params, tokens, cfg, state)
    s, outs = state, []
    for t in range(tokens.shape[1]):
        out, s = spec.step(params, tokens[:, t], s, cfg)
        outs.append(out)
    np.testing.assert_allclose(np.stack(outs, 1), logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_stacked(s), _stacked(final), rtol=1e-12, atol=1e-12)
    # right padding: row 1 holds 3 real tokens, then pads (identity steps, zero logits)
    padded, padded_state = spec.forward(params, tokens, cfg, lengths=np.array([7, 3]))
    alone, alone_state = spec.forward(params, tokens[1:, :3], cfg)
    np.testing.assert_allclose(padded[1, :3], alone[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_stacked(padded_state)[:, 1], _stacked(alone_state)[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(padded[1, 3:], 0.0)
    # generation reads each row's logits at its last real token (lengths - 1)
    np.testing.assert_array_equal(spec.last_real(padded, np.array([7, 3])), padded[[0, 1], [6, 2]])


def test_sampler():
    logits = np.array([[0.0, 3.0, 3.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    assert spec.sample_next(logits, 0.0, None, []).tolist() == [1, 0]  # greedy: lowest id on ties
    rngs = [np.random.default_rng(s) for s in (0, 1)]
    draws = np.stack([spec.sample_next(logits, 1.0, 2, rngs) for _ in range(200)])
    assert set(draws[:, 0]) == {1, 2}  # top_k=2 keeps ids 1 and 2 only
    assert set(draws[:, 1]) <= {0, 1, 2, 3} and np.mean(draws[:, 1] == 0) > 0.9
    assert spec.row_seeds(4, 3) == [4, 5, 6] and spec.row_seeds([9, 8], 2) == [9, 8]
    with pytest.raises(ValueError, match="seed"):
        spec.row_seeds([1], 2)


def test_reference_bad_input():
    cfg = CONFIGS["glu"]
    params, tokens, state = _problem(cfg)
    with pytest.raises(ValueError, match="vocab_size"):
        spec.forward(params, tokens + cfg.vocab_size, cfg)
    with pytest.raises(ValueError, match="different configuration"):
        spec.forward(params, tokens, cfg, State(tuple(np.zeros((3, 2, cfg.d_inner)))))
    with pytest.raises(TypeError, match="State"):  # a bare tuple of arrays is not the state type
        spec.forward(params, tokens, cfg, state.h)
    with pytest.raises(ValueError, match="lengths"):
        spec.forward(params, tokens, cfg, lengths=np.array([8, 1]))
    with pytest.raises(ValueError, match="chunked"):
        spec.check_mode("auto", "log", ("log",), padded=True)


# --- conformance case ids (the cases run in test_conformance.py) ----------------------------------------------


def test_case_ids_unique_and_named():
    assert_case_ids_named(lm_cases, "mingru_lm")


# --- JAX / Flax NNX --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.mingru_lm")
    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod)


def test_nnx_module_matches_reference(jx):
    cfg = CONFIGS[JAX_CONFIG]
    params, tokens, state = _problem(cfg)
    model = jx.mod.MinGRULM.from_canonical(cfg, {k: v.astype(np.float32) for k, v in params.items()})
    assert model.config == cfg
    canon = model.canonical_params()
    assert set(canon) == set(params) and all(canon[k].dtype == np.float32 for k in canon)
    logits, final = model(tokens, State(tuple(jx.jnp.asarray(h, jx.jnp.float32) for h in state.h)))
    ref_logits, ref_final = spec.forward(params, tokens, cfg, state)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(_stacked(final), _stacked(ref_final), rtol=2e-4, atol=2e-4)
    # stacked state paths: one (L, ...) array per block parameter
    pure = jx.nnx.to_pure_dict(jx.nnx.state(model, jx.nnx.Param))
    assert pure["layers"]["mingru"]["proj"]["kernel"].shape == (cfg.n_layers, cfg.d_model, 2 * cfg.d_inner)


def test_nnx_default_init_and_generation_api(jx):
    canon = jx.mod.MinGRULM(40, 16, 3, rngs=jx.nnx.Rngs(0)).canonical_params()
    assert canon["embed.embedding"].std() == pytest.approx(1.0, rel=0.15)
    assert np.abs(canon["layers.2.glu.kernel"]).max() <= 1 / 4 and not canon["layers.1.glu.bias"].any()
    assert not np.array_equal(canon["layers.0.mingru.proj.kernel"], canon["layers.1.mingru.proj.kernel"])
    cfg = CONFIGS[JAX_CONFIG]
    model = jx.mod.MinGRULM.from_canonical(cfg, lm_cases.make_params(cfg, 0, "float32"))
    prompt, lengths = lm_cases._padded(cfg, 1, "float32")[0].tokens, np.array([7, 4, 1])
    logits, state = model.prefill(prompt, lengths=lengths)
    assert logits.shape == (3, 7, cfg.vocab_size)
    assert _stacked(state).shape == (cfg.n_layers, 3, cfg.d_inner)
    np.testing.assert_array_equal(np.asarray(logits)[2, 1:], 0.0)  # right padding: zero logits at pads
    tokens, gen_logits = model.generate(prompt, 3, temperature=0.0, lengths=lengths, return_logits=True)
    last = np.asarray(logits)[np.arange(3), lengths - 1]  # each row's last real token
    np.testing.assert_allclose(np.asarray(gen_logits[:, 0]), last, rtol=1e-5, atol=1e-5)
    step_logits, state2 = model.decode_step(tokens[:, 0], state)
    np.testing.assert_allclose(np.asarray(gen_logits[:, 1]), np.asarray(step_logits), rtol=1e-5, atol=1e-5)
    assert _stacked(state2).shape == _stacked(state).shape
    # prefill takes a state: two prefills == one
    half, mid = model.prefill(prompt[:, :3])
    rest, end = model.prefill(prompt[:, 3:], mid)
    full, full_state = model.prefill(prompt)
    np.testing.assert_allclose(np.concatenate([half, rest], 1), np.asarray(full), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_stacked(end), _stacked(full_state), rtol=1e-5, atol=1e-5)
    assert jx.mod._step_run._cache_size() >= 1  # decode_step runs a jit-compiled program


def test_jax_depth_does_not_grow_the_program(jx):
    """The forward pass is one scan over stacked layers: 2 and 8 layers differ only by the split of the final
    state into its per-layer arrays (``State.h``, at most two equations per layer), never a repeated layer body."""
    counts = []
    for depth in (2, 8):
        cfg = MinGRULMConfig(vocab_size=9, d_model=4, n_layers=depth, block="prenorm")
        tree = jx.mod.stack_params(spec.init_params(cfg), cfg)
        tokens = jx.jnp.zeros((1, 5), jx.jnp.int32)
        jaxpr = jx.jax.make_jaxpr(
            lambda t, x, cfg=cfg: jx.mod._run.__wrapped__(t, x, None, None, config=cfg, mode="parallel",
                                                          method="auto", remat=False))(tree, tokens)
        counts.append(len(jaxpr.jaxpr.eqns))
    assert 0 <= counts[1] - counts[0] <= 2 * (8 - 2), counts


def test_jax_jit_grad_vmap_remat(jx):
    jax, jnp = jx.jax, jx.jnp
    cfg = CONFIGS[JAX_CONFIG]
    params, tokens, _ = _problem(cfg)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}

    def loss(p, remat=False):
        logits, state = jx.mod.mingru_lm(p, tokens, config=cfg, remat=remat)
        return jnp.sum(logits ** 2) + sum(jnp.sum(h) for h in state.h)

    grads = jax.jit(jax.grad(loss))(params)
    grads_remat = jax.jit(jax.grad(lambda p: loss(p, remat=True)))(params)
    for name in params:
        assert np.all(np.isfinite(grads[name]))
        np.testing.assert_allclose(grads_remat[name], grads[name], rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda t: jx.mod.mingru_lm(params, t[None], config=cfg)[0][0])(jnp.asarray(tokens))
    np.testing.assert_allclose(batched, jx.mod.mingru_lm(params, tokens, config=cfg)[0], rtol=1e-5, atol=1e-5)


def test_nnx_train_step_and_bfloat16(jx):
    jnp, nnx = jx.jnp, jx.nnx
    cfg = CONFIGS["glu"]
    params = lm_cases.make_params(cfg, 0, "float32")
    model = jx.mod.MinGRULM.from_canonical(cfg, params)  # abstract build + real params: no init to compile
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 5)))

    @nnx.jit
    def loss_and_grads(model):
        return nnx.value_and_grad(lambda m: jnp.mean(m(tokens)[0] ** 2))(model)

    loss, grads = loss_and_grads(model)
    assert np.isfinite(float(loss)) and grads.layers.glu.kernel[...].shape == (2, 4, 8)
    bf16 = jx.mod.MinGRULM.from_canonical(cfg, params, param_dtype=jnp.bfloat16)
    logits, state = bf16(tokens)
    assert logits.dtype == jnp.bfloat16 and all(h.dtype == jnp.float32 for h in state.h)
    assert all(h.dtype == jnp.float32 for h in bf16.initial_state(2).h)


def test_jax_bad_input(jx):
    cfg = CONFIGS["glu"]
    model = jx.mod.MinGRULM.from_canonical(cfg, lm_cases.make_params(cfg, 0, "float32"))
    with pytest.raises(ValueError, match="vocab_size"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="different configuration"):
        model.decode_step(np.array([1]), State(tuple(np.zeros((3, 1, cfg.d_inner), np.float32))))
    with pytest.raises(TypeError, match="State"):
        model.decode_step(np.array([1]), np.zeros((2, 1, cfg.d_inner), np.float32))
    with pytest.raises(ValueError, match="chunked"):
        model(np.array([[1, 2]]), lengths=np.array([1]), method="log")


# --- PyTorch ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.mingru_lm")
    return types.SimpleNamespace(torch=torch, mod=mod)


@pytest.mark.parametrize("which", ["glu", "prenorm"])
def test_torch_module_matches_reference(tt, which):
    torch = tt.torch
    cfg = CONFIGS[which]
    params, tokens, state = _problem(cfg)
    model = tt.mod.MinGRULM.from_canonical(cfg, {k: v.astype(np.float32) for k, v in params.items()})
    canon = model.canonical_params()
    assert set(canon) == set(params)
    with torch.no_grad():
        logits, final = model(torch.as_tensor(tokens),
                              State(tuple(torch.as_tensor(h, dtype=torch.float32) for h in state.h)))
    ref_logits, ref_final = spec.forward(params, tokens, cfg, state)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(_stacked(final, lambda h: h.numpy()), _stacked(ref_final), rtol=2e-4, atol=2e-4)
    keys = set(model.state_dict())
    assert "embed.weight" in keys and "layers.1.mingru.proj.weight" in keys
    assert ("layers.0.norm.weight" in keys) == (which == "prenorm")


def test_torch_default_init_remat_and_compile(tt):
    torch = tt.torch
    canon = tt.mod.MinGRULM(40, 16, 2, block="prenorm", expansion=1.5).canonical_params()
    assert canon["embed.embedding"].std() == pytest.approx(1.0, rel=0.15)
    assert not canon["layers.0.ff.fc1.bias"].any() and np.all(canon["final_norm.scale"] == 1)
    model = tt.mod.MinGRULM(9, 4, 1, block="prenorm", expansion=1.5)
    tokens = torch.randint(0, 9, (2, 5))
    model.remat = True
    model(tokens)[0].square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.remat = False
    model(tokens)[0].square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens)[0], model(tokens)[0])


def test_torch_generation_api_and_bad_input(tt):
    torch = tt.torch
    model = tt.mod.MinGRULM(13, 8, 2)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 0]])  # right padding: row 1 holds 2 real tokens
    with torch.no_grad():
        logits, state = model.prefill(prompt, lengths=torch.tensor([3, 2]))
        step_logits, _ = model.decode_step(torch.tensor([6, 7]), state)
        alone, alone_state = model.prefill(prompt[1:, :2])
    tokens, gen_logits = model.generate(prompt, 2, temperature=0.0, lengths=torch.tensor([3, 2]), return_logits=True)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 2)
    torch.testing.assert_close(gen_logits[:, 0], logits[[0, 1], [2, 1]])  # logits at each row's last real token
    torch.testing.assert_close(logits[1:, :2], alone)
    for a, b in zip(state.h, alone_state.h):
        torch.testing.assert_close(a[1:], b)
    assert torch.all(logits[1, 2] == 0)
    assert step_logits.shape == (2, 13)
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[13]]))
    with pytest.raises(ValueError, match="different configuration"):
        model.decode_step(torch.tensor([1]), State(tuple(torch.zeros(2, 1, 9))))
    with pytest.raises(TypeError, match="State"):
        model.decode_step(torch.tensor([1]), torch.zeros(2, 1, 8))


def _parallel_vs_step(model, tokens, to_numpy):
    """The verify_agreement protocol by hand: the parallel pass against ``step`` token by token."""
    logits, state = model(tokens, None, mode="parallel")
    s, outs = model.initial_state(tokens.shape[0]), []
    for t in range(tokens.shape[1]):
        out, s = model.step(tokens[:, t], s)
        outs.append(to_numpy(out))
    np.testing.assert_allclose(np.stack(outs, 1), to_numpy(logits), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(_stacked(s, to_numpy), _stacked(state, to_numpy), rtol=2e-4, atol=2e-4)


def test_parallel_vs_step_and_cross_framework(jx, tt):
    cfg = CONFIGS["glu-g"]
    params = {k: v.astype(np.float32) for k, v in _problem(cfg)[0].items()}
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 9))
    jm = jx.mod.MinGRULM.from_canonical(cfg, params)
    tm = tt.mod.MinGRULM.from_canonical(cfg, params)
    _parallel_vs_step(jm, jx.jnp.asarray(tokens), np.asarray)
    with tt.torch.no_grad():
        _parallel_vs_step(tm, tt.torch.as_tensor(tokens), lambda x: x.numpy())
    # same canonical parameters, same prompt and seed: the same tokens in both frameworks
    j_tokens = np.asarray(jm.generate(tokens[:, :4], 6, temperature=0.9, seed=2))
    t_tokens = tm.generate(tokens[:, :4], 6, temperature=0.9, seed=2).numpy()
    np.testing.assert_array_equal(j_tokens, t_tokens)
