"""flax-gated-linear-rnn and flax_gate_loop: ``GatedLinearRNN`` / ``GateLoop`` layers and their LMs (one tree)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table

GLRNN_LAYER_TABLE = (
    ORow("proj.kernel", "proj.kernel"),
    ORow("proj.bias", "proj.bias"),
    ORow("out_proj.kernel", "out_proj.kernel"),
    ORow("out_proj.bias", "out_proj.bias"),
    ORow("model.recurrent_proj.kernel", "recurrent_proj.kernel"),
)

_TM, _CM = "time_mixing_layers_{l}", "channel_mixing_layers_{l}"
GLRNN_LM_TABLE = (
    ORow("input_function.embedding", "embed.embedding"),
    ORow("input_function.kernel", "input_proj.kernel"),
    ORow("input_function.bias", "input_proj.bias"),
    ORow("wpe.embedding", "pos_embed.embedding"),
    ORow(f"{_TM}.layer_norm_function.scale", "layers.{l}.time_mixing.norm.scale"),
    ORow(f"{_TM}.layer_norm_function.bias", "layers.{l}.time_mixing.norm.bias"),
    *(ORow(f"{_TM}.model.{r.original}", "layers.{l}.time_mixing.rnn." + r.canonical) for r in GLRNN_LAYER_TABLE),
    ORow(f"{_CM}.layer_norm.scale", "layers.{l}.channel_mixing.norm.scale"),
    ORow(f"{_CM}.layer_norm.bias", "layers.{l}.channel_mixing.norm.bias"),
    ORow(f"{_CM}.dense_layers_0.kernel", "layers.{l}.channel_mixing.fc1.kernel"),
    ORow(f"{_CM}.dense_layers_0.bias", "layers.{l}.channel_mixing.fc1.bias"),
    ORow(f"{_CM}.dense_layers_1.kernel", "layers.{l}.channel_mixing.fc2.kernel"),
    ORow(f"{_CM}.dense_layers_1.bias", "layers.{l}.channel_mixing.fc2.bias"),
    ORow("head.kernel", "head.kernel"),
    ORow("head.bias", "head.bias"),
)


def _import_glrnn(tensors: Mapping[str, np.ndarray], model: str | None, overrides: Mapping[str, Any],
                  source: str, layer_model: str) -> Any:
    is_lm = any(k.startswith(("time_mixing_layers_", "channel_mixing_layers_")) for k in tensors)
    notes: list[str] = []
    if not is_lm:
        target = model or ("gateloop" if overrides.get("reversed") else layer_model)
        params, unknown = apply_table(GLRNN_LAYER_TABLE, tensors)
        untold = ["input_activation", "hidden_activation", "gate_activation"]
        return _checkpoint(target, params, {}, overrides, source, notes, unknown,
                           untold + (["reversed"] if target == "gateloop" else []))
    target = model or ("gateloop_lm" if layer_model == "gateloop" else "gated_linear_rnn_lm")
    params, unknown = apply_table(GLRNN_LM_TABLE, tensors)
    fields: dict[str, Any] = {"dropout_placement": "sum", "gelu_approximate": True}
    if "pos_embed.embedding" in params:
        fields["positional_encoding_mode"] = "learned"
    elif overrides.get("positional_encoding_mode") is None:
        notes.append("the file cannot tell 'sinusoidal' from 'none' positional encoding (no parameters); "
                     "took 'none' — pass --config '{\"positional_encoding_mode\": \"sinusoidal\", "
                     "\"max_seq_length\": N}' if the original used it")
    if "eps" not in overrides:
        notes.append("the original's LayerNorm eps is a required argument not stored in the file: pass the value "
                     "it was built with via --config")
    notes.append("dropout_placement='sum' (the original drops out x + branch); only training differs")
    return _checkpoint(target, params, fields, overrides, source, notes, unknown,
                       ["eps", "input_activation", "hidden_activation", "gate_activation", "positional_encoding_mode"])
