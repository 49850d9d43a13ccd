"""lucidrains minGRU-pytorch ``minGRU`` / ``minLM`` (torch state_dicts): import and export."""

from __future__ import annotations

import re

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.original_args import check_shapes_agree, rename_args, require, same, shaped_fields
from linrec.tools.originals.table import ORow, apply_table, invert_table

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

_NAME = "lucidrains-mingru"
#: nn.RMSNorm(eps=None) uses the input dtype's machine epsilon; float32's
_RMS_EPS = float(np.finfo(np.float32).eps)


def _false_only(arg: str):
    def convert(value):
        if value:
            raise ValueError(f"{arg}=True has no linrec equivalent (mingru_lm has no such blocks)")
        return value

    return convert


#: minGRU(dim, expansion_factor=1., proj_out=None)
MINGRU_ARGS = {"dim": ("d_model", int), "expansion_factor": ("expansion", float), "proj_out": ("out_proj", bool)}
#: minLM(*, num_tokens, dim, depth, ff_mult=4, expansion=1.5, conv_kernel_size=3, use_lstm=False,
#: enable_conv=False, dropout=0.); ff_mult and expansion are linrec's names too
MINLM_ARGS = {"num_tokens": ("vocab_size", int), "dim": ("d_model", int), "depth": ("n_layers", int),
              "use_lstm": ("", _false_only("use_lstm")), "enable_conv": ("", _false_only("enable_conv")),
              "conv_kernel_size": ("", same), "dropout": ("", same)}


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
        target, names = model or "mingru", MINGRU_ARGS
    elif "token_emb.weight" in tensors:
        params, unknown = apply_table(LUCIDRAINS_MINLM_TABLE, tensors)
        notes = ["lucidrains minLM: pre-RMSNorm blocks, exact GELU, final RMSNorm; nn.RMSNorm(eps=None) uses the "
                 "input dtype's machine epsilon, taken as float32's"]
        fields = dict(block="prenorm", candidate="g", mingru_bias=False, head_bias=False, default_state=0.0,
                      norm_eps=_RMS_EPS)
        target, names = model or "mingru_lm", MINLM_ARGS
    else:
        raise CheckpointError(f"{source}: not a minGRU-pytorch state_dict (no 'to_hidden_and_gate.weight' (minGRU) "
                              f"or 'token_emb.weight' (minLM)); found {sorted(tensors)[:8]}")
    given, arg_notes = rename_args(overrides, names, source, "minGRU-pytorch")
    check_shapes_agree(given, shaped_fields(target, params), source, "minGRU-pytorch", names, overrides)
    return _checkpoint(target, params, fields, given, source, notes + arg_notes, unknown)


def export_lucidrains(ckpt) -> dict[str, np.ndarray]:
    """A ``mingru`` checkpoint as a ``minGRU`` state_dict, a ``mingru_lm`` one as a ``minLM`` state_dict.

    The original has no biases in its minGRU projections or head, candidate ``g``, a zero initial state and
    (``minLM``) pre-RMSNorm blocks with float32-epsilon norms; any other option raises ``CheckpointError``
    naming it.
    """
    cfg = ckpt.config
    if ckpt.model_type == "mingru":
        require(cfg, _NAME, candidate="g", default_state=0.0, bias=False)
        table = LUCIDRAINS_MINGRU_TABLE
    elif ckpt.model_type == "mingru_lm":
        require(cfg, _NAME, block="prenorm", candidate="g", default_state=0.0, mingru_bias=False, head_bias=False,
                norm_eps=_RMS_EPS)
        table = LUCIDRAINS_MINLM_TABLE
    else:
        raise CheckpointError(f"cannot export a {ckpt.model_type} model to {_NAME}: minGRU-pytorch has minGRU "
                              "(mingru) and minLM (mingru_lm) only")
    tensors, unknown = invert_table(table, ckpt.params)
    if unknown:
        raise CheckpointError(f"cannot export to {_NAME}: parameters {sorted(unknown)} have no minGRU-pytorch name")
    return tensors
