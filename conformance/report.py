"""Render conformance results: a human-readable table (cases × backends) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from linrec.conformance.runner import BAD_STATUSES, UNSUPPORTED, BackendReport, environment

__all__ = ["to_json", "to_text"]

_MARK = {"pass": "ok", "fail": "FAIL", "xfail": "xfail", "xpass": "XPASS", "unsupported": "UNSUPPORTED",
         "error": "ERROR"}


def _cell(status: str, error: float, allowed: float) -> str:
    mark = _MARK.get(status, status)
    if allowed:
        return f"{mark} {error:.1e}/{allowed:.1e}"
    return mark


def to_text(reports: Sequence[BackendReport], *, verbose: bool = False) -> str:
    """A table with one row per case and one column per backend: status and max error / allowed.

    Without ``verbose`` only rows that are not a plain pass everywhere are listed, plus a summary
    per property, so the report stays readable with thousands of cases. Unsupported cases (functions
    the backend lacks) are folded into one line per group of missing functions.
    """
    lines: list[str] = []
    for rep in reports:
        if rep.skipped:
            lines.append(f"backend {rep.backend}: skipped, {rep.skipped}")
            continue
        info = ", ".join(f"{k}={v}" for k, v in rep.info.items())
        lines.append(f"backend {rep.backend} ({rep.module}){': ' + info if info else ''}")
        if rep.import_error:
            lines.append(f"  NOT AVAILABLE: {rep.import_error}")
    lines.append("")
    by_id: dict[str, dict[str, object]] = {}
    props: dict[str, dict[str, list[int]]] = {}
    for rep in reports:
        for r in rep.results:
            by_id.setdefault(r.id, {})[rep.backend] = r
            tally = props.setdefault(r.property, {}).setdefault(rep.backend, [0, 0])
            tally[0] += r.status in ("pass", "xfail")
            tally[1] += 1
    names = [r.backend for r in reports]
    width = max([len(i) for i in by_id] + [30])
    header = f"{'property':<{width}}  " + "  ".join(f"{n:>24}" for n in names)
    lines += [header, "-" * len(header)]
    for prop, tally in props.items():
        cells = [f"{tally[n][0]}/{tally[n][1]} ok" if n in tally else "-" for n in names]
        lines.append(f"{prop:<{width}}  " + "  ".join(f"{c:>24}" for c in cells))
    lines.append("")
    shown = [
        (cid, row) for cid, row in by_id.items()
        if verbose or any(getattr(r, "status", "pass") not in ("pass", "xfail", UNSUPPORTED) for r in row.values())
    ]
    if shown:
        header = f"{'case':<{width}}  " + "  ".join(f"{n:>24}" for n in names)
        lines += [header, "-" * len(header)]
        for cid, row in shown:
            cells = [_cell(r.status, r.error, r.allowed) if (r := row.get(n)) else "-" for n in names]
            lines.append(f"{cid:<{width}}  " + "  ".join(f"{c:>24}" for c in cells))
            for n in names:
                r = row.get(n)
                if r is not None and r.status in BAD_STATUSES and r.status != UNSUPPORTED:
                    lines.append(f"    {n}: {r.detail}")
                elif r is not None and r.status == "xfail":
                    lines.append(f"    {n}: xfail ({r.reason})")
        lines.append("")
    for rep in reports:
        reasons: dict[str, int] = {}
        for r in rep.results:
            if r.status == "xfail":
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
        for reason, n in reasons.items():
            lines.append(f"{rep.backend}: {n} expected failures (xfail manifest): {reason}")
    for rep in reports:
        lines += _unsupported_lines(rep)
    for rep in reports:
        lines += _hypothesis_lines(rep) + _resumed_lines(rep)
    for rep in reports:
        if rep.skipped:
            lines.append(f"{rep.backend}: not installed, skipped")
            continue
        counts = ", ".join(f"{v} {k}" for k, v in sorted(rep.counts().items()))
        verdict = "PASSED" if rep.ok else "FAILED"
        lines.append(f"{rep.backend}: {verdict} ({counts or 'no cases ran'})")
    return "\n".join(lines)


_NO = "backend has no "


def _family(case_id: str) -> str:
    """``layers/mingru/equals-reference[auto]`` -> ``layers``: the part of the spec a case belongs to."""
    return case_id.split("/", 1)[0]


def _unsupported_lines(rep: BackendReport) -> list[str]:
    """One line per part of the spec (``scan``, ``mingru``, ...): how many cases, which functions they need."""
    groups: dict[str, tuple[list[str], dict[str, None]]] = {}
    for r in rep.results:
        if r.status == UNSUPPORTED:
            ids, missing = groups.setdefault(_family(r.id), ([], {}))
            ids.append(r.id)
            names = r.detail[len(_NO):] if r.detail.startswith(_NO) else r.detail
            missing.update(dict.fromkeys(n.strip() for n in names.split(",")))
    lines = [f"{rep.backend}: UNSUPPORTED {family}: {len(ids)} case{'s' * (len(ids) != 1)} need "
             f"{', '.join(sorted(missing))}" for family, (ids, missing) in groups.items()]
    if groups:
        lines.append(f"{rep.backend}: implement those functions, or list the cases in an xfail manifest (--xfails)")
    return lines


def _hypothesis_lines(rep: BackendReport) -> list[str]:
    h = rep.hypothesis
    if not h or not h.get("property_cases"):
        return []
    return [f"{rep.backend}: {h['examples']:,} Hypothesis examples ({h['profile']} profile: "
            f"{h['examples_per_case']:,} per property case x {h['property_cases']} cases, "
            f"shrinking {'on' if h['shrink'] else 'off'})"]


def _resumed_lines(rep: BackendReport) -> list[str]:
    resumed = rep.hypothesis.get("resumed")
    if not resumed or not resumed["cases"]:
        return []
    return [f"{rep.backend}: {resumed['cases']} of {len(rep.results)} cases and {resumed['examples']:,} of those "
            f"Hypothesis examples resumed from the journal (results as recorded there)"]


def to_json(reports: Sequence[BackendReport]) -> str:
    """The report as JSON: the verdict, the environment (versions, platform, Hypothesis profile), each backend."""
    ran = [r.hypothesis for r in reports if r.hypothesis]
    profile = {k: ran[0][k] for k in ("profile", "shrink")} if ran else {}
    return json.dumps({"ok": all(r.ok for r in reports), "environment": environment(),
                       "hypothesis": {**profile, "examples": {r.backend: r.hypothesis.get("examples", 0)
                                                              for r in reports if r.hypothesis}},
                       "backends": [r.to_json() for r in reports]}, indent=1)
