"""What the minGRU originals' importers and exporters share: the originals' own constructor argument names in
``--config``, and the export-time check that a linrec config is one the original can express."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError

#: an original argument -> the linrec field it sets, and how its value becomes that field's value
ArgMap = Mapping[str, tuple[str, Callable[[Any], Any]]]


def same(value: Any) -> Any:
    """The original's value is the linrec value."""
    return value


def shaped_fields(model: str, params: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The config fields the canonical parameters' shapes determine (the layout's inference, nothing given)."""
    from linrec.tools.layout import LayoutError, get_layout

    layout = get_layout(model)
    try:
        return dict(layout.infer({k: tuple(np.shape(v)) for k, v in params.items()}, {})) if layout.infer else {}
    except (LayoutError, ArithmeticError, KeyError, ValueError):  # malformed: the checkpoint build reports it
        return {}


def rename_args(overrides: Mapping[str, Any], names: ArgMap, source: str, original: str) -> tuple[dict, list[str]]:
    """``--config`` with the original's constructor argument names replaced by linrec field names.

    ``names`` maps an original argument to ``(linrec field, convert)``; a field of ``""`` marks an argument
    with no effect on the imported model (it is dropped and the note says so). The original's name and the
    linrec name given together with different values raise naming both. Returns ``(overrides, notes)``.
    """
    out = {k: v for k, v in overrides.items() if k not in names}
    notes, renamed = [], []
    for arg, value in overrides.items():
        if arg not in names:
            continue
        field, convert = names[arg]
        try:
            new = convert(value)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: --config {arg}={value!r} ({original} argument"
                                  f"{f' for linrec {field}' if field else ''}): {err}") from None
        if not field:
            notes.append(f"{original} argument {arg}={value!r} changes no parameter of the imported model: ignored")
            continue
        if field in out and field != arg and not _equal(out[field], new):
            raise CheckpointError(f"{source}: --config gives {original}'s {arg}={value!r} and linrec's "
                                  f"{field}={out[field]!r}, which disagree; give one of them")
        out[field] = new
        renamed.append(f"{arg} -> {field}")
    if renamed:
        notes.append(f"{original} argument names in --config: {', '.join(renamed)}")
    return out, notes


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return tuple(np.atleast_1d(a).tolist()) == tuple(np.atleast_1d(b).tolist())
    return a == b


def check_shapes_agree(given: Mapping[str, Any], shaped: Mapping[str, Any], source: str, original: str,
                       names: ArgMap, overrides: Mapping[str, Any]) -> None:
    """Every original argument whose linrec field the shapes determine (``shaped``) must agree with them."""
    for arg, value in overrides.items():
        if arg not in names or not names[arg][0]:
            continue
        field = names[arg][0]
        if field not in given:
            continue
        if field == "expansion" and "d_model" in shaped:  # the shapes pin only int(d_model * expansion)
            width = shaped.get("d_inner") or int(shaped["d_model"] * shaped.get("expansion", 1.0))
            if int(shaped["d_model"] * given[field]) != width:
                raise CheckpointError(f"{source}: --config {arg}={value!r} ({original} argument, linrec expansion) "
                                      f"gives a state width int({shaped['d_model']} * {given[field]!r}) = "
                                      f"{int(shaped['d_model'] * given[field])}, but the checkpoint's is {width}")
            continue
        if field in shaped and not _equal(given[field], shaped[field]):
            raise CheckpointError(f"{source}: --config {arg}={value!r} ({original} argument, linrec {field}="
                                  f"{given[field]!r}) disagrees with the checkpoint's shapes, which give "
                                  f"{field}={shaped[field]!r}")


def require(config: Any, original: str, **expected: Any) -> None:
    """Refuse an export whose linrec config uses an option the original does not have (naming the option)."""
    for option, want in expected.items():
        have = getattr(config, option)
        ok = want(have) if callable(want) else have == want
        if not ok:
            what = "" if callable(want) else f" (the original has only {option}={want!r})"
            raise CheckpointError(f"cannot export to {original}: the linrec model has {option}={have!r}, an option "
                                  f"{original} does not have{what}")
