"""lucidrains gateloop-transformer ``SimpleGateLoopLayer`` (torch state_dict)."""

from __future__ import annotations

import numpy as np

from linrec.tools.formats import CheckpointError
from linrec.tools.originals.common import _checkpoint
from linrec.tools.originals.table import ORow, apply_table

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
