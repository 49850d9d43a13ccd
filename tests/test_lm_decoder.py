"""``decoder()`` of the language models (JAX and PyTorch twins): the token-loop form of ``decode_step``.

It must give what ``decode_step`` gives (exactly, or within the float32 tolerance where its dense products run on
the native kernel), keep refusing bad tokens, and (JAX) keep the parameters it was built with.
"""

from __future__ import annotations

from importlib import import_module

import numpy as np
import pytest

from linrec.backends import native
from linrec.backends.native.dense import MAX_ROWS
from linrec.spec import gated_linear_rnn_lm as glr_spec
from linrec.spec import mingru_lm as mingru_spec
from linrec.spec.tolerances import max_violation, tolerance_for

MODELS = {
    "gated_linear_rnn_lm": (glr_spec, "GatedLinearRNNLM"),
    "mingru_lm": (mingru_spec, "MinGRULM"),
}


def _config(model: str):
    if model == "gated_linear_rnn_lm":
        return glr_spec.GatedLinearRNNLMConfig(n_layer=2, d_model=8, d_channel_mixing=16, input_vocab_size=11,
                                               output_vocab_size=11, max_seq_length=32, d_h=8)
    return mingru_spec.MinGRULMConfig(11, 8, 2)


def _model(framework: str, model: str):
    pytest.importorskip(framework)
    spec, name = MODELS[model]
    cfg = _config(model)
    module = import_module(f"linrec.backends.{framework}.{model}")
    return getattr(module, name).from_canonical(cfg, spec.init_params(cfg, seed=3)), import_module(
        f"linrec.backends.{framework}.arrays")


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("rows", [2, MAX_ROWS + 1])
def test_decoder_equals_decode_step(framework, model, rows, monkeypatch):
    """Up to ``MAX_ROWS`` rows the decoder's dense products run on the native kernel (its own summation order:
    the float32 tolerance over a token loop); above, on the framework's product as ``decode_step``: exactly. (The
    decoders' default, one native call per step, is ``tests/test_native_decode.py``'s; here ``fused=False``.)"""
    lm, arrays = _model(framework, model)
    nd = import_module(f"linrec.backends.{framework}.native_dense")
    calls = []
    real = nd.native_dense
    monkeypatch.setattr(nd, "native_dense", lambda *args: calls.append(1) or real(*args))
    rng = np.random.default_rng(rows)
    _, state = lm.prefill(arrays.asarray(rng.integers(0, 11, (rows, 3), dtype=np.int32)))
    decode = lm.decoder(fused=False)
    s1 = s2 = state
    native_rows = rows <= MAX_ROWS and native.available()
    for _ in range(3):
        token = arrays.asarray(rng.integers(0, 11, rows, dtype=np.int32))
        l1, s1 = lm.decode_step(token, s1)
        l2, s2 = decode(token, s2)
        if native_rows:
            err, allowed = max_violation(arrays.to_numpy(l2), arrays.to_numpy(l1), tolerance_for("float32"))
            assert err <= allowed, (err, allowed)
        else:
            np.testing.assert_array_equal(arrays.to_numpy(l1), arrays.to_numpy(l2))
    assert bool(calls) == native_rows  # the products took the native kernel exactly when they should
    with pytest.raises(ValueError, match="token"):  # outside the vocabulary: an error, not a clamp
        decode(arrays.asarray(np.array([11] + [0] * (rows - 1), np.int32)), s2)


@pytest.mark.slow  # Inductor compiles a C++ graph per model: ~20 s each
@pytest.mark.parametrize("model", list(MODELS))
def test_torch_compiled_decoder_matches_decode_step(model):
    """``decoder(compile=True)``: one ``torch.compile(fullgraph=True)`` graph per step, the eager step's values
    within the float32 tolerance over a token loop (fusion may reorder float operations), checks still eager."""
    lm, arrays = _model("torch", model)
    tokens = np.array([[1, 4, 2], [3, 3, 9]], np.int32)
    _, state = lm.prefill(arrays.asarray(tokens))
    decode = lm.decoder(compile=True, fused=False)
    s1 = s2 = state
    tol = tolerance_for("float32")
    for t in (5, 7, 0, 10):
        token = arrays.asarray(np.array([t, 10 - t], np.int32))
        l1, s1 = lm.decode_step(token, s1)
        l2, s2 = decode(token, s2)
        err, allowed = max_violation(arrays.to_numpy(l2), arrays.to_numpy(l1), tol)
        assert err <= allowed, (t, err, allowed)
    for h1, h2 in zip(s1.h, s2.h):  # a State: one array per layer
        err, allowed = max_violation(arrays.to_numpy(h2), arrays.to_numpy(h1), tol)
        assert err <= allowed
    with pytest.raises(ValueError, match="token"):
        decode(arrays.asarray(np.array([11, 0], np.int32)), s2)
    # a new batch size compiles anew: the guards on the step's arguments are kept (only those on the parameters
    # the decoder captured are dropped, linrec.backends.torch.compiled_step)
    _, one = lm.prefill(arrays.asarray(tokens[:1]))
    token = arrays.asarray(np.array([2], np.int32))
    err, allowed = max_violation(arrays.to_numpy(decode(token, one)[0]), arrays.to_numpy(lm.decode_step(token, one)[0]),
                                 tol)
    assert err <= allowed


def test_torch_compiled_step_drops_only_the_guards_on_captured_parameters(monkeypatch):
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from linrec.backends.torch import compiled_step

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.update(kw) or fn)
    compiled_step.compile_step(lambda x: x, ("p", "layers"), cpp_wrapper=True)
    assert seen["fullgraph"] is True and seen["dynamic"] is False and seen["options"]["cpp_wrapper"] is True
    names = ["p['embed.embedding']", "layers[0]['proj.kernel']", "token", "h[0]", "position", "G['torch'].mm",
             "pe"]
    kept = seen["options"]["guard_filter_fn"]([SimpleNamespace(name=n) for n in names])
    assert kept == [False, False, True, True, True, True, True]


@pytest.mark.parametrize("model", list(MODELS))
def test_jax_decoder_without_compile_is_the_same_step(model):
    lm, arrays = _model("jax", model)
    _, state = lm.prefill(arrays.asarray(np.array([[1, 4, 2]], np.int32)))
    token = arrays.asarray(np.array([5], np.int32))
    compiled, _ = lm.decoder()(token, state)
    eager, _ = lm.decoder(compile=False)(token, state)
    err, allowed = max_violation(arrays.to_numpy(eager), arrays.to_numpy(compiled), tolerance_for("float32"))
    assert err <= allowed


def test_jax_decoder_keeps_its_parameters():
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from flax import nnx

    lm, arrays = _model("jax", "mingru_lm")
    _, state = lm.prefill(arrays.asarray(np.array([[1, 2]], np.int32)))
    decode = lm.decoder()
    before, _ = decode(jnp.array([3], jnp.int32), state)
    params = nnx.state(lm, nnx.Param)
    nnx.update(lm, jax_tree_zero(params))
    after, _ = decode(jnp.array([3], jnp.int32), state)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    fresh, _ = lm.decoder()(jnp.array([3], jnp.int32), state)
    assert not np.array_equal(np.asarray(fresh), np.asarray(before))


def jax_tree_zero(tree):
    import jax

    return jax.tree.map(lambda x: x * 0, tree)
