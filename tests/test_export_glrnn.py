"""Export back to flax-gated-linear-rnn / GateLoop (``linrec convert ... --to gated-linear-rnn|gateloop``).

The exported msgpack is restored with ``flax.serialization.from_bytes`` into the original module's own
``init(...)['params']`` tree, run by the original, and compared with the float64 NumPy reference within the
spec's float32 tolerance; the numbers are compared bit for bit with the linrec checkpoint, and re-importing the
export gives the same checkpoint. The linrec JAX backend is not imported here: it switches on ``jax_enable_x64``,
under which the original computes in float64 (spec/gated_linear_rnn_lm.md §13).
"""

from __future__ import annotations

import numpy as np
import pytest

from linrec.spec import gated_linear_rnn as layer_spec
from linrec.spec import gated_linear_rnn_lm as lm_spec
from linrec.spec.tolerances import tolerance_for
from linrec.tools import convert, formats, originals
from linrec.tools.convert import CheckpointError, convert_main


@pytest.fixture(scope="module")
def fglrnn():
    return pytest.importorskip("flax_gated_linear_rnn")


def _assert_close(actual, reference, length):
    """``|actual - ref| <= atol + rtol * max|ref|`` with the spec's float32 tolerance (recurrence.md §9)."""
    tol = tolerance_for("float32", length=length)
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    bound = tol.atol + tol.rtol * np.max(np.abs(reference))
    assert np.max(np.abs(actual - reference)) <= bound


def _perturbed(params, seed):
    """Spec-initialised params with every tensor made nonzero (biases and ``recurrent_proj`` start at zero)."""
    rng = np.random.default_rng(seed)
    return {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in params.items()}


def _flat(tree):
    return formats.flatten(dict(tree))


def _write(tmp_path, model, config, params, name="model.safetensors"):
    path = tmp_path / name
    formats.write_linrec(path, params, model_type=model, config=convert.config_to_dict(config))
    return path


@pytest.mark.parametrize(("tied", "recurrence"), [(True, False), (False, True)])
def test_layer_exports_into_the_original(fglrnn, tied, recurrence, tmp_path):
    import jax
    from flax import serialization

    config = layer_spec.GatedLinearRNNConfig(d_model=5, d_h=4, d_in=3, use_tied_gates=tied,
                                             use_true_recurrence=recurrence)
    params = _perturbed(layer_spec.init_params(config, seed=1), seed=2)
    src = _write(tmp_path, "gated_linear_rnn", config, params)
    assert convert_main([str(src), str(tmp_path / "out.msgpack"), "--to", "gated-linear-rnn", "--quiet"]) == 0

    layer = fglrnn.GatedLinearRNN(d_model=5, d_h=4, use_tied_gates=tied, use_true_recurrence=recurrence)
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    target = layer.init(jax.random.PRNGKey(0), x)["params"]
    restored = serialization.from_bytes(target, (tmp_path / "out.msgpack").read_bytes())
    flat = _flat(restored)
    assert set(flat) == set(_flat(target))  # the original's own tree, nothing more or less
    for name, value in originals.export_tensors("gated-linear-rnn", convert.read(src)).items():
        assert np.asarray(flat[name]).tobytes() == value.tobytes(), name  # bit-exact
    assert np.asarray(flat["proj.kernel"]).tobytes() == params["proj.kernel"].tobytes()

    carry, y = layer.apply({"params": restored}, x)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    y_ref, state = layer_spec.forward(p64, x.astype(np.float64), config)
    _assert_close(y, y_ref, 7)
    _assert_close(carry, state.h, 7)

    # export, then import again: the same checkpoint bit for bit
    back = convert.read(tmp_path / "out.msgpack", format="gated-linear-rnn", config={"d_in": 3})
    assert back.model_type == "gated_linear_rnn" and back.config == config
    assert set(back.params) == set(params)
    assert all(back.params[k].tobytes() == params[k].tobytes() and back.params[k].dtype == params[k].dtype
               for k in params)


def test_gateloop_export_keeps_reversed_and_gated_linear_rnn_refuses_it(fglrnn, tmp_path):
    config = layer_spec.GateLoopConfig(d_model=3, d_h=2, reversed=True)
    params = _perturbed(layer_spec.init_params(config, seed=3), seed=4)
    src = _write(tmp_path, "gateloop", config, params)
    ckpt = convert.read(src)
    with pytest.raises(CheckpointError, match=r"reversed=True.*'gateloop'"):
        convert.write(ckpt, tmp_path / "refused.msgpack", format="gated-linear-rnn")
    assert not (tmp_path / "refused.msgpack").exists()
    convert.write(ckpt, tmp_path / "gl.msgpack", format="gateloop")
    back = convert.read(tmp_path / "gl.msgpack", format="gateloop", config={"reversed": True})
    assert back.model_type == "gateloop" and back.config == config
    assert all(back.params[k].tobytes() == params[k].tobytes() for k in params)


def _lm_config(**kw):
    fields = dict(n_layer=2, d_model=8, d_channel_mixing=12, d_h=6, input_vocab_size=11, output_vocab_size=13,
                  eps=1e-5, use_tied_gates=False, dropout_placement="sum", positional_encoding_mode="sinusoidal",
                  max_seq_length=16, embedding_dropout=0.1, time_mixing_dropout=0.1, channel_mixing_dropout=0.1)
    return lm_spec.GatedLinearRNNLMConfig(**{**fields, **kw})


@pytest.mark.slow  # ~15 s: the original LM runs unjitted
def test_lm_exports_into_the_original(fglrnn, tmp_path):
    import jax
    from flax import serialization

    config = _lm_config(compat_step_position_zero=True)
    params = _perturbed(lm_spec.init_params(config, seed=5), seed=6)
    src = _write(tmp_path, "gated_linear_rnn_lm", config, params)
    summary = convert.convert(src, tmp_path / "lm.msgpack", dst_format="gated-linear-rnn", progress=False)
    assert summary.dst_format == "gated-linear-rnn"

    lm = fglrnn.GatedLinearRNNLM(
        n_layer=2, d_model=8, d_channel_mixing=12, eps=1e-5, channel_mixing_dropout=0.1, time_mixing_dropout=0.1,
        input_vocab_size=11, output_vocab_size=13, max_seq_length=16, embedding_dropout=0.1,
        use_word_embedding=True, positional_encoding_mode="sinusoidal", use_head=True, d_h=6, use_tied_gates=False)
    tokens = np.random.default_rng(1).integers(0, 11, (2, 9))
    target = lm.init(jax.random.PRNGKey(0), tokens, training=False)["params"]
    restored = serialization.from_bytes(target, (tmp_path / "lm.msgpack").read_bytes())
    assert set(_flat(restored)) == set(_flat(target))
    h, logits = lm.apply({"params": restored}, tokens, training=False)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref, state = lm_spec.forward(p64, tokens, config)
    _assert_close(logits, ref, 9)
    _assert_close(h, np.stack(state.h, axis=1), 9)

    # a decode step with the carry: the original re-adds position 0, as compat_step_position_zero=True does
    h1, step_logits = lm.apply({"params": restored}, tokens[:, :1], training=False, carry=h)
    ref1, state1 = lm_spec.step(p64, tokens[:, 0], state, config)
    _assert_close(step_logits[:, 0], ref1, 10)
    _assert_close(h1, np.stack(state1.h, axis=1), 10)

    back = convert.read(tmp_path / "lm.msgpack", format="gated-linear-rnn", config={
        "eps": 1e-5, "positional_encoding_mode": "sinusoidal", "max_seq_length": 16, "embedding_dropout": 0.1,
        "time_mixing_dropout": 0.1, "channel_mixing_dropout": 0.1, "compat_step_position_zero": True})
    assert back.config == config
    assert set(back.params) == set(params) and all(back.params[k].tobytes() == params[k].tobytes() for k in params)


@pytest.mark.parametrize(("change", "option"), [
    ({"gelu_approximate": False}, "gelu_approximate=False"),
    ({"dropout_placement": "branch"}, "dropout_placement='branch'"),
    ({"positional_encoding_mode": "learned"}, "positional_encoding_mode='learned'"),
    ({"d_model": 7}, "odd d_model=7"),
])
@pytest.mark.parametrize("original", ["gated-linear-rnn", "gateloop"])
def test_lm_options_the_original_lacks_are_refused(change, option, original, tmp_path):
    config = _lm_config(**change)
    params = lm_spec.init_params(config, seed=0)
    ckpt = convert.Checkpoint("gated_linear_rnn_lm", config, params)
    with pytest.raises(CheckpointError, match=option.replace("(", r"\(").replace(")", r"\)")):
        convert.write(ckpt, tmp_path / "x.msgpack", format=original)
    assert not (tmp_path / "x.msgpack").exists()


def test_branch_dropout_without_dropout_is_the_same_function_and_exports():
    config = _lm_config(dropout_placement="branch", embedding_dropout=0.0, time_mixing_dropout=0.0,
                        channel_mixing_dropout=0.0, positional_encoding_mode="none", max_seq_length=None)
    params = lm_spec.init_params(config, seed=0)
    tensors = originals.export_tensors("gateloop", convert.Checkpoint("gateloop_lm", config, params))
    assert tensors["head.kernel"].tobytes() == params["head.kernel"].tobytes()
    assert "time_mixing_layers_1.model.proj.kernel" in tensors


def test_other_models_are_refused():
    from linrec.spec import mingru

    config = mingru.MinGRUConfig(d_model=3)
    ckpt = convert.Checkpoint("mingru", config, mingru.init_params(config))
    with pytest.raises(CheckpointError, match="cannot export a mingru to 'gated-linear-rnn'"):
        originals.export_tensors("gated-linear-rnn", ckpt)
    assert {"gated-linear-rnn", "gateloop"} <= set(originals.exportable())


def test_original_activation_spellings_and_the_compat_note(fglrnn, tmp_path):
    import jax
    from flax import serialization

    layer = fglrnn.GatedLinearRNN(d_model=3, d_h=2)
    params = layer.init(jax.random.PRNGKey(0), np.zeros((1, 2, 3), np.float32))["params"]
    (tmp_path / "l.msgpack").write_bytes(serialization.msgpack_serialize(params))
    ckpt = convert.read(tmp_path / "l.msgpack", format="gated-linear-rnn",
                        config={"input_activation": "nn.gelu", "gate_activation": "jax.nn.sigmoid"})
    assert (ckpt.config.input_activation, ckpt.config.gate_activation) == ("gelu", "sigmoid")

    config = _lm_config()
    lm_params = {k: v for k, v in originals.export_tensors(
        "gated-linear-rnn", convert.Checkpoint("gated_linear_rnn_lm", config, lm_spec.init_params(config))).items()}
    lm = originals.import_tensors("gated-linear-rnn", lm_params, config={
        "eps": 1e-5, "positional_encoding_mode": "sinusoidal", "max_seq_length": 16})
    assert any("compat_step_position_zero" in note for note in lm.notes)
    assert lm.config.compat_step_position_zero is False  # a note, not a silent change


def test_bfloat16_export_round_trips_bit_for_bit(tmp_path):
    pytest.importorskip("flax")
    config = layer_spec.GatedLinearRNNConfig(d_model=3, d_h=2, use_tied_gates=False, use_true_recurrence=True)
    params = layer_spec.init_params(config, seed=4, dtype="bfloat16")
    params = {k: (v.astype(np.float32) + 0.25).astype(v.dtype) for k, v in params.items()}
    convert.write(convert.Checkpoint("gated_linear_rnn", config, params), tmp_path / "b.msgpack",
                  format="gated-linear-rnn")
    back = convert.read(tmp_path / "b.msgpack", format="gated-linear-rnn")
    assert back.config == config
    assert all(back.params[k].dtype == params[k].dtype and back.params[k].tobytes() == params[k].tobytes()
               for k in params)
