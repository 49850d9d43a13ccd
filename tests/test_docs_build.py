"""The documentation site builds with ``--strict``, and its tables come from the code at build time.

One build (numpy only, a handful of conformance cases) serves every test here; a layout row's transform and an
original's description are patched in code before it, and the built pages must show the patched text, which no file
on disk holds. Skips when the ``docs`` extra (mkdocs) is not installed. The browser check is tests/test_docs_site.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
pytest.importorskip("material", reason="mkdocs-material is not installed (the docs extra)")
pytest.importorskip("latex2mathml", reason="latex2mathml is not installed (the docs extra)")

from linrec.tools import docs, docs_pages, layout, originals

REPO = Path(__file__).resolve().parent.parent
LAYOUT_MARK = "patched-in-code-7f3a"
ORIGINAL_MARK = "patched-original-91c2"
SELECT = "scan/named/nan-stays-in-its-segment*"
# the slow tier (a whole strict build, ~20 s on the 2-core reference machine; `.ci/run` runs it after the README's
# command, and tests/test_docs_site.py builds the site again through `linrec docs build --strict`)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        forward, backward, _ = layout.TRANSFORMS["identity"]
        mp.setitem(layout.TRANSFORMS, "identity", (forward, backward, LAYOUT_MARK))
        nnx_gru = originals.ORIGINALS["nnx-gru"]
        mp.setitem(originals.ORIGINALS, "nnx-gru", dataclasses.replace(nnx_gru, description=ORIGINAL_MARK))
        docs.build(out, strict=True, select=SELECT, backends=["numpy"])
    return out


def _page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text()


def test_strict_build_writes_every_page_of_the_navigation(site):
    nav = (REPO / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    pages = re.findall(r":\s+(\S+\.md)\s*$", nav, flags=re.MULTILINE)
    assert len(pages) >= 20
    for page in pages:
        target = page[: -len(".md")]
        for index in ("README", "index"):
            target = target[: -len(index)] if target == index or target.endswith("/" + index) else target
        assert (site / target / "index.html").is_file(), page


def test_layout_page_is_generated_from_linrec_tools_layout(site):
    page = _page(site, "spec/layout")
    assert LAYOUT_MARK in page  # the patched table, not spec/layout.md
    assert LAYOUT_MARK not in (REPO / "spec" / "layout.md").read_text()
    assert "gated_linear_rnn.kernel" in page or "<code>gated_linear_rnn</code>" in page


def test_originals_page_is_generated_from_linrec_tools_originals(site):
    page = _page(site, "spec/originals")
    assert ORIGINAL_MARK in page
    assert 'id="nnx-gru"' in page and 'id="gated-linear-rnn"' in page  # the anchors the tables link to


def test_conformance_matrix_comes_from_the_run(site):
    page = _page(site, "conformance")
    assert "nan-stays-in-its-segment" in page
    assert "scan/golden" not in page  # only what --select ran
    assert re.search(r"sequential\s*✓", page)
    assert "--select" in page and "numpy" in page


def test_formulas_are_mathml_with_no_raw_latex(site):
    page = _page(site, "spec/recurrence")
    assert page.count("<math") >= 15
    assert "&#x02299;" in page or "⊙" in page  # \odot of h_t = a_t ⊙ h_{t-1} + b_t
    assert 'class="arithmatex">\\(' not in page and 'class="arithmatex">\\[' not in page
    assert "$$" not in re.sub(r"<pre.*?</pre>|<code.*?</code>", "", page, flags=re.DOTALL)


def test_spec_pages_are_read_in_place_and_links_to_files_resolve(site):
    assert not list((REPO / "docs").rglob("recurrence.md"))  # never copied into docs/
    page = _page(site, "spec/recurrence")
    assert 'href="../../source/spec/reference.py/"' in page
    assert "linear_scan_vjp" in _page(site, "source/spec/reference.py")


def test_examples_ran_at_build(site):
    assert "bit-exact: True" in _page(site, "conversion")
    assert "PASSED (51 pass, 18 xfail)" in _page(site, "tutorials/own-backend")
    assert "max |torch - jax|" in _page(site, "tutorials/flax-to-pytorch")


def test_api_reference_documents_every_backend(site):
    for name in ("numpy", "jax", "torch"):
        page = _page(site, f"api/{name}")
        assert f'id="linrec.backends.{name}.linear_scan"' in page, name
    assert 'id="linrec.conformance.run"' in _page(site, "api/conformance")
    assert 'id="linrec.tools.convert.convert"' in _page(site, "api/tools")


def test_a_failing_example_fails_the_build():
    import importlib.util

    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("linrec_docs_hook", REPO / "docs" / "hooks" / "linrec_docs.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook._state["exec_errors"] = []
    logging.getLogger("mkdocs.plugins.markdown_exec").removeHandler(hook._handler)
    logging.getLogger("mkdocs.plugins.markdown_exec").addHandler(hook._handler)
    try:
        logging.getLogger("mkdocs.plugins.markdown_exec").warning("Execution of python code block exited with errors")
        with pytest.raises(PluginError, match="1 code example"):
            hook.on_post_build(None)
    finally:
        logging.getLogger("mkdocs.plugins.markdown_exec").removeHandler(hook._handler)


def test_conformance_page_renders_xfail_reasons_and_failures():
    report = {"ok": False, "command": "linrec conformance", "environment": {"linrec": "0"}, "backends": [
        {"backend": "mine", "module": "my_backend", "ok": False, "skipped": "", "import_error": "",
         "counts": {"pass": 1, "xfail": 1, "fail": 1}, "results": [
             {"id": "scan/named/x[sequential,float32]", "status": "pass", "reason": "", "detail": ""},
             {"id": "scan/named/x[chunked,float32]", "status": "xfail", "reason": "not yet", "detail": ""},
             {"id": "scan/errors/y", "status": "fail", "reason": "", "detail": "no error raised"}]},
        {"backend": "jax", "module": "", "ok": True, "skipped": "jax is not installed", "import_error": "",
         "counts": {}, "results": []}]}
    page = docs_pages.conformance_page(report)
    assert "| `scan/named/x[float32]` | sequential ✓ · chunked xfail |" in page
    assert "| mine | `scan/named/x[chunked,float32]` | not yet |" in page
    assert "no error raised" in page and "skipped: jax is not installed" in page and "**FAILED**" in page


def test_linrec_docs_is_a_subcommand(capsys):
    from linrec.tools import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["docs", "build", "--help"])
    assert exit_.value.code == 0
    assert "--strict" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_example_fails_a_real_build_without_strict(tmp_path, monkeypatch, caplog):
    """A checkout whose docs/ holds a page with an example that raises: the build stops, naming the error."""
    import shutil

    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    for entry in REPO.iterdir():
        if entry.name not in ("docs", "mkdocs.yml", "site", "build", ".git"):
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    shutil.copytree(REPO / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("tutorials", "api"))
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "broken.md").write_text(
        '# Broken\n\n```python exec="on"\nraise RuntimeError("this example is broken")\n```\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LINREC_DOCS_CONFORMANCE_SELECT", SELECT)
    monkeypatch.setenv("LINREC_DOCS_CONFORMANCE_BACKENDS", "numpy")
    config = load_config(str(tmp_path / "mkdocs.yml"), site_dir=str(tmp_path / "out"), strict=False)
    with pytest.raises(MkDocsException):
        mkdocs_build(config)
    assert "1 code example(s) failed" in caplog.text and "this example is broken" in caplog.text
