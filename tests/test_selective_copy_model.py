"""The checkpoint ``linrec train selective-copy`` writes is a linrec model (``mingru_stack_lm`` / ``mingru_lm``).

A tiny training run (a few steps) writes the checkpoint; ``linrec inspect`` names the model, ``linrec.load`` loads
it in numpy, jax and torch, and each loaded model's logits at the marker positions equal the training loop's
(``copy_logits`` on the trained parameters) within the spec's float32 tolerance. Also: the ``NumpyModel`` that
``load(path, "numpy")`` returns, and the new model type's modules against its NumPy reference.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from linrec.spec import mingru_stack_lm as spec
from linrec.spec.tolerances import tolerance_for
from linrec.tools import convert
from linrec.tools import selective_copy as sc
from linrec.tools.convert import inspect_main

TINY = ["--steps", "3", "--batch-size", "8", "--eval-every", "3", "--val-size", "8", "--noise-len", "6",
        "--memorize", "2", "--vocab", "5", "--quiet"]


def _assert_close(actual, reference, length):
    """``|actual - ref| <= atol + rtol * max|ref|`` with the spec's float32 tolerance (recurrence.md §9)."""
    tol = tolerance_for("float32", length=length)
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape
    assert np.max(np.abs(actual - reference)) <= tol.atol + tol.rtol * np.max(np.abs(reference))


def _np(value):
    return value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)


def _loaded_logits(path, tokens, m):
    """The last ``m`` positions' logits of the model loaded from ``path`` in each backend."""
    import torch

    out = {"numpy": convert.load(path, "numpy").forward(tokens)[0][:, -m:]}
    out["jax"] = _np(convert.load(path, "jax")(tokens)[0])[:, -m:]
    with torch.no_grad():
        out["torch"] = _np(convert.load(path, "torch")(torch.from_numpy(tokens))[0])[:, -m:]
    return out


@pytest.mark.parametrize(("kind", "backend", "model_type"), [
    ("stack", "torch", "mingru_stack_lm"),
    ("lm", "torch", "mingru_lm"),
    pytest.param("stack", "jax", "mingru_stack_lm", marks=pytest.mark.slow),  # ~15 s: JAX compiles the loop
])
def test_trained_checkpoint_is_a_linrec_model(kind, backend, model_type, tmp_path, capsys):
    pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    out = tmp_path / "copy.safetensors"
    extra = ["--hidden", "8", "8", "--emb-dims", "4"] if kind == "stack" \
        else ["--d-model", "8", "--layers", "1"]
    with contextlib.redirect_stderr(io.StringIO()):
        assert sc.main(["--backend", backend, "--model", kind, *TINY, *extra, "--out", str(out)]) == 0

    assert inspect_main([str(out)]) == 0
    assert f"model:  {model_type}" in capsys.readouterr().out
    info = convert.inspect(out)
    assert info["model_type"] == model_type

    params, model, task = sc.load_checkpoint(out)  # the task and the copy-model config are still in the file
    assert model.kind == kind and task.num_memorize == 2
    assert json.loads(out.with_suffix(".json").read_text())["model"]["kind"] == kind
    assert convert.read(out).config == model.linrec_model()[1]

    tokens, _ = task.batch(np.random.default_rng(7), 3)
    if backend == "jax":
        from linrec.backends.jax.train import copy_logits

        trained = np.asarray(copy_logits(params, tokens, model))
    else:
        from linrec.backends.torch.train import CopyNet

        with torch.no_grad():
            trained = CopyNet(model, params).eval()(torch.from_numpy(tokens)).numpy()
    assert trained.shape == (3, 2, 5)
    for name, logits in _loaded_logits(out, tokens, task.num_memorize).items():
        _assert_close(logits, trained, task.length)
        assert np.argmax(logits, -1).tolist() == np.argmax(trained, -1).tolist(), name

    config, loaded = convert.load(out, "numpy")  # the pair still unpacks
    assert config == model.linrec_model()[1] and set(loaded) == set(params)
    assert all(loaded[k].tobytes() == params[k].tobytes() for k in params)


def test_numpy_model_says_what_runs_it(tmp_path):
    config = spec.MinGRUStackLMConfig(vocab_size=6, input_size=3, hidden_sizes=(4, 5), residual=True, norm=True)
    params = spec.init_params(config, seed=2)
    convert.save((config, params), tmp_path / "m.safetensors")
    model = convert.load(tmp_path / "m.safetensors", "numpy")
    assert model.model_type == "mingru_stack_lm" and model.config == config and len(model) == 2
    assert model.function == "linrec.backends.numpy.mingru_stack_lm.mingru_stack_lm"
    tokens = np.random.default_rng(0).integers(0, 6, (2, 5))
    logits, state = model.forward(tokens)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref, ref_state = spec.forward(p64, tokens, config)
    _assert_close(logits, ref, 5)
    assert [h.shape for h in state.h] == [(2, 4), (2, 5)]
    # stepping the carried state gives the full pass, one token at a time
    s = model.initial_state(2)
    for t in range(5):
        out_t, s = model.step(tokens[:, t], s)
        _assert_close(out_t, ref[:, t], t + 1)
    for h, h_ref in zip(s.h, ref_state.h):
        _assert_close(h, h_ref, 5)
    gl = convert.Checkpoint("gateloop", None, {})
    assert gl.layout.spec == "linrec.spec.gated_linear_rnn"  # GateLoop runs the GatedLinearRNN function:
    from linrec.tools.numpy_model import numpy_function

    assert numpy_function("gateloop") == "linrec.backends.numpy.gated_linear_rnn:gated_linear_rnn"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_modules_match_the_reference_and_step(backend):
    pytest.importorskip(backend)
    config = spec.MinGRUStackLMConfig(vocab_size=7, input_size=3, hidden_sizes=(4, 4), residual=True, norm=True,
                                      candidate="identity", default_state=0.0)
    params = spec.init_params(config, seed=1)
    module = convert.to_module(convert.Checkpoint("mingru_stack_lm", config, params), backend)
    module.eval()
    tokens = np.random.default_rng(3).integers(0, 7, (2, 6))
    if backend == "torch":
        import torch

        with torch.no_grad():
            logits, state = module(torch.from_numpy(tokens))
            step_logits, _ = module.step(torch.from_numpy(tokens[:, 0]))
    else:
        logits, state = module(tokens)
        step_logits, _ = module.step(tokens[:, 0])
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref, ref_state = spec.forward(p64, tokens, config)
    _assert_close(_np(logits), ref, 6)
    _assert_close(_np(step_logits), ref[:, 0], 1)
    for h, h_ref in zip(state.h, ref_state.h):
        _assert_close(_np(h), h_ref, 6)
    back = module.canonical_params()
    assert all(back[k].tobytes() == params[k].tobytes() for k in params)
    with pytest.raises(ValueError, match="vocab_size=7"):
        module(tokens + 7)


def test_config_is_checked():
    with pytest.raises(ValueError, match="vocab_size"):
        spec.MinGRUStackLMConfig(vocab_size=0, input_size=3, hidden_sizes=(4,))
    with pytest.raises(ValueError, match="dropout"):
        spec.MinGRUStackLMConfig(vocab_size=3, input_size=3, hidden_sizes=(4,), dropout=1.5)


def test_bad_tokens_are_refused_by_name():
    from linrec.backends.numpy.mingru_stack_lm import mingru_stack_lm

    config = spec.MinGRUStackLMConfig(vocab_size=4, input_size=2, hidden_sizes=(3,))
    params = spec.init_params(config)
    with pytest.raises(TypeError, match="tokens must hold integer"):
        mingru_stack_lm(params, np.zeros((1, 2), np.float32), config=config)
    with pytest.raises(ValueError, match="tokens must have shape"):
        mingru_stack_lm(params, np.zeros((1, 2, 1), np.int64), config=config)
    with pytest.raises(ValueError, match=r"id -1, outside \[0, vocab_size=4\)"):
        mingru_stack_lm(params, np.array([[0, -1]]), config=config)


def test_lm_config_has_every_stack_field():
    """The LM config carries every stack option under the stack's name (a stack field added later must be
    added here too, or ``from_stack`` fails for models that use it)."""
    from dataclasses import fields

    from linrec.spec.mingru_stack import MinGRUStackConfig
    from linrec.spec.mingru_stack_lm import MinGRUStackLMConfig

    stack = MinGRUStackConfig(input_size=3, hidden_sizes=(4, 4), residual=True, residual_align="first",
                              residual_align_bias=True)
    lm = MinGRUStackLMConfig.from_stack(7, stack)
    assert {f.name for f in fields(MinGRUStackConfig)} <= {f.name for f in fields(MinGRUStackLMConfig)}
    assert lm.stack == stack
