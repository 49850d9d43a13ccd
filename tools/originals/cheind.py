"""cheind/mingru ``MinGRU`` v1.3 / v1.4 and ``MinGRUCell`` (torch state_dicts): import and export."""

from __future__ import annotations

import re

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.original_args import check_shapes_agree, rename_args, require, same, shaped_fields
from linrec.tools.originals.table import ORow, apply_table, invert_table

CHEIND_V13_TABLE = (
    ORow("linear_gate_hidden.{l}.weight", "layers.{l}.mingru.proj.kernel", transpose=True),
    ORow("linear_gate_hidden.{l}.bias", "layers.{l}.mingru.proj.bias"),
    # created whenever residual=True (even when input_dims == hidden_dims), added to layer 0's output only
    ORow("input_residual_align.weight", "layers.0.res_align.kernel", transpose=True),
    ORow("input_residual_align.bias", "layers.0.res_align.bias"),
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

_NAME = "cheind-mingru"
#: constructor arguments that change nothing in the imported model
_NO_EFFECT = {"batch_first": ("", same), "device": ("", same), "dtype": ("", same)}


def _int_or_single(value) -> int:
    """``hidden_sizes`` of a one-layer model: an int or a one-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"a single minGRU layer has one hidden size, got {list(value)}")
        value = value[0]
    return int(value)


def _arg_names(version: str, target: str, n_layers: int):
    """cheind's constructor argument names (``--config``) -> linrec fields of ``target``."""
    if target == "mingru":  # one plain layer: MinGRU(input_size, hidden_sizes) / MinGRUCell(input_size, hidden_size)
        return {"input_size": ("d_model", int), "input_dims": ("d_model", int),
                "hidden_sizes": ("d_inner", _int_or_single), "hidden_size": ("d_inner", _int_or_single),
                "hidden_dims": ("d_inner", int), **_NO_EFFECT}
    if version == "v1.3":  # MinGRU(input_dims, hidden_dims, *, num_layers, dropout, bias, batch_first, residual)
        return {"input_dims": ("input_size", int),
                "hidden_dims": ("hidden_sizes", lambda h: (int(h),) * n_layers), **_NO_EFFECT}
    return dict(_NO_EFFECT)  # v1.4's names (input_size, hidden_sizes, bias, norm, dropout, residual) are linrec's


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
    notes = [f"cheind/mingru {version}: candidate g, default state g(0) = 0.5, columns [gate | hidden]"]
    fields = dict(candidate="g", default_state=0.5)
    n_layers = 1 + max([int(m.group(1)) for k in params if (m := re.match(r"layers\.(\d+)\.", k))] or [0])
    overrides = dict(overrides)
    if "num_layers" in overrides:  # v1.3's argument: the file tells it; it must agree
        num_layers = overrides.pop("num_layers")
        if num_layers != n_layers:
            raise CheckpointError(f"{source}: --config num_layers={num_layers!r} (cheind argument) disagrees with "
                                  f"the checkpoint, which has {n_layers} layer(s)")
    v13_align = version == "v1.3" and "layers.0.res_align.kernel" in params
    if version == "v1.3":
        notes.append("v1.3's dropout (unscaled, also active in eval) is a training-time bug, not reproduced")
        if v13_align:
            fields.update(residual=True, residual_align="first",
                          residual_align_bias="layers.0.res_align.bias" in params)
            notes.append("v1.3 residual: input_residual_align (a Linear, bias as the layers) on layer 0 only, "
                         "identity residual on later layers (residual_align='first')")
        elif overrides.get("residual"):
            raise CheckpointError(f"{source}: --config residual=true, but this v1.3 state_dict has no "
                                  "input_residual_align (v1.3 creates it whenever residual=True)")
    extras = any(".norm." in k or ".res_align." in k for k in params)
    stack_options = any(overrides.get(k) for k in ("residual", "norm", "dropout"))
    plain = table is CHEIND_CELL_TABLE or (n_layers == 1 and not extras and not stack_options)
    target = model or ("mingru" if plain else "mingru_stack")
    names = _arg_names(version, target, n_layers)
    given, arg_notes = rename_args(overrides, names, source, "cheind/mingru")
    notes.extend(arg_notes)
    if target == "mingru":
        if not plain:
            raise CheckpointError(f"{source}: this cheind MinGRU has {n_layers} layers"
                                  f"{' with norm/residual parameters' if extras else ''}: import it as mingru_stack")
        params = {k.removeprefix("layers.0.mingru."): v for k, v in params.items()}
    elif table is CHEIND_CELL_TABLE:
        params = {f"layers.0.mingru.{k}": v for k, v in params.items()}
    check_shapes_agree(given, shaped_fields(target, params), source, "cheind/mingru", names, overrides)
    if version == "v1.4" and target == "mingru_stack" and "residual" not in given and not any(
            ".res_align." in k for k in params):
        notes.append("v1.4 residual=True leaves no parameters when sizes match; pass --config "
                     "'{\"residual\": true}' if the original used it")
    return _checkpoint(target, params, fields, given, source, notes, unknown)


def export_cheind(ckpt) -> dict[str, np.ndarray]:
    """A ``mingru`` / ``mingru_stack`` checkpoint as a cheind/mingru state_dict (flat names -> arrays).

    ``mingru``: v1.4 ``MinGRU(input_size, hidden_size)`` (``layers.0.gate_hidden.*``); ``mingru_stack`` with
    ``residual_align='first'`` (and ``residual``): v1.3 ``MinGRU(input_dims, hidden_dims, num_layers=L,
    residual=True)``; any other stack: v1.4 ``MinGRU(input_size, hidden_sizes, norm=..., residual=...)``.
    Options cheind does not have raise ``CheckpointError`` naming them.
    """
    cfg = ckpt.config
    if ckpt.model_type == "mingru":
        require(cfg, _NAME, candidate="g", default_state=0.5, out_proj=False)
        params = {f"layers.0.mingru.{k}": v for k, v in ckpt.params.items()}
        table = CHEIND_V14_TABLE
    elif ckpt.model_type == "mingru_stack":
        require(cfg, _NAME, candidate="g", default_state=0.5)
        params = dict(ckpt.params)
        if cfg.residual and cfg.residual_align == "first":  # v1.3: one Linear(I, H, bias=bias) on layer 0
            require(cfg, _NAME, norm=False)
            if cfg.residual_align_bias != cfg.bias:
                raise CheckpointError(f"cannot export to {_NAME}: residual_align_bias={cfg.residual_align_bias!r} "
                                      f"with bias={cfg.bias!r}; v1.3's input_residual_align has a bias exactly when "
                                      "its layers do (Linear(input_dims, hidden_dims, bias=bias))")
            table = CHEIND_V13_TABLE
        else:
            require(cfg, _NAME, residual_align_bias=lambda b: not (cfg.residual and b))
            if cfg.norm:
                require(cfg, _NAME, norm_eps=1e-5)  # nn.LayerNorm's default, which v1.4 uses
            table = CHEIND_V14_TABLE
    else:
        raise CheckpointError(f"cannot export a {ckpt.model_type} model to {_NAME}: cheind/mingru has minGRU "
                              "layers and stacks only (mingru, mingru_stack)")
    tensors, unknown = invert_table(table, params)
    if unknown:
        raise CheckpointError(f"cannot export to {_NAME}: parameters {sorted(unknown)} have no cheind name")
    return tensors
