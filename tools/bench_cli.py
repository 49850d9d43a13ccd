"""``linrec bench [scan|layers|memory|decode|all] [--quick] [--out DIR]``: run the benchmark scripts of ``benchmarks/``.

``linrec bench [all] --compare suite.json`` runs the suite and then compares its ratios with a recorded run's, and
``linrec bench compare OLD.json NEW.json`` compares two recorded runs without running anything
(``linrec.tools.bench_compare``; a report that exits 0 unless ``--fail-on-regression``).

``linrec bench scan --device cuda`` (``--dry-run``: interpreted on CPU, tiny shapes; ``--model``: the H100/H200
roofline model) times the Triton kernels instead: ``linrec.tools.bench_device``, which needs no checkout;
``linrec bench layers --device cuda`` (same options) the PyTorch layers with Triton kernels:
``linrec.tools.bench_device_layers``.

The scripts live in the source tree (they are not installed with the package); this command finds them next to
the package (``linrec.tools.bench.benchmarks_dir``) and calls their ``main``. From an installed wheel it says so and
how to get a checkout, and exits with status 2. Without a subcommand it runs ``all``. A full run writes
``benchmarks/results/`` (tables, plots, ``machine.json``); ``--quick`` is a smoke run on tiny sizes that prints the
tables and writes nothing unless ``--out`` is given (``all --quick`` takes about 9 minutes on a 2-core machine, nearly
as long as a full run: framework start-up, compilations and the originals dominate).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

#: subcommand -> (script in benchmarks/, help)
SUBCOMMANDS = {
    "scan": ("scan", "linear_scan per backend and method vs the roofline and a plain C loop"),
    "layers": ("layers", "training-step throughput, peak memory and decode latency vs the originals"),
    "memory": ("memory", "peak memory of a minGRU training step against T, growth exponent"),
    "decode": ("decode", "per-token decode latency of the language models vs the originals' step paths"),
    "all": ("run_all", "all of them, writing benchmarks/results/ and machine.json"),
    "compare": ("", "compare the ratios of two recorded runs: compare OLD.json NEW.json (runs nothing)"),
}

_USAGE = ("usage: linrec bench [{" + ",".join(n for n in SUBCOMMANDS if n != "compare")
          + "}] [--quick] [--out DIR] [--compare SUITE.json]\n"
          "       linrec bench compare OLD.json NEW.json [--threshold 0.25] [--fail-on-regression]")

NEEDS_CHECKOUT = (
    "linrec bench: the benchmark scripts (benchmarks/*.py) are part of linrec's source tree, not of the installed "
    "package. Run it from a source checkout installed in place: in the folder with pyproject.toml and benchmarks/, "
    "pip install -c constraints.txt -e \".[all,bench]\" and then linrec bench (or python benchmarks/run_all.py)."
)


def _help() -> str:
    lines = [_USAGE, "", "Run the benchmark scripts of benchmarks/ (see benchmarks/README.md).", "", "subcommands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "options (each subcommand's --help lists its own):",
              "  --quick    tiny sizes (all of them: about 9 minutes on 2 cores); writes nothing unless --out is given",
              "  --out DIR  where to write the Markdown tables, plots and machine.json",
              "  all --compare SUITE.json [--threshold 0.25] [--fail-on-regression]: after the run, compare each",
              "             ratio with the recorded run's, flag those more than 25 % worse (a report: exit 0);",
              "             a --quick run compares with benchmarks/results/suite-quick.json (same sizes)",
              "  scan --device cuda [--dry-run] [--model]: the Triton kernels vs the device roofline "
              "(--dry-run: CPU, interpreted, tiny shapes; --model: the H100/H200 model)",
              "  layers --device cuda [--dry-run] [--model]: the layers with Triton kernels (minGRU, GatedLinearRNN, "
              "GateLoop) vs the device roofline"]
    return "\n".join(lines)


def _device_run(argv: Sequence[str]) -> bool:
    """``--device cuda``, ``--dry-run`` or ``--model`` (of ``scan`` or ``layers``): the device benchmark
    (``--device cpu`` is the plain CPU benchmark)."""
    if "--dry-run" in argv or "--model" in argv:
        return True
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--device=") else (
            argv[i + 1] if arg == "--device" and i + 1 < len(argv) else None)
        if value is not None and value != "cpu":
            return True
    if "--device" in argv or any(a.startswith("--device=") for a in argv):
        argv[:] = [a for i, a in enumerate(argv) if not (a.startswith("--device") or
                                                         (i and argv[i - 1] == "--device"))]
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_help())
        return 0
    name = "all"
    if argv and not argv[0].startswith("-"):
        name = argv.pop(0)
        if name not in SUBCOMMANDS:
            print(f"{_USAGE}\nlinrec bench: unknown benchmark {name!r} (choose from {', '.join(SUBCOMMANDS)})",
                  file=sys.stderr)
            return 2
    if name == "compare":  # two recorded files: needs neither the scripts nor a framework
        from linrec.tools import bench_compare

        return bench_compare.main(argv)
    if name == "scan" and _device_run(argv):
        from linrec.tools import bench_device  # the Triton kernels on a GPU (or interpreted: --dry-run)

        return bench_device.main(argv)
    if name == "layers" and _device_run(argv):
        from linrec.tools import bench_device_layers  # the layers' Triton kernels on a GPU (or interpreted)

        return bench_device_layers.main(argv)
    from linrec.tools import bench

    if bench.benchmarks_dir() is None:
        print(NEEDS_CHECKOUT, file=sys.stderr)
        return 2
    try:
        module = bench.load_benchmark(SUBCOMMANDS[name][0])
    except FileNotFoundError as err:
        print(f"linrec bench: {err}\n{NEEDS_CHECKOUT}", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
