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
- ``gateloop-transformer``: ``SimpleGateLoopLayer`` / ``GateLoopedAttention`` (torch) -> ``gateloop_mh`` (one SISO
  head per channel / complex cartesian gate per head), ``Transformer`` -> ``gateloop_mh_lm``; exported back by
  ``export_gateloop_transformer``.
"""


from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools import formats
from linrec.tools.formats import CheckpointError
from linrec.tools.originals.cheind import (
    CHEIND_CELL_TABLE,
    CHEIND_V13_TABLE,
    CHEIND_V14_TABLE,
    _import_cheind,
    export_cheind,
)
from linrec.tools.originals.gateloop_transformer import (
    GATELOOPED_ATTENTION_TABLE,
    SIMPLE_GATELOOP_TABLE,
    export_gateloop_transformer,
    import_gateloop_transformer,
)
from linrec.tools.originals.gateloop_transformer_lm import TRANSFORMER_POSTNORM_TABLE, TRANSFORMER_PRENORM_TABLE
from linrec.tools.originals.glrnn import GLRNN_LAYER_TABLE, GLRNN_LM_TABLE, _import_glrnn, export_glrnn
from linrec.tools.originals.lucidrains import (
    LUCIDRAINS_MINGRU_TABLE,
    LUCIDRAINS_MINLM_TABLE,
    _import_lucidrains,
    export_lucidrains,
)
from linrec.tools.originals.nnx_gru import NNX_GRU_TABLE, _import_nnx_gru, export_nnx_gru
from linrec.tools.originals.table import ORow, apply_table

__all__ = [
    "ORIGINALS",
    "ORow",
    "Original",
    "apply_table",
    "canonical_name",
    "export_tensors",
    "exportable",
    "import_tensors",
    "markdown",
    "read_original",
    "write_original",
]


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
    #: ``(checkpoint) -> {original name: array}`` (names joined with ``.``), or ``None`` if export is not offered;
    #: raises ``CheckpointError`` naming the config option the original does not have
    exporter: Callable[..., dict[str, np.ndarray]] | None = None


ORIGINALS: dict[str, Original] = {
    o.name: o
    for o in (
        Original("gated-linear-rnn", "flax", "flax-gated-linear-rnn `GatedLinearRNN` / `GatedLinearRNNLM` params",
                 lambda t, m, o, s: _import_glrnn(t, m, o, s, "gated_linear_rnn"),
                 ("flax-gated-linear-rnn", "glrnn"), (("layer", GLRNN_LAYER_TABLE), ("LM", GLRNN_LM_TABLE)),
                 "`gated_linear_rnn` / `gated_linear_rnn_lm` (`dropout_placement='sum'`)",
                 exporter=lambda ckpt: export_glrnn(ckpt, "gated-linear-rnn")),
        Original("gateloop", "flax", "flax_gate_loop `GateLoop` / `GateLoopLM` params (the same tree)",
                 lambda t, m, o, s: _import_glrnn(t, m, o, s, "gateloop"), ("flax-gate-loop",),
                 (("layer", GLRNN_LAYER_TABLE), ("LM", GLRNN_LM_TABLE)), "`gateloop` / `gateloop_lm`",
                 exporter=lambda ckpt: export_glrnn(ckpt, "gateloop")),
        Original("nnx-gru", "flax", "jkyl/nnx-gru `Model` NNX state (pure dict; blocks stacked on axis 0); "
                 "`--config` also takes its `depth`, `dim`, `vocab_size`; exportable (`--to nnx-gru`)",
                 _import_nnx_gru, (), (("Model", NNX_GRU_TABLE),),
                 "`mingru_lm` (`block='glu'`, `candidate='identity'`)", exporter=export_nnx_gru),
        Original("cheind-mingru", "torch",
                 "cheind/mingru `MinGRU` v1.3 / v1.4 or `MinGRUCell` state_dict (v1.3 `residual=True`: "
                 "`residual_align='first'`, `residual_align_bias=bias`); `--config` also takes its v1.3 "
                 "`input_dims`/`hidden_dims`/`num_layers` and v1.4 `input_size`/`hidden_sizes`; exportable "
                 "(`--to cheind-mingru`: v1.3 for `residual_align='first'`, else v1.4)",
                 _import_cheind, ("cheind",),
                 (("v1.3", CHEIND_V13_TABLE), ("v1.4", CHEIND_V14_TABLE), ("MinGRUCell", CHEIND_CELL_TABLE)),
                 "`mingru` (one plain layer) or `mingru_stack` (`candidate='g'`, `default_state=0.5`)",
                 exporter=export_cheind),
        Original("lucidrains-mingru", "torch", "minGRU-pytorch `minGRU` / `minLM` state_dict; `--config` also "
                 "takes `minGRU`'s `dim`/`expansion_factor`/`proj_out` and `minLM`'s `num_tokens`/`dim`/`depth`/"
                 "`ff_mult`/`expansion`; exportable (`--to lucidrains-mingru`)", _import_lucidrains,
                 ("mingru-pytorch", "lucidrains"),
                 (("minGRU", LUCIDRAINS_MINGRU_TABLE), ("minLM", LUCIDRAINS_MINLM_TABLE)),
                 "`mingru` / `mingru_lm` (`block='prenorm'`, `candidate='g'`, no biases)", exporter=export_lucidrains),
        Original("gateloop-transformer", "torch",
                 "gateloop-transformer `SimpleGateLoopLayer`, `GateLoopedAttention` or `Transformer` (the LM) "
                 "state_dict (told apart by the tensor names; `to_a`'s interleaved (re, im) rows are de-interleaved "
                 "into two blocks first); `--config` also takes the `Transformer`'s `num_tokens`/`dim`/`depth`/"
                 "`gate_loop_heads`/`dim_gate_looped_attn`/`ff_mult`/`attn_add_swish_gating`/`sub_ln`/"
                 "`post_ln_norm`/`ablate_complex` (`use_gate_looped_attn=False` and `ablate_state_transition=True` "
                 "are refused); exportable (`--to gateloop-transformer`)",
                 import_gateloop_transformer, ("simple-gateloop",),
                 (("SimpleGateLoopLayer", SIMPLE_GATELOOP_TABLE), ("GateLoopedAttention", GATELOOPED_ATTENTION_TABLE),
                  ("Transformer", TRANSFORMER_PRENORM_TABLE),
                  ("Transformer(post_ln_norm=True)", TRANSFORMER_POSTNORM_TABLE)),
                 "`gateloop_mh`: `SimpleGateLoopLayer` as one SISO head per channel (`v_proj` = 0·x + 1, `out_proj` "
                 "= identity, `input_norm='rms'` with the RMSNorm gain folded into the kernels, `post_ln` as "
                 "`sub_norm='layernorm'`); `GateLoopedAttention` as `gate='complex'`, "
                 "`gate_parametrization='cartesian'`, `gate_granularity='head'`, `sub_ln` as `sub_norm`, swish gating "
                 "as `output_gate='silu'`, `to_out` as `out_proj` (zero bias); `Transformer` as `gateloop_mh_lm`",
                 exporter=export_gateloop_transformer),
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


def exportable() -> list[str]:
    """The originals ``linrec convert ... --to NAME`` can write."""
    return [name for name, o in ORIGINALS.items() if o.exporter is not None]


def export_tensors(name: str, ckpt: Any) -> dict[str, np.ndarray]:
    """A linrec ``Checkpoint`` as the original's flat tensor dict (the inverse of :func:`import_tensors`)."""
    original = _original(name)
    if original.exporter is None:
        raise CheckpointError(f"export to {original.name!r} is not offered; exportable: {', '.join(exportable())}")
    return original.exporter(ckpt)


def write_original(name: str, ckpt: Any, path: str | Path, *, force: bool = False) -> Path:
    """Write ``ckpt`` in the original's own checkpoint format (its container), atomically."""
    original = _original(name)
    tensors = export_tensors(original.name, ckpt)
    writer = formats.write_torch if original.container == "torch" else formats.write_flax
    return writer(path, tensors, force=force)
