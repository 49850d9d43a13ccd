"""The peers' conformance matrix: each adapter of ``linrec.conformance.adapters`` run through the scan suite.

    python benchmarks/peers.py                 # writes benchmarks/results/peers.md and peers.json
    python benchmarks/peers.py --select 'scan/named/*' --out /tmp/peers.md

A cell is ``pass`` (every case of that property passed), ``unsupported`` (every other case was refused because the
peer lacks the option: the adapter raised ``Unsupported``, or the adapter has no such function) or ``fails`` (a
wrong answer or another error; the details list each). An adapter whose peer cannot run here is one line saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from linrec.conformance import runner
from linrec.conformance.adapters import ADAPTERS

PASS, FAILS, UNSUPPORTED = "pass", "fails", "unsupported"
RESULTS = Path(__file__).resolve().parent / "results"


def classify(result: runner.CaseResult) -> str:
    """pass / unsupported / fails for one case result (an xfail is judged by what actually happened)."""
    if result.status in (runner.PASS, runner.XPASS):
        return PASS
    if result.status == runner.UNSUPPORTED or result.detail.startswith(("Unsupported:", "backend has no")):
        return UNSUPPORTED
    return FAILS


def _method(case_id: str) -> str:
    """The method a case id names: ``scan/named/reverse[ref,float32]`` -> ``ref``; ``""`` for method-free cases."""
    if not case_id.endswith("]"):
        return ""
    return case_id[case_id.rindex("[") + 1 : -1].split(",")[0]


def _combine(values: list[str]) -> str:
    return FAILS if FAILS in values else UNSUPPORTED if UNSUPPORTED in values else PASS


def matrix(report: runner.BackendReport) -> dict[str, dict[str, str]]:
    """``{method: {property: status}}``; cases that name no method (errors) go under every method."""
    methods = report.info.get("methods", [])
    cells: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in report.results:
        m = _method(r.id)
        for method in [m] if m in methods else methods:
            cells[method][r.property].append(classify(r))
    return {m: {p: _combine(v) for p, v in props.items()} for m, props in cells.items()}


def named_matrix(report: runner.BackendReport) -> dict[str, dict[str, str]]:
    """``{method: {named example: status}}`` from ``scan/named/<name>[method,dtype]`` (one option each)."""
    cells: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in report.results:
        if r.id.startswith("scan/named/"):
            cells[_method(r.id)][r.id[len("scan/named/") : r.id.rindex("[")]].append(classify(r))
    return {m: {n: _combine(v) for n, v in names.items()} for m, names in cells.items()}


def suggest_xfails(report: runner.BackendReport) -> dict[str, str]:
    """An xfail manifest for every case that did not pass: ``unsupported: <what the peer lacks>`` or
    ``fails: <the first line of the failure>``, from the run itself (review it before committing)."""
    out = {}
    for r in report.results:
        kind = classify(r)
        if kind == PASS:
            continue
        detail = r.detail.split(" | example:")[0]
        if kind == UNSUPPORTED:
            detail = detail.split("does not offer ", 1)[-1] if "does not offer" in detail else detail
        out[r.id] = f"{kind}: {detail[:200]}"
    return out


def _table(rows: dict[str, dict[str, str]], columns: list[str]) -> list[str]:
    lines = ["| peer:method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cells.get(c, "—") for c in columns) + " |" for row, cells in rows.items()]
    return lines


def render(reports: dict[str, runner.BackendReport | str], select: str) -> str:
    """The markdown page: one matrix of properties, one of the named (one-option) examples, the details."""
    prop_rows: dict[str, dict[str, str]] = {}
    named_rows: dict[str, dict[str, str]] = {}
    details, unavailable = [], []
    for name, rep in reports.items():
        if isinstance(rep, str):
            unavailable.append(f"- **{name}**: {rep}")
            continue
        if rep.import_error:
            unavailable.append(f"- **{name}**: {rep.import_error}")
            continue
        peer = rep.info.get("peer", name)
        for method, cells in matrix(rep).items():
            prop_rows[f"{peer}:{method}"] = cells
        for method, cells in named_matrix(rep).items():
            named_rows[f"{peer}:{method}"] = cells
        for gone, why in rep.info.get("unavailable", {}).items():
            unavailable.append(f"- **{peer}:{gone}**: {why}")
        for r in rep.results:
            if classify(r) != PASS:
                detail = r.detail.replace("|", "/").replace("\n", " ")
                details.append(f"| {peer} | `{r.id}` | {classify(r)} | {detail[:220]} |")
    props = sorted({p for cells in prop_rows.values() for p in cells})
    names = sorted({n for cells in named_rows.values() for n in cells})
    versions = {n: {k: v for k, v in r.info.items() if k.endswith("version") or k == "triton_interpret"}
                for n, r in reports.items() if not isinstance(r, str)}
    out = ["# The peers held to the spec", "",
           f"Generated by `python benchmarks/peers.py` (cases `{select}`, Hypothesis `ci` profile) on CPU. "
           "Each peer's kernel runs under linrec's function names through `linrec.conformance.adapters`; "
           "an option the peer lacks is refused (`Unsupported`), never emulated. "
           "`pass`: every case passed; `unsupported`: the others were refused for a missing option (or need "
           "`log_scan`, which no peer has); `fails`: a wrong answer or a crash (details below).", "",
           f"Versions: `{json.dumps(versions)}`", "",
           "## Properties", "", *_table(prop_rows, props), "",
           "## Named examples (one option each)", "", *_table(named_rows, names), "",
           "## Not run here", "", *(unavailable or ["- (none)"]), "",
           "## Every case that did not pass", "", "| peer | case | status | detail |", "|---|---|---|---|",
           *details, ""]
    return "\n".join(out)


def run(adapters: tuple[str, ...], select: str) -> dict[str, runner.BackendReport | str]:
    """Run each adapter (with its own xfail manifest); an adapter that cannot import is recorded as its reason."""
    reports: dict[str, runner.BackendReport | str] = {}
    runner.scan_properties.set_profile("ci")
    with runner.hypothesis_storage():
        for name in adapters:
            module = f"linrec.conformance.adapters.{name}"
            try:
                __import__(module)
            except (ImportError, RuntimeError) as err:
                reports[name] = f"{type(err).__name__}: {err}"
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            reports[name] = runner.run_backend(module, select=select)
    return reports


def load(paths: list[Path]) -> dict[str, runner.BackendReport | str]:
    """Reports saved by earlier runs (``peers.json``), merged in order: re-render without re-running."""
    reports: dict[str, runner.BackendReport | str] = {}
    for path in paths:
        for name, data in json.loads(path.read_text()).items():
            if isinstance(data, str):
                reports[name] = data
                continue
            rep = runner.BackendReport(backend=data["backend"], module=data["module"], info=data["info"],
                                       import_error=data["import_error"], skipped=data["skipped"],
                                       hypothesis=data["hypothesis"])
            rep.results = [runner.CaseResult(**r) for r in data["results"]]
            reports[name] = rep
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", default="scan/*", help="fnmatch pattern of case ids (default: the scan suite)")
    parser.add_argument("--adapters", nargs="*", default=list(ADAPTERS), help=f"default: {' '.join(ADAPTERS)}")
    parser.add_argument("--write-xfails", action="store_true",
                        help="also write each manifest (conformance/adapters/xfails/<name>.json) from the run")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.md", help="markdown page (JSON beside it)")
    parser.add_argument("--from-json", type=Path, nargs="+", help="render saved runs (peers.json files) instead")
    args = parser.parse_args(argv)
    reports = load(args.from_json) if args.from_json else run(tuple(args.adapters), args.select)
    args.out.write_text(render(reports, "as saved in " + " + ".join(p.name for p in args.from_json)
                               if args.from_json else args.select))
    args.out.with_suffix(".json").write_text(json.dumps(
        {n: (r if isinstance(r, str) else r.to_json()) for n, r in reports.items()}, indent=1, default=str))
    print(f"wrote {args.out}", file=sys.stderr)
    if args.write_xfails:
        folder = Path(__file__).resolve().parents[1] / "conformance" / "adapters" / "xfails"
        for name, rep in reports.items():
            if not isinstance(rep, str) and not rep.import_error:
                (folder / f"{name}.json").write_text(json.dumps(suggest_xfails(rep), indent=1) + "\n")
                print(f"wrote {folder / name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
