"""The three minGRU originals, whole: cheind/mingru v1.3 with ``residual=True`` imports; linrec checkpoints export
back into each original's own format (bit-exact, loadable by the original); ``--config`` takes the originals'
own constructor argument names.

cheind/mingru and jkyl/nnx-gru are not on PyPI: their checkpoints are built with the originals' exact names and
their maths re-implemented in float64 NumPy (as in ``test_originals.py``). minGRU-pytorch is the real package
(skipped when absent). Numerical comparisons use the spec's tolerances (``linrec.spec.tolerances``).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest

from linrec.spec.tolerances import tolerance_for
from linrec.tools import convert, formats, originals
from linrec.tools.convert import CheckpointError, convert_main

# --- helpers ---------------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _g(x):
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


def _uniform(rng, shape, fan_in):
    return rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), shape).astype(np.float32)


def _cheind_layer(x, weight, bias, h0):
    """cheind's minGRU layer: ``[gate | hidden] = x Wᵀ + b``, ``h_t = (1 - z) h_{t-1} + z g(hidden)``."""
    u = x @ weight.T + (0 if bias is None else bias)
    gate, hidden = np.split(u, 2, axis=-1)
    z, h_tilde = _sigmoid(gate), _g(hidden)
    h, out = h0, []
    for t in range(x.shape[1]):
        h = (1 - z[:, t]) * h + z[:, t] * h_tilde[:, t]
        out.append(h)
    return np.stack(out, axis=1)


def _cheind_v13(sd, x, num_layers, hidden):
    """cheind v1.3.0 ``MinGRU.forward`` (evaluation; no dropout): ``(out, [h_l (B, H)])``, state before residual."""
    inp, finals = np.asarray(x, np.float64), []
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    for l in range(num_layers):
        out = _cheind_layer(inp, sd[f"linear_gate_hidden.{l}.weight"], sd.get(f"linear_gate_hidden.{l}.bias"),
                            np.full((inp.shape[0], hidden), 0.5))
        finals.append(out[:, -1])
        if "input_residual_align.weight" in sd:  # residual=True
            if l == 0:
                out = out + inp @ sd["input_residual_align.weight"].T + sd.get("input_residual_align.bias", 0.0)
            else:
                out = out + inp
        inp = out
    return inp, finals


def _v13_state_dict(rng, i, h, n, *, bias=True, residual=True):
    """``MinGRU(input_dims=i, hidden_dims=h, num_layers=n, bias=bias, residual=residual).state_dict()``."""
    dims = [i] + [h] * n
    sd = OrderedDict()
    for l in range(n):
        sd[f"linear_gate_hidden.{l}.weight"] = _uniform(rng, (2 * h, dims[l]), dims[l])
        if bias:
            sd[f"linear_gate_hidden.{l}.bias"] = _uniform(rng, (2 * h,), dims[l])
    if residual:
        sd["input_residual_align.weight"] = _uniform(rng, (h, i), i)
        if bias:
            sd["input_residual_align.bias"] = _uniform(rng, (h,), i)
    return sd


def _save_torch(path, arrays):
    import torch

    torch.save(OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in arrays.items()), path)


def _load_torch(path):
    import torch

    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def _run(path, backend, x):
    """``(y, [h_l])`` of the model in ``path`` on ``backend`` (eval mode), as float64 NumPy."""
    if backend == "numpy":
        from linrec.backends.numpy.mingru_stack import mingru_stack

        cfg, params = convert.load(path, "numpy")
        y, state = mingru_stack(params, x, config=cfg)
    elif backend == "jax":
        y, state = convert.load(path, "jax")(x)
    else:
        import torch

        with torch.no_grad():
            y, state = convert.load(path, "torch")(torch.as_tensor(x))
        y, state = y.numpy(), type(state)(tuple(h.numpy() for h in state.h))
    return np.asarray(y, np.float64), [np.asarray(h, np.float64) for h in state.h]


def _assert_same_checkpoint(a, b):
    """Two checkpoints equal bit for bit: model type, config, parameter names, dtypes and bytes."""
    assert a.model_type == b.model_type and a.config == b.config
    assert sorted(a.params) == sorted(b.params)
    for name in a.params:
        x, y = np.asarray(a.params[name]), np.asarray(b.params[name])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def _assert_bit_equal(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), name


# --- 1. cheind/mingru v1.3 with residual=True ------------------------------------------------------------------


@pytest.mark.parametrize(("i", "h", "bias"), [(3, 5, True), (4, 4, True), (3, 5, False)])
def test_cheind_v13_residual_imports_and_matches(i, h, bias, tmp_path):
    """v1.3's input_residual_align (a Linear, with bias when bias=True, present even when I == H, layer 0 only)
    imports with no manual step; output and every layer's state match the original in numpy, jax and torch."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(10 + i + h)
    n, length = 3, 6
    sd = _v13_state_dict(rng, i, h, n, bias=bias)
    _save_torch(tmp_path / "v13r.pt", sd)
    x = rng.standard_normal((2, length, i)).astype(np.float32)
    expected, finals = _cheind_v13(sd, x, n, h)
    assert convert_main([str(tmp_path / "v13r.pt"), str(tmp_path / "v13r.safetensors"), "--from", "cheind-mingru",
                         "--quiet"]) == 0
    cfg = convert.read(tmp_path / "v13r.safetensors").config
    assert (cfg.input_size, cfg.hidden_sizes, cfg.residual, cfg.residual_align, cfg.residual_align_bias,
            cfg.bias) == (i, (h,) * n, True, "first", bias, bias)
    tol = tolerance_for("float32", length=length, grad=True)  # mingru_stack.md §5: several layers deep
    for backend in ("numpy", "jax", "torch"):
        y, states = _run(tmp_path / "v13r.safetensors", backend, x)
        np.testing.assert_allclose(y, expected, rtol=tol.rtol, atol=tol.atol, err_msg=backend)
        for l in range(n):
            np.testing.assert_allclose(states[l], finals[l], rtol=tol.rtol, atol=tol.atol, err_msg=f"{backend} h[{l}]")


def test_residual_align_first_config_rules():
    from linrec.spec.mingru_stack import MinGRUStackConfig, param_shapes

    cfg = MinGRUStackConfig(3, (3, 3), residual=True, residual_align="first", residual_align_bias=True)
    assert param_shapes(cfg)["layers.0.res_align.kernel"] == (3, 3)
    assert param_shapes(cfg)["layers.0.res_align.bias"] == (3,)
    assert not any(k.startswith("layers.1.res_align") for k in param_shapes(cfg))
    # without residual the alignment options leave no parameters
    plain = MinGRUStackConfig(3, (3, 3), residual=False, residual_align="first", residual_align_bias=True)
    assert not any("res_align" in k for k in param_shapes(plain))
    with pytest.raises(ValueError, match="residual_align"):
        MinGRUStackConfig(3, (3, 4), residual=True, residual_align="first")
    with pytest.raises(ValueError, match="residual_align"):
        MinGRUStackConfig(3, (3,), residual=True, residual_align="v1.3")
    with pytest.raises(ValueError, match="residual_align_bias"):
        MinGRUStackConfig(3, (3,), residual=True, residual_align_bias=1)


# --- 2. export back: cheind/mingru ----------------------------------------------------------------------------


def _v14_state_dict(rng, sizes, *, norm, residual, bias=True):
    """``MinGRU(sizes[0], sizes[1:], norm=norm, residual=residual, bias=bias).state_dict()`` (v1.4.2)."""
    sd = OrderedDict()
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        if norm:
            sd[f"layers.{l}.norm.weight"] = (1 + 0.1 * rng.standard_normal(n_in)).astype(np.float32)
            sd[f"layers.{l}.norm.bias"] = (0.1 * rng.standard_normal(n_in)).astype(np.float32)
        sd[f"layers.{l}.gate_hidden.weight"] = _uniform(rng, (2 * n_out, n_in), n_in)
        if bias:
            sd[f"layers.{l}.gate_hidden.bias"] = _uniform(rng, (2 * n_out,), n_in)
        if residual and n_in != n_out:
            sd[f"layers.{l}.res_align.weight"] = _uniform(rng, (n_out, n_in), n_in)
    return sd


@pytest.mark.parametrize("which", ["v1.3-residual", "v1.3-plain-bias-free", "v1.4-norm-residual", "cell"])
def test_cheind_export_round_trip(which, tmp_path):
    """Import -> linrec -> ``--to cheind-mingru``: the original's exact key set, shapes and bytes; re-import gives
    the same checkpoint bit for bit; the exported file runs through the original's maths to the same outputs."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    config = None
    if which == "v1.3-residual":
        sd = _v13_state_dict(rng, 3, 4, 3)
    elif which == "v1.3-plain-bias-free":  # exported as v1.4 (same maths; v1.3 without residual has no extra keys)
        sd = _v13_state_dict(rng, 3, 4, 2, bias=False, residual=False)
    elif which == "v1.4-norm-residual":
        sd = _v14_state_dict(rng, [3, 4, 4, 6], norm=True, residual=True)
    else:
        sd = OrderedDict([("to_gate_hidden.weight", _uniform(rng, (8, 3), 3)),
                          ("to_gate_hidden.bias", _uniform(rng, (8,), 3))])
    _save_torch(tmp_path / "orig.pt", sd)
    ckpt = convert.read(tmp_path / "orig.pt", format="cheind-mingru", config=config)
    convert.write(ckpt, tmp_path / "model.safetensors")
    assert convert_main([str(tmp_path / "model.safetensors"), str(tmp_path / "out.pt"), "--to", "cheind-mingru",
                         "--quiet"]) == 0
    exported = _load_torch(tmp_path / "out.pt")
    if which == "cell":  # a single layer is written as v1.4 MinGRU(input_size, hidden_size)
        want = {"layers.0.gate_hidden.weight": sd["to_gate_hidden.weight"],
                "layers.0.gate_hidden.bias": sd["to_gate_hidden.bias"]}
    elif which == "v1.3-plain-bias-free":
        want = {k.replace("linear_gate_hidden.", "layers.").replace(".weight", ".gate_hidden.weight"): v
                for k, v in sd.items()}
    else:
        want = sd
    _assert_bit_equal(exported, want)
    model = "mingru_stack" if ckpt.model_type == "mingru_stack" else None
    again = convert.read(tmp_path / "out.pt", format="cheind-mingru", model=model)
    _assert_same_checkpoint(again, convert.read(tmp_path / "model.safetensors"))


def test_cheind_export_refuses_options_cheind_lacks():
    from linrec.spec.mingru import MinGRUConfig
    from linrec.spec.mingru import init_params as mingru_params
    from linrec.spec.mingru_stack import MinGRUStackConfig, init_params
    from linrec.tools.convert import Checkpoint

    def ckpt(model, cfg, params):
        return Checkpoint(model, cfg, params)

    layer = MinGRUConfig(3, 4, candidate="identity", default_state=0.5)
    with pytest.raises(CheckpointError, match="candidate='identity'"):
        originals.export_tensors("cheind-mingru", ckpt("mingru", layer, mingru_params(layer)))
    layer = MinGRUConfig(3, 4, candidate="g", default_state=0.0)
    with pytest.raises(CheckpointError, match=r"default_state=0\.0"):
        originals.export_tensors("cheind-mingru", ckpt("mingru", layer, mingru_params(layer)))
    layer = MinGRUConfig(3, 4, candidate="g", default_state=0.5, out_proj=True)
    with pytest.raises(CheckpointError, match="out_proj"):
        originals.export_tensors("cheind-mingru", ckpt("mingru", layer, mingru_params(layer)))
    # v1.4's res_align has no bias; v1.3's has one exactly when the layers have one
    stack = MinGRUStackConfig(3, (4, 4), residual=True, residual_align_bias=True)
    with pytest.raises(CheckpointError, match="residual_align_bias"):
        originals.export_tensors("cheind-mingru", ckpt("mingru_stack", stack, init_params(stack)))
    stack = MinGRUStackConfig(3, (4, 4), residual=True, residual_align="first", residual_align_bias=False)
    with pytest.raises(CheckpointError, match="residual_align_bias"):
        originals.export_tensors("cheind-mingru", ckpt("mingru_stack", stack, init_params(stack)))
    stack = MinGRUStackConfig(3, (4, 4), residual=True, residual_align="first", residual_align_bias=True, norm=True)
    with pytest.raises(CheckpointError, match="norm=True"):
        originals.export_tensors("cheind-mingru", ckpt("mingru_stack", stack, init_params(stack)))
    stack = MinGRUStackConfig(3, (4,), norm=True, norm_eps=1e-6)
    with pytest.raises(CheckpointError, match="norm_eps"):
        originals.export_tensors("cheind-mingru", ckpt("mingru_stack", stack, init_params(stack)))


# --- 2. export back: lucidrains minGRU-pytorch (the real package) ------------------------------------------------


@pytest.fixture(scope="module")
def mingru_pytorch():
    return pytest.importorskip("minGRU_pytorch")


@pytest.mark.parametrize("expansion", [1.0, 1.5])
def test_lucidrains_mingru_export_loads_strictly(mingru_pytorch, expansion, tmp_path):
    import torch

    torch.manual_seed(1)
    layer = mingru_pytorch.minGRU(6, expansion_factor=expansion)
    torch.save(layer.state_dict(), tmp_path / "orig.pt")
    ckpt = convert.read(tmp_path / "orig.pt", format="lucidrains-mingru")
    convert.write(ckpt, tmp_path / "m.safetensors")
    assert convert_main([str(tmp_path / "m.safetensors"), str(tmp_path / "out.pt"), "--to", "lucidrains-mingru",
                         "--quiet"]) == 0
    _assert_bit_equal(_load_torch(tmp_path / "out.pt"), {k: v.numpy() for k, v in layer.state_dict().items()})
    fresh = mingru_pytorch.minGRU(6, expansion_factor=expansion)
    fresh.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True), strict=True)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    _assert_same_checkpoint(convert.read(tmp_path / "out.pt", format="lucidrains-mingru"), ckpt)


def test_lucidrains_minlm_export_loads_strictly(mingru_pytorch, tmp_path):
    import torch
    from minGRU_pytorch.minLM import minLM

    torch.manual_seed(2)
    lm = minLM(num_tokens=13, dim=8, depth=2)
    torch.save(lm.state_dict(), tmp_path / "orig.pt")
    ckpt = convert.read(tmp_path / "orig.pt", format="lucidrains-mingru")
    convert.write(ckpt, tmp_path / "lm.safetensors")
    assert convert_main([str(tmp_path / "lm.safetensors"), str(tmp_path / "out.pt"), "--to", "lucidrains-mingru",
                         "--quiet"]) == 0
    _assert_bit_equal(_load_torch(tmp_path / "out.pt"), {k: v.numpy() for k, v in lm.state_dict().items()})
    fresh = minLM(num_tokens=13, dim=8, depth=2)
    fresh.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True), strict=True)
    tokens = torch.randint(0, 13, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), lm(tokens), rtol=0, atol=0)
    _assert_same_checkpoint(convert.read(tmp_path / "out.pt", format="lucidrains-mingru"), ckpt)


def test_lucidrains_export_refuses_options_it_lacks():
    from linrec.spec.mingru import MinGRUConfig
    from linrec.spec.mingru import init_params as mingru_params
    from linrec.spec.mingru_lm import MinGRULMConfig
    from linrec.spec.mingru_lm import init_params as lm_params
    from linrec.tools.convert import Checkpoint

    layer = MinGRUConfig(4, 4, candidate="g", bias=True)
    with pytest.raises(CheckpointError, match="bias=True"):
        originals.export_tensors("lucidrains-mingru", Checkpoint("mingru", layer, mingru_params(layer)))
    layer = MinGRUConfig(4, 4, candidate="g", bias=False, default_state=0.5)
    with pytest.raises(CheckpointError, match="default_state"):
        originals.export_tensors("lucidrains-mingru", Checkpoint("mingru", layer, mingru_params(layer)))
    lm = MinGRULMConfig(vocab_size=5, d_model=4, n_layers=1, block="glu", candidate="g", mingru_bias=False,
                        head_bias=False)
    with pytest.raises(CheckpointError, match="block='glu'"):
        originals.export_tensors("lucidrains-mingru", Checkpoint("mingru_lm", lm, lm_params(lm)))
    lm = MinGRULMConfig(vocab_size=5, d_model=4, n_layers=1, block="prenorm", candidate="g", mingru_bias=False,
                        head_bias=True, norm_eps=float(np.finfo(np.float32).eps))
    with pytest.raises(CheckpointError, match="head_bias"):
        originals.export_tensors("lucidrains-mingru", Checkpoint("mingru_lm", lm, lm_params(lm)))
    lm = MinGRULMConfig(vocab_size=5, d_model=4, n_layers=1, block="prenorm", candidate="g", mingru_bias=False,
                        head_bias=False)  # linrec's default RMSNorm eps, not nn.RMSNorm(eps=None)'s
    with pytest.raises(CheckpointError, match="norm_eps"):
        originals.export_tensors("lucidrains-mingru", Checkpoint("mingru_lm", lm, lm_params(lm)))


# --- 2. export back: jkyl/nnx-gru (its NNX state tree, flax msgpack) -------------------------------------------


def _nnx_gru_state(rng, vocab, depth, dim, dtype):
    """``nnx.to_pure_dict(nnx.state(ParallelModel(vocab_size, depth, dim), nnx.Param))``: blocks stacked."""
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
    f = {k: np.asarray(v, np.float64) for k, v in formats.flatten(state).items()}
    x = f["embeddings.embedding"][tokens]
    for l in range(f["backbone.layers.linear.kernel"].shape[0]):
        z = _sigmoid(x @ f["backbone.layers.gru.linear_z.kernel"][l] + f["backbone.layers.gru.linear_z.bias"][l])
        h_tilde = x @ f["backbone.layers.gru.linear_h.kernel"][l] + f["backbone.layers.gru.linear_h.bias"][l]
        h, hs = np.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = (1 - z[:, t]) * h + z[:, t] * h_tilde[:, t]
            hs.append(h)
        value, gate = np.split(np.stack(hs, 1) @ f["backbone.layers.linear.kernel"][l]
                               + f["backbone.layers.linear.bias"][l], 2, axis=-1)
        x = x + value * _sigmoid(gate)
    return x @ f["linear_out.kernel"] + f["linear_out.bias"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nnx_gru_export_restores_into_the_init_tree(dtype, tmp_path):
    import ml_dtypes

    serialization = pytest.importorskip("flax.serialization")
    rng = np.random.default_rng(3)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    state = _nnx_gru_state(rng, vocab=11, depth=3, dim=6, dtype=np_dtype)
    (tmp_path / "orig.msgpack").write_bytes(serialization.msgpack_serialize(state))
    ckpt = convert.read(tmp_path / "orig.msgpack", format="nnx-gru")
    convert.write(ckpt, tmp_path / "lm.safetensors")
    assert convert_main([str(tmp_path / "lm.safetensors"), str(tmp_path / "out.msgpack"), "--to", "nnx-gru",
                         "--quiet"]) == 0
    # the original's own init tree (another draw, same structure) is the restore target
    target = _nnx_gru_state(np.random.default_rng(99), vocab=11, depth=3, dim=6, dtype=np_dtype)
    restored = serialization.from_bytes(target, (tmp_path / "out.msgpack").read_bytes())
    _assert_bit_equal(formats.flatten(restored), formats.flatten(state))
    tokens = rng.integers(0, 11, (2, 5))
    np.testing.assert_array_equal(_nnx_gru_forward(restored, tokens), _nnx_gru_forward(state, tokens))
    _assert_same_checkpoint(convert.read(tmp_path / "out.msgpack", format="nnx-gru"), ckpt)


def test_nnx_gru_export_refuses_options_it_lacks():
    from linrec.spec.mingru_lm import MinGRULMConfig
    from linrec.spec.mingru_lm import init_params as lm_params
    from linrec.tools.convert import Checkpoint

    def export(**options):
        cfg = MinGRULMConfig(vocab_size=5, d_model=4, n_layers=2, **options)
        return originals.export_tensors("nnx-gru", Checkpoint("mingru_lm", cfg, lm_params(cfg)))

    assert sorted(export()) == sorted(["embeddings.embedding", "backbone.layers.gru.linear_z.kernel",
                                       "backbone.layers.gru.linear_z.bias", "backbone.layers.gru.linear_h.kernel",
                                       "backbone.layers.gru.linear_h.bias", "backbone.layers.linear.kernel",
                                       "backbone.layers.linear.bias", "linear_out.kernel", "linear_out.bias"])
    for options, needle in ((dict(candidate="g"), "candidate='g'"), (dict(mingru_bias=False), "mingru_bias"),
                            (dict(head_bias=False), "head_bias"), (dict(default_state=0.5), "default_state"),
                            (dict(expansion=1.5), "expansion"), (dict(block="prenorm"), "block")):
        with pytest.raises(CheckpointError, match=needle):
            export(**options)
    from linrec.spec.mingru import MinGRUConfig
    from linrec.spec.mingru import init_params as mingru_params

    layer = MinGRUConfig(4, 4)
    with pytest.raises(CheckpointError, match="mingru model"):
        originals.export_tensors("nnx-gru", Checkpoint("mingru", layer, mingru_params(layer)))
    with pytest.raises(CheckpointError, match="gateloop"):
        convert.write(Checkpoint("mingru", layer, mingru_params(layer)), "x.out", format="gateloop")


# --- 3. --config takes the originals' own constructor argument names --------------------------------------------


def test_nnx_gru_config_takes_its_argument_names(tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    state = _nnx_gru_state(np.random.default_rng(4), vocab=11, depth=3, dim=6, dtype=np.float32)
    (tmp_path / "m.msgpack").write_bytes(serialization.msgpack_serialize(state))
    ckpt = convert.read(tmp_path / "m.msgpack", format="nnx-gru",
                        config={"vocab_size": 11, "depth": 3, "dim": 6, "gru": "ParallelGRU"})
    assert (ckpt.config.n_layers, ckpt.config.d_model, ckpt.config.vocab_size) == (3, 6, 11)
    assert any("depth -> n_layers" in note for note in ckpt.notes)
    with pytest.raises(CheckpointError, match=r"depth=2.*n_layers=3"):
        convert.read(tmp_path / "m.msgpack", format="nnx-gru", config={"depth": 2})
    with pytest.raises(CheckpointError, match=r"dim=6.*d_model=8"):
        convert.read(tmp_path / "m.msgpack", format="nnx-gru", config={"dim": 6, "d_model": 8})
    # through the CLI, as a user types it
    assert convert_main([str(tmp_path / "m.msgpack"), str(tmp_path / "m.safetensors"), "--from", "nnx-gru",
                         "--config", '{"depth": 3, "dim": 6}', "--quiet"]) == 0


def test_cheind_config_takes_its_argument_names(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    _save_torch(tmp_path / "v13.pt", _v13_state_dict(rng, 3, 5, 3))
    ckpt = convert.read(tmp_path / "v13.pt", format="cheind-mingru",
                        config={"input_dims": 3, "hidden_dims": 5, "num_layers": 3, "residual": True,
                                "batch_first": True, "dropout": 0.0})
    assert (ckpt.config.input_size, ckpt.config.hidden_sizes, ckpt.config.residual) == (3, (5, 5, 5), True)
    with pytest.raises(CheckpointError, match="num_layers=2"):
        convert.read(tmp_path / "v13.pt", format="cheind-mingru", config={"num_layers": 2})
    with pytest.raises(CheckpointError, match="hidden_dims=4"):
        convert.read(tmp_path / "v13.pt", format="cheind-mingru", config={"hidden_dims": 4})
    with pytest.raises(CheckpointError, match=r"input_dims=3.*input_size=4"):
        convert.read(tmp_path / "v13.pt", format="cheind-mingru", config={"input_dims": 3, "input_size": 4})
    # v1.4: MinGRU(input_size, hidden_sizes, norm=..., residual=...) names are linrec's own
    _save_torch(tmp_path / "v14.pt", _v14_state_dict(rng, [3, 4, 6], norm=True, residual=True))
    ckpt = convert.read(tmp_path / "v14.pt", format="cheind-mingru",
                        config={"input_size": 3, "hidden_sizes": [4, 6], "norm": True, "residual": True,
                                "device": "cpu"})
    assert ckpt.config.hidden_sizes == (4, 6)
    with pytest.raises(CheckpointError, match="hidden_sizes"):
        convert.read(tmp_path / "v14.pt", format="cheind-mingru", config={"hidden_sizes": [4, 5]})
    # a single layer (MinGRUCell(input_size, hidden_size)) maps the same names onto the mingru layer
    _save_torch(tmp_path / "cell.pt", {"to_gate_hidden.weight": _uniform(rng, (8, 3), 3)})
    ckpt = convert.read(tmp_path / "cell.pt", format="cheind-mingru", config={"input_size": 3, "hidden_size": 4,
                                                                              "bias": False})
    assert (ckpt.model_type, ckpt.config.d_model, ckpt.config.d_inner) == ("mingru", 3, 4)
    with pytest.raises(CheckpointError, match="hidden_size=5"):
        convert.read(tmp_path / "cell.pt", format="cheind-mingru", config={"hidden_size": 5, "bias": False})


def test_lucidrains_config_takes_its_argument_names(mingru_pytorch, tmp_path):
    import torch
    from minGRU_pytorch.minLM import minLM

    torch.save(mingru_pytorch.minGRU(6, expansion_factor=1.5).state_dict(), tmp_path / "g.pt")
    ckpt = convert.read(tmp_path / "g.pt", format="lucidrains-mingru",
                        config={"dim": 6, "expansion_factor": 1.5, "proj_out": True})
    assert (ckpt.config.d_model, ckpt.config.d_inner, ckpt.config.out_proj) == (6, 9, True)
    with pytest.raises(CheckpointError, match=r"expansion_factor=2\.0"):
        convert.read(tmp_path / "g.pt", format="lucidrains-mingru", config={"expansion_factor": 2.0})
    with pytest.raises(CheckpointError, match="proj_out=False"):
        convert.read(tmp_path / "g.pt", format="lucidrains-mingru", config={"proj_out": False})
    torch.save(minLM(num_tokens=13, dim=8, depth=2).state_dict(), tmp_path / "lm.pt")
    ckpt = convert.read(tmp_path / "lm.pt", format="lucidrains-mingru",
                        config={"num_tokens": 13, "dim": 8, "depth": 2, "ff_mult": 4, "expansion": 1.5,
                                "dropout": 0.0, "use_lstm": False, "enable_conv": False})
    assert (ckpt.config.vocab_size, ckpt.config.d_model, ckpt.config.n_layers, ckpt.config.d_inner) == (13, 8, 2, 12)
    with pytest.raises(CheckpointError, match="num_tokens=12"):
        convert.read(tmp_path / "lm.pt", format="lucidrains-mingru", config={"num_tokens": 12})
    with pytest.raises(CheckpointError, match=r"depth=2.*n_layers=3"):
        convert.read(tmp_path / "lm.pt", format="lucidrains-mingru", config={"depth": 2, "n_layers": 3})
    with pytest.raises(CheckpointError, match="use_lstm"):
        convert.read(tmp_path / "lm.pt", format="lucidrains-mingru", config={"use_lstm": True})


def test_registry_offers_the_three_exports():
    assert {"cheind-mingru", "lucidrains-mingru", "nnx-gru"} <= set(originals.exportable())
    assert "refused" not in originals.ORIGINALS["cheind-mingru"].description
