"""lucidrains gateloop-transformer (PyPI ``gateloop-transformer``): ``SimpleGateLoopLayer`` and ``GateLoopedAttention``
torch state_dicts, imported onto linrec's ``gateloop_mh`` and exported back.

Which layer a file holds is told by its tensor names: ``to_qkva.0.weight`` is a ``SimpleGateLoopLayer``,
``to_qkv.weight`` with ``to_a.0.weight`` a ``GateLoopedAttention``. Import and export only move numbers
(transposes, column blocks, the de-interleaving of ``to_a``'s ``(re, im)`` pairs), except the documented folding
of ``SimpleGateLoopLayer``'s RMSNorm gain ``γ`` into the projection kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table, invert_table

__all__ = [
    "GATELOOPED_ATTENTION_TABLE",
    "SIMPLE_GATELOOP_TABLE",
    "export_gateloop_transformer",
    "import_gateloop_transformer",
]

SIMPLE_GATELOOP_TABLE = (
    ORow("to_qkva.0.weight", "q_proj.kernel", transpose=True, take=(0, 3)),
    ORow("to_qkva.0.weight", "k_proj.kernel", transpose=True, take=(1, 3)),
    ORow("to_qkva.0.weight", "a_proj.kernel", transpose=True, take=(2, 3)),
    ORow("norm.gamma", "_prenorm.gamma"),
    ORow("maybe_post_ln.weight", "sub_norm.scale"),
    ORow("maybe_post_ln.bias", "sub_norm.bias"),
)

#: ``to_a.0.*`` are read after de-interleaving their ``(h c)`` rows (``c = 2``: re, im) into two blocks [re; im].
GATELOOPED_ATTENTION_TABLE = (
    ORow("to_qkv.weight", "q_proj.kernel", transpose=True, take=(0, 3)),
    ORow("to_qkv.weight", "k_proj.kernel", transpose=True, take=(1, 3)),
    ORow("to_qkv.weight", "v_proj.kernel", transpose=True, take=(2, 3)),
    ORow("to_a.0.weight", "a_re_proj.kernel", transpose=True, take=(0, 2)),
    ORow("to_a.0.weight", "a_im_proj.kernel", transpose=True, take=(1, 2)),
    ORow("to_a.0.bias", "a_re_proj.bias", take=(0, 2)),
    ORow("to_a.0.bias", "a_im_proj.bias", take=(1, 2)),
    ORow("maybe_sub_ln.weight", "sub_norm.scale"),
    ORow("maybe_sub_ln.bias", "sub_norm.bias"),
    ORow("to_gates.0.weight", "output_gate_proj.kernel", transpose=True),
    ORow("to_out.weight", "out_proj.kernel", transpose=True),
)

_TO_A = ("to_a.0.weight", "to_a.0.bias")


def _deinterleave(a: np.ndarray) -> np.ndarray:
    """``(2H, ...)`` rows ``(h c)`` (re, im per head) -> ``[re of every head; im of every head]``."""
    return np.ascontiguousarray(a.reshape(a.shape[0] // 2, 2, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


def _interleave(a: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_deinterleave`."""
    return np.ascontiguousarray(a.reshape(2, a.shape[0] // 2, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


def import_gateloop_transformer(tensors: Mapping[str, np.ndarray], model: str | None, overrides: Mapping[str, Any],
                                source: str):
    """A ``SimpleGateLoopLayer`` or ``GateLoopedAttention`` state_dict -> ``gateloop_mh`` ``Checkpoint``; a whole
    ``Transformer`` LM -> ``gateloop_mh_lm`` (``linrec.tools.originals.gateloop_transformer_lm``)."""
    if "to_qkva.0.weight" in tensors or ("to_qkv.weight" in tensors and "to_a.0.weight" in tensors):
        if model not in (None, "gateloop_mh"):
            raise CheckpointError(f"{source}: gateloop-transformer layers import as model 'gateloop_mh', not "
                                  f"{model!r}")
    if "to_qkva.0.weight" in tensors:
        return _import_simple(tensors, overrides, source)
    if "to_qkv.weight" in tensors and "to_a.0.weight" in tensors:
        return _import_attention(tensors, overrides, source)
    from linrec.tools.originals.gateloop_transformer_lm import import_transformer, is_transformer

    if is_transformer(tensors):
        return import_transformer(tensors, model, overrides, source)
    raise CheckpointError(f"{source}: neither a SimpleGateLoopLayer state_dict (no 'to_qkva.0.weight') nor a "
                          f"GateLoopedAttention one (no 'to_qkv.weight' + 'to_a.0.weight'); "
                          f"found {sorted(tensors)[:8]}")


#: constructor arguments of the originals that change gradients, memory or the scan's numerics only, not the
#: function the layer computes: accepted in ``--config`` and ignored
_NO_EFFECT = frozenset({"use_heinsen", "use_jax_associative_scan", "checkpoint_gate_looped_attn",
                        "frac_gradient_state_transition"})


def _original_args(overrides: Mapping[str, Any], told: Mapping[str, Any], layer: str, source: str) -> dict:
    """Accept the original's own constructor arguments in ``--config``: those the file tells must agree with it,
    those without effect on the outputs are dropped; the rest (linrec fields) pass through."""
    rest = {}
    for name, value in overrides.items():
        if name in told:
            if value != told[name]:
                raise CheckpointError(f"{source}: --config {name}={value!r} contradicts the file, which holds a "
                                      f"{layer} with {name}={told[name]!r}")
        elif name not in _NO_EFFECT:
            rest[name] = value
    return rest


def _import_simple(tensors, overrides, source):
    if overrides.get("reverse"):
        raise CheckpointError(f"{source}: SimpleGateLoopLayer(reverse=True) (the sequence run backwards) is not "
                              "offered by gateloop_mh")
    params, unknown = apply_table(SIMPLE_GATELOOP_TABLE, tensors)
    if "q_proj.kernel" not in params:
        raise CheckpointError(f"{source}: 'to_qkva.0.weight' does not split into the q, kv and a blocks")
    dim = params["q_proj.kernel"].shape[0]
    told = dict(dim=dim, prenorm="_prenorm.gamma" in params, post_ln="sub_norm.scale" in params, reverse=False)
    overrides = _original_args(overrides, told, "SimpleGateLoopLayer", source)
    dtype = params["q_proj.kernel"].dtype
    notes = [f"SimpleGateLoopLayer({dim}) as gateloop_mh with {dim} SISO heads: kv from k_proj, "
             "v_proj = 0·x + 1, out_proj = identity; reverse=True is not stored in the file (refused if given); "
             "use_heinsen/use_jax_associative_scan are other scans of the same function"]
    fields = dict(num_heads=dim, d_key=1, d_value=1, qkv_bias=True, gate="real", gate_granularity="key",
                  input_norm="none", sub_norm="none")
    gamma = params.pop("_prenorm.gamma", None)
    if gamma is not None:
        if gamma.shape != (dim,):
            raise CheckpointError(f"{source}: norm.gamma has shape {gamma.shape}, expected ({dim},)")
        for name in ("q_proj.kernel", "k_proj.kernel", "a_proj.kernel"):  # (x̂ γ) W = x̂ (diag(γ) W)
            params[name] = (gamma.astype(np.float64)[:, None] * params[name].astype(np.float64)).astype(dtype)
        fields["input_norm"] = "rms"
        notes.append("prenorm=True: input_norm='rms' (x / max(‖x‖, 1e-12) · √dim, part of the layer); its gain γ "
                     "is folded into the q/kv/a kernels")
    if "sub_norm.scale" in params:
        fields["sub_norm"] = "layernorm"
        notes.append("post_ln=True: sub_norm='layernorm' (eps 1e-5) on the read-out")
    zeros, ones = np.zeros(dim, dtype), np.ones(dim, dtype)
    params.update({
        "q_proj.bias": zeros, "k_proj.bias": zeros.copy(), "v_proj.kernel": np.zeros((dim, dim), dtype),
        "v_proj.bias": ones, "a_proj.bias": zeros.copy(), "out_proj.kernel": np.eye(dim, dtype=dtype),
        "out_proj.bias": zeros.copy(),
    })
    return _checkpoint("gateloop_mh", params, fields, overrides, source, notes, unknown)


def _attention_canonical(tensors: Mapping[str, np.ndarray], source: str, where: str = ""):
    """A ``GateLoopedAttention`` state_dict -> ``(canonical gateloop_mh params, unknown names, the constructor
    arguments the file tells, notes)``; ``where`` prefixes the names in messages (an LM's block)."""
    tensors = dict(tensors)
    for name in _TO_A:
        if name in tensors:
            value = np.asarray(tensors[name])
            if value.ndim == 0 or value.shape[0] % 2:
                raise CheckpointError(f"{source}: {where}{name} has shape {value.shape}; its rows must be "
                                      "(re, im) pairs")
            tensors[name] = _deinterleave(value)
    params, unknown = apply_table(GATELOOPED_ATTENTION_TABLE, tensors)
    for name in ("q_proj.kernel", "a_re_proj.kernel", "a_re_proj.bias"):
        if name not in params:
            raise CheckpointError(f"{source}: {where}GateLoopedAttention needs 'to_qkv.weight' and "
                                  f"'to_a.0.weight'/'to_a.0.bias'; found {sorted(tensors)[:8]}")
    dim, inner = params["q_proj.kernel"].shape
    heads = params["a_re_proj.kernel"].shape[1]
    dtype = params["q_proj.kernel"].dtype
    if heads < 1 or inner % heads:
        raise CheckpointError(f"{source}: {where}to_a.0.weight gives {heads} heads, which does not divide "
                              f"dim_inner={inner} ({where}to_qkv.weight)")
    gating = "output_gate_proj.kernel" in params
    notes = []
    if "out_proj.kernel" not in params:
        if inner != dim or gating:
            raise CheckpointError(f"{source}: no '{where}to_out.weight', but GateLoopedAttention has one when "
                                  f"dim_inner != dim ({inner} vs {dim}) or add_swish_gating=True")
        params["out_proj.kernel"] = np.eye(dim, dtype=dtype)
        notes.append("no to_out (dim_inner == dim, add_swish_gating=False): out_proj = identity")
    params["out_proj.bias"] = np.zeros(dim, dtype)
    told = dict(dim=dim, heads=heads, dim_inner=inner, sub_ln="sub_norm.scale" in params, add_swish_gating=gating)
    return params, unknown, told, notes


def _import_attention(tensors, overrides, source):
    params, unknown, told, extra_notes = _attention_canonical(tensors, source)
    overrides = _original_args(overrides, told, "GateLoopedAttention", source)
    dim, heads, inner, gating, sub_ln = (told[k] for k in ("dim", "heads", "dim_inner", "add_swish_gating",
                                                            "sub_ln"))
    notes = [f"GateLoopedAttention(dim={dim}, heads={heads}, dim_inner={inner}) as gateloop_mh: "
             "gate='complex', gate_parametrization='cartesian' (a = σ(|z|)·z/|z|), one gate per head, Re(S)ᵀq read-out"
             + (", sub_norm='layernorm'" if sub_ln else "")
             + (", output_gate='silu'" if gating else ""),
             "frac_gradient_state_transition and checkpoint_gate_looped_attn change gradients or memory only, "
             "not outputs (not stored in the file); ablate_complex/ablate_state_transition are not offered",
             *extra_notes]
    fields = dict(num_heads=heads, d_key=inner // heads, d_value=inner // heads, qkv_bias=False, gate="complex",
                  gate_parametrization="cartesian", gate_granularity="head", complex_output="real",
                  input_norm="none", sub_norm="layernorm" if sub_ln else "none",
                  output_gate="silu" if gating else "none")
    return _checkpoint("gateloop_mh", params, fields, overrides, source, notes, unknown)


# ---------------------------------------------------------------- export


def _refuse(option: str, why: str) -> CheckpointError:
    return CheckpointError(f"gateloop-transformer export: {option}: {why}")


def _require(params: Mapping[str, np.ndarray], name: str, value: np.ndarray, why: str) -> None:
    if not np.array_equal(np.asarray(params[name]), value):
        raise _refuse(name, why)


def export_gateloop_transformer(ckpt: Any) -> dict[str, np.ndarray]:
    """A ``gateloop_mh`` checkpoint as a ``SimpleGateLoopLayer`` or ``GateLoopedAttention`` state_dict.

    Which original it becomes follows the config: a real gate with one SISO head per channel
    (``num_heads = d_model``, ``d_key = d_value = 1``) is a ``SimpleGateLoopLayer(dim, prenorm=input_norm == 'rms',
    post_ln=sub_norm == 'layernorm')``; a complex ``gate_parametrization='cartesian'`` gate with one gate per head
    is a ``GateLoopedAttention(dim, heads=num_heads, dim_inner=num_heads*d_value, add_swish_gating=output_gate ==
    'silu', sub_ln=sub_norm == 'layernorm')``. Numbers are copied bit-exact (the inverse of the import tables).

    Norm gain: linrec folds ``SimpleGateLoopLayer``'s learnable RMSNorm gain ``γ`` into the q/kv/a kernels, so
    the export writes ``norm.gamma = 1`` and the folded kernels; the original's outputs are the same (its
    ``γ`` is then 1 where it was ``γ`` before, and the kernels carry it).

    Raises ``CheckpointError`` naming the config option or parameter the original does not have.
    """
    if ckpt.model_type == "gateloop_mh_lm":
        from linrec.tools.originals.gateloop_transformer_lm import export_transformer

        return export_transformer(ckpt)
    if ckpt.model_type != "gateloop_mh":
        raise CheckpointError(f"gateloop-transformer export: the model is {ckpt.model_type!r}; only 'gateloop_mh' "
                              "(SimpleGateLoopLayer / GateLoopedAttention) and 'gateloop_mh_lm' (Transformer) map "
                              "onto it")
    cfg, params = ckpt.config, {k: np.asarray(v) for k, v in ckpt.params.items()}
    if cfg.gate == "real":
        return _export_simple(cfg, params)
    return _export_attention(cfg, params)


def _export_simple(cfg, params) -> dict[str, np.ndarray]:
    d = cfg.d_model
    if cfg.d_key != 1 or cfg.d_value != 1 or cfg.num_heads != d:
        raise _refuse("num_heads/d_key/d_value", f"a real gate exports as SimpleGateLoopLayer, which has one SISO "
                      f"head per channel (num_heads=d_model={d}, d_key=d_value=1); got num_heads={cfg.num_heads}, "
                      f"d_key={cfg.d_key}, d_value={cfg.d_value}")
    if cfg.output_gate != "none":
        raise _refuse(f"output_gate={cfg.output_gate!r}", "SimpleGateLoopLayer has no output gate")
    if not cfg.qkv_bias:
        raise _refuse("qkv_bias=False", "SimpleGateLoopLayer's kv is one projection; linrec holds it as "
                      "k_proj with v_proj = 0·x + 1, which needs qkv_bias=True")
    dtype = params["q_proj.kernel"].dtype
    zeros = np.zeros(d, dtype)
    _require(params, "v_proj.kernel", np.zeros((d, d), dtype), "must be 0 (kv is k_proj alone)")
    _require(params, "v_proj.bias", np.ones(d, dtype), "must be 1 (kv is k_proj alone)")
    for name in ("q_proj.bias", "k_proj.bias", "a_proj.bias"):
        _require(params, name, zeros, "must be 0: SimpleGateLoopLayer's to_qkva has no bias")
    _require(params, "out_proj.kernel", np.eye(d, dtype=dtype), "must be the identity: SimpleGateLoopLayer has "
             "no output projection")
    _require(params, "out_proj.bias", zeros, "must be 0: SimpleGateLoopLayer has no output projection")
    keep = {k: v for k, v in params.items() if k in ("q_proj.kernel", "k_proj.kernel", "a_proj.kernel",
                                                      "sub_norm.scale", "sub_norm.bias")}
    if cfg.input_norm == "rms":
        keep["_prenorm.gamma"] = np.ones(d, dtype)  # γ = 1: the gain is already folded into the kernels
    out, _ = invert_table(SIMPLE_GATELOOP_TABLE, keep)
    return out


def _export_attention(cfg, params) -> dict[str, np.ndarray]:
    if cfg.gate_parametrization != "cartesian":
        raise _refuse(f"gate_parametrization={cfg.gate_parametrization!r}", "GateLoopedAttention's complex gate is "
                      "σ(|z|)·z/|z| from one complex logit (gate_parametrization='cartesian')")
    if cfg.gate_rows != 1:
        raise _refuse(f"gate_granularity={cfg.gate_granularity!r}", "GateLoopedAttention has one gate per head "
                      "(gate_granularity='head' or d_key=1)")
    if cfg.complex_output != "real":
        raise _refuse(f"complex_output={cfg.complex_output!r}", "GateLoopedAttention reads out Re(S)ᵀq")
    if cfg.qkv_bias:
        raise _refuse("qkv_bias=True", "GateLoopedAttention's to_qkv has no bias")
    if cfg.d_key != cfg.d_value:
        raise _refuse("d_key/d_value", f"GateLoopedAttention's heads are square (d_key=d_value), got "
                      f"d_key={cfg.d_key}, d_value={cfg.d_value}")
    if cfg.input_norm != "none":
        raise _refuse(f"input_norm={cfg.input_norm!r}", "GateLoopedAttention has no input normalisation")
    d, inner = cfg.d_model, cfg.num_heads * cfg.d_value
    dtype = params["q_proj.kernel"].dtype
    _require(params, "out_proj.bias", np.zeros(d, dtype), "must be 0: GateLoopedAttention's to_out has no bias")
    has_to_out = inner != d or cfg.output_gate != "none"
    keep = {k: v for k, v in params.items() if k != "out_proj.bias"}
    if not has_to_out:
        _require(params, "out_proj.kernel", np.eye(d, dtype=dtype), "must be the identity: GateLoopedAttention("
                 "dim_inner=dim, add_swish_gating=False) has no to_out")
        del keep["out_proj.kernel"]
    out, unknown = invert_table(GATELOOPED_ATTENTION_TABLE, keep)
    if unknown:
        raise _refuse(", ".join(sorted(unknown)), "GateLoopedAttention has no such parameter")
    for name in _TO_A:
        out[name] = _interleave(out[name])
    return out
