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
