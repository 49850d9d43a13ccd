"""Importing the originals' checkpoints (``linrec.tools.originals``) and matching their outputs.

Installed originals (``flax-gated-linear-rnn``, ``mingru-pytorch``, ``gateloop-transformer``) are built, their
weights saved the way their users save them, imported through the convert API and compared output for output;
those tests skip when the package is absent. cheind/mingru and jkyl/nnx-gru are not on PyPI: their tests write
parameter trees with the originals' exact names and shapes (``originals.md``) and compare with a NumPy
transcription of the original's maths.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from linrec.tools import convert, formats, originals
from linrec.tools.convert import CheckpointError, convert_main

RTOL, ATOL = 1e-5, 2e-6


def _np(value):
    """Backend output(s) as float64 NumPy (tuples, lists and dicts of them too)."""
    if isinstance(value, dict):
        return {k: _np(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_np(v) for v in value) if not hasattr(value, "_fields") else [_np(v) for v in value]
    if hasattr(value, "detach"):
        return value.detach().float().numpy().astype(np.float64)
    return np.asarray(value, np.float64)


def _outputs(path, x, backends=("jax", "torch"), **kw):
    """``(output, state)`` of the module loaded from ``path`` (in eval mode) for each backend, as NumPy."""
    out = {}
    for backend in backends:
        module = convert.load(path, backend, **kw)
        if backend == "torch":
            import torch

            with torch.no_grad():
                value = module(torch.as_tensor(np.array(x)))
        else:
            value = module(np.asarray(x))
        out[backend] = _np(tuple(value))
    return out


# --- 1+2. flax-gated-linear-rnn / GateLoop -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fglrnn():
    return pytest.importorskip("flax_gated_linear_rnn")


def _perturbed(variables, seed=3):
    import jax

    leaves, tree = jax.tree.flatten(variables)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [np.asarray(v) + 0.2 * rng.standard_normal(np.shape(v)).astype(np.float32)
                                     for v in leaves])


@pytest.mark.parametrize(("tied", "recurrence", "wrapped"), [(True, False, True), (False, True, False)])
def test_flax_gated_linear_rnn_layer(fglrnn, tied, recurrence, wrapped, tmp_path):
    import jax
    from flax import serialization

    layer = fglrnn.GatedLinearRNN(d_model=5, d_h=4, use_tied_gates=tied, use_true_recurrence=recurrence)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 7, 3)))
    variables = _perturbed(layer.init(jax.random.PRNGKey(1), x))  # W_r is zero-initialised: make it count
    carry, y = layer.apply(variables, x)
    data = serialization.to_bytes(variables) if wrapped else serialization.msgpack_serialize(variables["params"])
    (tmp_path / "glrnn.msgpack").write_bytes(data)
    summary = convert.convert(tmp_path / "glrnn.msgpack", tmp_path / "glrnn.safetensors",
                              src_format="gated-linear-rnn", progress=False)
    assert summary.model_type == "gated_linear_rnn" and summary.tensors == 4 + recurrence
    ckpt = convert.read(tmp_path / "glrnn.safetensors")
    assert (ckpt.config.d_in, ckpt.config.d_h, ckpt.config.d_model) == (3, 4, 5)
    assert (ckpt.config.use_tied_gates, ckpt.config.use_true_recurrence) == (tied, recurrence)
    for backend, (y_l, final) in _outputs(tmp_path / "glrnn.safetensors", x).items():  # final: State(h, None)
        np.testing.assert_allclose(y_l, y, rtol=RTOL, atol=ATOL, err_msg=backend)
        np.testing.assert_allclose(final[0], carry, rtol=RTOL, atol=ATOL, err_msg=backend)


def test_gateloop_reversed_from_the_same_tree(fglrnn, tmp_path):
    """GateLoop(reversed=True) flips time around the same layer; its tree is GatedLinearRNN's."""
    import jax
    from flax import serialization

    layer = fglrnn.GatedLinearRNN(d_model=3, d_h=4)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3)))
    variables = _perturbed(layer.init(jax.random.PRNGKey(1), x))
    _, y = layer.apply(variables, x[:, ::-1])
    (tmp_path / "gl.msgpack").write_bytes(serialization.to_bytes(variables))
    assert convert_main([str(tmp_path / "gl.msgpack"), str(tmp_path / "gl.safetensors"), "--from", "gateloop",
                         "--config", '{"reversed": true}']) == 0
    assert convert.read(tmp_path / "gl.safetensors").model_type == "gateloop"
    for backend, (y_l, _) in _outputs(tmp_path / "gl.safetensors", x).items():
        np.testing.assert_allclose(y_l, np.asarray(y)[:, ::-1], rtol=RTOL, atol=ATOL, err_msg=backend)


@pytest.mark.slow
def test_flax_gated_linear_rnn_lm(fglrnn, tmp_path):
    import jax
    from flax import serialization

    pe = "sinusoidal"
    lm = fglrnn.GatedLinearRNNLM(
        n_layer=2, d_model=8, d_channel_mixing=12, eps=1e-5, channel_mixing_dropout=0.1, time_mixing_dropout=0.1,
        input_vocab_size=11, output_vocab_size=13, max_seq_length=16, embedding_dropout=0.1,
        use_word_embedding=True, positional_encoding_mode=pe, use_head=True, d_h=6, use_tied_gates=False)
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 11))
    variables = lm.init(jax.random.PRNGKey(1), tokens, training=False)
    h, logits = lm.apply(variables, tokens, training=False)
    (tmp_path / "lm.msgpack").write_bytes(serialization.to_bytes(variables))
    overrides = {"eps": 1e-5, "positional_encoding_mode": pe, "max_seq_length": 16,
                 "embedding_dropout": 0.1, "time_mixing_dropout": 0.1, "channel_mixing_dropout": 0.1}
    summary = convert.convert(tmp_path / "lm.msgpack", tmp_path / "lm.safetensors", src_format="gated-linear-rnn",
                              config=overrides, progress=False)
    assert summary.model_type == "gated_linear_rnn_lm"
    cfg = convert.read(tmp_path / "lm.safetensors").config
    assert (cfg.n_layer, cfg.d_model, cfg.d_channel_mixing, cfg.d_h, cfg.input_vocab_size, cfg.output_vocab_size) \
        == (2, 8, 12, 6, 11, 13)
    assert cfg.dropout_placement == "sum" and not cfg.use_tied_gates
    for backend, (out, state) in _outputs(tmp_path / "lm.safetensors", tokens).items():  # State(h: L arrays, position)
        np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5, err_msg=backend)
        np.testing.assert_allclose(np.stack(state[0], axis=1), h, rtol=1e-5, atol=1e-5, err_msg=backend)


def test_glrnn_lm_import_table_agrees_with_the_spec():
    """The importer's table and ``gated_linear_rnn_lm.original_param_path`` name the same original paths."""
    from linrec.spec import gated_linear_rnn_lm as spec

    config = spec.GatedLinearRNNLMConfig(n_layer=2, d_model=4, d_channel_mixing=6, d_h=3, input_vocab_size=5,
                                         output_vocab_size=5, positional_encoding_mode="learned", max_seq_length=7,
                                         use_true_recurrence=True)
    shapes = spec.param_shapes(config)
    originals_tree = {spec.original_param_path(n).replace("/", "."): np.zeros(s, np.float32) for n, s in shapes.items()}
    params, unknown = originals.apply_table(originals.GLRNN_LM_TABLE, originals_tree)
    assert not unknown and set(params) == set(shapes)
    assert {k: v.shape for k, v in params.items()} == shapes


# --- lucidrains minGRU-pytorch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mingru_pytorch():
    return pytest.importorskip("minGRU_pytorch")


@pytest.mark.parametrize("expansion", [1.0, 1.5])
def test_lucidrains_mingru(mingru_pytorch, expansion, tmp_path):
    import torch

    torch.manual_seed(0)
    layer = mingru_pytorch.minGRU(6, expansion_factor=expansion)
    torch.save(layer.state_dict(), tmp_path / "mingru.pt")
    x = torch.randn(2, 7, 6)
    with torch.no_grad():
        y, h = layer(x, return_next_prev_hidden=True)
    assert convert_main([str(tmp_path / "mingru.pt"), str(tmp_path / "m.safetensors"), "--from",
                         "lucidrains-mingru", "--quiet"]) == 0
    cfg = convert.read(tmp_path / "m.safetensors").config
    assert (cfg.candidate, cfg.bias, cfg.default_state, cfg.out_proj) == ("g", False, 0.0, expansion != 1.0)
    for backend, (y_l, final) in _outputs(tmp_path / "m.safetensors", x.numpy()).items():  # final: State(h, None)
        np.testing.assert_allclose(y_l, y.numpy(), rtol=RTOL, atol=ATOL, err_msg=backend)
        np.testing.assert_allclose(final[0], h[:, 0].numpy(), rtol=RTOL, atol=ATOL, err_msg=backend)


def test_lucidrains_minlm(mingru_pytorch, tmp_path):
    import torch
    from minGRU_pytorch.minLM import minLM

    torch.manual_seed(0)
    lm = minLM(num_tokens=13, dim=8, depth=2)
    torch.save(lm.state_dict(), tmp_path / "minlm.pt")
    tokens = torch.randint(0, 13, (2, 9))
    with torch.no_grad():
        logits = lm(tokens)
    ckpt = convert.read(tmp_path / "minlm.pt", format="lucidrains-mingru")
    assert ckpt.model_type == "mingru_lm" and ckpt.config.block == "prenorm"
    assert (ckpt.config.d_inner, ckpt.config.d_ff) == (12, 32)
    convert.write(ckpt, tmp_path / "minlm.safetensors")
    for backend, (out, _) in _outputs(tmp_path / "minlm.safetensors", tokens.numpy()).items():
        np.testing.assert_allclose(out, logits.numpy(), rtol=1e-5, atol=1e-5, err_msg=backend)


def test_lucidrains_variants_linrec_does_not_have(mingru_pytorch, tmp_path):
    import torch
    from minGRU_pytorch.minLM import minLM

    torch.save(minLM(num_tokens=5, dim=4, depth=1, enable_conv=True).state_dict(), tmp_path / "conv.pt")
    with pytest.raises(CheckpointError, match="enable_conv"):
        convert.read(tmp_path / "conv.pt", format="lucidrains-mingru")
    torch.save(minLM(num_tokens=5, dim=4, depth=1, use_lstm=True).state_dict(), tmp_path / "lstm.pt")
    with pytest.raises(CheckpointError, match="minLSTM"):
        convert.read(tmp_path / "lstm.pt", format="lucidrains-mingru")


# --- gateloop-transformer SimpleGateLoopLayer -------------------------------------------------------------------


@pytest.mark.parametrize("prenorm", [True, False])
def test_simple_gateloop_layer(prenorm, tmp_path):
    simplified = pytest.importorskip("gateloop_transformer.simplified_gate_loop")
    import torch

    torch.manual_seed(0)
    dim = 6
    layer = simplified.SimpleGateLoopLayer(dim, prenorm=prenorm)
    if prenorm:
        with torch.no_grad():
            layer.norm.gamma.copy_(torch.rand(dim) + 0.5)
    torch.save(layer.state_dict(), tmp_path / "sgl.pt")
    x = torch.randn(2, 9, dim)
    with torch.no_grad():
        y = layer(x)
    ckpt = convert.read(tmp_path / "sgl.pt", format="gateloop-transformer")
    assert ckpt.model_type == "gateloop_mh" and ckpt.config.num_heads == dim and ckpt.config.d_key == 1
    assert any("folded" in n for n in ckpt.notes) == prenorm
    convert.write(ckpt, tmp_path / "sgl.safetensors")
    # no manual step: the parameter-free part of its RMSNorm is the layer's input_norm='rms' (gateloop_mh.md §2)
    assert ckpt.config.input_norm == ("rms" if prenorm else "none")
    assert not any("must be applied" in n for n in ckpt.notes)
    for backend, (y_l, _) in _outputs(tmp_path / "sgl.safetensors", x.numpy()).items():
        np.testing.assert_allclose(y_l, y.numpy(), rtol=RTOL, atol=ATOL, err_msg=backend)


# --- cheind/mingru (not on PyPI): its exact state_dict names, its maths in NumPy --------------------------------


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _g(x):
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


def _cheind_layer(x, weight, bias, h0):
    """cheind's mingru on one layer: ``[gate | hidden] = x Wᵀ + b``, ``h_t = (1 - z) h_{t-1} + z g(hidden)``."""
    u = x @ weight.T + (0 if bias is None else bias)
    gate, hidden = np.split(u, 2, axis=-1)
    z, h_tilde = _sigmoid(gate), _g(hidden)
    h, out = h0, []
    for t in range(x.shape[1]):
        h = (1 - z[:, t]) * h + z[:, t] * h_tilde[:, t]
        out.append(h)
    return np.stack(out, axis=1)


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _cheind_v14(sd, x, sizes, *, norm, residual):
    inp, finals = x, []
    for l in range(len(sizes) - 1):
        z = _layer_norm(inp, sd[f"layers.{l}.norm.weight"], sd[f"layers.{l}.norm.bias"]) if norm else inp
        out = _cheind_layer(z, sd[f"layers.{l}.gate_hidden.weight"], sd.get(f"layers.{l}.gate_hidden.bias"),
                            np.full((x.shape[0], sizes[l + 1]), 0.5))
        finals.append(out[:, -1])
        if residual:
            align = sd.get(f"layers.{l}.res_align.weight")
            out = out + (inp @ align.T if align is not None else inp)
        inp = out
    return inp, finals


def _save_state_dict(path, arrays):
    import torch

    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), path)


def _uniform(rng, shape, fan_in):
    return rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), shape).astype(np.float32)


def test_cheind_v13_multilayer(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    i, h, n = 3, 5, 3
    dims = [i] + [h] * n
    sd = {}
    for l in range(n):  # MinGRU(input_dims=3, hidden_dims=5, num_layers=3): linear_gate_hidden.{l} (2H, in)
        sd[f"linear_gate_hidden.{l}.weight"] = _uniform(rng, (2 * h, dims[l]), dims[l])
        sd[f"linear_gate_hidden.{l}.bias"] = _uniform(rng, (2 * h,), dims[l])
    _save_state_dict(tmp_path / "v13.pt", sd)
    x = rng.standard_normal((2, 7, i)).astype(np.float32)
    inp, finals = x.astype(np.float64), []
    for l in range(n):
        inp = _cheind_layer(inp, sd[f"linear_gate_hidden.{l}.weight"], sd[f"linear_gate_hidden.{l}.bias"],
                            np.full((2, h), 0.5))
        finals.append(inp[:, -1])
    assert convert_main([str(tmp_path / "v13.pt"), str(tmp_path / "v13.safetensors"), "--from", "cheind-mingru",
                         "--quiet"]) == 0
    cfg = convert.read(tmp_path / "v13.safetensors").config
    assert (cfg.input_size, cfg.hidden_sizes, cfg.candidate, cfg.default_state) == (3, (5, 5, 5), "g", 0.5)
    for backend, (y, state) in _outputs(tmp_path / "v13.safetensors", x).items():  # state: State(h: L arrays)
        np.testing.assert_allclose(y, inp, rtol=RTOL, atol=ATOL, err_msg=backend)
        for l in range(n):
            np.testing.assert_allclose(state[0][l], finals[l], rtol=RTOL, atol=ATOL, err_msg=backend)
    sd["input_residual_align.weight"] = _uniform(rng, (h, i), i)
    sd["input_residual_align.bias"] = _uniform(rng, (h,), i)
    _save_state_dict(tmp_path / "v13r.pt", sd)
    # residual=True: input_residual_align (with bias) on layer 0's output, identity residual on later layers
    ckpt = convert.read(tmp_path / "v13r.pt", format="cheind-mingru")
    assert (ckpt.config.residual, ckpt.config.residual_align, ckpt.config.residual_align_bias) == (True, "first", True)
    convert.write(ckpt, tmp_path / "v13r.safetensors")
    inp = x.astype(np.float64)
    for l in range(n):
        out = _cheind_layer(inp, sd[f"linear_gate_hidden.{l}.weight"], sd[f"linear_gate_hidden.{l}.bias"],
                            np.full((2, h), 0.5))
        finals[l] = out[:, -1]
        inp = out + (inp @ sd["input_residual_align.weight"].T + sd["input_residual_align.bias"] if l == 0 else inp)
    for backend, (y, state) in _outputs(tmp_path / "v13r.safetensors", x).items():
        np.testing.assert_allclose(y, inp, rtol=RTOL, atol=ATOL, err_msg=backend)
        for l in range(n):
            np.testing.assert_allclose(state[0][l], finals[l], rtol=RTOL, atol=ATOL, err_msg=backend)


def test_cheind_v14_norm_residual(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    sizes = [3, 4, 4, 6]  # MinGRU(3, [4, 4, 6], norm=True, residual=True)
    sd = {}
    for l in range(3):
        n_in, n_out = sizes[l], sizes[l + 1]
        sd[f"layers.{l}.norm.weight"] = (1 + 0.1 * rng.standard_normal(n_in)).astype(np.float32)
        sd[f"layers.{l}.norm.bias"] = (0.1 * rng.standard_normal(n_in)).astype(np.float32)
        sd[f"layers.{l}.gate_hidden.weight"] = _uniform(rng, (2 * n_out, n_in), n_in)
        sd[f"layers.{l}.gate_hidden.bias"] = _uniform(rng, (2 * n_out,), n_in)
        if n_in != n_out:
            sd[f"layers.{l}.res_align.weight"] = _uniform(rng, (n_out, n_in), n_in)
    _save_state_dict(tmp_path / "v14.pt", sd)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    y, finals = _cheind_v14(sd, x.astype(np.float64), sizes, norm=True, residual=True)
    ckpt = convert.read(tmp_path / "v14.pt", format="cheind-mingru")
    assert ckpt.model_type == "mingru_stack"
    assert (ckpt.config.hidden_sizes, ckpt.config.norm, ckpt.config.residual) == ((4, 4, 6), True, True)
    convert.write(ckpt, tmp_path / "v14.safetensors")
    for backend, (y_l, state) in _outputs(tmp_path / "v14.safetensors", x).items():  # state: State(h: L arrays)
        np.testing.assert_allclose(y_l, y, rtol=RTOL, atol=ATOL, err_msg=backend)
        for l in range(3):
            np.testing.assert_allclose(state[0][l], finals[l], rtol=RTOL, atol=ATOL, err_msg=backend)


def test_cheind_single_layer_and_cell_become_a_mingru_layer(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    weight, bias = _uniform(rng, (8, 3), 3), _uniform(rng, (8,), 3)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    expected = _cheind_layer(x.astype(np.float64), weight, bias, np.full((2, 4), 0.5))
    for name, sd in (("v14", {"layers.0.gate_hidden.weight": weight, "layers.0.gate_hidden.bias": bias}),
                     ("cell", {"to_gate_hidden.weight": weight, "to_gate_hidden.bias": bias})):
        _save_state_dict(tmp_path / f"{name}.pt", sd)
        ckpt = convert.read(tmp_path / f"{name}.pt", format="cheind-mingru")
        assert ckpt.model_type == "mingru" and (ckpt.config.d_model, ckpt.config.d_inner) == (3, 4)
        convert.write(ckpt, tmp_path / f"{name}.safetensors")
        for backend, (y, _) in _outputs(tmp_path / f"{name}.safetensors", x).items():
            np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL, err_msg=backend)
    # residual=True with matching sizes leaves no parameters: the user says so, and gets the stack
    square = {"layers.0.gate_hidden.weight": _uniform(rng, (6, 3), 3), "layers.0.gate_hidden.bias": bias[:6]}
    _save_state_dict(tmp_path / "square.pt", square)
    ckpt = convert.read(tmp_path / "square.pt", format="cheind-mingru", config={"residual": True})
    assert ckpt.model_type == "mingru_stack" and ckpt.config.residual
    convert.write(ckpt, tmp_path / "square.safetensors")
    expected, _ = _cheind_v14(square, x.astype(np.float64), [3, 3], norm=False, residual=True)
    for backend, (y, _) in _outputs(tmp_path / "square.safetensors", x).items():
        np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL, err_msg=backend)


def test_cheind_unknown_tensors_are_listed(tmp_path):
    pytest.importorskip("torch")
    sd = {"layers.0.gate_hidden.weight": np.zeros((8, 3), np.float32), "layers.0.attention.weight":
          np.zeros((2, 2), np.float32)}
    _save_state_dict(tmp_path / "odd.pt", sd)
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.weight"):
        convert.read(tmp_path / "odd.pt", format="cheind-mingru")
    _save_state_dict(tmp_path / "foreign.pt", {"encoder.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match="not a cheind/mingru state_dict"):
        convert.read(tmp_path / "foreign.pt", format="cheind-mingru")


# --- jkyl/nnx-gru (not on PyPI): its NNX state as a pure dict, blocks stacked on axis 0 ----------------------


def _nnx_gru_state(rng, vocab, depth, dim, dtype):
    def lecun(*shape):
        return (rng.standard_normal(shape) / math.sqrt(shape[-2])).astype(dtype)

    def small(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(dtype)

    return {
        "embeddings": {"embedding": (rng.standard_normal((vocab, dim)) / math.sqrt(dim)).astype(dtype)},
        "backbone": {"layers": {
            "gru": {"linear_z": {"kernel": lecun(depth, dim, dim), "bias": small(depth, dim)},
                    "linear_h": {"kernel": lecun(depth, dim, dim), "bias": small(depth, dim)}},
            "linear": {"kernel": lecun(depth, dim, 2 * dim), "bias": small(depth, 2 * dim)},
        }},
        "linear_out": {"kernel": lecun(dim, vocab), "bias": small(vocab)},
    }


def _nnx_gru_forward(state, tokens):
    """jkyl/nnx-gru's Model: Embed -> per block h = scan(1 - z, z·h̃, 0); x += glu(h Wl + bl) -> Linear."""
    f = {k: np.asarray(v, np.float64) for k, v in formats.flatten(state).items()}
    x = f["embeddings.embedding"][tokens]
    for l in range(f["backbone.layers.linear.kernel"].shape[0]):
        z = _sigmoid(x @ f["backbone.layers.gru.linear_z.kernel"][l] + f["backbone.layers.gru.linear_z.bias"][l])
        h_tilde = x @ f["backbone.layers.gru.linear_h.kernel"][l] + f["backbone.layers.gru.linear_h.bias"][l]
        h, hs = np.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = (1 - z[:, t]) * h + z[:, t] * h_tilde[:, t]
            hs.append(h)
        u = np.stack(hs, 1) @ f["backbone.layers.linear.kernel"][l] + f["backbone.layers.linear.bias"][l]
        value, gate = np.split(u, 2, axis=-1)
        x = x + value * _sigmoid(gate)
    return x @ f["linear_out.kernel"] + f["linear_out.bias"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nnx_gru(dtype, tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    rng = np.random.default_rng(0)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    state = _nnx_gru_state(rng, vocab=11, depth=3, dim=6, dtype=np_dtype)
    (tmp_path / "nnx_gru.msgpack").write_bytes(serialization.msgpack_serialize(state))
    tokens = rng.integers(0, 11, (2, 8)).astype(np.int32)
    expected = _nnx_gru_forward(state, tokens)
    summary = convert.convert(tmp_path / "nnx_gru.msgpack", tmp_path / "nnx.safetensors", src_format="nnx-gru",
                              progress=False)
    assert summary.model_type == "mingru_lm" and summary.dtypes == (dtype,)
    cfg = convert.read(tmp_path / "nnx.safetensors").config
    assert (cfg.block, cfg.n_layers, cfg.d_model, cfg.vocab_size, cfg.candidate) == ("glu", 3, 6, 11, "identity")
    tol = dict(rtol=RTOL, atol=1e-5) if dtype == "float32" else dict(rtol=0.05, atol=0.1)
    for backend, (logits, _) in _outputs(tmp_path / "nnx.safetensors", tokens).items():
        np.testing.assert_allclose(logits, expected, err_msg=backend, **tol)
    # stray entries are reported, not dropped
    state["backbone"]["layers"]["extra"] = {"kernel": np.zeros((3, 2), np_dtype)}
    (tmp_path / "bad.msgpack").write_bytes(serialization.msgpack_serialize(state))
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.extra\.kernel"):
        convert.read(tmp_path / "bad.msgpack", format="nnx-gru")


def test_original_names_and_aliases():
    assert set(originals.ORIGINALS) == {"gated-linear-rnn", "gateloop", "nnx-gru", "cheind-mingru",
                                        "lucidrains-mingru", "gateloop-transformer"}
    assert originals.canonical_name("flax_gated_linear_rnn") == "gated-linear-rnn"
    assert originals.canonical_name("mingru-pytorch") == "lucidrains-mingru"
    assert originals.canonical_name("keras") is None
    with pytest.raises(CheckpointError, match="unknown original"):
        originals.import_tensors("keras", {})
