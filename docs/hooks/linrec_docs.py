"""mkdocs hooks of the linrec site: the spec's own pages, generated pages, links and math.

- ``spec/*.md``, ``CHANGELOG.md``, ``benchmarks/README.md`` and ``benchmarks/results/`` are read where they are in
  the repository (the spec stays the single normative source; nothing is copied into ``docs/``).
- ``spec/layout.md`` and ``spec/originals.md`` are generated from ``linrec.tools.layout`` / ``linrec.tools.originals``,
  ``conformance.md`` from a real ``linrec conformance --json`` run, ``benchmarks/results/index.md`` from the results
  folder (``linrec.tools.docs_pages``).
- A relative link to a repository file that is not a page (``reference.py``, ``../tools/layout.py``) points to a
  generated page that shows that file, so every link resolves offline and ``--strict`` holds.
- Math (``$…$``, ``$$…$$``, parsed by ``pymdownx.arithmatex`` in generic mode) becomes MathML at build time
  (``latex2mathml``): no script and no network is needed to read an equation.
- A code example that fails (``markdown-exec``) fails the build, with or without ``--strict``.

Environment: ``LINREC_DOCS_CONFORMANCE_SELECT`` (an fnmatch pattern, ``--select`` of the run; empty: every case),
``LINREC_DOCS_CONFORMANCE_BACKENDS`` (comma-separated; empty: every installed bundled backend).
"""

from __future__ import annotations

import html
import logging
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.linrec_docs")

#: repository files read in place, as site pages or assets (globs relative to the repository root)
INCLUDED = ("spec/*.md", "CHANGELOG.md", "benchmarks/README.md", "benchmarks/results/*.md",
            "benchmarks/results/*.png")
#: spec pages replaced by a page generated from the code they are generated from
REPLACED = ("spec/layout.md",)

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_MATH_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_MATH_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)

_state: dict = {"exec_errors": []}


class _ExecErrors(logging.Handler):
    """Collects the warnings markdown-exec logs when an example raises."""

    def emit(self, record: logging.LogRecord) -> None:
        _state["exec_errors"].append(record.getMessage())


_handler = _ExecErrors(level=logging.WARNING)


def _repo(config) -> Path:
    return Path(config.config_file_path).resolve().parent


#: the folders of the ``linrec.*`` subpackages (pyproject's package-dir)
PACKAGE_DIRS = {"backends": "backends", "conformance": "conformance", "spec": "spec", "tools": "tools"}


def _api_tree(repo: Path) -> str:
    """A folder holding ``linrec/`` laid out as it is imported (symlinks into the checkout), for mkdocstrings'
    static analysis: in the checkout, ``linrec.backends`` lives in ``backends/``, not ``linrec/backends/``."""
    root = Path(tempfile.mkdtemp(prefix="linrec-docs-api-"))
    pkg = root / "linrec"
    pkg.mkdir()
    for entry in (repo / "linrec").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIRS.items():
        (pkg / name).symlink_to(repo / folder, target_is_directory=True)
    return str(root)


def _remove_api_tree() -> None:
    tree = _state.pop("api_tree", None)
    if tree:
        shutil.rmtree(tree, ignore_errors=True)


def on_shutdown() -> None:
    _remove_api_tree()


@event_priority(100)  # before mkdocstrings creates its handlers
def on_config(config):
    _state["exec_errors"] = []
    plugin = config.plugins.get("mkdocstrings")
    if plugin is not None:
        _remove_api_tree()
        _state["api_tree"] = _api_tree(_repo(config))
        python = plugin.config.handlers.setdefault("python", {})
        python["paths"] = [_state["api_tree"], *[p for p in python.get("paths", []) if "linrec-docs-api-" not in p]]
    # markdown-exec logs a failed example as a warning of a logger below this one; the level is set so that no
    # logging configuration of the caller (a root logger at ERROR) can hide the failure from the handler
    exec_logger = logging.getLogger("mkdocs.plugins.markdown_exec")
    exec_logger.setLevel(logging.WARNING)
    exec_logger.removeHandler(_handler)
    exec_logger.addHandler(_handler)
    return config


def _targets(text: str, src_uri: str) -> list[str]:
    """Repository paths of the relative links of a page (anchors dropped)."""
    out = []
    for m in _LINK.finditer(text):
        target = m.group(2).split("#", 1)[0]
        if not target or "://" in target or target.startswith(("mailto:", "/")):
            continue
        out.append(posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), target)))
    return out


def _conformance_report() -> dict:
    from linrec.tools import docs_pages

    select = os.environ.get("LINREC_DOCS_CONFORMANCE_SELECT") or None
    backends = [b for b in os.environ.get("LINREC_DOCS_CONFORMANCE_BACKENDS", "").split(",") if b.strip()]
    try:
        return docs_pages.run_conformance(select=select, backends=backends)
    except docs_pages.ConformanceRunError as err:
        raise PluginError(str(err)) from None


def on_files(files: Files, config) -> Files:
    from linrec.tools import docs_pages

    repo = _repo(config)
    texts: dict[str, str] = {}
    for pattern in INCLUDED:
        for path in sorted(repo.glob(pattern)):
            uri = path.relative_to(repo).as_posix()
            if uri in REPLACED:
                continue
            files.append(File(uri, str(repo), config.site_dir, config.use_directory_urls))
            if path.suffix == ".md":
                texts[uri] = path.read_text()
    generated = {
        "spec/layout.md": docs_pages.layout_page(),
        "spec/originals.md": docs_pages.originals_page(),
        "benchmarks/results/index.md": docs_pages.benchmarks_results_page(repo / "benchmarks" / "results"),
    }
    report = _conformance_report()
    if not report.get("ok"):
        log.warning("conformance run did not pass: the matrix page lists the failures")
    generated["conformance.md"] = docs_pages.conformance_page(report)
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
        texts[uri] = content
    for f in files.documentation_pages():
        if f.src_uri not in texts and f.abs_src_path:
            texts[f.src_uri] = Path(f.abs_src_path).read_text()
    # a link to a repository file that is not in the site: a page showing that file
    known = {f.src_uri for f in files}
    sources: dict[str, str] = {}
    for uri, text in texts.items():
        for target in _targets(text, uri):
            path = repo / target
            if target in known or target.startswith("..") or target == "." or not path.exists():
                continue
            if path.is_dir() and any(f.startswith(target.rstrip("/") + "/") for f in known):
                continue  # a folder of the site: its index page (on_page_markdown)
            sources[target] = f"source/{target.rstrip('/')}" + ("/index.md" if path.is_dir() else ".md")
    for target, uri in sorted(sources.items()):
        if uri not in known:
            path = repo / target
            content = (docs_pages.folder_page(path, target) if path.is_dir()
                       else docs_pages.source_page(path, target))
            files.append(File.generated(config, uri, content=content))
            known.add(uri)
    _state["sources"] = sources
    _state["dirs"] = {posixpath.dirname(f.src_uri) for f in files if f.name in ("index", "README")}
    return files


def on_page_markdown(markdown: str, page, config, files):
    """Relative links to repository files and folders point to their pages."""
    src = page.file.src_uri
    sources, dirs = _state.get("sources", {}), _state.get("dirs", set())

    def fix(m: re.Match) -> str:
        target, _, anchor = m.group(2).partition("#")
        if not target or "://" in target or target.startswith(("mailto:", "/")):
            return m.group(0)
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(src), target))
        if resolved in sources:  # a file shown on a page of its own (its anchors are not that page's)
            new = posixpath.relpath(sources[resolved], posixpath.dirname(src) or ".")
            anchor = ""
        elif resolved in dirs:  # a folder of the site: its index page
            index = "index.md" if files.get_file_from_path(resolved + "/index.md") else "README.md"
            new = target.rstrip("/") + "/" + index
        else:
            return m.group(0)
        return f"{m.group(1)}{new}{'#' + anchor if anchor else ''}{m.group(3)}"

    markdown = _LINK.sub(fix, markdown)
    plot = posixpath.splitext(src)[0] + ".png"
    if src.startswith("benchmarks/results/") and files.get_file_from_path(plot):
        markdown += f"\n\n![{posixpath.basename(plot)}]({posixpath.basename(plot)})\n"
    return markdown


def _mathml(latex: str, display: str, page) -> str | None:
    from latex2mathml.converter import convert

    try:
        return convert(html.unescape(latex).strip(), display=display)
    except Exception as err:  # the converter raises many types; report the formula and the page
        log.warning("%s: cannot convert the formula %r to MathML: %s", page.file.src_uri, latex, err)
        return None


def on_page_content(content: str, page, config, files) -> str:
    """Every formula as MathML (rendered by the browser, no script, no network)."""

    def block(m: re.Match) -> str:
        out = _mathml(m.group(1), "block", page)
        return f'<div class="arithmatex">{out}</div>' if out else m.group(0)

    def inline(m: re.Match) -> str:
        out = _mathml(m.group(1), "inline", page)
        return f'<span class="arithmatex">{out}</span>' if out else m.group(0)

    return _MATH_INLINE.sub(inline, _MATH_BLOCK.sub(block, content))


def on_post_build(config) -> None:
    errors = _state["exec_errors"]
    if errors:
        raise PluginError(f"{len(errors)} code example(s) failed:\n" + "\n".join(errors))


def on_serve(server, config, builder):
    repo = _repo(config)
    for path in ("spec", "CHANGELOG.md", "benchmarks/README.md", "benchmarks/results", "tools", "conformance"):
        if (repo / path).exists():
            server.watch(str(repo / path))
    return server
