"""The documentation site in a real headless browser (Debian's Chromium driven by Playwright for Python).

Every page: no console error, no request leaving the local server, no raw ``$$``, ``\\(`` or ``\\begin`` in the
text a reader sees (code blocks aside), every internal link and anchor resolves; the recurrence page renders its
defining formula as MathML of non-zero size; the search box finds ``initial_state``. A screenshot of every page is
written to the folder ``$LINREC_DOCS_SCREENSHOTS`` (default ``build/docs-screenshots/`` of the checkout), printed
by the test. The site is ``$LINREC_DOCS_SITE`` when set, otherwise built here with ``linrec docs build --strict``.
Skips, with the reason, where Chromium, Playwright or mkdocs is missing. Playwright never downloads a browser here:
it launches ``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LINREC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
RAW_MATH = ("$$", "\\(", "\\begin")


def _requirements() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set LINREC_CHROMIUM)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the docs extra)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _requirements()
    given = os.environ.get("LINREC_DOCS_SITE")
    if given:
        if not (Path(given) / "index.html").is_file():
            pytest.fail(f"LINREC_DOCS_SITE={given} holds no built site (index.html)")
        return Path(given)
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
    from linrec.tools import docs

    out = tmp_path_factory.mktemp("site")
    # through the command line, as a user (and CI) builds it
    assert docs.main(["build", str(out), "--strict", "--select", "scan/named/nan-*", "--backend", "numpy"]) == 0
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    _requirements()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def _pages(site: Path) -> list[str]:
    """Site paths of every page (``spec/recurrence/``), the entry page first."""
    pages = sorted(p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html"))
    pages = ["" if p == "./" else p for p in pages]
    return sorted(pages, key=lambda p: (p != "", p))


def _local(url: str, base: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("data", "blob", "about") or url.startswith(base)


def _ids(html: str) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', html)) | set(re.findall(r'\sname="([^"]+)"', html))


def _target_file(site: Path, base: str, url: str) -> Path | None:
    path = unquote(urlparse(url[len(base):] if url.startswith(base) else url).path).lstrip("/")
    candidate = site / path
    if path.endswith("/") or path == "" or candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


_VISIBLE_TEXT = """() => {
  const root = (document.querySelector('article') || document.body).cloneNode(true);
  root.querySelectorAll('pre, code, script, style, .highlight').forEach(e => e.remove());
  return root.innerText;
}"""


def test_every_page_renders_offline_with_no_error(site, server, browser):
    shots = Path(os.environ.get("LINREC_DOCS_SCREENSHOTS") or REPO / "build" / "docs-screenshots")
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    print(f"\nscreenshots of every page: {shots}")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []

    def guard(route):
        if _local(route.request.url, server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    problems: list[str] = []
    links: dict[str, set[str]] = {}
    pages = _pages(site)
    assert len(pages) >= 20
    for path in pages:
        errors.clear()
        page.goto(f"{server}/{path}", wait_until="load")
        text = page.evaluate(_VISIBLE_TEXT)
        for raw in RAW_MATH:
            if raw in text:
                at = text.index(raw)
                problems.append(f"/{path}: raw {raw!r} in the text: …{text[max(0, at - 60):at + 60]!r}…")
        problems += [f"/{path}: {e}" for e in errors]
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            if href.startswith(server):
                links.setdefault(href, set()).add(path)
        name = (path.strip("/") or "index").replace("/", "__")
        height = page.evaluate("document.documentElement.scrollHeight")
        page.screenshot(path=str(shots / f"{name}.png"), full_page=height <= 12000)
    assert list(shots.glob("*.png")), "no screenshot written"
    # every internal link and anchor resolves
    assert len(links) > 100, f"only {len(links)} internal links found: the link check did not run"
    ids: dict[Path, set[str]] = {}
    for href, sources in sorted(links.items()):
        url, anchor = urldefrag(href)
        target = _target_file(site, server, url)
        if target is None:
            problems.append(f"broken link {href} on {sorted(sources)[:3]}")
            continue
        if anchor and target.suffix == ".html":
            if target not in ids:
                ids[target] = _ids(target.read_text())
            if unquote(anchor) not in ids[target]:
                problems.append(f"missing anchor #{anchor} of {url} on {sorted(sources)[:3]}")
    problems += [f"request outside the local server: {u}" for u in sorted(set(outside))]
    context.close()
    assert not problems, "\n".join(problems[:40])


def test_the_recurrence_is_rendered_as_mathml(server, browser):
    page = browser.new_page()
    page.goto(f"{server}/spec/recurrence/", wait_until="load")
    formula = page.locator('math[display="block"]', has_text="⊙").first
    formula.wait_for()
    box = formula.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 5, box
    # the browser lays it out as MathML: subscripts are <msub> elements with a box of their own
    sub = formula.locator("msub").first
    sub_box = sub.bounding_box()
    assert sub_box is not None and sub_box["width"] > 0 and sub_box["height"] > 0
    page.close()


def test_search_finds_initial_state(server, browser):
    page = browser.new_page()
    page.goto(f"{server}/", wait_until="load")
    results = page.locator(".md-search-result__item")
    # the index loads in a web worker: retype until it answers (the first query may reach it before it is ready)
    for _ in range(20):
        page.locator("label.md-search__icon, .md-search__input").first.click()
        box = page.locator("input.md-search__input")
        box.fill("")
        box.type("initial_state", delay=20)
        try:
            results.first.wait_for(state="visible", timeout=3000)
            break
        except Exception:  # playwright's TimeoutError: not answered yet
            page.keyboard.press("Escape")
    else:
        pytest.fail("the search box found nothing for 'initial_state' within 20 tries")
    text = page.locator(".md-search-result").inner_text()
    assert "initial_state" in text
    assert results.count() >= 3
    page.close()
