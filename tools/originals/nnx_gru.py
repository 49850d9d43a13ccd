"""jkyl/nnx-gru ``Model``: a minGRU LM with residual GLU blocks, its blocks stacked on axis 0 (import, export)."""

from __future__ import annotations

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.original_args import check_shapes_agree, rename_args, require, same, shaped_fields
from linrec.tools.originals.table import ORow, apply_table, invert_table

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

_NAME = "nnx-gru"
#: Model(vocab_size, depth, dim, gru) / ParallelModel(*, vocab_size, depth, dim): vocab_size is linrec's name;
#: gru (ParallelGRU or SequentialGRU) shares one parameter tree
NNX_GRU_ARGS = {"depth": ("n_layers", int), "dim": ("d_model", int), "gru": ("", same)}


def _import_nnx_gru(tensors, model, overrides, source):
    params, unknown = apply_table(NNX_GRU_TABLE, tensors)
    notes = ["nnx-gru: minGRU with an identity candidate, zero initial state, residual GLU blocks, no norms "
             "(mingru_lm block='glu')"]
    dtypes = {np.asarray(v).dtype.name for v in params.values()}
    if dtypes == {"bfloat16"}:
        notes.append("parameters are bfloat16 as in the original (default_dtype); pass --dtype float32 to widen")
    fields = dict(block="glu", candidate="identity", mingru_bias=True, head_bias=True, default_state=0.0)
    target = model or "mingru_lm"
    given, arg_notes = rename_args(overrides, NNX_GRU_ARGS, source, "nnx-gru")
    check_shapes_agree(given, shaped_fields(target, params), source, "nnx-gru", NNX_GRU_ARGS, overrides)
    return _checkpoint(target, params, fields, given, source, notes + arg_notes, unknown)


def export_nnx_gru(ckpt) -> dict[str, np.ndarray]:
    """A ``mingru_lm`` checkpoint (``block='glu'``) as nnx-gru's ``Model`` NNX state (flat names; blocks stacked).

    nnx-gru's minGRU has an identity candidate, biases everywhere, a zero initial state and ``H = D``; any other
    option raises ``CheckpointError`` naming it.
    """
    if ckpt.model_type != "mingru_lm":
        raise CheckpointError(f"cannot export a {ckpt.model_type} model to {_NAME}: nnx-gru's Model is a mingru_lm "
                              "(block='glu')")
    cfg = ckpt.config
    require(cfg, _NAME, block="glu", candidate="identity", mingru_bias=True, head_bias=True, default_state=0.0,
            expansion=lambda e: int(cfg.d_model * e) == cfg.d_model)
    tensors, unknown = invert_table(NNX_GRU_TABLE, ckpt.params)
    if unknown:
        raise CheckpointError(f"cannot export to {_NAME}: parameters {sorted(unknown)} have no nnx-gru name")
    return tensors
