"""GatedLinearRNNLM / GateLoopLM: spec config and reference, the NNX and torch models, case ids, the original."""

from __future__ import annotations

import importlib
import importlib.util
import types
from dataclasses import replace

import numpy as np
import pytest
from _case_ids import assert_case_ids_named

from linrec.conformance import gated_linear_rnn_lm_cases as lm_cases
from linrec.spec import gated_linear_rnn_lm as spec
from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig, GateLoopLMConfig
from linrec.spec.state import State

CFG = GatedLinearRNNLMConfig(n_layer=2, d_model=4, d_channel_mixing=5, d_h=3, input_vocab_size=7,
                             output_vocab_size=6, max_seq_length=12, positional_encoding_mode="sinusoidal")
F32 = dict(rtol=2e-4, atol=2e-5)


def _problem(config: GatedLinearRNNLMConfig = CFG, seed: int = 0, batch: int = 2, length: int = 6):
    """float64 params and state exactly representable in float32, token ids, rows starting at positions 0 and 3."""
    prob = lm_cases.make_problem(config, "float32", seed, batch=batch, length=length)
    params = {k: v.astype(np.float64) for k, v in prob.params.items()}
    h = prob.state["h"].astype(np.float64)  # (B, L, H) in the case module; the models carry L arrays (B, H)
    return params, prob.inputs, State(tuple(h[:, l].copy() for l in range(h.shape[1])), prob.state["position"])


def _as(state: State, convert) -> State:
    """The same ``State`` with every array converted (``jnp.asarray``, ``torch.from_numpy``, ...)."""
    return State(tuple(convert(h) for h in state.h), convert(state.position))


def _stacked(state: State) -> np.ndarray:
    """``state.h`` as one ``(B, L, H)`` NumPy array."""
    return np.stack([np.asarray(h.detach() if hasattr(h, "detach") else h) for h in state.h], axis=1)


def _f32(params: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in params.items()}


# --- spec: config, parameters, reference ----------------------------------------------------------


def test_config_defaults_and_alias():
    cfg = GatedLinearRNNLMConfig(n_layer=1, d_model=8, d_channel_mixing=16, d_h=4, input_vocab_size=10,
                                 output_vocab_size=10)
    assert GateLoopLMConfig is GatedLinearRNNLMConfig
    assert (cfg.dropout_placement, cfg.gelu_approximate, cfg.compat_step_position_zero) == ("branch", True, False)
    assert cfg.positional_encoding_mode == "none" and cfg.max_seq_length is None and cfg.d_output == 10
    lc = cfg.layer_config
    assert (lc.d_in, lc.d_model, lc.d_h, lc.reversed) == (8, 8, 4, False)
    assert replace(cfg, use_head=False, output_vocab_size=None).d_output == 8
    assert hash(cfg) == hash(GatedLinearRNNLMConfig(**cfg.to_dict()))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(n_layer=0), "n_layer"),
        (dict(d_model=2.0), "d_model"),
        (dict(input_vocab_size=None), "input_vocab_size"),
        (dict(use_head=True, output_vocab_size=None), "output_vocab_size"),
        (dict(positional_encoding_mode="learned"), "max_seq_length"),
        (dict(positional_encoding_mode="rope", max_seq_length=4), "positional_encoding_mode"),
        (dict(use_word_embedding=False), "d_input"),
        (dict(d_input=3), "d_input"),
        (dict(eps=0.0), "eps"),
        (dict(time_mixing_dropout=1.0), "time_mixing_dropout"),
        (dict(dropout_placement="residual"), "dropout_placement"),
        (dict(gelu_approximate="tanh"), "gelu_approximate"),
        (dict(compat_step_position_zero=1), "compat_step_position_zero"),
        (dict(gate_activation="swish"), "gate_activation"),
    ],
)
def test_config_rejects_bad_fields(kwargs, field):
    base = dict(n_layer=1, d_model=4, d_channel_mixing=4, d_h=2, input_vocab_size=5, output_vocab_size=5)
    with pytest.raises(ValueError, match=field):
        GatedLinearRNNLMConfig(**{**base, **kwargs})


def test_param_table_init_and_name_maps():
    cfg = replace(CFG, n_layer=3, d_model=64, d_channel_mixing=96, d_h=32, input_vocab_size=500,
                  positional_encoding_mode="learned", use_true_recurrence=True, use_tied_gates=False)
    shapes = spec.param_shapes(cfg)
    assert len(shapes) == 1 + 1 + 3 * 13 + 2
    assert shapes["layers.2.time_mixing.rnn.proj.kernel"] == (64, 128)
    assert shapes["layers.0.time_mixing.rnn.recurrent_proj.kernel"] == (32, 128)
    assert shapes["layers.1.channel_mixing.fc2.kernel"] == (96, 64) and shapes["head.kernel"] == (64, 6)
    p = spec.init_params(cfg, seed=1, dtype="float64")
    assert {k: v.shape for k, v in p.items()} == shapes and spec.init_params(cfg)["head.bias"].dtype == np.float32
    assert abs(p["embed.embedding"].std() * np.sqrt(64) - 1) < 0.05  # N(0, 1/D)
    assert abs(p["layers.0.channel_mixing.fc1.kernel"].var() * 64 - 1) < 0.1  # lecun_normal
    assert (p["layers.1.time_mixing.norm.scale"] == 1).all() and not p["layers.1.channel_mixing.norm.bias"].any()
    assert not p["layers.2.time_mixing.rnn.recurrent_proj.kernel"].any()
    assert set(spec.layer_params(p, 1)) == {"proj.kernel", "proj.bias", "out_proj.kernel", "out_proj.bias",
                                             "recurrent_proj.kernel"}
    torch_keys = [spec.torch_param(n) for n in shapes]
    assert len({k for k, _ in torch_keys}) == len(shapes)
    assert spec.torch_param("layers.0.time_mixing.norm.scale") == ("layers.0.time_mixing.norm.weight", False)
    assert spec.torch_param("head.kernel") == ("head.weight", True)
    originals = {spec.original_param_path(n) for n in shapes}
    assert len(originals) == len(shapes)
    assert spec.original_param_path("layers.2.time_mixing.rnn.recurrent_proj.kernel") == \
        "time_mixing_layers_2/model/model/recurrent_proj/kernel"
    assert spec.original_param_path("layers.0.channel_mixing.fc2.bias") == "channel_mixing_layers_0/dense_layers_1/bias"


def test_sinusoidal_table():
    table = spec.sinusoidal_table(50, 6)
    np.testing.assert_array_equal(table[0], [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(table[7, :2], [np.sin(7), np.cos(7)])
    np.testing.assert_allclose(table[7, 4:], [np.sin(7 * 1e4 ** (-4 / 6)), np.cos(7 * 1e4 ** (-4 / 6))])
    odd = spec.sinusoidal_table(5, 5)
    assert odd.shape == (5, 5) and odd[3, 4] == pytest.approx(np.sin(3 * 1e4 ** (-4 / 5)))


def test_reference_laws_positions_and_lengths():
    params, tokens, state = _problem()
    out, new = spec.forward(params, tokens, CFG, state)
    assert isinstance(new, State) and isinstance(new.h, tuple) and len(new.h) == CFG.n_layer
    np.testing.assert_array_equal(new.position, state.position + 6)
    # the step is the length-1 pass, and continues the positions
    _, s = spec.forward(params, tokens[:, :4], CFG, state)
    o5, s = spec.step(params, tokens[:, 4], s, CFG)
    np.testing.assert_allclose(o5, out[:, 4], rtol=1e-12, atol=1e-12)
    # compat: a step re-adds position 0, so decoding differs from the full pass (the original's bug)
    compat = replace(CFG, compat_step_position_zero=True)
    o5c, _ = spec.step(params, tokens[:, 4], spec.forward(params, tokens[:, :4], compat, state)[1], compat)
    out_c, _ = spec.forward(params, tokens, compat, state)
    assert np.abs(o5c - out_c[:, 4]).max() > 1e-2
    # lengths: each row alone, zeros after its end
    lengths = np.array([6, 2])
    o_l, s_l = spec.forward(params, tokens, CFG, state, lengths=lengths)
    alone, s1 = spec.forward(params, tokens[1:, :2], CFG, State(tuple(h[1:] for h in state.h), state.position[1:]))
    np.testing.assert_allclose(o_l[1, :2], alone[0], rtol=1e-13)
    assert not o_l[1, 2:].any()
    np.testing.assert_allclose(_stacked(s_l)[1], _stacked(s1)[0], rtol=1e-13)
    assert s_l.position.tolist() == [6, 5]
    with pytest.raises(TypeError, match="initial_state"):
        spec.forward(params, tokens, CFG, {"h": _stacked(state), "position": state.position})


def test_reference_dropout_placement():
    """A zero mask removes the branch ('branch') or the whole stream ('sum'); all-ones masks change nothing."""
    cfg = replace(CFG, n_layer=1, time_mixing_dropout=0.5, channel_mixing_dropout=0.5)
    params, tokens, state = _problem(cfg)
    ones = np.ones((2, 6, 4))
    base, _ = spec.forward(params, tokens, cfg, state)
    masked, _ = spec.forward(params, tokens, cfg, state, dropout_masks={"embedding": ones,
                                                                        "layers.0.time_mixing": ones})
    np.testing.assert_allclose(masked, base, rtol=1e-13)
    zero = {"layers.0.channel_mixing": np.zeros((2, 6, 4))}
    hidden = replace(cfg, use_head=False, output_vocab_size=None)
    h_params = {k: v for k, v in params.items() if not k.startswith("head")}
    summed, _ = spec.forward(h_params, tokens, replace(hidden, dropout_placement="sum"), state, dropout_masks=zero)
    assert not summed.any()
    branch, _ = spec.forward(h_params, tokens, hidden, state, dropout_masks=zero)
    no_mlp = dict(h_params, **{"layers.0.channel_mixing.fc2.kernel": np.zeros((5, 4)),
                               "layers.0.channel_mixing.fc2.bias": np.zeros(4)})
    np.testing.assert_allclose(branch, spec.forward(no_mlp, tokens, hidden, state)[0], rtol=1e-13)


# --- conformance case ids (the cases run in test_conformance.py) ------------------------------------


def test_case_ids_unique_and_named():
    ids = assert_case_ids_named(lm_cases, "gated_linear_rnn_lm", at_least=101)
    assert all(i.endswith("]") for i in ids)


# --- JAX / Flax NNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jx():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mod = importlib.import_module("linrec.backends.jax.gated_linear_rnn_lm")
    from linrec.backends.jax.verify import verify_agreement

    return types.SimpleNamespace(jax=jax, jnp=jnp, nnx=nnx, mod=mod, verify=verify_agreement)


def test_nnx_model_matches_reference(jx):
    jnp = jx.jnp
    cfg = replace(CFG, positional_encoding_mode="learned", use_tied_gates=False, embedding_dropout=0.5)
    params, tokens, state = _problem(cfg)
    model = jx.mod.GateLoopLM.from_canonical(cfg, _f32(params))
    assert isinstance(model, jx.mod.GatedLinearRNNLM) and model.config == cfg
    model.eval()
    s32 = State(tuple(jnp.asarray(h, jnp.float32) for h in state.h), jnp.asarray(state.position))
    out, new = model(jnp.asarray(tokens), s32)
    ref, ref_state = spec.forward(params, tokens, cfg, state)
    assert isinstance(new, State) and out.dtype == jnp.float32 and new.position.dtype == jnp.int32
    np.testing.assert_allclose(out, ref, **F32)
    np.testing.assert_allclose(_stacked(new), _stacked(ref_state), **F32)
    # ragged prefill: one pass with lengths (identity steps in every layer's scan), traced lengths under jit
    lengths = np.array([6, 2], np.int32)
    ref_l, ref_state_l = spec.forward(params, tokens, cfg, state, lengths=lengths)
    out_l, new_l = jx.nnx.jit(lambda m, t, s, n: m(t, s, lengths=n))(model, jnp.asarray(tokens), s32,
                                                                     jnp.asarray(lengths))
    np.testing.assert_allclose(out_l, ref_l, **F32)
    np.testing.assert_allclose(_stacked(new_l), _stacked(ref_state_l), **F32)
    assert np.asarray(new_l.position).tolist() == ref_state_l.position.tolist()
    # parameter paths are the canonical names; canonical_params round-trips
    paths = {".".join(map(str, p)) for p, v in jx.nnx.iter_graph(model) if isinstance(v, jx.nnx.Param)}
    assert paths == set(spec.param_shapes(cfg))
    for name, value in model.canonical_params().items():
        np.testing.assert_array_equal(value, params[name].astype(np.float32))
    report = jx.verify(model, jnp.asarray(tokens), initial_state=s32)
    assert report.ok, str(report)


def test_nnx_generation(jx):
    jnp, jax = jx.jnp, jx.jax
    cfg = replace(CFG, n_layer=1, positional_encoding_mode="learned", max_seq_length=16)
    params, _, _ = _problem(cfg)
    model = jx.mod.GatedLinearRNNLM.from_canonical(cfg, _f32(params))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 7, n) for n in (4, 2, 4)]
    batch = np.full((3, 4), -1, np.int32)  # right padding, any id
    for b, row in enumerate(prompts):
        batch[b, : len(row)] = row
    lengths = np.array([len(r) for r in prompts])
    for temperature, top_k in ((0.0, None), (1.0, 3)):
        seeds = [11, 12, 13]
        new, logits = model.generate(batch, 6, temperature, top_k, seed=seeds, lengths=lengths, return_logits=True)
        assert new.shape == (3, 6) and new.dtype == jnp.int32 and logits.shape == (3, 6, 6)
        for b, row in enumerate(prompts):  # each row alone gives the same tokens
            alone = model.generate(row[None], 6, temperature, top_k, seed=[seeds[b]])
            np.testing.assert_array_equal(alone[0], new[b])
            # and the logits each token was drawn from equal the full forward over prompt + generated
            full, _ = spec.forward(params, np.concatenate([row, np.asarray(new[b, :-1])])[None], cfg)
            np.testing.assert_allclose(logits[b], full[0, len(row) - 1 :], **F32)
        if importlib.util.find_spec("torch") is not None:  # sampling is framework-neutral: torch draws the same
            import torch

            from linrec.backends.torch.gated_linear_rnn_lm import GatedLinearRNNLM as TorchLM

            twin = TorchLM.from_canonical(cfg, _f32(params))
            same = twin.generate(torch.from_numpy(batch), 6, temperature, top_k, seed=seeds,
                                 lengths=torch.from_numpy(lengths))
            np.testing.assert_array_equal(same.numpy(), new)
    # the decode step is one compiled function: no recompilation from step to step
    _, state = model.prefill(jnp.asarray(batch[:, :2]))
    token = jnp.asarray(batch[:, 0])
    model.decode_step(token, state)
    size = jx.mod._step_core._cache_size()
    for _ in range(3):
        _, state = model.decode_step(token, state)
    assert jx.mod._step_core._cache_size() == size and isinstance(jx.mod._step_core, type(jax.jit(lambda x: x)))
    with pytest.raises(ValueError, match="max_seq_length"):
        model.generate(batch, 14, 0.0, lengths=lengths)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(batch, 2, 1.0, top_k=7)
    with pytest.raises(ValueError, match="seed"):
        model.generate(batch, 2, seed=[1, 2])
    with pytest.raises(ValueError, match="input_vocab_size"):
        model.decode_step(jnp.array([0, 7, 1], jnp.int32), state)
    with pytest.raises(ValueError, match="n_layer"):
        model.decode_step(token, State((jnp.zeros((3, 3)),) * 2, state.position))
    with pytest.raises(TypeError, match="state"):
        model.decode_step(token, {"h": state.h, "position": state.position})
    headless = jx.mod.GatedLinearRNNLM.from_canonical(
        replace(cfg, use_head=False, output_vocab_size=None),
        {k: v for k, v in params.items() if not k.startswith("head")})
    with pytest.raises(ValueError, match="use_head"):
        headless.generate(np.zeros((1, 2), np.int32), 2)


def test_jax_jit_grad_vmap_and_remat(jx):
    jax, jnp, nnx = jx.jax, jx.jnp, jx.nnx
    cfg = replace(CFG, n_layer=1)
    params, tokens, state = _problem(cfg)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    s32 = State(tuple(jnp.asarray(h, jnp.float32) for h in state.h), jnp.asarray(state.position))
    # jit of vmap over two token batches; inside jit a bad id cannot raise: its lookup is NaN, not a clamped row
    fn = jax.jit(jax.vmap(lambda t: jx.mod.gated_linear_rnn_lm(p32, t, config=cfg, initial_state=s32)[0]))
    outs = fn(jnp.stack([jnp.asarray(tokens), jnp.full_like(tokens, 7)]))
    np.testing.assert_allclose(outs[0], spec.forward(params, tokens, cfg, state)[0], **F32)
    assert np.isnan(outs[1]).all()
    model = jx.mod.GatedLinearRNNLM.from_canonical(cfg, _f32(params))
    model.eval()
    grads = []
    for remat in (False, True):
        model.remat = remat

        @nnx.jit
        def grad(model):
            return nnx.grad(lambda m: jnp.sum(m(tokens, s32)[0] ** 2))(model)

        grads.append(grad(model))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _copy_batch(rng: np.random.Generator, batch: int = 16, n: int = 2) -> np.ndarray:
    """``[a b 0 a b]`` with symbols 1..5: the second half copies the first (chance loss: ln 5 = 1.61)."""
    body = rng.integers(1, 6, (batch, n))
    return np.concatenate([body, np.zeros((batch, 1), np.int64), body], axis=1).astype(np.int32)


def test_nnx_default_init_dropout_and_training(jx):
    """A freshly initialised model: init laws, dropout in train / eval mode, then a few dozen training steps
    on a toy copy task (loss falls below chance)."""
    import optax

    jnp, nnx = jx.jnp, jx.nnx
    # constructed under nnx.jit: the random initialisers compile once together instead of op by op
    model = nnx.jit(lambda: jx.mod.GatedLinearRNNLM(
        1, 16, 32, 16, input_vocab_size=6, output_vocab_size=6, max_seq_length=5,
        positional_encoding_mode="sinusoidal", time_mixing_dropout=0.1, rngs=nnx.Rngs(0)))()
    p = model.canonical_params()
    assert {k: v.shape for k, v in p.items()} == spec.param_shapes(model.config)
    assert 0.7 < p["embed.embedding"].std() * 4 < 1.3 and (p["layers.0.time_mixing.norm.scale"] == 1).all()
    assert not p["head.bias"].any() and 0.7 < p["layers.0.channel_mixing.fc1.kernel"].std() * 4 < 1.3
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(_copy_batch(rng)[:4, :-1])
    a, _ = model(tokens)  # NNX modules start in training mode: fresh masks every call
    b, _ = model(tokens)
    assert not np.allclose(a, b)
    model.eval()
    c, _ = model(tokens)
    np.testing.assert_array_equal(c, model.prefill(tokens)[0])
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        def loss_fn(model):
            logits, _ = model(batch[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, 2:], batch[:, 3:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, jnp.asarray(_copy_batch(rng)))) for _ in range(25)]
    assert np.mean(losses[-5:]) < min(0.8 * np.mean(losses[:5]), np.log(5)), losses


# --- torch ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tt():
    torch = pytest.importorskip("torch")
    mod = importlib.import_module("linrec.backends.torch.gated_linear_rnn_lm")
    from linrec.backends.torch.verify import verify_agreement

    return types.SimpleNamespace(torch=torch, mod=mod, verify=verify_agreement)


def test_torch_model_matches_reference(tt):
    torch = tt.torch
    cfg = replace(CFG, use_tied_gates=False, gelu_approximate=False)
    params, tokens, state = _problem(cfg)
    model = tt.mod.GateLoopLM.from_canonical(cfg, params).eval()  # float64 params -> a float64 module
    assert isinstance(model, tt.mod.GatedLinearRNNLM) and model.config == cfg
    assert set(model.state_dict()) == {spec.torch_param(n)[0] for n in spec.param_shapes(cfg)}
    t_state = _as(state, torch.from_numpy)
    out, new = model(torch.from_numpy(tokens), t_state)
    ref, ref_state = spec.forward(params, tokens, cfg, state)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_stacked(new), _stacked(ref_state), rtol=1e-12, atol=1e-12)
    assert new.position.dtype == torch.int32 and new.position.tolist() == [6, 9]
    # ragged prefill: one pass with lengths (identity steps in every layer's scan), then decoding continues
    lengths = np.array([6, 2])
    out_l, new_l = model.prefill(torch.from_numpy(tokens), t_state, torch.from_numpy(lengths))
    ref_l, ref_state_l = spec.forward(params, tokens, cfg, state, lengths=lengths)
    np.testing.assert_allclose(out_l.detach().numpy(), ref_l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_stacked(new_l), _stacked(ref_state_l), rtol=1e-12, atol=1e-12)
    assert new_l.position.tolist() == [6, 5]
    out_d, _ = model.decode_step(torch.from_numpy(tokens[:, 0]), new_l)
    ref_d, _ = spec.step(params, tokens[:, 0], ref_state_l, cfg)
    np.testing.assert_allclose(out_d.detach().numpy(), ref_d, rtol=1e-12, atol=1e-12)
    for name, value in model.canonical_params().items():
        np.testing.assert_array_equal(value, params[name])
    assert tt.verify(model, torch.from_numpy(tokens), initial_state=t_state).ok
    torch.manual_seed(0)
    fresh = tt.mod.GatedLinearRNNLM(2, 8, 16, 6, input_vocab_size=11, output_vocab_size=11)
    p = fresh.canonical_params()
    assert 0.6 < p["embed.embedding"].std() * np.sqrt(8) < 1.4 and not p["head.bias"].any()
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        fresh(np.zeros((1, 2), np.int64))
    with pytest.raises(TypeError, match=r"initial_state\.h\[0\]"):
        fresh(torch.zeros(1, 2, dtype=torch.long), State((torch.zeros(1, 6, dtype=torch.float64),) * 2,
                                                         torch.zeros(1, dtype=torch.int32)))
    with pytest.raises(TypeError, match="initial_state"):
        fresh(torch.zeros(1, 2, dtype=torch.long), {"h": torch.zeros(1, 2, 6), "position": torch.zeros(1)})


def test_torch_generation(tt):
    torch = tt.torch
    params, _, _ = _problem()
    model = tt.mod.GatedLinearRNNLM.from_canonical(CFG, _f32(params))
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 7, n) for n in (3, 5, 1)]
    batch = torch.full((3, 5), 99, dtype=torch.long)
    for b, row in enumerate(prompts):
        batch[b, : len(row)] = torch.from_numpy(row)
    lengths = torch.tensor([len(r) for r in prompts])
    for temperature, top_k in ((0.0, None), (0.8, 4)):
        new, logits = model.generate(batch, 5, temperature, top_k, seed=[3, 4, 5], lengths=lengths,
                                     return_logits=True)
        assert new.shape == (3, 5) and new.dtype == torch.int32
        for b, row in enumerate(prompts):
            alone = model.generate(torch.from_numpy(row)[None], 5, temperature, top_k, seed=[3 + b])
            torch.testing.assert_close(alone[0], new[b])
            seq = torch.cat([torch.from_numpy(row), new[b, :-1].long()])[None]
            full, _ = model.prefill(seq)
            np.testing.assert_allclose(logits[b].numpy(), full[0, len(row) - 1 :].detach().numpy(), **F32)
    with pytest.raises(ValueError, match="max_seq_length"):
        model.generate(batch, 9, lengths=lengths)
    # bfloat16: projections in bf16, the carried state in float32 (gated_linear_rnn.md §7)
    low = tt.mod.GatedLinearRNNLM.from_canonical(CFG, params, dtype=torch.bfloat16).eval()
    out, state = low(batch[:2, :3])
    assert out.dtype == torch.bfloat16 and all(h.dtype == torch.float32 for h in state.h)
    assert low.generate(batch[:2, :3], 2, 0.0).shape == (2, 2)
    ref, _ = spec.forward(params, batch[:2, :3].numpy(), CFG)
    np.testing.assert_allclose(out.float().detach().numpy(), ref, rtol=0.1, atol=0.1)
    with pytest.raises(ValueError, match="lengths"):
        model.generate(batch, 2, lengths=torch.tensor([0, 1, 2]))


def test_torch_compile_remat_and_dropout(tt):
    torch = tt.torch
    cfg = replace(CFG, n_layer=1, positional_encoding_mode="learned", channel_mixing_dropout=0.5,
                  dropout_placement="sum")
    params, tokens, _ = _problem(cfg)
    tokens = torch.from_numpy(tokens).long()
    model = tt.mod.GatedLinearRNNLM.from_canonical(cfg, _f32(params)).eval()
    ref, _ = spec.forward(params, tokens.numpy(), cfg)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, state_c = compiled(tokens)
    np.testing.assert_allclose(out.detach().numpy(), ref, **F32)
    out_t, _ = model.step(tokens[:, 0], state_c)  # the compiled pass's state continues in eager decoding
    np.testing.assert_allclose(out_t.detach().numpy(), spec.step(params, tokens[:, 0].numpy(),
                                                                   spec.forward(params, tokens.numpy(), cfg)[1],
                                                                   cfg)[0], **F32)
    grads = []
    for remat in (False, True):
        model.remat = remat
        model.zero_grad()
        model(tokens)[0].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    model.train()
    a, _ = model(tokens)
    b, _ = model(tokens)
    assert not torch.allclose(a, b)


def test_torch_training_copy_task(tt):
    torch = tt.torch
    torch.manual_seed(0)
    model = tt.mod.GatedLinearRNNLM(1, 16, 32, 16, input_vocab_size=6, output_vocab_size=6, max_seq_length=5,
                                    positional_encoding_mode="sinusoidal", time_mixing_dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(25):
        batch = torch.from_numpy(_copy_batch(rng)).long()
        logits, _ = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 2:].reshape(-1, 6), batch[:, 3:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < min(0.8 * np.mean(losses[:5]), np.log(5)), losses


# --- the original: PyPI flax-gated-linear-rnn ------------------------------------------------------


def test_matches_original_lm():
    """Put linrec parameters into the original (linen) through ``original_param_path``; compare logits, carry and
    decoding, and check that the paths are exactly the original's parameter tree."""
    original = pytest.importorskip("flax_gated_linear_rnn")
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict, unflatten_dict

    from linrec.backends.jax.gated_linear_rnn_lm import GatedLinearRNNLM

    def build(**kw):
        return original.GatedLinearRNNLM(eps=1e-6, channel_mixing_dropout=0.1, time_mixing_dropout=0.1,
                                         embedding_dropout=0.1, use_word_embedding=True, use_head=True, **kw)

    kw = dict(n_layer=2, d_model=4, d_channel_mixing=5, d_h=3, input_vocab_size=7, output_vocab_size=6,
              max_seq_length=8, positional_encoding_mode="sinusoidal", use_tied_gates=False)
    tokens = np.random.default_rng(0).integers(0, 7, (2, 6)).astype(np.int32)
    with jax.enable_x64(False):  # linrec's JAX backend turns x64 on; the original's PE table would become float64
        for extra in ({}, {"use_true_recurrence": True}):  # the parameter tree, without running init
            lm = build(**kw, **extra)
            tree = jax.eval_shape(lambda lm=lm: lm.init(jax.random.PRNGKey(0), tokens, training=False))
            want = {"/".join(k): v.shape for k, v in flatten_dict(tree["params"]).items()}
            got = {spec.original_param_path(k): v for k, v in spec.param_shapes(GatedLinearRNNLMConfig(**kw, **extra)
                                                                                    ).items()}
            assert got == want
        cfg = GatedLinearRNNLMConfig(**kw)
        prob = lm_cases.make_problem(cfg, "float32", 5)
        params, carry = prob.params, prob.state["h"]  # (B, L, H), as the original carries it
        lm = build(**kw)
        variables = {"params": unflatten_dict({tuple(spec.original_param_path(k).split("/")): jnp.asarray(v)
                                               for k, v in params.items()})}
        apply = jax.jit(lm.apply, static_argnames="training")
        h_orig, y_orig = apply(variables, tokens, training=False, carry=jnp.asarray(carry))
        c, steps = jnp.asarray(carry), []  # the original decodes by calling itself on one token with the carry
        for t in range(6):
            c, y_t = apply(variables, tokens[:, t : t + 1], training=False, carry=c)
            steps.append(y_t[:, 0])
    state = State(tuple(jnp.asarray(carry[:, l]) for l in range(carry.shape[1])), jnp.zeros(2, jnp.int32))
    model = GatedLinearRNNLM.from_canonical(cfg, params)
    model.eval()
    out, new = model(tokens, state)
    np.testing.assert_allclose(out, y_orig, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(_stacked(new), h_orig, rtol=1e-5, atol=2e-6)
    steps = np.stack(steps, 1)
    assert np.abs(steps - y_orig).max() > 0.1  # the original's stepwise decoding differs from its parallel pass
    compat = GatedLinearRNNLM.from_canonical(replace(cfg, compat_step_position_zero=True), params)
    s, mine = state, []  # the compat option reproduces it (linrec's default decoding: conformance prefill cases)
    for t in range(6):
        o, s = compat.decode_step(tokens[:, t], s)
        mine.append(o)
    np.testing.assert_allclose(np.stack(mine, 1), steps, rtol=1e-5, atol=2e-6)
