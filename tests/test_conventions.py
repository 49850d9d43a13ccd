"""The Conventions of ``spec/recurrence.md`` §0, checked by walking the public API of every backend.

Every sequence function takes ``initial_state=`` and returns ``(y, State)``; every step function takes
``(x_t, state)``; every ``*_initial_state`` returns a ``State``; ``mode`` and ``method`` default to ``"auto"``;
modules take ``batch_first`` and expose ``initial_state(B)``/``step``; the JAX and torch backends are twins.
"""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest

import linrec
from linrec.spec import (
    gated_linear_rnn,
    gated_linear_rnn_lm,
    gateloop_mh,
    gateloop_mh_lm,
    mingru,
    mingru_lm,
    mingru_stack,
    minlstm,
)
from linrec.spec.state import State

#: model name -> a small config of it
CONFIGS = {
    "mingru": mingru.MinGRUConfig(d_model=4),
    "minlstm": minlstm.MinLSTMConfig(d_model=4),
    "mingru_stack": mingru_stack.MinGRUStackConfig(input_size=4, hidden_sizes=(3, 5)),
    "mingru_lm": mingru_lm.MinGRULMConfig(vocab_size=7, d_model=4, n_layers=2),
    "gated_linear_rnn": gated_linear_rnn.GatedLinearRNNConfig(d_model=4, d_h=3),
    "gateloop_mh": gateloop_mh.GateLoopMHConfig(d_model=4),
    "gateloop_mh_lm": gateloop_mh_lm.GateLoopMHLMConfig(vocab_size=7, d_model=4, n_layers=2, num_heads=2),
    "gated_linear_rnn_lm": gated_linear_rnn_lm.GatedLinearRNNLMConfig(
        n_layer=2, d_model=4, d_channel_mixing=8, d_h=3, input_vocab_size=7, output_vocab_size=7,
        max_seq_length=16, positional_encoding_mode="learned"),
}
MULTI_LAYER = {"mingru_stack": 2, "mingru_lm": 2, "gated_linear_rnn_lm": 2, "gateloop_mh_lm": 2}
#: the one model with a positional encoding (``State.position``)
POSITIONED = {"gated_linear_rnn_lm"}
#: step functions' second argument: the step input, named as in the model's sequence function
STEP_INPUTS = {"x_t", "token", "input_t"}


def _backends():
    return [b for b in linrec.BUNDLED_BACKENDS if b == "numpy" or importlib.util.find_spec(b) is not None]


@pytest.fixture(scope="module", params=_backends())
def backend(request):
    return linrec.get_backend(request.param)


def test_every_backend_exports_the_one_state_type(backend):
    assert backend.State is State
    assert State._fields == ("h", "position") and State(1).position is None


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_sequence_functions_take_initial_state_and_default_to_auto(backend, model):
    params = inspect.signature(getattr(backend, model)).parameters
    assert "initial_state" in params and params["initial_state"].default is None
    assert params["initial_state"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "state" not in params
    assert "lengths" in params, "ragged batches are right-padded with lengths (§0)"
    for name in ("mode", "method"):
        if name in params:
            assert params[name].default == "auto", (model, name)


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_step_functions_take_the_step_input_then_the_state(backend, model):
    names = list(inspect.signature(getattr(backend, f"{model}_step")).parameters)
    assert names[0] == "params" and names[1] in STEP_INPUTS and names[2] == "state", names
    assert "config" in names


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_initial_state_is_a_state_with_named_fields(backend, model):
    config = CONFIGS[model]
    state = getattr(backend, f"{model}_initial_state")(config, 2, "float32")
    assert isinstance(state, State)
    layers = MULTI_LAYER.get(model)
    hs = state.h if layers else (state.h,)
    if layers:
        assert isinstance(state.h, tuple) and len(state.h) == layers
    assert all(np.shape(h)[0] == 2 for h in hs), "batch first"
    if model in POSITIONED:
        assert tuple(np.shape(state.position)) == (2,)
    else:
        assert state.position is None


def test_layer_and_step_round_trip_carry_a_state(backend):
    """The state a sequence call returns is what the step takes, and the step returns the same type."""
    config = CONFIGS["mingru"]
    params = {k: backend.asarray(v) for k, v in mingru.init_params(config, seed=0).items()}
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32))
    y, final = backend.mingru(params, x, config=config)
    assert isinstance(final, State) and tuple(np.shape(y))[:2] == (2, 5)
    y_t, state = backend.mingru_step(params, x[:, 0], final, config=config)
    assert isinstance(state, State) and tuple(np.shape(y_t)) == (2, 4)


def test_a_two_axis_sequence_is_refused(backend):
    config = CONFIGS["mingru"]
    with pytest.raises(ValueError, match=r"\bx\b"):
        params = {k: backend.asarray(v) for k, v in mingru.init_params(config, seed=0).items()}
        backend.mingru(params, backend.asarray(np.zeros((5, 4), np.float32)),
                       config=config)


MODULES = ("MinGRU", "MinLSTM", "MinGRUStack", "GatedLinearRNN", "GateLoop", "GateLoopMH")
LM_MODULES = ("MinGRULM", "GatedLinearRNNLM", "GateLoopLM", "GateLoopMHLM")


@pytest.mark.parametrize("framework", [b for b in _backends() if b != "numpy"])
def test_modules_follow_the_conventions(framework):
    be = linrec.get_backend(framework)
    for name in MODULES + LM_MODULES:
        cls = getattr(be, name)
        call = cls.forward if framework == "torch" else cls.__call__
        params = inspect.signature(call).parameters
        assert "initial_state" in params and "state" not in params, name
        assert params["mode"].default == "auto" and params["method"].default == "auto", name
        step = list(inspect.signature(cls.step).parameters)
        assert step[1] in STEP_INPUTS and step[2] == "state", (name, step)
        assert list(inspect.signature(cls.initial_state).parameters)[1] == "batch_size", name
        if name in MODULES:
            assert inspect.signature(cls.__init__).parameters["batch_first"].default is True, name
            assert inspect.signature(cls.from_canonical).parameters["batch_first"].default is True, name
    lm_prefill = {n: list(inspect.signature(getattr(be, n).prefill).parameters)[1:4] for n in LM_MODULES}
    assert all(v == ["tokens", "initial_state", "lengths"] for v in lm_prefill.values()), lm_prefill


def test_jax_and_torch_are_twins():
    if any(importlib.util.find_spec(f) is None for f in ("jax", "torch")):
        pytest.skip("needs both frameworks")
    jx, tt = linrec.get_backend("jax"), linrec.get_backend("torch")
    # the accelerator kernels are written in one framework's kernel language (Triton: torch, Pallas: jax); both
    # backends reach them through the same `method=` name of the twin functions
    kernels = ("triton_", "pallas_")
    names = [{n for n in dir(b) if not n.startswith(("_", *kernels))} for b in (jx, tt)]
    public = names[0] ^ names[1]
    # framework adapters that exist on one side only, by design
    # ("distributed": a submodule, an attribute of the package only once imported, on either side;
    # "output_pool": the torch native ops' buffer reuse, where XLA owns the JAX outputs' memory; "compiled_step":
    # the torch.compile settings of the torch decoders, whose JAX twins are plain jax.jit)
    assert public <= {"autodiff", "precision_scope", "train", "verify", "vjp", "cu_seqlens_to_resets",
                      "distributed", "output_pool", "compiled_step"}, public
    for model in CONFIGS:
        for fn in (model, f"{model}_step", f"{model}_initial_state"):
            j = [p for p in inspect.signature(getattr(jx, fn)).parameters if p not in ("remat", "dropout_rng",
                                                                                         "training", "device")]
            t = [p for p in inspect.signature(getattr(tt, fn)).parameters if p not in ("remat", "dropout_rng",
                                                                                         "training", "device")]
            assert j == t, (fn, j, t)


def test_distributed_modules_are_twins():
    """The functions the JAX and torch ``distributed`` modules share have the same argument names (the torch side
    adds its own ``group``/``SequenceParallel`` machinery; the JAX side takes a ``mesh``)."""
    if any(importlib.util.find_spec(f) is None for f in ("jax", "torch")):
        pytest.skip("needs both frameworks")
    import linrec.backends.jax.distributed as jd
    import linrec.backends.numpy.distributed as nd
    import linrec.backends.torch.distributed as td

    assert {"exchange_bytes", "linear_scan_sharded", "sequence_parallel"} <= set(jd.__all__) & set(td.__all__)
    args = [list(inspect.signature(m.exchange_bytes).parameters) for m in (nd, jd, td)]
    assert args[0] == args[1] == args[2] == ["a", "b", "devices", "resets", "backward"], args
    scan_args = [set(inspect.signature(m.linear_scan_sharded).parameters) for m in (jd, td)]
    common = {"a", "b", "initial_state", "resets", "reverse", "method", "chunk_size"}
    assert common <= scan_args[0] and common <= scan_args[1], scan_args
