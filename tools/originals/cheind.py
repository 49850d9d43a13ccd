"""cheind/mingru ``MinGRU`` v1.3 / v1.4 and ``MinGRUCell`` (torch state_dicts)."""

from __future__ import annotations

import re

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table

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
