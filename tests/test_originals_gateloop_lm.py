"""lucidrains gateloop-transformer ``Transformer`` (the whole LM) against linrec's ``gateloop_mh_lm``.

A ``Transformer`` built by the real package (PyPI ``gateloop-transformer``) with each option that changes its
function is saved with ``torch.save``, imported through ``linrec convert --from gateloop-transformer`` (detected by
its keys), run in numpy, jax and torch (sequence, step by step, carried state, right padding) and compared within
the spec tolerance (``gateloop_mh_lm.md`` §6: ``tolerance_for(dtype, grad=True)``); exported back with ``--to
gateloop-transformer`` it loads with ``load_state_dict(strict=True)``, bit-exact, with the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from linrec.spec import gateloop_mh_lm as spec
from linrec.spec.state import State
from linrec.spec.tolerances import tolerance_for
from linrec.tools import convert, originals
from linrec.tools.convert import CheckpointError, convert_main

gtl = pytest.importorskip("gateloop_transformer.gateloop_transformer")
torch = pytest.importorskip("torch")

TOL = tolerance_for("float32", grad=True)
VOCAB, LENGTH = 13, 9


def _close(got, want, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=TOL.rtol, atol=TOL.atol, err_msg=what)


def _original(seed: int = 0, **options):
    """A ``Transformer`` with every parameter moved off its initial value (norm gains and biases too)."""
    torch.manual_seed(seed)
    model = gtl.Transformer(options.pop("dim", 8), num_tokens=VOCAB, depth=options.pop("depth", 2), **options).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _tokens(seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, LENGTH)).astype(np.int64)


OPTIONS = [
    dict(),  # defaults: per-channel heads, swish gating, PreNorm RMSNorm, final RMSNorm
    dict(gate_loop_heads=2, dim_gate_looped_attn=12, sub_ln=True, ff_mult=2, depth=1),  # 6×6 heads, sub-LayerNorm
    dict(post_ln_norm=True, attn_add_swish_gating=False, depth=1),  # PostNorm LayerNorm, no to_out (identity)
]
IDS = ["defaults", "heads-subln-ff2", "postnorm-nogating"]


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_transformer_import_matches_in_every_backend_and_exports_back(options, tmp_path):
    model = _original(0, **options)
    torch.save(model.state_dict(), tmp_path / "lm.pt")
    tokens = _tokens()
    with torch.no_grad():
        want = model(torch.as_tensor(tokens)).numpy()
    dst = tmp_path / "lm.safetensors"
    assert convert_main([str(tmp_path / "lm.pt"), str(dst), "--from", "gateloop-transformer"]) == 0
    ckpt = convert.read(dst)
    cfg = ckpt.config
    assert ckpt.model_type == "gateloop_mh_lm"
    assert cfg.block == ("postnorm" if options.get("post_ln_norm") else "prenorm")
    assert cfg.sub_norm == ("layernorm" if options.get("sub_ln") else "none")
    assert cfg.output_gate == ("none" if options.get("attn_add_swish_gating") is False else "silu")
    assert cfg.num_heads == options.get("gate_loop_heads", options.get("dim_gate_looped_attn", 8))

    np_model = convert.load(dst, "numpy")
    assert np_model.function == "linrec.backends.numpy.gateloop_mh_lm.gateloop_mh_lm"
    logits, np_state = np_model.forward(tokens)
    _close(logits, want, "numpy")
    jx = convert.load(dst, "jax")
    logits, jax_state = jx(tokens)
    _close(logits, want, "jax")
    tm = convert.load(dst, "torch")
    with torch.no_grad():
        logits, torch_state = tm(torch.as_tensor(tokens))
    _close(logits.numpy(), want, "torch")
    for l in range(cfg.n_layers):  # the carried states agree across backends
        _close(np.asarray(jax_state.h[l]), np_state.h[l], f"jax state {l}")
        _close(torch_state.h[l].numpy(), np_state.h[l], f"torch state {l}")

    # export back: strict load into the original, numbers bit-exact, the same outputs
    out = tmp_path / "back.pt"
    assert convert_main([str(dst), str(out), "--to", "gateloop-transformer"]) == 0
    state = torch.load(out)
    fresh = gtl.Transformer(8, num_tokens=VOCAB, depth=options.get("depth", 2),
                            **{k: v for k, v in options.items() if k != "depth"}).eval()
    fresh.load_state_dict(state, strict=True)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(torch.as_tensor(tokens)).numpy(), want)


def test_step_by_step_and_split_prefill_reproduce_the_original(tmp_path):
    """Decoding token by token from the carried state (numpy, jax, torch) gives the original's logits; so does a
    prefill of the first tokens followed by ``decode_step``; a right-padded row equals the row run alone."""
    model = _original(3, gate_loop_heads=4, depth=2)
    ckpt = originals.import_tensors("gateloop-transformer", {k: v.numpy() for k, v in model.state_dict().items()})
    tokens = _tokens(4)
    with torch.no_grad():
        want = model(torch.as_tensor(tokens)).numpy()
    from linrec.backends.numpy.gateloop_mh_lm import gateloop_mh_lm, gateloop_mh_lm_step

    state, steps = None, []
    for t in range(LENGTH):
        logits_t, state = gateloop_mh_lm_step(ckpt.params, tokens[:, t], state, config=ckpt.config)
        steps.append(logits_t)
    _close(np.stack(steps, 1), want, "numpy steps")
    head, rest = gateloop_mh_lm(ckpt.params, tokens[:, :4], config=ckpt.config)
    tail, _ = gateloop_mh_lm(ckpt.params, tokens[:, 4:], config=ckpt.config, initial_state=rest)
    _close(np.concatenate([head, tail], 1), want, "numpy split")

    tm = convert.to_module(ckpt, "torch")
    with torch.no_grad():
        logits, state = tm.prefill(torch.as_tensor(tokens[:, :5]))
        decoded = [logits]
        for t in range(5, LENGTH):
            logits_t, state = tm.decode_step(torch.as_tensor(tokens[:, t]), state)
            decoded.append(logits_t[:, None])
        _close(torch.cat(decoded, 1).numpy(), want, "torch prefill + decode")
        padded, pstate = tm(torch.as_tensor(tokens), lengths=torch.tensor([LENGTH, 6]))
        alone, astate = tm(torch.as_tensor(tokens[1:, :6]))
    _close(padded[1, :6].numpy(), alone[0].numpy(), "torch padded row")
    assert torch.all(padded[1, 6:] == 0)
    for l in range(2):
        _close(pstate.h[l][1].numpy(), astate.h[l][0].numpy(), f"torch padded state {l}")

    jx = convert.to_module(ckpt, "jax")
    logits, state = jx.prefill(tokens[:, :5])
    decoded = [np.asarray(logits)]
    for t in range(5, LENGTH):
        logits_t, state = jx.decode_step(tokens[:, t], state)
        decoded.append(np.asarray(logits_t)[:, None])
    _close(np.concatenate(decoded, 1), want, "jax prefill + decode")


def test_reference_matches_the_original_in_float64():
    model = _original(5, gate_loop_heads=2, sub_ln=True, depth=1).double()
    ckpt = originals.import_tensors("gateloop-transformer", {k: v.numpy() for k, v in model.state_dict().items()})
    tokens = _tokens(6)
    with torch.no_grad():
        want = model(torch.as_tensor(tokens)).numpy()
    got, _ = spec.forward(ckpt.params, tokens, ckpt.config)
    tol = tolerance_for("float64", grad=True)
    np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol)


def test_original_constructor_arguments_in_config_and_ablate_complex():
    model = _original(7, depth=1)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    given = dict(dim=8, num_tokens=VOCAB, depth=1, ff_mult=4, attn_add_swish_gating=True, sub_ln=False,
                 post_ln_norm=False, checkpoint_gate_looped_attn=False, frac_gradient_state_transition=0.5,
                 dim_head=32, heads=4, rotary_emb=True, data_dependent_rel_pos=True)
    ckpt = originals.import_tensors("gateloop-transformer", sd, config=given)
    assert (ckpt.config.vocab_size, ckpt.config.d_model, ckpt.config.n_layers) == (VOCAB, 8, 1)
    with pytest.raises(CheckpointError, match=r"depth=3.*n_layers"):
        originals.import_tensors("gateloop-transformer", sd, config={"depth": 3})

    # ablate_complex=True: the original takes a = σ(|Re z|)·sign(Re z); the import zeroes the imaginary logits
    ablated = _original(8, depth=1, ablate_complex=True)
    sd = {k: v.numpy() for k, v in ablated.state_dict().items()}
    ckpt = originals.import_tensors("gateloop-transformer", sd, config={"ablate_complex": True})
    assert any("ablate_complex" in n for n in ckpt.notes)
    tokens = _tokens(9)
    with torch.no_grad():
        want = ablated(torch.as_tensor(tokens)).numpy()
    from linrec.backends.numpy.gateloop_mh_lm import gateloop_mh_lm

    _close(gateloop_mh_lm(ckpt.params, tokens, config=ckpt.config)[0], want, "ablate_complex")


def test_refusals_name_the_option(tmp_path):
    attention = {k: v.numpy() for k, v in gtl.Transformer(8, num_tokens=VOCAB, depth=1, use_gate_looped_attn=False,
                                                         dim_head=4, heads=2).state_dict().items()}
    with pytest.raises(CheckpointError, match="use_gate_looped_attn=False"):
        originals.import_tensors("gateloop-transformer", attention)
    sd = {k: v.numpy() for k, v in _original(1, depth=1).state_dict().items()}
    with pytest.raises(CheckpointError, match="use_gate_looped_attn"):
        originals.import_tensors("gateloop-transformer", sd, config={"use_gate_looped_attn": False})
    with pytest.raises(CheckpointError, match="ablate_state_transition"):
        originals.import_tensors("gateloop-transformer", sd, config={"ablate_state_transition": True})
    with pytest.raises(CheckpointError, match="gateloop_mh_lm"):
        originals.import_tensors("gateloop-transformer", sd, model="mingru_lm")
    with pytest.raises(CheckpointError, match=r"token_emb\.weight must be a 2-D"):
        originals.import_tensors("gateloop-transformer", {**sd, "token_emb.weight": np.zeros(5, np.float32)})
    with pytest.raises(CheckpointError, match="does not match gateloop_mh_lm"):  # a feed-forward weight is missing
        originals.import_tensors("gateloop-transformer", {k: v for k, v in sd.items() if k != "layers.0.1.fn.2.weight"})
    with pytest.raises(CheckpointError, match="rows must be"):
        originals.import_tensors("gateloop-transformer", {**sd, "layers.0.0.fn.to_a.0.bias": np.zeros(3, np.float32)})

    # export: an out_proj the original cannot hold is refused by name, nothing written
    ckpt = originals.import_tensors("gateloop-transformer", sd)
    params = dict(ckpt.params)
    params["layers.0.mixer.out_proj.bias"] = np.ones_like(params["layers.0.mixer.out_proj.bias"])
    bad = convert.Checkpoint("gateloop_mh_lm", ckpt.config, params)
    with pytest.raises(CheckpointError, match=r"out_proj\.bias"):
        originals.export_tensors("gateloop-transformer", bad)
    cfg = spec.GateLoopMHLMConfig(vocab_size=5, d_model=4, n_layers=1, output_gate="none")
    params = spec.init_params(cfg)
    with pytest.raises(CheckpointError, match=r"out_proj\.kernel.*identity"):
        originals.export_tensors("gateloop-transformer", convert.Checkpoint("gateloop_mh_lm", cfg, params))
    convert.write(convert.Checkpoint("gateloop_mh_lm", cfg, params), tmp_path / "m.safetensors")
    assert convert_main([str(tmp_path / "m.safetensors"), str(tmp_path / "x.pt"), "--to",
                         "gateloop-transformer"]) != 0
    assert not (tmp_path / "x.pt").exists()


def test_bad_inputs_raise_clear_errors():
    from linrec.backends.numpy.gateloop_mh_lm import gateloop_mh_lm, gateloop_mh_lm_initial_state

    cfg = spec.GateLoopMHLMConfig(vocab_size=5, d_model=4, n_layers=2, num_heads=2)
    params = spec.init_params(cfg)
    with pytest.raises(ValueError, match=r"tokens.*vocab_size"):
        gateloop_mh_lm(params, np.array([[0, 5]]), config=cfg)
    with pytest.raises(TypeError, match="tokens"):
        gateloop_mh_lm(params, np.zeros((1, 2), np.float32), config=cfg)
    with pytest.raises(ValueError, match="tokens"):
        gateloop_mh_lm(params, np.zeros((1, 2, 1), np.int64), config=cfg)
    with pytest.raises(TypeError, match="initial_state"):
        gateloop_mh_lm(params, np.zeros((1, 2), np.int64), config=cfg, initial_state=np.zeros((1, 2, 2, 2)))
    one = gateloop_mh_lm_initial_state(spec.GateLoopMHLMConfig(vocab_size=5, d_model=4, n_layers=1, num_heads=2), 1)
    with pytest.raises(ValueError, match="n_layers=2"):
        gateloop_mh_lm(params, np.zeros((1, 2), np.int64), config=cfg, initial_state=one)
    with pytest.raises(ValueError, match="missing parameter"):
        gateloop_mh_lm({k: v for k, v in params.items() if k != "head.kernel"}, np.zeros((1, 2), np.int64), config=cfg)
    with pytest.raises(ValueError, match="num_heads"):
        spec.GateLoopMHLMConfig(vocab_size=5, d_model=4, n_layers=1, num_heads=3)
    with pytest.raises(ValueError, match="block"):
        spec.GateLoopMHLMConfig(vocab_size=5, d_model=4, n_layers=1, block="sandwich")
    state = gateloop_mh_lm_initial_state(cfg, 2)
    assert isinstance(state, State) and len(state.h) == 2 and state.h[0].shape == (2, 2, 2, 2)
    assert state.h[0].dtype == np.complex64


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_imported_model_saves_to_orbax_and_inspects_by_name(dtype, tmp_path):
    """An imported LM is a linrec model like any other: ``linrec.save(module, dir, format="orbax")`` round trips
    bit-exact, and ``inspect`` names its model type."""
    pytest.importorskip("orbax.checkpoint")
    import linrec
    from linrec.backends.numpy.arrays import np_dtype

    sd = {k: v.numpy() for k, v in _original(11, depth=1, sub_ln=True).state_dict().items()}
    ckpt = originals.import_tensors("gateloop-transformer", sd)
    ckpt = convert.Checkpoint(ckpt.model_type, ckpt.config,
                              {k: np.asarray(v).astype(np_dtype(dtype)) for k, v in ckpt.params.items()})
    module = convert.to_module(ckpt, "jax")
    out = linrec.save(module, tmp_path / "ckpt", format="orbax")
    config, params = convert.load(out, "numpy")
    assert config == ckpt.config and set(params) == set(ckpt.params)
    for name, value in params.items():
        assert value.dtype == ckpt.params[name].dtype and value.tobytes() == ckpt.params[name].tobytes(), name
    assert convert.inspect(out)["model_type"] == "gateloop_mh_lm"
