"""lucidrains gateloop-transformer ``Transformer`` (the whole LM, torch state_dict) <-> linrec ``gateloop_mh_lm``.

The ``Transformer``'s blocks are ``ModuleList([PreNorm|PostNorm(GateLoopedAttention), PreNorm|PostNorm(FeedForward)])``:
``layers.{l}.0.fn.*`` is a ``GateLoopedAttention`` (imported by the layer's own table, under ``layers.{l}.mixer.``),
``layers.{l}.0.norm``/``layers.{l}.1.norm`` the block norms (``gamma``: lucidrains' RMSNorm, ``weight``/``bias``:
``nn.LayerNorm`` with ``post_ln_norm=True``), ``layers.{l}.1.fn.{0,2}`` the feed-forward, ``to_logits`` the final
RMSNorm and the head. Import and export only move numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.gateloop_transformer import (
    _TO_A,
    GATELOOPED_ATTENTION_TABLE,
    _deinterleave,
    _interleave,
)
from linrec.tools.originals.original_args import check_shapes_agree, rename_args, same, shaped_fields
from linrec.tools.originals.table import ORow, apply_table, invert_table

__all__ = ["TRANSFORMER_POSTNORM_TABLE", "TRANSFORMER_PRENORM_TABLE", "export_transformer", "import_transformer",
           "is_transformer"]

_NAME = "gateloop-transformer"
_L = "layers.{l}"
_MIXER = tuple(ORow(f"{_L}.0.fn.{r.original}", f"{_L}.mixer.{r.canonical}", r.transpose, take=r.take)
               for r in GATELOOPED_ATTENTION_TABLE)
_FF = (
    ORow(f"{_L}.1.fn.0.weight", f"{_L}.ff.fc1.kernel", transpose=True),
    ORow(f"{_L}.1.fn.0.bias", f"{_L}.ff.fc1.bias"),
    ORow(f"{_L}.1.fn.2.weight", f"{_L}.ff.fc2.kernel", transpose=True),
    ORow(f"{_L}.1.fn.2.bias", f"{_L}.ff.fc2.bias"),
)
#: ``post_ln_norm=False`` (the default): PreNorm with lucidrains' RMSNorm (``gamma``), a final RMSNorm
TRANSFORMER_PRENORM_TABLE = (
    ORow("token_emb.weight", "embed.embedding"),
    ORow(f"{_L}.0.norm.gamma", f"{_L}.norm.scale"),
    *_MIXER,
    ORow(f"{_L}.1.norm.gamma", f"{_L}.ff_norm.scale"),
    *_FF,
    ORow("to_logits.0.gamma", "final_norm.scale"),
    ORow("to_logits.1.weight", "head.kernel", transpose=True),
)
#: ``post_ln_norm=True``: PostNorm with ``nn.LayerNorm``, no final norm (``to_logits`` is the bare head)
TRANSFORMER_POSTNORM_TABLE = (
    ORow("token_emb.weight", "embed.embedding"),
    ORow(f"{_L}.0.norm.weight", f"{_L}.norm.scale"),
    ORow(f"{_L}.0.norm.bias", f"{_L}.norm.bias"),
    *_MIXER,
    ORow(f"{_L}.1.norm.weight", f"{_L}.ff_norm.scale"),
    ORow(f"{_L}.1.norm.bias", f"{_L}.ff_norm.bias"),
    *_FF,
    ORow("to_logits.weight", "head.kernel", transpose=True),
)


def _only(value: bool, arg: str, why: str):
    def convert(given):
        if bool(given) != value:
            raise ValueError(f"{arg}={given!r} cannot map onto gateloop_mh_lm: {why}")
        return given

    return convert


def _bool_choice(on: str, off: str):
    def convert(given):
        if not isinstance(given, (bool, np.bool_)):
            raise ValueError(f"must be a bool, got {given!r}")
        return on if given else off

    return convert


#: ``Transformer(dim, *, num_tokens, depth, ...)``: the original argument -> (linrec field, conversion);
#: ``""``: no effect on the imported model (CausalFullAttention-only options, gradient/memory options)
TRANSFORMER_ARGS = {
    "num_tokens": ("vocab_size", int), "dim": ("d_model", int), "depth": ("n_layers", int),
    "gate_loop_heads": ("num_heads", same), "dim_gate_looped_attn": ("d_inner", same), "ff_mult": ("ff_mult", int),
    "attn_add_swish_gating": ("output_gate", _bool_choice("silu", "none")),
    "sub_ln": ("sub_norm", _bool_choice("layernorm", "none")),
    "post_ln_norm": ("block", _bool_choice("postnorm", "prenorm")),
    "use_gate_looped_attn": ("", _only(True, "use_gate_looped_attn", "its CausalFullAttention (softmax or "
                                       "data-dependent relative-position attention) blocks are not a recurrence")),
    "ablate_state_transition": ("", _only(False, "ablate_state_transition", "a = 1 (no decay) is not a value of the "
                                          "cartesian gate σ(|z|)·z/|z|")),
    "checkpoint_gate_looped_attn": ("", same), "frac_gradient_state_transition": ("", same),
    "dim_head": ("", same), "heads": ("", same), "attn_softmax_normalize": ("", same),
    "data_dependent_rel_pos": ("", same), "rotary_emb": ("", same),
}


def is_transformer(tensors: Mapping[str, Any]) -> bool:
    """Whether a state_dict is a ``Transformer`` LM (token embedding and ``layers.{l}.{0,1}`` blocks)."""
    return "token_emb.weight" in tensors and any(re.match(r"layers\.\d+\.[01]\.", k) for k in tensors)


def import_transformer(tensors: Mapping[str, np.ndarray], model: str | None, overrides: Mapping[str, Any],
                       source: str):
    """A ``Transformer`` state_dict -> ``gateloop_mh_lm`` ``Checkpoint``; refuses CausalFullAttention blocks."""
    if model not in (None, "gateloop_mh_lm"):
        raise CheckpointError(f"{source}: a gateloop-transformer Transformer imports as model 'gateloop_mh_lm', "
                              f"not {model!r}")
    attention = sorted(k for k in tensors if re.match(r"layers\.\d+\.0\.fn\.to_qkv\.0\.weight$", k))
    if attention:
        raise CheckpointError(f"{source}: a Transformer with use_gate_looped_attn=False ({attention[0]} is a "
                              "CausalFullAttention block): softmax / data-dependent relative-position attention is "
                              "not a recurrence and cannot map onto gateloop_mh_lm")
    post = "layers.0.0.norm.weight" in tensors
    table = TRANSFORMER_POSTNORM_TABLE if post else TRANSFORMER_PRENORM_TABLE
    tensors = dict(tensors)
    for key in list(tensors):
        if re.fullmatch(r"layers\.\d+\.0\.fn\.to_a\.0\.(weight|bias)", key):
            value = np.asarray(tensors[key])
            if value.ndim == 0 or value.shape[0] % 2:
                raise CheckpointError(f"{source}: {key} has shape {value.shape}; its rows must be (re, im) pairs")
            tensors[key] = _deinterleave(value)
    params, unknown = apply_table(table, tensors)
    if "embed.embedding" not in params or "layers.0.mixer.q_proj.kernel" not in params:
        raise CheckpointError(f"{source}: not a gateloop-transformer Transformer state_dict (needs "
                              f"'token_emb.weight' and 'layers.0.0.fn.to_qkv.weight'); found {sorted(tensors)[:8]}")
    overrides = dict(overrides)
    ablate_complex = overrides.pop("ablate_complex", False)  # the importer zeroes the imaginary gate logits
    if not isinstance(ablate_complex, (bool, np.bool_)):
        raise CheckpointError(f"{source}: --config ablate_complex={ablate_complex!r} must be a bool")
    given, notes = rename_args(overrides, TRANSFORMER_ARGS, source, "Transformer")
    if params["embed.embedding"].ndim != 2:
        raise CheckpointError(f"{source}: token_emb.weight must be a 2-D (num_tokens, dim) embedding, got shape "
                              f"{params['embed.embedding'].shape}")
    dim = params["embed.embedding"].shape[1]
    dtype = params["embed.embedding"].dtype
    n_layers = 1 + max(int(m.group(1)) for k in params if (m := re.match(r"layers\.(\d+)\.", k)))
    gating = "layers.0.mixer.output_gate_proj.kernel" in params
    for l in range(n_layers):
        p = f"layers.{l}.mixer."
        if p + "q_proj.kernel" not in params or p + "a_re_proj.kernel" not in params:
            raise CheckpointError(f"{source}: block {l} has no GateLoopedAttention ('layers.{l}.0.fn.to_qkv.weight' "
                                  f"and 'layers.{l}.0.fn.to_a.0.weight')")
        if p + "out_proj.kernel" not in params:
            inner = params[p + "q_proj.kernel"].shape[1]
            if inner != dim or gating:
                raise CheckpointError(f"{source}: no 'layers.{l}.0.fn.to_out.weight', but GateLoopedAttention has one "
                                      f"when dim_gate_looped_attn != dim ({inner} vs {dim}) or attn_add_swish_gating")
            params[p + "out_proj.kernel"] = np.eye(dim, dtype=dtype)
        params[p + "out_proj.bias"] = np.zeros(dim, dtype)
        if ablate_complex:
            for name in ("a_im_proj.kernel", "a_im_proj.bias"):
                params[p + name] = np.zeros_like(params[p + name])
    fields = dict(block="postnorm" if post else "prenorm",
                  output_gate="silu" if gating else "none",
                  sub_norm="layernorm" if "layers.0.mixer.sub_norm.scale" in params else "none")
    check_shapes_agree(given, shaped_fields("gateloop_mh_lm", params), source, "Transformer", TRANSFORMER_ARGS,
                       overrides)
    notes = [f"gateloop-transformer Transformer(dim={dim}, depth={n_layers}) as gateloop_mh_lm "
             f"(block={fields['block']!r}): every GateLoopedAttention as gateloop_mh with the complex cartesian gate "
             "a = σ(|z|)·z/|z| per head, to_out as out_proj (zero bias; the identity where the original has none)",
             "checkpoint_gate_looped_attn and frac_gradient_state_transition change gradients or memory only; the "
             "CausalFullAttention options (dim_head, heads, rotary_emb, ...) are unused with GateLoopedAttention",
             *(["ablate_complex=True: the imaginary gate logits (a_im_proj) are zeroed, so a = σ(|Re z|)·sign(Re z) "
                "as in the original"] if ablate_complex else []),
             *notes]
    return _checkpoint("gateloop_mh_lm", params, fields, given, source, notes, unknown)


def _refuse(option: str, why: str) -> CheckpointError:
    return CheckpointError(f"cannot export to {_NAME}: the linrec model has {option}, {why}")


def export_transformer(ckpt: Any) -> dict[str, np.ndarray]:
    """A ``gateloop_mh_lm`` checkpoint as a ``Transformer(dim, num_tokens=V, depth=L, gate_loop_heads=H,
    dim_gate_looped_attn=d_inner, ff_mult=…, attn_add_swish_gating=output_gate == 'silu', sub_ln=sub_norm ==
    'layernorm', post_ln_norm=block == 'postnorm')`` state_dict, numbers copied bit-exact.

    Raises ``CheckpointError`` naming the parameter when an ``out_proj`` the original does not have is not the
    identity with zero bias (the original's ``to_out`` has no bias; with ``d_inner == d_model`` and no output
    gate it has no ``to_out`` at all).
    """
    if ckpt.model_type != "gateloop_mh_lm":
        raise CheckpointError(f"cannot export a {ckpt.model_type} model as a {_NAME} Transformer (gateloop_mh_lm "
                              "only; a gateloop_mh layer exports as GateLoopedAttention/SimpleGateLoopLayer)")
    cfg = ckpt.config
    params = {k: np.asarray(v) for k, v in ckpt.params.items()}
    d = cfg.d_model
    has_to_out = cfg.d_inner != d or cfg.output_gate != "none"
    keep = {}
    for name, value in params.items():
        if re.fullmatch(r"layers\.\d+\.mixer\.out_proj\.bias", name):
            if np.any(value != 0):
                raise _refuse(f"a nonzero {name}", "but GateLoopedAttention's to_out has no bias")
            continue
        if re.fullmatch(r"layers\.\d+\.mixer\.out_proj\.kernel", name) and not has_to_out:
            if not np.array_equal(value, np.eye(d, dtype=value.dtype)):
                raise _refuse(f"{name} other than the identity", "but GateLoopedAttention(dim_inner=dim, "
                              "add_swish_gating=False) has no to_out")
            continue
        keep[name] = value
    table = TRANSFORMER_POSTNORM_TABLE if cfg.block == "postnorm" else TRANSFORMER_PRENORM_TABLE
    out, unknown = invert_table(table, keep)
    if unknown:
        raise _refuse(f"parameters {sorted(unknown)[:4]}", "which the Transformer does not have")
    for key in list(out):
        if any(key.endswith(".0.fn." + n) for n in _TO_A):
            out[key] = _interleave(out[key])
    return out
