"""Run the whole benchmark suite (scan, layers, memory, decode) and write ``benchmarks/results/``.

Writes ``scan.md``, ``layers.md``, ``memory.md``, ``decode.md``, their ``.png`` plots, ``machine.json`` (CPU,
cores, versions, bandwidth) and ``suite.json`` (every number), and refreshes the measured-status table of
``benchmarks/README.md`` (between its ``status`` markers) when writing to the default directory.

Run: ``python benchmarks/run_all.py [--quick] [--out DIR] [--only scan,layers,memory,decode]
[--compare SUITE.json [--threshold 0.25] [--fail-on-regression]]`` or ``linrec bench all``. ``--compare`` prints,
after the tables, each ratio against the recorded run's and flags those that got more than 25 % worse
(``linrec.tools.bench_compare``; compare a ``--quick`` run with ``results/suite-quick.json``, a full run with
``results/suite.json``).
A full run takes about 10 minutes on 2 idle cores; ``--quick`` about a minute, and it writes nothing unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from linrec.tools import bench, bench_compare

NAMES = ("scan", "layers", "memory", "decode")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- status:begin -->", "<!-- status:end -->"


def run(quick: bool = False, only: tuple[str, ...] = NAMES, progress=None) -> dict[str, Any]:
    """``{name: result}`` for each benchmark in ``only``, plus ``"seconds"``: each one's wall time."""
    say = progress or (lambda s: None)
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in only:
        start = time.perf_counter()
        say(f"== {name}")
        results[name] = bench.load_benchmark(name).run(quick, progress=say)
        seconds[name] = time.perf_counter() - start
        say(f"== {name}: {seconds[name]:.0f} s")
    results["seconds"] = seconds
    return results


def status_table(results: dict[str, Any]) -> str:
    rows = []
    for name in NAMES:
        for t in results.get(name, {}).get("targets", []):
            reached = t.get("reached")
            rows.append({"target": t["target"], "measured": t["measured"],
                         "status": "reached" if reached else ("not reached" if reached is False else "not measured")})
    return bench.markdown_table(["target", "measured", "status"], rows)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if hasattr(x, "item"):
        return x.item()
    return x


def write(results: dict[str, Any], out: Path, *, update_readme: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in NAMES:
        if name in results:
            written += bench.load_benchmark(name).write(results[name], out)
    machine = bench.machine_info()
    if "scan" in results:
        machine["bandwidth_GBps"] = results["scan"]["meta"]["bandwidth_GBps"]
    machine["suite_seconds"] = results.get("seconds", {})
    (out / "machine.json").write_text(json.dumps(_jsonable(machine), indent=2) + "\n")
    (out / "suite.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    written += [out / "machine.json", out / "suite.json"]
    if update_readme and README.is_file():
        text = README.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            stamp = (f"\nMeasured {machine['date']} on {machine['cpu_model']} ({machine['usable_cores']} cores), "
                     f"suite time {sum(results['seconds'].values()):.0f} s:\n\n")
            README.write_text(head + BEGIN + stamp + status_table(results) + "\n" + END + tail)
            written.append(README)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linrec bench all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--out", type=Path, help="results directory (default: benchmarks/results for a full run, "
                                                 "nothing written for --quick)")
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated subset of " + ",".join(NAMES))
    parser.add_argument("--compare", type=Path, metavar="SUITE.json",
                        help="after the run, compare its ratios with this recorded suite.json (a report: exit 0)")
    bench_compare.add_arguments(parser)
    args = parser.parse_args(argv)
    only = tuple(n for n in args.only.split(",") if n)
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(NAMES)}")
    if args.threshold < 0:
        parser.error("--threshold must be >= 0")
    recorded = None
    if args.compare is not None:
        try:  # before the run: a wrong path should not cost a whole suite
            recorded = bench_compare.load(args.compare)
        except (OSError, ValueError) as err:
            parser.error(f"--compare: {err}")
    results = run(args.quick, only, progress=lambda s: print(s, file=sys.stderr, flush=True))
    for name in only:
        print(bench.load_benchmark(name).report(results[name]))
    print("# Targets\n\n" + status_table(results))
    print(f"suite time: {sum(results['seconds'].values()):.0f} s", file=sys.stderr)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        for p in write(results, out, update_readme=out.resolve() == RESULTS and not args.quick
                                                 and set(only) == set(NAMES)):
            print(f"wrote {p}", file=sys.stderr)
    if recorded is not None:
        # the sections not run (--only) are reported as such; the JSON form is what a recorded suite.json holds
        print()
        return bench_compare.report(recorded, _jsonable(results), args.threshold,
                                    fail_on_regression=args.fail_on_regression, recorded_name=str(args.compare),
                                    now_name="this run" + (" (--quick)" if args.quick else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
