"""Weight conversion: the layout tables, bit-exact round trips, the file formats, the CLI and hostile inputs."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from linrec.conformance import conversion_cases as cc
from linrec.tools import convert, formats, layout
from linrec.tools.convert import CheckpointError, convert_main, inspect_main
from linrec.tools.layout import LayoutError

REPO = Path(__file__).resolve().parents[1]
OPTIONS = [(model, option) for model, options in cc.CONFIGS.items() for option in options]
IDS = [f"{m}-{o}" for m, o in OPTIONS]


def _config(model: str, option: str):
    return cc.CONFIGS[model][option]()


def _params(model: str, option: str, dtype: str = "float32", seed: int = 0):
    config = _config(model, option)
    return config, cc.random_params(model, config, dtype, seed)


def _assert_bits(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k


@pytest.fixture
def glrnn(tmp_path):
    """A small GatedLinearRNN checkpoint in linrec safetensors."""
    config, params = _params("gated_linear_rnn", "untied-recurrent")
    path = tmp_path / "glrnn.safetensors"
    convert.save((config, params), path)
    return config, params, path


# --- the tables -----------------------------------------------------------------------------------------------


def test_layout_md_is_generated_from_the_tables():
    page = (REPO / "spec" / "layout.md").read_text()
    assert page == layout.markdown(), "spec/layout.md is stale: run python -m linrec.tools.layout > spec/layout.md"


def test_every_model_has_options_and_a_table():
    assert set(cc.CONFIGS) == set(layout.model_names())


@pytest.mark.parametrize(("model", "option"), OPTIONS, ids=IDS)
def test_table_equals_param_shapes(model, option):
    lay = layout.get_layout(model)
    config = _config(model, option)
    assert layout.expected_shapes(lay, config) == lay.spec_module.param_shapes(config)
    shapes = lay.spec_module.param_shapes(config)
    given = {"num_heads": config.num_heads} if model == "gateloop_mh" else {}
    inferred = lay.infer(shapes, given)
    for name, value in inferred.items():  # what the shapes determine is what the config says
        assert getattr(config, name) == pytest.approx(value) if isinstance(value, float) else \
            getattr(config, name) == value, name


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize(("model", "option"), OPTIONS, ids=IDS)
def test_table_matches_module_parameter_names(model, option, backend):
    """``nnx.state(module, nnx.Param)`` paths / ``state_dict()`` keys map 1:1 onto ``param_shapes(config)``."""
    pytest.importorskip(backend)
    config, params = _params(model, option)
    cls = layout.get_layout(model).module_class(backend)
    if backend == "jax":
        from flax import nnx

        module = nnx.eval_shape(lambda: cls.from_canonical(config, params))
        found = {".".join(map(str, p)): tuple(v.shape if hasattr(v, "shape") else v.get_value().shape)
                 for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}
        side = "flax"
    else:
        module = cls.from_canonical(config, params)
        found = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        side = "torch"
    mapped = {k: np.shape(v) for k, v in layout.to_names(model, params, side).items()}
    assert found == mapped
    back, unknown = layout.from_names(model, layout.to_names(model, params, side), side)
    assert not unknown
    _assert_bits(back, params)
    # the module's own canonical view agrees with the table's transforms
    loaded = convert.to_module(convert.Checkpoint(model, config, params), backend)
    _assert_bits(loaded.canonical_params(), params)


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("model", "option"), OPTIONS, ids=IDS)
def test_file_round_trip_flax_torch_flax_is_bit_exact(model, option, dtype, tmp_path):
    """flax file -> canonical -> torch file -> canonical -> linrec file -> flax file, bit for bit."""
    pytest.importorskip("flax")
    pytest.importorskip("torch")
    config, params = _params(model, option, dtype)
    first = tmp_path / "a.msgpack"
    formats.write_flax(first, layout.to_names(model, params, "flax"))
    kw = dict(model=model, config=layout.config_to_dict(config), progress=False)
    convert.convert(first, tmp_path / "b.pt", **kw)
    convert.convert(tmp_path / "b.pt", tmp_path / "c.safetensors", **kw)
    summary = convert.convert(tmp_path / "c.safetensors", tmp_path / "d.msgpack", progress=False)
    assert summary.dtypes == (dtype,)
    _assert_bits(formats.read_flax(first), formats.read_flax(tmp_path / "d.msgpack"))
    assert convert.read(tmp_path / "c.safetensors").config == config
    _assert_bits(convert.read(tmp_path / "b.pt", **{k: kw[k] for k in ("model", "config")}).params, params)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("model", "option"), OPTIONS, ids=IDS)
def test_module_round_trip_flax_torch_flax_is_bit_exact(model, option, dtype):
    """NNX module -> canonical -> nn.Module -> canonical -> NNX module: the NNX states are identical."""
    pytest.importorskip("flax")
    pytest.importorskip("torch")
    config, params = _params(model, option, dtype)
    flax_module = convert.to_module(convert.Checkpoint(model, config, params), "jax")
    ckpt = convert.module_to_checkpoint(flax_module)
    torch_module = convert.to_module(ckpt, "torch")
    back = convert.module_to_checkpoint(torch_module)
    again = convert.to_module(back, "jax")
    _assert_bits(convert._flax_params(flax_module), convert._flax_params(again))
    _assert_bits(back.params, params)


# --- the API ------------------------------------------------------------------------------------------------


def test_load_save_inspect_api(glrnn, tmp_path):
    config, params, path = glrnn
    back_config, back = convert.load(path, "numpy")
    assert back_config == config
    _assert_bits(back, params)
    info = convert.inspect(path)
    assert info["model_type"] == "gated_linear_rnn" and info["format"] == "linrec"
    assert info["config"] == layout.config_to_dict(config)
    assert info["parameters"] == sum(v.size for v in params.values())
    assert {r["name"] for r in info["tensors"]} == set(params)
    module = convert.load(path, "torch", dtype="bfloat16")
    import torch

    assert module.proj.weight.dtype == torch.bfloat16
    convert.save(module, tmp_path / "m.pt")
    assert convert.read(tmp_path / "m.pt", model="gated_linear_rnn").params["proj.kernel"].dtype.name == "bfloat16"


def test_config_inference_fills_what_the_shapes_tell(tmp_path):
    config = layout.get_layout("mingru").config_class(d_model=3, d_inner=5, candidate="g", default_state=0.5)
    params = cc.random_params("mingru", config, "float32")
    formats.write_torch(tmp_path / "m.pt", layout.to_names("mingru", params, "torch"))
    ckpt = convert.read(tmp_path / "m.pt", model="mingru")
    assert (ckpt.config.d_model, ckpt.config.d_inner, ckpt.config.bias) == (3, 5, True)
    assert ckpt.config.candidate == "identity"  # not in the file: the default, and a note says so
    assert any("candidate='identity'" in n for n in ckpt.notes)
    ckpt = convert.read(tmp_path / "m.pt", model="mingru", config='{"candidate": "g", "default_state": 0.5}')
    assert ckpt.config == config


def test_gateloop_mh_needs_num_heads_when_shapes_cannot_tell(tmp_path):
    config, params = _params("gateloop_mh", "real-key")
    formats.write_torch(tmp_path / "g.pt", layout.to_names("gateloop_mh", params, "torch"))
    with pytest.raises(CheckpointError, match="num_heads"):
        convert.read(tmp_path / "g.pt", model="gateloop_mh")
    assert convert.read(tmp_path / "g.pt", model="gateloop_mh", config={"num_heads": 2}).config == config
    config, params = _params("gateloop_mh", "complex-head-bias")  # one gate per head: the shapes tell
    formats.write_torch(tmp_path / "h.pt", layout.to_names("gateloop_mh", params, "torch"))
    assert convert.read(tmp_path / "h.pt", model="gateloop_mh").config == config


# --- the command line -------------------------------------------------------------------------------------


def test_cli_convert_between_every_format(glrnn, tmp_path, capsys):
    config, params, path = glrnn
    assert convert_main([str(path), str(tmp_path / "a.pt")]) == 0
    line = capsys.readouterr().out.strip()
    assert "gated_linear_rnn" in line and f"{len(params)} tensors" in line and "parameters" in line
    assert "bytes" in line and "(linrec)" in line and "(torch)" in line
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(layout.config_to_dict(config)))
    assert convert_main([str(tmp_path / "a.pt"), str(tmp_path / "b.flax"), "--model", "gated_linear_rnn",
                         "--config", str(cfg)]) == 0
    assert convert_main([str(tmp_path / "b.flax"), str(tmp_path / "c.weights"), "--to", "linrec", "--model",
                         "gated-linear-rnn", "--config", json.dumps({"input_activation": "tanh"}),
                         "--dtype", "bfloat16"]) == 0
    assert convert_main([str(tmp_path / "c.weights"), str(tmp_path / "d.bin"), "--from", "linrec"]) == 0
    capsys.readouterr()
    back = convert.read(tmp_path / "d.bin", model="gated_linear_rnn", config=layout.config_to_dict(config))
    _assert_bits(back.params, {k: v.astype(ml_dtypes.bfloat16) for k, v in params.items()})


def test_cli_refuses_to_overwrite_without_force(glrnn, tmp_path, capsys):
    _, _, path = glrnn
    out = tmp_path / "out.pt"
    out.write_bytes(b"precious")
    assert convert_main([str(path), str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert convert_main([str(path), str(out), "--force"]) == 0
    assert convert.read(out, model="gated_linear_rnn").params.keys() == glrnn[1].keys()


def test_cli_progress_line_for_large_checkpoints(glrnn, tmp_path, capsys, monkeypatch):
    _, params, path = glrnn
    assert convert_main([str(path), str(tmp_path / "a.pt")]) == 0
    assert "converting" not in capsys.readouterr().err  # small: no progress line
    monkeypatch.setattr(convert, "PROGRESS_MIN_BYTES", 0)
    assert convert_main([str(path), str(tmp_path / "b.pt")]) == 0
    err = capsys.readouterr().err
    assert f"converting [####################] {len(params)}/{len(params)} tensors" in err
    assert convert_main([str(path), str(tmp_path / "c.pt"), "--quiet"]) == 0
    assert "converting" not in capsys.readouterr().err


def test_cli_inspect(glrnn, tmp_path, capsys):
    config, params, path = glrnn
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "model:  gated_linear_rnn" in out and '"d_h": 2' in out and "recurrent_proj.kernel" in out
    assert f"tensors: {len(params)}" in out
    convert.convert(path, tmp_path / "a.pt", progress=False)
    assert inspect_main([str(tmp_path / "a.pt")]) == 0
    out = capsys.readouterr().out
    assert "model:  unknown" in out and "proj.weight" in out
    assert inspect_main([str(tmp_path / "a.pt"), "--model", "gated_linear_rnn", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "gated_linear_rnn" and info["config"]["d_h"] == config.d_h


# --- errors: one clear message, no output file -----------------------------------------------------------


def _fails(capsys, argv, *fragments):
    assert convert_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("linrec convert: error:"), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_missing_unexpected_and_misshapen_are_listed_together(glrnn, tmp_path, capsys):
    config, params, _ = glrnn
    bad = dict(params)
    del bad["out_proj.bias"]
    bad["proj.kernel"] = np.zeros((3, 7), np.float32)
    bad["extra.kernel"] = np.zeros((2, 2), np.float32)
    formats.write_linrec(tmp_path / "bad.safetensors", bad, model_type="gated_linear_rnn",
                         config=layout.config_to_dict(config))
    err = _fails(capsys, [str(tmp_path / "bad.safetensors"), str(tmp_path / "out.pt")],
                 "missing     out_proj.bias: expected shape (3,)", "misshapen   proj.kernel: expected (3, 8), "
                 "found (3, 7)", "unexpected  extra.kernel", "1 missing, 1 misshapen, 1 unexpected")
    assert not (tmp_path / "out.pt").exists()
    # a torch source is reported with its own names and orientation
    torch_names = layout.to_names("gated_linear_rnn", params, "torch")
    torch_names["proj.weight"] = np.zeros((7, 3), np.float32)
    del torch_names["recurrent_proj.weight"]
    torch_names["bogus"] = np.zeros(1, np.float32)
    formats.write_torch(tmp_path / "bad.pt", torch_names)
    err = _fails(capsys, [str(tmp_path / "bad.pt"), str(tmp_path / "out.msgpack"), "--model", "gated_linear_rnn",
                          "--config", json.dumps(layout.config_to_dict(config))],
                 "proj.weight (canonical proj.kernel): expected (8, 3), found (7, 3)",
                 "missing     recurrent_proj.weight (canonical recurrent_proj.kernel)", "bogus")
    assert not (tmp_path / "out.msgpack").exists()
    del err


def test_truncated_and_lying_safetensors(glrnn, tmp_path, capsys):
    _, _, path = glrnn
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) - 16])
    _fails(capsys, [str(tmp_path / "trunc.safetensors"), str(tmp_path / "o.pt")], "truncated")
    (tmp_path / "tiny.safetensors").write_bytes(raw[:5])
    _fails(capsys, [str(tmp_path / "tiny.safetensors"), str(tmp_path / "o.pt")], "truncated")
    # a header that claims more bytes for a tensor than the data section holds
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10**9]
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (tmp_path / "lying.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])
    _fails(capsys, [str(tmp_path / "lying.safetensors"), str(tmp_path / "o.pt")], name, "corrupt or truncated")
    # a header length larger than the file
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    _fails(capsys, [str(tmp_path / "huge.safetensors"), str(tmp_path / "o.pt")], "header claims")
    assert not (tmp_path / "o.pt").exists()


def test_corrupt_msgpack_and_pt(glrnn, tmp_path, capsys):
    _, _, path = glrnn
    convert.convert(path, tmp_path / "a.msgpack", progress=False)
    convert.convert(path, tmp_path / "a.pt", progress=False)
    for name in ("a.msgpack", "a.pt"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"t_{name}").write_bytes(raw[: len(raw) // 2])
        _fails(capsys, [str(tmp_path / f"t_{name}"), str(tmp_path / "o.safetensors"), "--model",
                        "gated_linear_rnn"], "truncated or corrupt")
        (tmp_path / f"g_{name}").write_bytes(b"\x00garbage" * 7)
        _fails(capsys, [str(tmp_path / f"g_{name}"), str(tmp_path / "o.safetensors"), "--model",
                        "gated_linear_rnn"])
    assert not (tmp_path / "o.safetensors").exists()


class _Payload:
    """Unpickling this calls ``Path.touch`` on a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_in_pt_is_refused_and_never_runs(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    torch.save({"proj.weight": torch.zeros(2, 2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_plain.pt", "wb") as fh:  # a legacy (non-zip) pickle file
        pickle.dump({"proj.weight": _Payload(marker)}, fh, protocol=2)
    for name in ("evil.pt", "evil_plain.pt"):
        _fails(capsys, [str(tmp_path / name), str(tmp_path / "o.safetensors"), "--model", "mingru"],
               "refused to load", "weights_only", "nothing in the file was run")
        with pytest.raises(CheckpointError, match="refused"):
            convert.inspect(tmp_path / name)
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_wrong_dtypes_are_refused(glrnn, tmp_path, capsys):
    config, params, path = glrnn
    ints = {k: np.ones(v.shape, np.int32) for k, v in params.items()}
    formats.write_linrec(tmp_path / "int.safetensors", ints, model_type="gated_linear_rnn",
                         config=layout.config_to_dict(config))
    _fails(capsys, [str(tmp_path / "int.safetensors"), str(tmp_path / "o.pt")], "wrong dtype proj.kernel: int32")
    torch = pytest.importorskip("torch")
    torch.save({"proj.weight": torch.zeros(2, 2, dtype=torch.int64)}, tmp_path / "int.pt")
    _fails(capsys, [str(tmp_path / "int.pt"), str(tmp_path / "o.safetensors"), "--model", "mingru"],
           "wrong dtype proj.weight (canonical proj.kernel): int64")
    torch.save({"proj.weight": torch.zeros(2, 2), "step": 3}, tmp_path / "mixed.pt")
    _fails(capsys, [str(tmp_path / "mixed.pt"), str(tmp_path / "o.safetensors"), "--model", "mingru"],
           "step (a int, not a tensor)")
    _fails(capsys, [str(path), str(tmp_path / "o.pt"), "--dtype", "int8"], "dtype must be one of")
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.safetensors").exists()


def test_unknown_models_formats_and_configs(glrnn, tmp_path, capsys):
    _, _, path = glrnn
    convert.convert(path, tmp_path / "a.pt", progress=False)
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors")], "--model", "mingru_lm")
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors"), "--model", "transformer"],
           "unknown model type 'transformer'", "gated_linear_rnn")
    _fails(capsys, [str(path), str(tmp_path / "o.onnx")], "cannot tell the format", "--from/--to")
    _fails(capsys, [str(path), str(tmp_path / "o.pt"), "--from", "keras"], "unknown source format 'keras'",
           "cheind-mingru")
    _fails(capsys, [str(path), str(tmp_path / "o.pt"), "--to", "keras"], "unknown target format")
    _fails(capsys, [str(path), str(tmp_path / "o.pt"), "--to", "cheind-mingru"],
           "cannot export a gated_linear_rnn model to cheind-mingru")
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors"), "--model", "gated_linear_rnn",
                    "--config", "{not json"], "not valid JSON")
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors"), "--model", "gated_linear_rnn",
                    "--config", '{"d_hidden": 3}'], "no field(s) ['d_hidden']")
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors"), "--model", "gated_linear_rnn",
                    "--config", '{"input_activation": "swish"}'], "input_activation")
    _fails(capsys, [str(tmp_path / "a.pt"), str(tmp_path / "o.safetensors"), "--model", "mingru"],
           "does not match mingru")
    _fails(capsys, [str(tmp_path / "nope.pt"), str(tmp_path / "o.safetensors")], "no such file")
    formats.write_linrec(tmp_path / "mystery.safetensors", {"w": np.zeros(2, np.float32)}, model_type="mamba",
                         config={})
    _fails(capsys, [str(tmp_path / "mystery.safetensors"), str(tmp_path / "o.pt")], "unknown model type 'mamba'")
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.pt").exists()


def test_torch_wrappers_and_plain_safetensors(glrnn, tmp_path):
    torch = pytest.importorskip("torch")
    config, params, _ = glrnn
    state = {k: formats.numpy_to_tensor(v) for k, v in layout.to_names("gated_linear_rnn", params, "torch").items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    _assert_bits(convert.read(tmp_path / "wrapped.pt", model="gated_linear_rnn",
                              config=layout.config_to_dict(config)).params, params)
    from linrec.tools.safetensors_io import write_safetensors

    write_safetensors(tmp_path / "plain.safetensors", params)  # no linrec metadata
    with pytest.raises(CheckpointError, match="model_type"):
        convert.read(tmp_path / "plain.safetensors")
    ckpt = convert.read(tmp_path / "plain.safetensors", model="gated_linear_rnn")
    assert ckpt.config == config
    linrec_file = convert.save((config, params), tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="holds a gated_linear_rnn, not a mingru"):
        convert.read(linrec_file, model="mingru")


def test_layout_helpers_reject_bad_names():
    with pytest.raises(LayoutError, match="not in the canonical table"):
        layout.to_names("mingru", {"nope.kernel": np.zeros((1, 1))}, "torch")
    with pytest.raises(LayoutError, match="stacks layers"):
        layout.to_names("mingru_lm", {"layers.1.glu.bias": np.zeros(2)}, "flax")
    with pytest.raises(ValueError, match="placeholders"):
        layout.Row("a.{l}.w", "(1,)", "a.w", "a.{l}.w")
