"""Conformance cases for weight conversion (``spec/layout.md``, ``linrec.tools.convert``).

For every layer and model type and each of its option sets (:data:`CONFIGS`), in float32 and bfloat16:

- ``conversion/<model>/roundtrip[<options>,<dtype>]``: canonical parameters -> the backend's module (through the
  layout table) -> canonical parameters again is **bit-exact**, and so is the trip through a file in the
  backend's own format (``.msgpack`` NNX state for JAX, ``.pt`` state_dict for PyTorch) and linrec
  safetensors.
- ``conversion/<model>/outputs[<options>,<dtype>]``: the module loaded from the converted file computes the same
  outputs as the float64 NumPy reference on the same (rounded) parameters, within
  ``tolerance_for(dtype, grad=True)`` (outputs pass through several matmuls, as the layer pages state).

The NumPy backend has no modules: it gets ``conversion/<model>/file-roundtrip[...]`` (canonical -> linrec
safetensors -> canonical, bit-exact). Other backends get no conversion cases (conversion is about linrec's own
modules and files).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from linrec.conformance.case import Case, CaseFailure, Outcome
from linrec.conformance.compare import compare
from linrec.spec.tolerances import tolerance_for
from linrec.tools.layout import get_layout

__all__ = ["CONFIGS", "DTYPES", "cases", "example_input", "random_params", "reference_output", "run_module"]

DTYPES = ("float32", "bfloat16")
BATCH, LENGTH = 2, 5


def _cfg(model: str, **kwargs: Any) -> Callable[[], Any]:
    return lambda: get_layout(model).config_class(**kwargs)


#: model type -> option-set name -> config factory. Every option that changes the parameter set is covered.
CONFIGS: dict[str, dict[str, Callable[[], Any]]] = {
    "gated_linear_rnn": {
        "tied": _cfg("gated_linear_rnn", d_model=4, d_h=3, d_in=5),
        "untied-recurrent": _cfg("gated_linear_rnn", d_model=3, d_h=2, use_tied_gates=False,
                                 use_true_recurrence=True),
    },
    "gateloop": {
        "reversed": _cfg("gateloop", d_model=3, d_h=4, reversed=True),
    },
    "mingru": {
        "identity-bias": _cfg("mingru", d_model=3, d_inner=4),
        "g-expand-out": _cfg("mingru", d_model=3, expansion=2.0, out_proj=True, bias=False, candidate="g"),
    },
    "minlstm": {
        "identity-bias": _cfg("minlstm", d_model=3, d_inner=4),
        "g-expand-out": _cfg("minlstm", d_model=3, expansion=2.0, out_proj=True, bias=False, candidate="g"),
    },
    "gateloop_mh": {
        "real-key": _cfg("gateloop_mh", d_model=4, num_heads=2),
        "complex-head-bias": _cfg("gateloop_mh", d_model=4, num_heads=2, gate="complex", gate_granularity="head",
                                  qkv_bias=True),
    },
    "gated_linear_rnn_lm": {
        "tokens-learned-recurrent": _cfg("gated_linear_rnn_lm", n_layer=2, d_model=4, d_channel_mixing=6, d_h=3,
                                         input_vocab_size=7, output_vocab_size=7, positional_encoding_mode="learned",
                                         max_seq_length=8, use_true_recurrence=True),
        "features-untied-nohead": _cfg("gated_linear_rnn_lm", n_layer=1, d_model=4, d_channel_mixing=5, d_h=2,
                                       use_word_embedding=False, d_input=3, use_head=False, use_tied_gates=False),
    },
    "gateloop_lm": {
        "tokens": _cfg("gateloop_lm", n_layer=1, d_model=4, d_channel_mixing=6, d_h=3, input_vocab_size=7,
                       output_vocab_size=7),
    },
    "mingru_lm": {
        "glu": _cfg("mingru_lm", vocab_size=7, d_model=4, n_layers=2),
        "prenorm": _cfg("mingru_lm", vocab_size=7, d_model=4, n_layers=2, block="prenorm", expansion=1.5,
                        candidate="g", mingru_bias=False, head_bias=False),
    },
    "mingru_stack": {
        "one-layer": _cfg("mingru_stack", input_size=3, hidden_sizes=(4,)),
        "norm-residual": _cfg("mingru_stack", input_size=3, hidden_sizes=(4, 4, 5), residual=True, norm=True,
                              bias=False),
    },
    "mingru_stack_lm": {
        "norm-residual": _cfg("mingru_stack_lm", vocab_size=6, input_size=3, hidden_sizes=(4, 5), residual=True,
                              norm=True),
    },
    "gateloop_mh_lm": {
        "prenorm": _cfg("gateloop_mh_lm", vocab_size=6, d_model=4, n_layers=2, num_heads=2, ff_mult=2),
        "postnorm-subln": _cfg("gateloop_mh_lm", vocab_size=6, d_model=4, n_layers=1, d_inner=6, num_heads=3,
                               block="postnorm", sub_norm="layernorm", output_gate="none"),
    },
}


# --- inputs, parameters, reference -------------------------------------------------------------------


def _np_dtype(dtype: str) -> np.dtype:
    from linrec.backends.numpy.arrays import np_dtype

    return np_dtype(dtype)


def random_params(model: str, config: Any, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Every canonical parameter drawn at random (no zero or constant entries hiding a wrong mapping)."""
    rng = np.random.default_rng(seed)
    shapes = get_layout(model).spec_module.param_shapes(config)
    return {name: (0.5 * rng.standard_normal(shape)).astype(_np_dtype(dtype)) for name, shape in shapes.items()}


def _takes_tokens(model: str, config: Any) -> bool:
    if model in ("mingru_lm", "mingru_stack_lm", "gateloop_mh_lm"):
        return True
    if model in ("gated_linear_rnn_lm", "gateloop_lm"):
        return config.use_word_embedding
    return False


def example_input(model: str, config: Any, dtype: str, seed: int = 1) -> np.ndarray:
    """A small input: token ids for language models, features ``(B, T, D_in)`` (in ``dtype``) otherwise."""
    rng = np.random.default_rng(seed)
    if _takes_tokens(model, config):
        vocab = config.input_vocab_size if model in ("gated_linear_rnn_lm", "gateloop_lm") else config.vocab_size
        return rng.integers(0, vocab, (BATCH, LENGTH)).astype(np.int32)
    width = {"gated_linear_rnn": "d_in", "gateloop": "d_in", "mingru_stack": "input_size",
             "gated_linear_rnn_lm": "d_input", "gateloop_lm": "d_input"}.get(model, "d_model")
    return rng.standard_normal((BATCH, LENGTH, getattr(config, width))).astype(_np_dtype(dtype))


def reference_output(model: str, config: Any, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The float64 reference's first output (``y`` or logits) on the same rounded parameters and input."""
    spec = get_layout(model).spec_module
    p64 = {k: np.asarray(v).astype(np.float64) for k, v in params.items()}
    x64 = x if x.dtype.kind == "i" else x.astype(np.float64)
    return np.asarray(spec.forward(p64, x64, config)[0])


def run_module(backend_name: str, module: Any, x: np.ndarray) -> np.ndarray:
    """The module's first output on ``x`` as a float64 NumPy array."""
    if backend_name == "torch":
        import torch

        from linrec.backends.torch.arrays import asarray, to_numpy

        with torch.no_grad():
            out = module(asarray(x))[0]
        return to_numpy(out).astype(np.float64)
    from linrec.backends.jax.arrays import asarray, to_numpy

    return to_numpy(module(asarray(x))[0]).astype(np.float64)


# --- the cases ----------------------------------------------------------------------------------------


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    if set(a) != set(b):
        raise CaseFailure(f"{what}: names differ: only before {sorted(set(a) - set(b))}, only after "
                          f"{sorted(set(b) - set(a))}")
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            raise CaseFailure(f"{what}: {name} changed ({x.dtype}{x.shape} -> {y.dtype}{y.shape}, or its bits)")


def _roundtrip(backend_name: str, model: str, make: Callable, dtype: str) -> Callable[[ModuleType], Outcome]:
    def run(backend: ModuleType) -> Outcome:
        from linrec.tools import convert

        config = make()
        params = random_params(model, config, dtype)
        ckpt = convert.Checkpoint(model, config, params)
        module = convert.to_module(ckpt, backend_name)
        _same(params, convert.module_to_checkpoint(module).params, "canonical -> module -> canonical")
        suffix = ".msgpack" if backend_name == "jax" else ".pt"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"m{suffix}"
            convert.save(module, path)
            _same(params, convert.read(path, model=model, config=config).params, f"module -> {suffix} -> canonical")
            convert.convert(path, Path(tmp) / "m.safetensors", model=model, config=config, progress=False)
            again = convert.load(Path(tmp) / "m.safetensors", backend_name)
            _same(params, convert.module_to_checkpoint(again).params, f"{suffix} -> safetensors -> module")
        return Outcome(True, 0.0, 0.0, f"{len(params)} tensors bit-exact")

    return run


def _outputs(backend_name: str, model: str, make: Callable, dtype: str) -> Callable[[ModuleType], Outcome]:
    def run(backend: ModuleType) -> Outcome:
        from linrec.tools import convert

        config = make()
        params = random_params(model, config, dtype)
        x = example_input(model, config, dtype)
        with tempfile.TemporaryDirectory() as tmp:
            convert.save((config, params), Path(tmp) / "m.safetensors", model_type=model)
            other = Path(tmp) / ("m.pt" if backend_name == "jax" else "m.msgpack")
            convert.convert(Path(tmp) / "m.safetensors", other, progress=False)  # via the other framework's format
            module = convert.load(other, backend_name, model=model, config=config)
        result = run_module(backend_name, module, x)
        reference = reference_output(model, config, params, x)
        return compare(f"{model} output", result, reference, dtype, tolerance=tolerance_for(dtype, grad=True))

    return run


def _file_roundtrip(model: str, make: Callable, dtype: str) -> Callable[[ModuleType], Outcome]:
    def run(backend: ModuleType) -> Outcome:
        from linrec.tools import convert

        config = make()
        params = random_params(model, config, dtype)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.safetensors"
            convert.save((config, params), path, model_type=model)
            back_config, back = convert.load(path, "numpy")
        if back_config != config:
            raise CaseFailure(f"config changed: {config} -> {back_config}")
        _same(params, back, "canonical -> safetensors -> canonical")
        return Outcome(True, 0.0, 0.0, f"{len(params)} tensors bit-exact")

    return run


def cases(backend: ModuleType) -> list[Case]:
    name = getattr(backend, "NAME", "")
    out: list[Case] = []
    for model, options in CONFIGS.items():
        for option, make in options.items():
            for dtype in DTYPES:
                tag = f"[{option},{dtype}]"
                if name == "numpy":
                    out.append(Case(f"conversion/{model}/file-roundtrip{tag}", "bit-exact",
                                    f"{model} parameters survive a linrec safetensors file bit for bit",
                                    _file_roundtrip(model, make, dtype), requires=("to_numpy",)))
                elif name in ("jax", "torch"):
                    out.append(Case(f"conversion/{model}/roundtrip{tag}", "bit-exact",
                                    f"canonical -> {name} module -> files -> canonical is bit-exact for {model}",
                                    _roundtrip(name, model, make, dtype), requires=("to_numpy",)))
                    out.append(Case(f"conversion/{model}/outputs{tag}", "equals-reference",
                                    f"a {model} converted through files computes the reference's outputs",
                                    _outputs(name, model, make, dtype), requires=("to_numpy",)))
    return out
