"""``linrec docs build [DIR]`` and ``linrec docs serve``: the documentation site (mkdocs-material, ``mkdocs.yml``).

The site is built from a source checkout (the spec pages, ``docs/``, ``benchmarks/results/``); an installed wheel
has no ``mkdocs.yml`` and says so. Needs the ``docs`` extra: ``pip install -c constraints.txt -e ".[docs]"``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build", "config_file", "main", "serve"]


def config_file() -> Path:
    """``mkdocs.yml`` of the source checkout this package runs from; ``FileNotFoundError`` naming the fix if none."""
    root = Path(__file__).resolve().parent.parent
    path = root / "mkdocs.yml"
    if not path.is_file():
        raise FileNotFoundError(f"no mkdocs.yml beside {Path(__file__).resolve().parent}: the documentation site is "
                                "built from a source checkout (git clone, then pip install -e \".[docs]\")")
    return path


def _require_mkdocs() -> None:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        raise SystemExit('linrec docs: mkdocs is not installed; pip install -c constraints.txt -e ".[docs]"') from None


_ENV = ("LINREC_DOCS_CONFORMANCE_SELECT", "LINREC_DOCS_CONFORMANCE_BACKENDS")


def _environment(select: str | None, backends: Sequence[str]) -> dict[str, str | None]:
    """Tell the hook what the matrix page runs; returns the previous values (for :func:`_restore`)."""
    previous = {name: os.environ.get(name) for name in _ENV}
    if select is not None:
        os.environ["LINREC_DOCS_CONFORMANCE_SELECT"] = select
    if backends:
        os.environ["LINREC_DOCS_CONFORMANCE_BACKENDS"] = ",".join(backends)
    return previous


def _restore(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def build(site_dir: str | os.PathLike | None = None, *, strict: bool = False, select: str | None = None,
          backends: Sequence[str] = ()) -> Path:
    """Build the site into ``site_dir`` (default ``site/`` of the checkout) and return that folder.

    Args:
      strict: fail on any warning (broken link or anchor, missing page, a formula that does not convert).
      select: fnmatch pattern of the conformance cases the matrix page runs (default: every case).
      backends: the backends it runs them on (default: every installed bundled backend).
    """
    _require_mkdocs()
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config

    cfg_path = config_file()
    overrides = {"strict": strict}
    if site_dir is not None:
        overrides["site_dir"] = str(Path(site_dir).resolve())
    cwd = os.getcwd()
    previous = _environment(select, backends)
    os.chdir(cfg_path.parent)  # the examples read files relative to the checkout
    try:
        config = load_config(str(cfg_path), **overrides)
        mkdocs_build(config)
    finally:
        os.chdir(cwd)
        _restore(previous)
    return Path(config.site_dir)


def serve(addr: str = "127.0.0.1:8000", *, select: str | None = None, backends: Sequence[str] = ()) -> None:
    """Serve the site with live reload on ``addr`` (the spec pages, ``tools/`` and ``benchmarks/results`` are
    watched)."""
    _require_mkdocs()
    from mkdocs.commands.serve import serve as mkdocs_serve

    _environment(select, backends)
    cfg_path = config_file()
    os.chdir(cfg_path.parent)
    mkdocs_serve(str(cfg_path), dev_addr=addr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linrec docs", description="build or serve the documentation site")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("build", "build the site into DIR (default: site/)"),
                       ("serve", "serve the site with live reload")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--select", help="only the conformance cases matching this fnmatch pattern on the matrix "
                                        "page, e.g. 'scan/named/*' (default: every case)")
        p.add_argument("--backend", action="append", default=[],
                       help="a backend for the matrix page; repeatable (default: every installed bundled backend)")
    b = sub.choices["build"]
    b.add_argument("dir", nargs="?", help="output folder (default: site/ of the checkout)")
    b.add_argument("--strict", action="store_true", help="fail on any warning (CI builds with it)")
    s = sub.choices["serve"]
    s.add_argument("--addr", default="127.0.0.1:8000", help="host:port (default 127.0.0.1:8000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``linrec docs {build,serve}``; returns the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.action == "build":
            site = build(args.dir, strict=args.strict, select=args.select, backends=args.backend)
            print(f"site built: {site / 'index.html'}")
        else:
            serve(args.addr, select=args.select, backends=args.backend)
    except FileNotFoundError as err:
        print(f"linrec docs: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from mkdocs.exceptions import MkDocsException

        if isinstance(err, MkDocsException):
            print(f"linrec docs: build failed: {err}", file=sys.stderr)
            return 1
        raise
    return 0
