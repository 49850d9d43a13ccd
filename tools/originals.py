"""Import the original packages' checkpoints into linrec configs and canonical parameters.

Each original has a declarative *import table* of rows ``(original name pattern, canonical name pattern,
steps)`` and a small function that picks the linrec model type and the compat options. The steps move
numbers only (unstack a leading layer axis, transpose a torch weight, take or place a column block,
reorder column blocks), so an import is exact; the only arithmetic is the documented folding of
lucidrains' RMSNorm gain into ``SimpleGateLoopLayer``'s projections.

Everything the shapes tell (widths, tied/untied gates, true recurrence, the number of layers, biases,
projections) is inferred; options the files cannot tell (activations, positional encoding mode, eps, ...)
come from ``config`` overrides (linrec config fields of the target model) or take the original's defaults,
and the checkpoint's ``notes`` list them.

Originals (``--from NAME``; container; linrec target):

- ``gated-linear-rnn``: PyPI ``flax-gated-linear-rnn`` ``GatedLinearRNN`` / ``GatedLinearRNNLM`` params
  (flax msgpack) -> ``gated_linear_rnn`` / ``gated_linear_rnn_lm``.
- ``gateloop``: ``flax_gate_loop`` ``GateLoop`` / ``GateLoopLM`` params, the same tree (flax msgpack)
  -> ``gateloop`` / ``gated_linear_rnn_lm``.
- ``nnx-gru``: jkyl/nnx-gru ``Model`` NNX state as a pure dict, blocks stacked (flax msgpack)
  -> ``mingru_lm`` (``block="glu"``).
- ``cheind-mingru``: cheind/mingru ``MinGRU`` v1.3 (``linear_gate_hidden.{l}``), v1.4 (``layers.{l}.gate_hidden``)
  and ``MinGRUCell`` (torch) -> ``mingru`` (one plain layer) or ``mingru_stack``.
- ``lucidrains-mingru``: ``mingru-pytorch`` ``minGRU`` / ``minLM`` (torch) -> ``mingru`` / ``mingru_lm``
  (``block="prenorm"``).
- ``gateloop-transformer``: ``SimpleGateLoopLayer`` (torch) -> ``gateloop_mh`` with one SISO head per channel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools import formats
from linrec.tools.formats import CheckpointError

__all__ = [
    "ORIGINALS",
    "ORow",
    "Original",
    "apply_table",
    "canonical_name",
    "import_tensors",
    "markdown",
    "read_original",
]


# --- the import-table machinery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ORow:
    """One row of an import table: an original tensor (pattern) -> (part of) a canonical tensor.

    Steps, in order: ``stack``: the original stacks placeholder ``stack`` on axis 0 (unstack it);
    ``transpose``: a torch ``(out, in)`` weight; ``take=(i, n)``: use column block ``i`` of ``n``;
    ``order``: reorder the ``len(order)`` column blocks (canonical block ``k`` = original block ``order[k]``);
    ``place=(i, n)``: the result is column block ``i`` of ``n`` of the canonical tensor (the blocks are
    concatenated once all rows ran).
    """

    original: str
    canonical: str
    transpose: bool = False
    stack: str = ""
    take: tuple[int, int] | None = None
    order: tuple[int, ...] | None = None
    place: tuple[int, int] | None = None


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _regex(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for name in set(_PLACEHOLDER.findall(pattern)):
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>0|[1-9][0-9]*)", 1)
    return re.compile(regex + r"\Z")


def _blocks(a: np.ndarray, n: int, what: str) -> list[np.ndarray]:
    if a.ndim == 0 or a.shape[-1] % n:
        raise CheckpointError(f"{what}: shape {a.shape} does not split into {n} column blocks")
    return np.split(a, n, axis=-1)


def apply_table(table: Sequence[ORow], tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run an import table: ``(canonical params, original names no row matched)``."""
    compiled = [(_regex(row.original), row) for row in table]
    out: dict[str, np.ndarray] = {}
    parts: dict[str, dict[int, tuple[int, np.ndarray]]] = {}
    unknown = []
    for key, value in tensors.items():
        matches = [(m, row) for regex, row in compiled if (m := regex.match(key))]
        if not matches:
            unknown.append(key)
            continue
        for m, row in matches:
            groups = m.groupdict()
            value = np.asarray(value)
            items = {None: value}
            if row.stack:
                if value.ndim == 0:
                    raise CheckpointError(f"{key}: expected a leading axis of stacked layers, got a scalar")
                items = {i: value[i] for i in range(value.shape[0])}
            for index, item in items.items():
                names = groups if index is None else {**groups, row.stack: index}
                if row.transpose:
                    if item.ndim != 2:
                        raise CheckpointError(f"{key}: expected a 2-D weight, got shape {item.shape}")
                    item = np.ascontiguousarray(item.T)
                if row.take is not None:
                    item = _blocks(item, row.take[1], key)[row.take[0]]
                if row.order is not None:
                    blocks = _blocks(item, len(row.order), key)
                    item = np.concatenate([blocks[j] for j in row.order], axis=-1)
                name = row.canonical.format(**names)
                if row.place is None:
                    out[name] = np.ascontiguousarray(item)
                else:
                    parts.setdefault(name, {})[row.place[0]] = (row.place[1], item)
    for name, pieces in parts.items():
        n = {total for total, _ in pieces.values()}.pop()
        if sorted(pieces) != list(range(n)):
            missing = sorted(set(range(n)) - set(pieces))
            raise CheckpointError(f"{name}: column block(s) {missing} of {n} are missing in the original checkpoint")
        shapes = {p.shape[:-1] for _, p in pieces.values()}
        if len(shapes) > 1:
            raise CheckpointError(f"{name}: the original's blocks have inconsistent shapes "
                                  f"{[pieces[i][1].shape for i in range(n)]}")
        out[name] = np.concatenate([pieces[i][1] for i in range(n)], axis=-1)
    return out, unknown


# --- the checkpoint an importer returns -------------------------------------------------------------------


def _checkpoint(model: str, params: dict, config_fields: dict, overrides: Mapping[str, Any], source: str,
                notes: list[str], unknown: Sequence[str], untold: Sequence[str] = ()):
    """Build the config (inferred fields < importer's compat fields < user overrides) and the Checkpoint.

    ``untold`` are config fields the file cannot tell: those the user did not give are listed in a note
    with the value they took.
    """
    from linrec.tools.convert import Checkpoint, build_config, check_params
    from linrec.tools.layout import get_layout

    layout = get_layout(model)
    shapes = {k: tuple(np.shape(v)) for k, v in params.items()}
    try:
        inferred = layout.infer(shapes, {**config_fields, **overrides}) if layout.infer else {}
    except Exception as err:  # LayoutError or a malformed tree
        raise CheckpointError(f"{source}: cannot infer the {model} config: {err}") from None
    cfg, _ = build_config(layout, shapes, {**inferred, **config_fields, **overrides})
    check_params(model, cfg, params, unknown=unknown, where=f"{source} checkpoint")
    defaulted = [f"{name}={getattr(cfg, name)!r}" for name in untold if name not in overrides]
    if defaulted:
        notes = [*notes, f"not stored in the file, took (override with --config): {', '.join(defaulted)}"]
    return Checkpoint(model, cfg, params, source, notes)


def _unknown_error(source: str, unknown: Sequence[str], hint: str = "") -> None:
    if unknown:
        raise CheckpointError(f"{source}: tensor(s) {sorted(unknown)} are not part of any model this importer "
                              f"knows{hint}")


# --- 1+2. flax-gated-linear-rnn / flax-gate-loop ----------------------------------------------------------

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


# --- 4. jkyl/nnx-gru ---------------------------------------------------------------------------------------

NNX_GRU_TABLE = (
    ORow("embeddings.embedding", "embed.embedding"),
    ORow("backbone.layers.gru.linear_z.kernel", "layers.{l}.mingru.proj.kernel", stack="l", place=(0, 2)),
    ORow("backbone.layers.gru.linear_h.kernel", "layers.{l}.mingru.proj.kernel", stack="l", place=(1, 2)),
    ORow("backbone.layers.gru.linear_z.bias", "layers.{l}.mingru.proj.bias", stack="l", place=(0, 2)),
    ORow("backbone.layers.gru.linear_h.bias", "layers.{l}.mingru.proj.bias", stack="l", place=(1, 2)),
    ORow("backbone.layers.linear.kernel", "layers.{l}.glu.kernel", stack="l"),
    ORow("backbone.layers.linear.bias", "layers.{l}.glu.bias", stack="l"),
    ORow("linear_out.kernel", "head.kernel"),
    ORow("linear_out.bias", "head.bias"),
)


def _import_nnx_gru(tensors, model, overrides, source):
    params, unknown = apply_table(NNX_GRU_TABLE, tensors)
    notes = ["nnx-gru: minGRU with an identity candidate, zero initial state, residual GLU blocks, no norms "
             "(mingru_lm block='glu')"]
    dtypes = {np.asarray(v).dtype.name for v in params.values()}
    if dtypes == {"bfloat16"}:
        notes.append("parameters are bfloat16 as in the original (default_dtype); pass --dtype float32 to widen")
    fields = dict(block="glu", candidate="identity", mingru_bias=True, head_bias=True, default_state=0.0)
    return _checkpoint(model or "mingru_lm", params, fields, overrides, source, notes, unknown)


# --- 5. cheind/mingru -------------------------------------------------------------------------------------

CHEIND_V13_TABLE = (
    ORow("linear_gate_hidden.{l}.weight", "layers.{l}.mingru.proj.kernel", transpose=True),
    ORow("linear_gate_hidden.{l}.bias", "layers.{l}.mingru.proj.bias"),
    ORow("input_residual_align.weight", "_v13_residual_align.kernel", transpose=True),
    ORow("input_residual_align.bias", "_v13_residual_align.bias"),
)
CHEIND_V14_TABLE = (
    ORow("layers.{l}.norm.weight", "layers.{l}.norm.scale"),
    ORow("layers.{l}.norm.bias", "layers.{l}.norm.bias"),
    ORow("layers.{l}.gate_hidden.weight", "layers.{l}.mingru.proj.kernel", transpose=True),
    ORow("layers.{l}.gate_hidden.bias", "layers.{l}.mingru.proj.bias"),
    ORow("layers.{l}.res_align.weight", "layers.{l}.res_align.kernel", transpose=True),
)
CHEIND_CELL_TABLE = (
    ORow("to_gate_hidden.weight", "proj.kernel", transpose=True),
    ORow("to_gate_hidden.bias", "proj.bias"),
)


def _import_cheind(tensors, model, overrides, source):
    if "to_gate_hidden.weight" in tensors:
        version, table = "MinGRUCell (v1.4)", CHEIND_CELL_TABLE
    elif any(k.startswith("linear_gate_hidden.") for k in tensors):
        version, table = "v1.3", CHEIND_V13_TABLE
    elif any(re.match(r"layers\.\d+\.gate_hidden\.", k) for k in tensors):
        version, table = "v1.4", CHEIND_V14_TABLE
    else:
        raise CheckpointError(f"{source}: not a cheind/mingru state_dict (no 'linear_gate_hidden.0.weight' (v1.3), "
                              f"'layers.0.gate_hidden.weight' (v1.4) or 'to_gate_hidden.weight' (MinGRUCell)); "
                              f"found {sorted(tensors)[:8]}")
    params, unknown = apply_table(table, tensors)
    if any(k.startswith("_v13_residual_align.") for k in params):
        raise CheckpointError(
            f"{source}: cheind/mingru v1.3 with residual=True: its input_residual_align (a Linear with bias, present "
            "even when the sizes match, applied to layer 0 only) has no linrec equivalent; mingru_stack follows the "
            "v1.4 residual (res_align without bias, only where the sizes differ)")
    notes = [f"cheind/mingru {version}: candidate g, default state g(0) = 0.5, columns [gate | hidden]"]
    if version == "v1.3":
        notes.append("v1.3's dropout (unscaled, also active in eval) is a training-time bug, not reproduced")
    fields = dict(candidate="g", default_state=0.5)
    n_layers = 1 + max([int(m.group(1)) for k in params if (m := re.match(r"layers\.(\d+)\.", k))] or [0])
    extras = any(".norm." in k or ".res_align." in k for k in params)
    stack_options = any(overrides.get(k) for k in ("residual", "norm", "dropout"))
    plain = table is CHEIND_CELL_TABLE or (n_layers == 1 and not extras and not stack_options)
    target = model or ("mingru" if plain else "mingru_stack")
    if target == "mingru":
        if not plain:
            raise CheckpointError(f"{source}: this cheind MinGRU has {n_layers} layers"
                                  f"{' with norm/residual parameters' if extras else ''}: import it as mingru_stack")
        params = {k.removeprefix("layers.0.mingru."): v for k, v in params.items()}
        return _checkpoint("mingru", params, fields, overrides, source, notes, unknown)
    if table is CHEIND_CELL_TABLE:
        params = {f"layers.0.mingru.{k}": v for k, v in params.items()}
    if version == "v1.4" and "residual" not in overrides and not any(".res_align." in k for k in params):
        notes.append("v1.4 residual=True leaves no parameters when sizes match; pass --config "
                     "'{\"residual\": true}' if the original used it")
    return _checkpoint(target, params, fields, overrides, source, notes, unknown)


# --- lucidrains minGRU-pytorch ---------------------------------------------------------------------------

LUCIDRAINS_MINGRU_TABLE = (
    ORow("to_hidden_and_gate.weight", "proj.kernel", transpose=True, order=(1, 0)),
    ORow("to_out.weight", "out_proj.kernel", transpose=True),
)
_LL = "layers.{l}"
LUCIDRAINS_MINLM_TABLE = (
    ORow("token_emb.weight", "embed.embedding"),
    ORow(f"{_LL}.1.weight", "layers.{l}.norm.scale"),
    ORow(f"{_LL}.2.to_hidden_and_gate.weight", "layers.{l}.mingru.proj.kernel", transpose=True, order=(1, 0)),
    ORow(f"{_LL}.2.to_out.weight", "layers.{l}.mingru.out_proj.kernel", transpose=True),
    ORow(f"{_LL}.3.weight", "layers.{l}.ff_norm.scale"),
    ORow(f"{_LL}.4.0.weight", "layers.{l}.ff.fc1.kernel", transpose=True),
    ORow(f"{_LL}.4.0.bias", "layers.{l}.ff.fc1.bias"),
    ORow(f"{_LL}.4.2.weight", "layers.{l}.ff.fc2.kernel", transpose=True),
    ORow(f"{_LL}.4.2.bias", "layers.{l}.ff.fc2.bias"),
    ORow("norm.weight", "final_norm.scale"),
    ORow("to_logits.weight", "head.kernel", transpose=True),
)


def _import_lucidrains(tensors, model, overrides, source):
    if any(re.match(r"layers\.\d+\.2\.to_hidden_and_f_i_gate\.", k) for k in tensors) or (
            "to_hidden_and_f_i_gate.weight" in tensors):
        raise CheckpointError(f"{source}: a minLSTM-based checkpoint (use_lstm=True); linrec's minGRU language model "
                              "has no minLSTM blocks (the minlstm layer alone is supported via --from torch)")
    conv = sorted(k for k in tensors if re.match(r"layers\.\d+\.0\.", k))
    if conv:
        raise CheckpointError(f"{source}: minLM with enable_conv=True (tensors {conv[:2]}...): the causal "
                              "depth-wise convolution is not part of linrec's mingru_lm")
    if "to_hidden_and_gate.weight" in tensors:
        params, unknown = apply_table(LUCIDRAINS_MINGRU_TABLE, tensors)
        notes = ["lucidrains minGRU: candidate g, zero initial state, no bias, columns [hidden | gate] reordered"]
        fields = dict(candidate="g", default_state=0.0, bias=False)
        return _checkpoint(model or "mingru", params, fields, overrides, source, notes, unknown)
    if "token_emb.weight" not in tensors:
        raise CheckpointError(f"{source}: not a minGRU-pytorch state_dict (no 'to_hidden_and_gate.weight' (minGRU) "
                              f"or 'token_emb.weight' (minLM)); found {sorted(tensors)[:8]}")
    params, unknown = apply_table(LUCIDRAINS_MINLM_TABLE, tensors)
    notes = ["lucidrains minLM: pre-RMSNorm blocks, exact GELU, final RMSNorm; nn.RMSNorm(eps=None) uses the "
             "input dtype's machine epsilon, taken as float32's"]
    fields = dict(block="prenorm", candidate="g", mingru_bias=False, head_bias=False, default_state=0.0,
                  norm_eps=float(np.finfo(np.float32).eps))
    return _checkpoint(model or "mingru_lm", params, fields, overrides, source, notes, unknown)


# --- lucidrains gateloop-transformer SimpleGateLoopLayer ---------------------------------------------------

SIMPLE_GATELOOP_TABLE = (
    ORow("to_qkva.0.weight", "q_proj.kernel", transpose=True, take=(0, 3)),
    ORow("to_qkva.0.weight", "k_proj.kernel", transpose=True, take=(1, 3)),
    ORow("to_qkva.0.weight", "a_proj.kernel", transpose=True, take=(2, 3)),
    ORow("norm.gamma", "_prenorm.gamma"),
)


def _import_simple_gateloop(tensors, model, overrides, source):
    post = sorted(k for k in tensors if k.startswith("maybe_post_ln."))
    if post:
        raise CheckpointError(f"{source}: SimpleGateLoopLayer(post_ln=True) ({post}): a LayerNorm after the gate "
                              "loop is not part of linrec's gateloop_mh layer")
    if overrides.get("reverse"):
        raise CheckpointError(f"{source}: SimpleGateLoopLayer(reverse=True) is not offered by gateloop_mh")
    overrides = {k: v for k, v in overrides.items() if k != "reverse"}
    params, unknown = apply_table(SIMPLE_GATELOOP_TABLE, tensors)
    if "q_proj.kernel" not in params:
        raise CheckpointError(f"{source}: not a SimpleGateLoopLayer state_dict (no 'to_qkva.0.weight'); "
                              f"found {sorted(tensors)[:8]}")
    dim = params["q_proj.kernel"].shape[0]
    dtype = params["q_proj.kernel"].dtype
    notes = [f"SimpleGateLoopLayer({dim}) as gateloop_mh with {dim} SISO heads: kv from k_proj, "
             "v_proj = 0·x + 1, out_proj = identity"]
    gamma = params.pop("_prenorm.gamma", None)
    if gamma is not None:
        if gamma.shape != (dim,):
            raise CheckpointError(f"{source}: norm.gamma has shape {gamma.shape}, expected ({dim},)")
        for name in ("q_proj.kernel", "k_proj.kernel", "a_proj.kernel"):  # (x̂ γ) W = x̂ (diag(γ) W)
            params[name] = (gamma.astype(np.float64)[:, None] * params[name].astype(np.float64)).astype(dtype)
        notes.append("prenorm=True: its gain γ is folded into the q/kv/a kernels; the parameter-free part "
                     "x / max(‖x‖, 1e-12) · √dim must be applied to the input before the linrec layer")
    zeros, ones = np.zeros(dim, dtype), np.ones(dim, dtype)
    params.update({
        "q_proj.bias": zeros, "k_proj.bias": zeros.copy(), "v_proj.kernel": np.zeros((dim, dim), dtype),
        "v_proj.bias": ones, "a_proj.bias": zeros.copy(), "out_proj.kernel": np.eye(dim, dtype=dtype),
        "out_proj.bias": zeros.copy(),
    })
    fields = dict(num_heads=dim, d_key=1, d_value=1, qkv_bias=True, gate="real", gate_granularity="key")
    return _checkpoint(model or "gateloop_mh", params, fields, overrides, source, notes, unknown)


# --- registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Original:
    """An importable original: its container format and importer ``(tensors, model, overrides, source)``."""

    name: str
    container: str
    description: str
    importer: Callable[..., Any]
    aliases: tuple[str, ...] = field(default=())
    tables: tuple[tuple[str, tuple[ORow, ...]], ...] = field(default=())
    target: str = ""


ORIGINALS: dict[str, Original] = {
    o.name: o
    for o in (
        Original("gated-linear-rnn", "flax", "flax-gated-linear-rnn `GatedLinearRNN` / `GatedLinearRNNLM` params",
                 lambda t, m, o, s: _import_glrnn(t, m, o, s, "gated_linear_rnn"),
                 ("flax-gated-linear-rnn", "glrnn"), (("layer", GLRNN_LAYER_TABLE), ("LM", GLRNN_LM_TABLE)),
                 "`gated_linear_rnn` / `gated_linear_rnn_lm` (`dropout_placement='sum'`)"),
        Original("gateloop", "flax", "flax_gate_loop `GateLoop` / `GateLoopLM` params (the same tree)",
                 lambda t, m, o, s: _import_glrnn(t, m, o, s, "gateloop"), ("flax-gate-loop",),
                 (("layer", GLRNN_LAYER_TABLE), ("LM", GLRNN_LM_TABLE)), "`gateloop` / `gateloop_lm`"),
        Original("nnx-gru", "flax", "jkyl/nnx-gru `Model` NNX state (pure dict; blocks stacked on axis 0)",
                 _import_nnx_gru, (), (("Model", NNX_GRU_TABLE),),
                 "`mingru_lm` (`block='glu'`, `candidate='identity'`)"),
        Original("cheind-mingru", "torch",
                 "cheind/mingru `MinGRU` v1.3 / v1.4 or `MinGRUCell` state_dict (v1.3 with `residual=True`, "
                 "i.e. `input_residual_align`, is refused: no linrec equivalent)",
                 _import_cheind, ("cheind",),
                 (("v1.3", CHEIND_V13_TABLE), ("v1.4", CHEIND_V14_TABLE), ("MinGRUCell", CHEIND_CELL_TABLE)),
                 "`mingru` (one plain layer) or `mingru_stack` (`candidate='g'`, `default_state=0.5`)"),
        Original("lucidrains-mingru", "torch", "minGRU-pytorch `minGRU` / `minLM` state_dict", _import_lucidrains,
                 ("mingru-pytorch", "lucidrains"),
                 (("minGRU", LUCIDRAINS_MINGRU_TABLE), ("minLM", LUCIDRAINS_MINLM_TABLE)),
                 "`mingru` / `mingru_lm` (`block='prenorm'`, `candidate='g'`, no biases)"),
        Original("gateloop-transformer", "torch", "gateloop-transformer `SimpleGateLoopLayer` state_dict",
                 _import_simple_gateloop, ("simple-gateloop",), (("SimpleGateLoopLayer", SIMPLE_GATELOOP_TABLE),),
                 "`gateloop_mh` with one SISO head per channel (`v_proj` = 0·x + 1, `out_proj` = identity, "
                 "RMSNorm gain folded into the kernels)"),
    )
}


def _steps(row: ORow) -> str:
    steps = []
    if row.stack:
        steps.append(f"unstack `{{{row.stack}}}` (axis 0)")
    if row.transpose:
        steps.append("transpose")
    if row.take:
        steps.append(f"take column block {row.take[0] + 1} of {row.take[1]}")
    if row.order:
        steps.append(f"reorder column blocks {tuple(i + 1 for i in row.order)}")
    if row.place:
        steps.append(f"is column block {row.place[0] + 1} of {row.place[1]}")
    return ", ".join(steps) or "identity"


def markdown() -> str:
    """The import tables as a section of ``spec/layout.md``."""
    parts = ["## Importing the originals\n",
             "`linrec convert SRC DST --from NAME` (or `convert(..., src_format=NAME)`) reads an original's checkpoint "
             "and maps it by these tables (original name, with nested keys joined by `.`; canonical name; steps, "
             "which only move numbers). Everything the shapes tell is inferred; options no file stores come from "
             "`--config` (fields of the linrec config) or the original's defaults, and the summary lists them.\n"]
    seen: dict[tuple, str] = {}
    for o in ORIGINALS.values():
        aliases = f" (also {', '.join(f'`{a}`' for a in o.aliases)})" if o.aliases else ""
        parts.append(f"### `{o.name}`{aliases}\n")
        parts.append(f"{o.description}; {o.container} file → {o.target}.\n")
        if o.tables in seen:
            parts.append(f"Same tables as [`{seen[o.tables]}`](#{seen[o.tables]}).\n")
            continue
        seen[o.tables] = o.name
        for title, table in o.tables:
            parts.append(f"{title}:\n")
            parts.append("| original | canonical | steps |")
            parts.append("|---|---|---|")
            parts.extend(f"| `{r.original}` | `{r.canonical}` | {_steps(r)} |" for r in table)
            parts.append("")
    return "\n".join(parts)


def canonical_name(name: str) -> str | None:
    """The registry name of an original (accepts aliases and ``_`` for ``-``), or ``None``."""
    key = name.lower().replace("_", "-")
    for original in ORIGINALS.values():
        if key == original.name or key in original.aliases:
            return original.name
    return None


def _original(name: str) -> Original:
    key = canonical_name(name)
    if key is None:
        raise CheckpointError(f"unknown original {name!r}; known: {', '.join(ORIGINALS)}")
    return ORIGINALS[key]


def _overrides(config: Any) -> dict[str, Any]:
    from linrec.tools.convert import parse_config

    config = parse_config(config)
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        from linrec.tools.layout import config_to_dict

        return config_to_dict(config)
    return dict(config)


def import_tensors(name: str, tensors: Mapping[str, np.ndarray], *, model: str | None = None,
                   config: Any = None, source: str | None = None):
    """Import an original's flat tensor dict (names joined with ``.``) -> ``Checkpoint``."""
    original = _original(name)
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    return original.importer(tensors, model, _overrides(config), source or original.name)


def read_original(name: str, path: str | Path, *, model: str | None = None, config: Any = None):
    """Read an original's checkpoint file (its container format) and import it."""
    original = _original(name)
    reader = formats.read_torch if original.container == "torch" else formats.read_flax
    tensors = reader(path)
    ckpt = import_tensors(original.name, tensors, model=model, config=config, source=f"{path} ({original.name})")
    ckpt.source_format = original.name
    return ckpt
