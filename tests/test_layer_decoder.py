"""``decoder()`` of the layers (JAX and PyTorch twins): :meth:`step` with the parameters read once, its dense products
on the native kernel up to ``MAX_ROWS`` rows (the float32 tolerance of ``step`` over a token loop) and on the
framework's product above (exactly ``step``)."""

from __future__ import annotations

from importlib import import_module

import numpy as np
import pytest

from linrec.backends import native
from linrec.backends.native.dense import MAX_ROWS
from linrec.spec.tolerances import max_violation, tolerance_for

D = 24


def _layer(framework: str, name: str):
    pytest.importorskip(framework)
    if name == "gated_linear_rnn":
        from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig as Config

        cfg, cls = Config(d_model=D, d_h=D), "GatedLinearRNN"
    elif name in ("mingru", "minlstm"):
        mod = import_module(f"linrec.spec.{name}")
        config = mod.MinGRUConfig if name == "mingru" else mod.MinLSTMConfig
        cfg, cls = config(d_model=D, out_proj=True), "MinGRU" if name == "mingru" else "MinLSTM"
    else:
        from linrec.spec.gateloop_mh import GateLoopMHConfig

        cfg, cls = GateLoopMHConfig(d_model=D, num_heads=3, d_key=4, d_value=8), "GateLoopMH"
    params = import_module(f"linrec.spec.{name}").init_params(cfg, seed=1)
    layer = getattr(import_module(f"linrec.backends.{framework}.{name}"), cls).from_canonical(cfg, params)
    return layer, import_module(f"linrec.backends.{framework}.arrays")


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", ["gated_linear_rnn", "mingru", "minlstm", "gateloop_mh"])
@pytest.mark.parametrize("rows", [1, MAX_ROWS + 1])
def test_layer_decoder_is_the_step(framework, name, rows, monkeypatch):
    layer, arrays = _layer(framework, name)
    nd = import_module(f"linrec.backends.{framework}.native_dense")
    calls = []
    real = nd.native_dense
    monkeypatch.setattr(nd, "native_dense", lambda *args: calls.append(1) or real(*args))
    rng = np.random.default_rng(0)
    # the default steps in one native call where it can: tests/test_native_decode.py
    decode = layer.decoder(fused=False)
    s1 = s2 = layer.initial_state(rows)
    tol = tolerance_for("float32")
    for _ in range(4):
        x_t = arrays.asarray(rng.standard_normal((rows, D), dtype=np.float32))
        y1, s1 = layer.step(x_t, s1)
        y2, s2 = decode(x_t, s2)
        if rows <= MAX_ROWS and native.available():
            for got, want in ((y2, y1), (s2.h, s1.h)):
                err, allowed = max_violation(arrays.to_numpy(got), arrays.to_numpy(want), tol)
                assert err <= allowed, (err, allowed)
        else:
            np.testing.assert_array_equal(arrays.to_numpy(y2), arrays.to_numpy(y1))
            np.testing.assert_array_equal(arrays.to_numpy(s2.h), arrays.to_numpy(s1.h))
    # the products took the native kernel exactly when they should (JAX: counted while tracing)
    assert bool(calls) == (rows <= MAX_ROWS and native.available())
    if framework == "torch":
        assert not y2.requires_grad  # no autograd in the token loop


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", ["gated_linear_rnn", "mingru"])
def test_default_decoder_above_max_rows_is_the_step_and_checks_its_arguments(framework, name):
    """Above ``MAX_ROWS`` rows ``decoder()`` skips its own per-token checks and hands the input to the framework
    step: the step's values exactly, and bad arguments still refused by the step's checks, naming them."""
    layer, arrays = _layer(framework, name)
    decode, rows = layer.decoder(), 2 * MAX_ROWS
    rng = np.random.default_rng(2)
    s1 = s2 = layer.initial_state(rows)
    for _ in range(3):
        x_t = arrays.asarray(rng.standard_normal((rows, D), dtype=np.float32))
        y1, s1 = layer.step(x_t, s1)
        y2, s2 = decode(x_t, s2)
        np.testing.assert_array_equal(arrays.to_numpy(y2), arrays.to_numpy(y1))
        np.testing.assert_array_equal(arrays.to_numpy(s2.h), arrays.to_numpy(s1.h))
    with pytest.raises(ValueError, match="x_t"):
        decode(arrays.asarray(np.zeros((rows, D + 1), np.float32)), s2)
    with pytest.raises(ValueError, match="state"):
        decode(arrays.asarray(np.zeros((rows, D), np.float32)), layer.initial_state(rows + 1))


@pytest.mark.slow  # Inductor compiles a C++ graph per layer: ~5-10 s each
@pytest.mark.parametrize("name", ["gated_linear_rnn", "mingru", "minlstm", "gateloop_mh"])
def test_torch_compiled_layer_decoder(name):
    """``decoder(compile=True)``: one ``torch.compile(fullgraph=True)`` graph per step (the native dense product a
    custom op in it), the step's values within the float32 tolerance; a new batch size compiles anew."""
    layer, arrays = _layer("torch", name)
    decode = layer.decoder(compile=True, fused=False)
    rng = np.random.default_rng(1)
    for rows in (2, MAX_ROWS + 1):
        s1 = s2 = layer.initial_state(rows)
        for _ in range(3):
            x_t = arrays.asarray(rng.standard_normal((rows, D), dtype=np.float32))
            y1, s1 = layer.step(x_t, s1)
            y2, s2 = decode(x_t, s2)
            err, allowed = max_violation(arrays.to_numpy(y2), arrays.to_numpy(y1), tolerance_for("float32"))
            assert err <= allowed, (rows, err, allowed)
