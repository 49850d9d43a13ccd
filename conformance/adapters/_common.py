"""What the peers' adapters share: the refusal of an option a peer lacks, option checks, the bundled manifests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources

__all__ = ["Unsupported", "load_xfails", "refuse_lacking"]


class Unsupported(NotImplementedError):
    """The peer does not offer this option (reverse, resets, initial_state, a dtype): the adapter refuses rather
    than emulate it, so the conformance matrix measures the peer. The matrix files these as ``unsupported``."""


def load_xfails(name: str) -> dict[str, str]:
    """The xfail manifest of adapter ``name`` (``conformance/adapters/xfails/<name>.json``): case id or fnmatch
    pattern -> reason (``unsupported: ...`` for an option the peer lacks, ``fails: ...`` for a wrong answer)."""
    path = resources.files("linrec.conformance.adapters") / "xfails" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def refuse_lacking(
    peer: str,
    method: str,
    lacks: Mapping[str, str],
    *,
    dtype: str,
    reverse: bool,
    has_initial_state: bool,
    has_resets: bool,
    length: int,
) -> None:
    """Raise :class:`Unsupported` naming the first requested option that ``method`` of ``peer`` lacks
    (``empty``: a sequence of length T = 0).

    ``has_resets`` is whether a segment starts after t=0 (``resets[:, 0]`` has no effect in the spec, so an
    all-False ``resets`` asks nothing of the peer).
    """
    asked = [("reverse", reverse), ("resets", has_resets), ("initial_state", has_initial_state), ("empty", length == 0),
             (dtype, True)]
    for option, wanted in asked:
        if wanted and option in lacks:
            raise Unsupported(f"{peer} method={method!r} does not offer {option}: {lacks[option]}")
