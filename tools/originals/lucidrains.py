"""lucidrains minGRU-pytorch ``minGRU`` / ``minLM`` (torch state_dicts)."""

from __future__ import annotations

import re

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table

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
