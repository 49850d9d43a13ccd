"""Helpers shared by the benchmark smoke tests (``tests/test_bench*.py``)."""

from __future__ import annotations

import importlib.util


def has(module: str) -> bool:
    """Whether ``module`` is installed (without importing it)."""
    return importlib.util.find_spec(module) is not None


def table(markdown: str, header: list[str]) -> list[list[str]]:
    """The body rows of the Markdown table whose header is ``header``."""
    lines = markdown.splitlines()
    start = lines.index("| " + " | ".join(header) + " |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def check_ceilings(module, rows, targets):
    """Each linrec target carries the speedup of its framework's matmul-floor row (the ceiling), when both ran."""
    with_ceiling = [t for t in targets if t.get("ceiling") is not None]
    floors = [r for r in rows if r["impl"] in module.FLOORS.values() and r.get("speedup vs original")]
    assert bool(with_ceiling) == bool(floors)
    for t in with_ceiling:
        assert f"matmul ceiling {t['ceiling']:.2f}x" in t["measured"]
        assert t["ceiling"] in [r["speedup vs original"] for r in floors]
