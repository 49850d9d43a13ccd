"""flax-gated-linear-rnn and flax_gate_loop: ``GatedLinearRNN`` / ``GateLoop`` layers and their LMs (one tree)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table, invert_table

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
    overrides = original_overrides(overrides)
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
                     "\"max_seq_length\": N, \"compat_step_position_zero\": true}' if the original used it "
                     "(compat_step_position_zero reproduces its step-by-step decoding, which re-adds positions "
                     "0..T-1 at every call)")
    if "eps" not in overrides:
        notes.append("the original's LayerNorm eps is a required argument not stored in the file: pass the value "
                     "it was built with via --config")
    notes.append("dropout_placement='sum' (the original drops out x + branch); only training differs")
    if "compat_step_position_zero" not in overrides and (
            fields.get("positional_encoding_mode", overrides.get("positional_encoding_mode", "none")) != "none"):
        notes.append("the original re-adds positions 0..T-1 at every call, so its step-by-step decoding with "
                     "carried state differs from one full pass; linrec continues the positions "
                     "(state.position). To reproduce the original's decoding pass --config "
                     "'{\"compat_step_position_zero\": true}' (a full pass from the zero state is the same "
                     "either way)")
    return _checkpoint(target, params, fields, overrides, source, notes, unknown,
                       ["eps", "input_activation", "hidden_activation", "gate_activation", "positional_encoding_mode"])


# --- the original's own constructor arguments (``--config``) --------------------------------------------------

# The originals' constructor arguments (``GatedLinearRNN``: d_model, d_h, *_activation, use_true_recurrence,
# use_tied_gates; ``GatedLinearRNNLM``/``SequenceModel``: n_layer, d_model, d_channel_mixing, eps, the three
# dropout rates, input/output_vocab_size, max_seq_length, use_word_embedding, positional_encoding_mode, use_head,
# d_h and the layer's; GateLoop adds reversed) are linrec's config field names already. Only the activations
# differ in kind: the originals take callables, so their usual spellings are accepted for linrec's names.
_ACTIVATION_SPELLINGS = {
    **{f"{prefix}{name}": name for prefix in ("nn.", "jax.nn.", "flax.linen.", "linen.", "jnp.", "jax.numpy.")
       for name in ("tanh", "sigmoid", "relu", "gelu", "silu", "softplus")},
    "nn.swish": "silu", "jax.nn.swish": "silu",
}


def original_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``--config`` fields with the originals' activation spellings (``"nn.gelu"``, ``"jax.nn.sigmoid"``) mapped
    to linrec's activation names; every other argument of the originals has its linrec field's name."""
    return {key: _ACTIVATION_SPELLINGS.get(value.strip(), value)
            if key.endswith("_activation") and isinstance(value, str) else value
            for key, value in overrides.items()}


# --- export: a linrec checkpoint as the original's params tree ------------------------------------------------


def _refuse(original: str, option: str, why: str) -> None:
    raise CheckpointError(f"cannot export to {original!r}: {option} — {why}")


def _check_layer(config: Any, original: str) -> None:
    if config.reversed and original == "gated-linear-rnn":
        _refuse(original, "reversed=True", "GatedLinearRNN has no reversed option (export to 'gateloop', whose "
                "GateLoop layer has it)")


def _check_lm(config: Any, original: str) -> None:
    if not config.gelu_approximate:
        _refuse(original, "gelu_approximate=False", "the original's channel mixing uses jax.nn.gelu's tanh "
                "approximation only")
    rates = {name: getattr(config, name) for name in ("embedding_dropout", "time_mixing_dropout",
                                                       "channel_mixing_dropout")}
    if config.dropout_placement != "sum" and any(rates.values()):
        # without dropout the two placements are the same function; with it, training would differ
        _refuse(original, f"dropout_placement={config.dropout_placement!r} with dropout "
                f"{ {k: v for k, v in rates.items() if v} }", "the original drops out x + branch "
                "(dropout_placement='sum')")
    if config.positional_encoding_mode == "learned":
        _refuse(original, "positional_encoding_mode='learned'", "the original crashes in this mode (nn.Embed "
                "called with a Python int); it has 'sinusoidal' and 'none'")
    if config.positional_encoding_mode == "sinusoidal" and config.d_model % 2:
        _refuse(original, f"positional_encoding_mode='sinusoidal' with an odd d_model={config.d_model}",
                "the original's sinusoidal table needs an even d_model")


def export_glrnn(ckpt: Any, original: str) -> dict[str, np.ndarray]:
    """A ``gated_linear_rnn`` / ``gateloop`` / ``gated_linear_rnn_lm`` / ``gateloop_lm`` checkpoint as the
    original's ``params`` tree (names joined with ``.``; ``write_flax`` nests them), bit-exact.

    The tree is the bare ``params`` collection, what ``flax.serialization.from_bytes(module.init(...)['params'],
    data)`` restores (the importer also accepts it wrapped in ``{'params': ...}``). Options no parameter stores
    (activations, eps, dropout rates, positional encoding mode, ``max_seq_length``) are the original's constructor
    arguments: build it with the checkpoint's config values. The original always encodes positions ``0..T-1`` per
    call, which is ``compat_step_position_zero=True`` (the same function for a call from the zero state).
    Raises ``CheckpointError`` naming the option the original does not have.
    """
    layer_models = ("gated_linear_rnn", "gateloop")
    lm_models = ("gated_linear_rnn_lm", "gateloop_lm")
    if ckpt.model_type in layer_models:
        _check_layer(ckpt.config, original)
        table = GLRNN_LAYER_TABLE
    elif ckpt.model_type in lm_models:
        _check_lm(ckpt.config, original)
        table = GLRNN_LM_TABLE
    else:
        raise CheckpointError(f"cannot export a {ckpt.model_type} to {original!r}: it holds "
                              f"{', '.join(layer_models + lm_models)}")
    tensors, unknown = invert_table(table, ckpt.params)
    if unknown:  # the tables cover every canonical name of these models; a miss is a bug, not a user error
        raise CheckpointError(f"cannot export to {original!r}: no original name for {sorted(unknown)}")
    return tensors
