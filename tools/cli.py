"""The ``linrec`` command: ``conformance``, ``info``, ``golden``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import linrec

__all__ = ["main"]


def _progress(stream):
    """A one-line counter on a terminal; on a pipe only problems and a line per backend."""
    tty = stream.isatty()

    def show(backend: str, done: int, total: int, result) -> None:
        if result.status not in ("pass", "xfail"):
            stream.write(("\n" if tty else "") + f"  {result.status}: {result.id}\n")
        if tty:
            stream.write(f"\r{backend}: {done}/{total} cases")
        if done == total:
            stream.write(("\n" if tty else "") + f"{backend}: {total} cases run\n")
        stream.flush()

    return show


def _cmd_conformance(args: argparse.Namespace) -> int:
    from linrec.conformance import run, to_json, to_text

    backends = args.backend or list(linrec.BUNDLED_BACKENDS)
    xfails = json.loads(Path(args.xfails).read_text()) if args.xfails else None
    progress = None if args.quiet else _progress(sys.stderr)
    reports = run(backends, thorough=args.thorough, xfails=xfails, select=args.select, progress=progress)
    print(to_text(reports, verbose=args.verbose))
    if args.json:
        Path(args.json).write_text(to_json(reports))
        print(f"JSON report: {args.json}")
    return 0 if all(r.ok for r in reports) else 1


#: the frameworks ``linrec info`` reports, by distribution name
_FRAMEWORKS = ("numpy", "jax", "jaxlib", "flax", "torch")


def _cmd_info(args: argparse.Namespace) -> int:
    """Versions, backends and their methods, and the native kernel's cache path and state (building it if needed)."""
    import importlib.metadata
    import importlib.util

    from linrec.backends import native

    print(f"linrec {linrec.__version__} (spec {linrec.SPEC_VERSION}), Python {sys.version.split()[0]}")
    versions = []
    for dist in _FRAMEWORKS:
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    print("frameworks: " + ", ".join(versions))
    kernel = native.describe()
    if kernel["built"]:
        state = f"built, xla_ffi={kernel['xla_ffi']}, threads={kernel['threads']}"
    else:
        state = f"not available: {kernel['error']}"
    print(f"native kernel: {state}")
    print(f"  library: {kernel['path'] or 'unknown'}")
    print(f"  cache: {kernel['cache']} (set LINREC_CACHE to move it)")
    print("backends:")
    for name in linrec.BUNDLED_BACKENDS:
        framework = "numpy" if name == "numpy" else name
        if importlib.util.find_spec(framework) is None:
            print(f"  {name}: not installed (pip install 'linrec[{name}]')")
            continue
        try:
            backend = linrec.get_backend(name)
        except Exception as err:  # a diagnostic command: report a broken install, then the other backends
            print(f"  {name}: import failed: {type(err).__name__}: {err}")
            continue
        extra = backend.describe() if hasattr(backend, "describe") else {}
        details = ", ".join(f"{k}={v}" for k, v in extra.items() if k != "native_kernel")
        print(f"  {name}: methods {', '.join(backend.METHODS)}{'; ' + details if details else ''}")
    return 0


def _cmd_golden(args: argparse.Namespace) -> int:
    from linrec.tools import golden

    return golden.main(["--out", str(args.out)] if args.out else [])


#: subcommands whose own parser takes the rest of the command line
_DELEGATED = {
    "convert": ("linrec.tools.convert", "convert_main", "convert a checkpoint between formats and frameworks"),
    "inspect": ("linrec.tools.convert", "inspect_main", "print a checkpoint's model, config and tensor table"),
    "bench": ("linrec.tools.bench_cli", "main", "benchmarks (scan, layers, memory) as ratios measured in one run"),
    "train": ("linrec.tools.cli", "_train_main", "train a model on a task: linrec train selective-copy --backend jax"),
}
_TASKS = {"selective-copy": "linrec.tools.selective_copy"}


def _train_main(argv: list[str]) -> int:
    from importlib import import_module

    if not argv or argv[0] not in _TASKS:
        print(f"usage: linrec train {{{','.join(_TASKS)}}} [options]  (tasks: {', '.join(_TASKS)})", file=sys.stderr)
        return 2
    return import_module(_TASKS[argv[0]]).main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        from importlib import import_module

        module, func, _ = _DELEGATED[argv[0]]
        return getattr(import_module(module), func)(argv[1:])
    parser = argparse.ArgumentParser(
        prog="linrec", description="Gated linear recurrences: spec, backends, conformance."
    )
    parser.add_argument("--version", action="version", version=f"linrec {linrec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conf = sub.add_parser("conformance", help="run the conformance suite and print a report")
    conf.add_argument("--backend", action="append",
                      help="numpy, jax, torch or a module path; repeatable (default: all bundled)")
    conf.add_argument("--thorough", action="store_true", help="deep Hypothesis profile (many examples, shrinking)")
    conf.add_argument("--select", help="only cases whose id matches this fnmatch pattern, e.g. 'scan/named/*'")
    conf.add_argument("--xfails", help="JSON xfail manifest {case id or pattern: reason} for your backend")
    conf.add_argument("--json", help="also write the report as JSON to this file")
    conf.add_argument("--verbose", action="store_true", help="list every case, not only those that did not pass")
    conf.add_argument("--quiet", action="store_true", help="no progress on stderr")
    conf.set_defaults(func=_cmd_conformance)

    info = sub.add_parser("info", help="framework versions, backends and methods, and the native kernel's "
                          "cache path and state (builds it if needed)")
    info.set_defaults(func=_cmd_info)

    gold = sub.add_parser("golden", help="regenerate the portable golden vectors")
    gold.add_argument("--out", type=Path, help="output directory (default: the package's conformance/golden)")
    gold.set_defaults(func=_cmd_golden)

    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
