"""The generated pages of the documentation site, as Markdown, from the code that holds the facts.

Nothing here is copied by hand: the parameter layout and the originals' import tables come from
``linrec.tools.layout`` and ``linrec.tools.originals``, the conformance matrix from a real
``linrec conformance --json`` run, the benchmark pages from ``benchmarks/results/``. The mkdocs hook
(``docs/hooks/linrec_docs.py``) calls these functions at build time.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "ConformanceRunError",
    "benchmarks_results_page",
    "conformance_page",
    "folder_page",
    "layout_page",
    "originals_page",
    "run_conformance",
    "source_page",
]

#: names that are a ``method=`` of ``linear_scan`` or ``log_scan`` (spec/recurrence.md §7, §8) or a ``mode=``
METHOD_NAMES = ("auto", "sequential", "associative", "chunked", "log", "native", "heinsen", "parallel")

_STATUS_MARK = {"pass": "✓", "xfail": "xfail", "fail": "**FAIL**", "xpass": "**XPASS**",
                "unsupported": "unsupported", "error": "**ERROR**"}


class ConformanceRunError(RuntimeError):
    """``linrec conformance --json`` did not write its report (it crashed, or an argument was wrong)."""


# --- parameter layout and the originals ---------------------------------------------------------------------


def originals_page() -> str:
    """The originals' import tables (``linrec.tools.originals.markdown()``) as a page of their own."""
    from linrec.tools import originals

    body = originals.markdown()
    body = body.replace("## Importing the originals\n", "", 1).lstrip("\n")
    # the tables' headings move up one level: the page title is the only h1
    body = re.sub(r"^### ", "## ", body, flags=re.MULTILINE)
    # each original's section is reachable as #<its name> (the links of the tables say "Same tables as [x](#x)")
    body = re.sub(r"^(## `([\w.-]+)`.*)$", r"\1 { #\2 }", body, flags=re.MULTILINE)
    return ("# Importing the originals (generated)\n\n"
            "Generated at build time from `linrec.tools.originals` (the same tables `linrec convert --from NAME` "
            "applies). Target layouts: [parameter layout](layout.md).\n\n" + body)


def layout_page() -> str:
    """The canonical parameter layout (``linrec.tools.layout.markdown()``, the text of ``spec/layout.md``) with its
    section on the originals replaced by a link to :func:`originals_page`."""
    from linrec.tools import layout, originals

    page = layout.markdown()
    section = originals.markdown()
    if section in page:
        page = page.replace(section, "## Importing the originals\n\nThe originals' import tables have a page of "
                                     "their own: [importing the originals](originals.md).\n")
    return page


# --- conformance matrix -------------------------------------------------------------------------------------


def run_conformance(*, select: str | None = None, backends: Sequence[str] = (), cwd: str | os.PathLike | None = None,
                    timeout: float | None = None) -> dict:
    """Run ``python -m linrec conformance --json`` in a subprocess and return its report.

    A failing case does not raise (the page shows it); a run that wrote no report raises
    :class:`ConformanceRunError` with the command's output.
    """
    with tempfile.TemporaryDirectory(prefix="linrec-docs-") as tmp:
        out = Path(tmp) / "conformance.json"
        cmd = [sys.executable, "-m", "linrec", "conformance", "--json", str(out), "--quiet"]
        if select:
            cmd += ["--select", select]
        for backend in backends:
            cmd += ["--backend", backend]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
        if not out.exists():
            raise ConformanceRunError(f"{' '.join(cmd[2:])} wrote no report (exit {proc.returncode}):\n"
                                      f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        report = json.loads(out.read_text())
    report["command"] = "linrec " + " ".join(c if " " not in c and "*" not in c else repr(c) for c in cmd[3:]
                                             if not c.endswith("conformance.json"))
    report["command"] = report["command"].replace(" --json", "")
    return report


def _split_id(case_id: str) -> tuple[str, str, str]:
    """``scan/named/x[sequential,float32]`` -> (``scan/named/x[float32]``, ``sequential``, family ``scan``)."""
    family = case_id.split("/", 1)[0]
    m = re.fullmatch(r"(.*)\[(.*)\]", case_id)
    if not m:
        return case_id, "–", family
    stem, params = m.group(1), [p.strip() for p in m.group(2).split(",")]
    methods = [p for p in params if p in METHOD_NAMES]
    rest = [p for p in params if p not in METHOD_NAMES]
    row = stem + (f"[{','.join(rest)}]" if rest else "")
    return row, (methods[0] if methods else "–"), family


def _code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def _cell_text(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", " ")


def conformance_page(report: Mapping) -> str:
    """The conformance matrix: cases × backends × methods, each cell pass / xfail (with its reason) / failure."""
    backends = [b for b in report["backends"]]
    ran = [b for b in backends if not b.get("skipped") and not b.get("import_error")]
    env = report.get("environment", {})
    lines = ["# Conformance matrix (generated)", "",
             "Generated at build time from a real run of the conformance suite, "
             f"`{report.get('command', 'linrec conformance --json')}`: every case id, on every backend, by `method=`. "
             "✓ passed within the tolerance of [recurrence.md §9](spec/recurrence.md#9-tolerances-what-conformance-"
             "uses-and-why); *xfail* is an expected failure listed in the backend's xfail manifest, with its reason "
             "in the table below the matrix; – is a case the backend was not asked (its `METHODS` do not claim that "
             "method). How to hold your own backend to the same cases: "
             "[the tutorial](tutorials/own-backend.md).", ""]
    verdict = "passed" if report.get("ok") else "**FAILED**"
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if isinstance(v, str) and k not in ("platform",))
    lines += [f"Verdict: {verdict}. Environment: {versions or 'not recorded'}.", ""]
    lines += ["| backend | module | result |", "|---|---|---|"]
    for b in backends:
        if b.get("skipped"):
            result = f"skipped: {_cell_text(b['skipped'])}"
        elif b.get("import_error"):
            result = f"**not available**: {_cell_text(b['import_error'])}"
        else:
            counts = ", ".join(f"{v} {k}" for k, v in sorted(b.get("counts", {}).items()))
            result = ("passed" if b.get("ok") else "**FAILED**") + f" ({counts or 'no case ran'})"
        lines.append(f"| {b['backend']} | {_code(b.get('module') or '')} | {result} |")
    lines.append("")
    # rows: case (without its method), columns: backend, cell: method -> status
    matrix: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    xfails: list[tuple[str, str, str]] = []
    failures: list[tuple[str, str, str, str]] = []
    for b in ran:
        for r in b.get("results", []):
            row, method, family = _split_id(r["id"])
            matrix.setdefault(family, {}).setdefault(row, {}).setdefault(b["backend"], {})[method] = r["status"]
            if r["status"] == "xfail":
                xfails.append((b["backend"], r["id"], r.get("reason", "")))
            elif r["status"] not in ("pass",):
                failures.append((b["backend"], r["id"], r["status"], r.get("detail", "")))
    names = [b["backend"] for b in ran]
    for family, rows in matrix.items():
        lines += [f"## `{family}`", "", f"{len(rows)} cases.", ""]
        lines += ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for row, per_backend in rows.items():
            cells = []
            for name in names:
                methods = per_backend.get(name)
                if not methods:
                    cells.append("–")
                    continue
                cells.append(" · ".join(_STATUS_MARK.get(s, s) if m == "–" else f"{m} {_STATUS_MARK.get(s, s)}"
                                        for m, s in methods.items()))
            lines.append(f"| {_code(row)} | " + " | ".join(cells) + " |")
        lines.append("")
    if xfails:
        lines += ["## Expected failures and their reasons", "", "| backend | case | reason |", "|---|---|---|"]
        lines += [f"| {b} | {_code(cid)} | {_cell_text(reason)} |" for b, cid, reason in xfails]
        lines.append("")
    if failures:
        lines += ["## Failures", "", "| backend | case | status | detail |", "|---|---|---|---|"]
        lines += [f"| {b} | {_code(cid)} | {s} | {_cell_text(d)} |" for b, cid, s, d in failures]
        lines.append("")
    return "\n".join(lines)


# --- benchmarks ---------------------------------------------------------------------------------------------


def benchmarks_results_page(results: str | os.PathLike) -> str:
    """An index of ``benchmarks/results/``: each table's title and link, its plot, and the machine it ran on."""
    results = Path(results)
    lines = ["# Benchmark results (generated)", "",
             "Generated at build time from the files in `benchmarks/results/` (written by `linrec bench all`); "
             "how they are measured: [benchmarks](../README.md).", ""]
    machine = results / "machine.json"
    if machine.exists():
        data = json.loads(machine.read_text())
        lines += ["## Machine", "", "| field | value |", "|---|---|"]
        lines += [f"| {_cell_text(str(k))} | {_cell_text(json.dumps(v) if not isinstance(v, str) else v)} |"
                  for k, v in data.items()]
        lines.append("")
    for md in sorted(results.glob("*.md")):
        first = md.read_text().split("\n", 1)[0].lstrip("# ").strip() or md.stem
        lines += [f"## {first}", "", f"Table: [{md.name}]({md.name}).", ""]
        plot = md.with_suffix(".png")
        if plot.exists():
            lines += [f"![{first}]({plot.name})", ""]
    return "\n".join(lines)


# --- source files linked from the pages ---------------------------------------------------------------------

_LANGUAGES = {".py": "python", ".json": "json", ".cc": "cpp", ".toml": "toml", ".txt": "text"}


def source_page(path: str | os.PathLike, label: str) -> str:
    """A page that shows one source file of the repository (what a relative link to a ``.py`` file points to)."""
    path = Path(path)
    text = path.read_text()
    fence = "````" if "```" in text else "```"
    return (f"# `{label}`\n\nThe source file `{label}` of the repository, as of this build.\n\n"
            f"{fence}{_LANGUAGES.get(path.suffix, 'text')}\n{text.rstrip()}\n{fence}\n")


def folder_page(path: str | os.PathLike, label: str) -> str:
    """A page that lists a folder of the repository (what a relative link to a folder points to)."""
    path = Path(path)
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()
                     if not p.name.startswith(".") and p.name != "__pycache__")
    return f"# `{label.rstrip('/')}/`\n\nThe folder `{label.rstrip('/')}/` of the repository, as of this build:\n\n" + \
        "\n".join(f"- `{e}`" for e in entries) + "\n"
