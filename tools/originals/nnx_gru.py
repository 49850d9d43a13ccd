"""jkyl/nnx-gru ``Model``: a minGRU LM with residual GLU blocks, its blocks stacked on axis 0."""

from __future__ import annotations

import numpy as np

from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table

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
