"""What every importer shares: building the checkpoint (config inference, notes) and the unknown-tensor error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError


def _checkpoint(model: str, params: dict, config_fields: dict, overrides: Mapping[str, Any], source: str,
                notes: list[str], unknown: Sequence[str], untold: Sequence[str] = ()):
    """Build the config (inferred fields < importer's compat fields < user overrides) and the Checkpoint.

    ``untold`` are config fields the file cannot tell: those the user did not give are listed in a note
    with the value they took.
    """
    from linrec.tools.convert import Checkpoint, build_config, check_params
    from linrec.tools.layout import get_layout

    layout = get_layout(model)
    shapes = {k: tuple(np.shape(v)) for k, v in params.items()}
    try:
        inferred = layout.infer(shapes, {**config_fields, **overrides}) if layout.infer else {}
    except Exception as err:  # LayoutError or a malformed tree
        raise CheckpointError(f"{source}: cannot infer the {model} config: {err}") from None
    cfg, _ = build_config(layout, shapes, {**inferred, **config_fields, **overrides})
    check_params(model, cfg, params, unknown=unknown, where=f"{source} checkpoint")
    defaulted = [f"{name}={getattr(cfg, name)!r}" for name in untold if name not in overrides]
    if defaulted:
        notes = [*notes, f"not stored in the file, took (override with --config): {', '.join(defaulted)}"]
    return Checkpoint(model, cfg, params, source, notes)


def _unknown_error(source: str, unknown: Sequence[str], hint: str = "") -> None:
    if unknown:
        raise CheckpointError(f"{source}: tensor(s) {sorted(unknown)} are not part of any model this importer "
                              f"knows{hint}")
