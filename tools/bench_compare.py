"""Compare two benchmark-suite results (``suite.json``) ratio by ratio: a regression *report*, not a test.

``linrec bench compare OLD.json NEW.json`` compares two recorded files; ``linrec bench [all] --compare OLD.json``
runs the suite first and compares its results with ``OLD.json``. Only **ratios** are compared (roofline ratios,
speedups vs the original, the memory growth exponent): they are measured within one run against a reference on the
same machine, so they carry over between machines far better than milliseconds, which are never compared.

Rows are matched on their identifying fields (:data:`ID_FIELDS`, including ``T``). A section is compared only when
both runs measured the same problem sizes (:data:`SIZE_KEYS` of its ``meta``, ``T`` aside: that one is matched row
by row): ratios at other sizes measure another regime (a ``--quick`` run's tiny shapes are dominated by per-call
overheads), so comparing them would flag noise. A quick run is therefore compared with a recorded *quick* run
(``benchmarks/results/suite-quick.json``), a full run with a full one (``benchmarks/results/suite.json``).

Pure Python (no NumPy, no framework), so it works from an installed wheel and in tests without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ID_FIELDS", "METRICS", "SECTIONS", "SIZE_KEYS", "Row", "compare", "format_report", "load", "main",
           "regressions"]

#: The sections of ``suite.json`` and, in each, the tables (lists of row dicts) that hold ratios.
SECTIONS: dict[str, tuple[str, ...]] = {
    "scan": ("rows",),
    "layers": ("rows", "decode"),  # "decode": the layers' per-token decode, beside the training step
    "memory": ("fits",),  # its rows are MB (absolute); the growth exponent is the dimensionless number
    "decode": ("rows",),
}

#: Ratio columns and whether a *higher* value is better. Everything else (ms, µs/token, tokens/s, MB, GB/s) is an
#: absolute number that depends on the machine and its load, so it is never compared.
METRICS: dict[str, bool] = {
    "fwd/roofline": False,  # scan time / memory-bandwidth floor: lower is better
    "(fwd+bwd)/roofline": False,  # same for forward + backward
    "fwd/C loop": False,  # scan time / a plain C loop's: lower is better
    "speedup vs original": True,  # original's time / linrec's (layers, decode): higher is better
    "/ floor": False,  # time / the matmul (or weight-read) floor of the same framework and run: lower is better
    "exponent": False,  # memory growth exponent of peak memory against T: lower is better (1.0 = linear)
}

#: Fields that identify a row (whichever of them a row has), in display order.
ID_FIELDS: tuple[str, ...] = ("layer", "model", "backend", "method", "implementation", "T", "B")

#: ``meta`` keys that fix the problem size; two runs are comparable only where these agree (``T`` is per row).
SIZE_KEYS: tuple[str, ...] = ("B", "D", "V", "L", "prompt", "decode_tokens", "dtype")

#: Row statuses: compared ones and the reasons a row could not be compared.
WORSE, BETTER, SAME = "WORSE", "better", ""
ONLY_RECORDED, ONLY_NOW, NO_VALUE, SIZES_DIFFER = "only recorded", "only now", "no value", "sizes differ"

_EPS = 1e-12  # so that a change of exactly the threshold is not flagged through float rounding


@dataclass(frozen=True)
class Row:
    """One line of the report: a ratio compared, or a row/section/metric that one side lacks.

    ``change`` is how much worse the ratio got, as a fraction (positive = worse, negative = better), expressed as
    the change of the underlying time so that both directions are on one scale: ``now/recorded - 1`` for a
    lower-is-better ratio, ``recorded/now - 1`` for a higher-is-better one (a speedup falling from 2.0 to 1.6 is
    the measured code taking 25 % longer relative to its reference). ``None`` when nothing was compared.
    """

    section: str
    row_id: str
    metric: str
    recorded: float | None
    now: float | None
    change: float | None
    status: str
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.status == WORSE


def load(path: str | Path) -> dict[str, Any]:
    """A ``suite.json`` as a dict (``ValueError`` when it is not a suite's results)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not any(isinstance(data.get(s), dict) for s in SECTIONS):
        raise ValueError(f"{path}: not a benchmark suite's results (no {', '.join(SECTIONS)} section)")
    return data


def _row_key(row: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((f, str(row[f])) for f in ID_FIELDS if f in row)


def _row_id(key: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{f}={v}" if f in ("T", "B") else v for f, v in key)


def _number(x: Any) -> float | None:
    """A finite, positive float, else ``None`` (a ratio of 0 or a missing/NaN cell cannot be compared)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) and x > 0 else None


def _sizes(section: Mapping[str, Any]) -> dict[str, Any]:
    meta = section.get("meta") or {}
    return {k: meta[k] for k in SIZE_KEYS if k in meta}


def _fmt_sizes(sizes: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items()) or "(none recorded)"


def _worse_by(recorded: float, now: float, higher_is_better: bool) -> float:
    return recorded / now - 1.0 if higher_is_better else now / recorded - 1.0


def _compare_tables(name: str, old: Mapping[str, Any], new: Mapping[str, Any], threshold: float) -> list[Row]:
    out: list[Row] = []
    for table in SECTIONS[name]:
        old_rows = {_row_key(r): r for r in old.get(table) or [] if isinstance(r, Mapping)}
        new_rows = {_row_key(r): r for r in new.get(table) or [] if isinstance(r, Mapping)}
        section = name if table == "rows" else f"{name}.{table}"
        # recorded order first, then rows only the new run has
        for key in [*old_rows, *(k for k in new_rows if k not in old_rows)]:
            rid = _row_id(key)
            if key not in new_rows:
                out.append(Row(section, rid, "*", None, None, None, ONLY_RECORDED))
                continue
            if key not in old_rows:
                out.append(Row(section, rid, "*", None, None, None, ONLY_NOW))
                continue
            o, n = old_rows[key], new_rows[key]
            for metric, higher in METRICS.items():
                if metric not in o and metric not in n:
                    continue
                a, b = _number(o.get(metric)), _number(n.get(metric))
                if metric not in n:
                    out.append(Row(section, rid, metric, a, None, None, ONLY_RECORDED))
                elif metric not in o:
                    out.append(Row(section, rid, metric, None, b, None, ONLY_NOW))
                elif a is None or b is None:
                    out.append(Row(section, rid, metric, a, b, None, NO_VALUE))
                else:
                    change = _worse_by(a, b, higher)
                    status = WORSE if change > threshold + _EPS else BETTER if change < -threshold - _EPS else SAME
                    out.append(Row(section, rid, metric, a, b, change, status))
    return out


def compare(recorded: Mapping[str, Any], current: Mapping[str, Any], threshold: float = 0.25) -> list[Row]:
    """Every ratio of ``current`` against the same row's in ``recorded`` (both ``suite.json`` dicts).

    A ratio is flagged ``WORSE`` when it got more than ``threshold`` (a fraction: 0.25 = 25 %) worse, ``better``
    when it improved by more than that. A section only one side ran, or one measured at other problem sizes, is
    one row saying so (``*`` as row and metric); a row or metric only one side has is listed as such.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    out: list[Row] = []
    for name in SECTIONS:
        old, new = recorded.get(name), current.get(name)
        if not isinstance(old, Mapping) and not isinstance(new, Mapping):
            continue
        if not isinstance(new, Mapping):
            out.append(Row(name, "*", "*", None, None, None, ONLY_RECORDED, "section not run now"))
            continue
        if not isinstance(old, Mapping):
            out.append(Row(name, "*", "*", None, None, None, ONLY_NOW, "section not in the recorded run"))
            continue
        old_sizes, new_sizes = _sizes(old), _sizes(new)
        if old_sizes != new_sizes:
            quick = {bool((s.get("meta") or {}).get("quick")) for s in (old, new)}
            hint = (" (a --quick run against a full one: compare a quick run with a recorded quick run, "
                    "benchmarks/results/suite-quick.json)") if quick == {True, False} else ""
            out.append(Row(name, "*", "*", None, None, None, SIZES_DIFFER,
                           f"recorded {_fmt_sizes(old_sizes)}; now {_fmt_sizes(new_sizes)}{hint}"))
            continue
        out += _compare_tables(name, old, new, threshold)
    return out


def regressions(rows: Sequence[Row]) -> list[Row]:
    """The rows flagged ``WORSE``."""
    return [r for r in rows if r.flagged]


def _cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def format_report(rows: Sequence[Row], threshold: float = 0.25, *, recorded: str = "recorded",
                  now: str = "now") -> str:
    """A plain-text table of ``rows`` (section, row, metric, recorded, now, change %, flag) and a summary."""
    header = ("section", "row", "metric", "recorded", "now", "change %", "flag")
    cells = [header]
    notes: list[str] = []
    for r in rows:
        change = "" if r.change is None else f"{100 * r.change:+.1f}"
        cells.append((r.section, r.row_id, r.metric, _cell(r.recorded), _cell(r.now), change, r.status))
        if r.note:
            notes.append(f"{r.section}: {r.status}: {r.note}")
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = {3, 4, 5}  # numbers right-aligned
    lines = [f"# Benchmark comparison: {now} against {recorded}", "",
             f"Ratios only (never ms). change % = how much longer the measured code took relative to its reference "
             f"(+ worse, - better); WORSE = more than {100 * threshold:g} % worse."]
    lines.append("")
    for i, c in enumerate(cells):
        lines.append("  ".join((v.rjust(w) if j in right else v.ljust(w)) for j, (v, w) in
                               enumerate(zip(c, widths, strict=True))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines += ["", *notes]
    compared = [r for r in rows if r.change is not None]
    worse, better = regressions(rows), [r for r in rows if r.status == BETTER]
    one_sided = [r for r in rows if r.status in (ONLY_RECORDED, ONLY_NOW, NO_VALUE, SIZES_DIFFER)]
    lines += ["", f"{len(compared)} ratios compared: {len(worse)} WORSE by more than {100 * threshold:g} %, "
                  f"{len(better)} better by more than that; {len(one_sided)} rows not compared (one side only, "
                  "no value or other sizes)."]
    if not compared:
        lines.append("Nothing was compared: no row matched (see the notes above).")
    for r in worse:
        lines.append(f"WORSE: {r.section} / {r.row_id} / {r.metric}: {_cell(r.recorded)} -> {_cell(r.now)} "
                     f"({100 * (r.change or 0.0):+.1f} %)")
    return "\n".join(lines)


def report(recorded: Mapping[str, Any], current: Mapping[str, Any], threshold: float = 0.25, *,
           fail_on_regression: bool = False, recorded_name: str = "recorded", now_name: str = "now") -> int:
    """Print the comparison; the exit status: 0, or 1 when ``fail_on_regression`` and anything got worse."""
    rows = compare(recorded, current, threshold)
    print(format_report(rows, threshold, recorded=recorded_name, now=now_name))
    return 1 if fail_on_regression and regressions(rows) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threshold`` and ``--fail-on-regression``, shared by ``linrec bench compare`` and ``--compare``."""
    parser.add_argument("--threshold", type=float, default=0.25,
                        help="flag a ratio that got worse by more than this fraction (default 0.25 = 25 %%)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit with status 1 when a ratio is flagged (default: always 0, it is a report)")


def main(argv: Sequence[str] | None = None) -> int:
    """``linrec bench compare OLD.json NEW.json [--threshold 0.25] [--fail-on-regression]``."""
    parser = argparse.ArgumentParser(prog="linrec bench compare",
                                     description="Compare the ratios of two recorded benchmark suites (suite.json); "
                                                 "runs nothing.")
    parser.add_argument("old", type=Path, help="the recorded suite.json (the reference)")
    parser.add_argument("new", type=Path, help="the suite.json to check against it")
    add_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threshold < 0:
        parser.error("--threshold must be >= 0")
    try:
        old, new = load(args.old), load(args.new)
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        print(f"linrec bench compare: {err}", file=sys.stderr)
        return 2
    return report(old, new, args.threshold, fail_on_regression=args.fail_on_regression,
                  recorded_name=str(args.old), now_name=str(args.new))


if __name__ == "__main__":
    raise SystemExit(main())
