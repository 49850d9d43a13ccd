"""The ``linrec`` command: ``conformance``, ``info``, ``golden`` and the delegated ``convert``, ``inspect``, ``bench``,
``train``, ``docs``. Also ``python -m linrec``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import linrec

__all__ = ["main"]


def _progress(stream):
    """A one-line counter on a terminal; on a pipe only problems and a line per backend.

    Unsupported cases are not listed one by one: the report folds them into a line per missing function.
    """
    tty = stream.isatty()

    def show(backend: str, done: int, total: int, result) -> None:
        if result.status not in ("pass", "xfail", "unsupported"):
            stream.write(("\n" if tty else "") + f"  {result.status}: {result.id}\n")
        if tty:
            stream.write(f"\r{backend}: {done}/{total} cases")
        if done == total:
            stream.write(("\n" if tty else "") + f"{backend}: {total} cases run\n")
        stream.flush()

    return show


def _load_xfails(path: str) -> dict[str, str]:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"linrec conformance: cannot read --xfails {path}: {err}") from None
    if not isinstance(manifest, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in manifest.items()):
        raise SystemExit(f"linrec conformance: --xfails {path} must be a JSON object {{case id or pattern: reason}}")
    return manifest


#: set in the child of a supervised run (:func:`_supervised`): the file the child creates once it has finished
_FINISHED_ENV = "LINREC_CONFORMANCE_FINISHED_FILE"
#: exit status of a supervised run whose child ended without finishing (EX_SOFTWARE)
DIED = 70


def _supervised(argv: list[str]) -> int:
    """Run ``linrec <argv>`` in a child process and make an unfinished run fail.

    Why: a ``--thorough`` run spends hours inside a framework's compiler, and a failure there (an LLVM "Cannot
    allocate memory" in XLA's CPU compiler) has ended the process with no report and exit status 0. The child
    creates a marker file as its very last step; a child that ends without it (any exit status, a signal) makes this
    command print why and exit with :data:`DIED` (or the child's own non-zero status). Errors Python reports (a bad
    argument, an exception) still count as finished: the child's own message and status stand.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="linrec-conformance-") as tmp:
        finished = Path(tmp) / "finished"
        env = {**os.environ, _FINISHED_ENV: str(finished)}
        code = subprocess.run([sys.executable, "-m", "linrec", *argv], env=env).returncode
        if finished.exists():
            return code
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    print(f"linrec conformance: the run ended before it finished ({how}), with no complete report: it died inside "
          "a framework or was killed", file=sys.stderr)
    if "--resume" in argv or any(a.startswith("--resume=") for a in argv):
        print("linrec conformance: the cases it finished are in the journal; the same command continues the run",
              file=sys.stderr)
    return code if code > 0 else DIED


def _cmd_conformance(args: argparse.Namespace) -> int:
    if args.thorough and _FINISHED_ENV not in os.environ:  # hours inside the frameworks: watched from outside
        return _supervised(args.argv)
    try:
        return _conformance(args)
    finally:  # Python got to the end (a return, an error it reports): a death inside native code never gets here
        if _FINISHED_ENV in os.environ:
            sys.stdout.flush()
            Path(os.environ[_FINISHED_ENV]).touch()


def _conformance(args: argparse.Namespace) -> int:
    from linrec.conformance import run, to_json, to_text
    from linrec.conformance.journal import JournalError

    # like `python -m`, find a backend module in the current directory (console scripts do not put it on sys.path)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    xfails = _load_xfails(args.xfails) if args.xfails else None
    progress = None if args.quiet else _progress(sys.stderr)
    if args.devices is not None and args.resume:
        raise SystemExit("linrec conformance: --resume journals the case suite; the distributed group (--devices) "
                         "runs in one go")
    if args.devices is not None:  # the distributed group (recurrence.md §12): sharded == one device
        from linrec.conformance import distributed_cases

        try:
            reports = distributed_cases.run(args.backend, args.devices, args.select)
        except ValueError as err:
            raise SystemExit(f"linrec conformance: {err}") from None
    else:
        try:
            reports = run(args.backend, thorough=args.thorough, xfails=xfails, select=args.select,
                          progress=progress, resume=args.resume)
        except JournalError as err:
            raise SystemExit(f"linrec conformance: {err}") from None
    print(to_text(reports, verbose=args.verbose))
    if args.json:
        Path(args.json).write_text(to_json(reports))
        print(f"JSON report: {args.json}")
    empty = [r.backend for r in reports if not r.skipped and not r.import_error and not r.results]
    if empty:
        what = f"--select {args.select!r} matches" if args.select else "there is"
        print(f"linrec conformance: {what} no case for {', '.join(empty)}", file=sys.stderr)
    if all(r.skipped for r in reports):
        print("linrec conformance: no backend ran (none of their frameworks is installed)", file=sys.stderr)
        return 1
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


def _run(argv: list[str]) -> int:
    if argv and argv[0] in _DELEGATED:
        from importlib import import_module

        module, func, _ = _DELEGATED[argv[0]]
        return getattr(import_module(module), func)(argv[1:])
    args = _parser().parse_args(argv)
    args.argv = argv  # for a command that reruns itself in a child process (conformance --thorough)
    return args.func(args)


#: subcommands whose own parser takes the rest of the command line
_DELEGATED = {
    "convert": ("linrec.tools.convert", "convert_main", "convert a checkpoint between formats and frameworks"),
    "inspect": ("linrec.tools.convert", "inspect_main", "print a checkpoint's model, config and tensor table"),
    "bench": ("linrec.tools.bench_cli", "main", "benchmarks (scan, layers, memory) as ratios measured in one run"),
    "train": ("linrec.tools.cli", "_train_main", "train a model on a task: linrec train selective-copy --backend jax"),
    "docs": ("linrec.tools.docs", "main", "build or serve the documentation site: linrec docs build [DIR] --strict"),
}
_TASKS = {"selective-copy": "linrec.tools.selective_copy"}


def _train_main(argv: list[str]) -> int:
    from importlib import import_module

    if not argv or argv[0] not in _TASKS:
        print(f"usage: linrec train {{{','.join(_TASKS)}}} [options]  (tasks: {', '.join(_TASKS)})", file=sys.stderr)
        return 2
    return import_module(_TASKS[argv[0]]).main(argv[1:])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linrec", description="Gated linear recurrences: spec, backends, conformance."
    )
    parser.add_argument("--version", action="version", version=f"linrec {linrec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    conf = sub.add_parser("conformance", help="run the conformance suite and print a report")
    conf.add_argument("--backend", action="append",
                      help="numpy, jax, torch or a module path (found in the current directory too); repeatable "
                           "(default: every bundled backend whose framework is installed)")
    conf.add_argument("--thorough", action="store_true",
                      help="deep Hypothesis profile: at least 100,000 examples per backend over its property cases, "
                           "failures shrunk to a minimal example (minutes per backend, see the README)")
    conf.add_argument("--resume", metavar="JOURNAL",
                      help="append each finished case to this file and skip the cases it already holds, so a long "
                           "(--thorough) run can be stopped and continued; refused if the code, versions or profile "
                           "changed since it was written")
    conf.add_argument("--select", help="only cases whose id matches this fnmatch pattern, e.g. 'scan/named/*' "
                                       "(a pattern that matches no case fails the run)")
    conf.add_argument("--xfails", help="JSON xfail manifest {case id or pattern: reason} for your backend")
    conf.add_argument("--json", help="also write the report as JSON to this file")
    conf.add_argument("--verbose", action="store_true", help="list every case, not only those that did not pass")
    conf.add_argument("--devices", type=int, metavar="N",
                      help="run the distributed group instead: sequence-parallel == one device on N devices "
                           "(jax: N CPU host devices in a subprocess; torch: N processes on loopback)")
    conf.add_argument("--quiet", action="store_true", help="no progress on stderr")
    conf.set_defaults(func=_cmd_conformance)

    info = sub.add_parser("info", help="framework versions, backends and methods, and the native kernel's "
                          "cache path and state (builds it if needed)")
    info.set_defaults(func=_cmd_info)

    gold = sub.add_parser("golden", help="regenerate the portable golden vectors")
    gold.add_argument("--out", type=Path,
                      help="output directory (default: conformance/golden of a source checkout; an installed "
                           "package's copy is never overwritten)")
    gold.set_defaults(func=_cmd_golden)

    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``linrec`` command; returns the exit code. Output cut short by a closed pipe (``| head``) is not an error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away: send whatever is still buffered nowhere, so the interpreter's own flush at exit
        # does not raise a second time, and stop quietly (141 = 128 + SIGPIPE, what a shell reports)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    raise SystemExit(main())
