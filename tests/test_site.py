"""The course website (`make site` -> build/site/) opened in a real browser: Debian's headless
Chromium.

Run after `make site` with `make site-check`, or alone: `python -m pytest tests/test_site.py -m
site` (needs the `site` extra and /usr/bin/chromium; `make browser` installs Debian's chromium).
Every page of the site is loaded over HTTP from localhost, with every request that leaves localhost
refused, as in a workshop room without internet: - it loads without a console error, a page error or
a failed request; - every image is decoded (natural width > 0) and every internal link and anchor
resolves; - every formula is typeset by the MathJax the site serves (one <mjx-container> per
formula, no error); - each page says at its top how to run it locally and links its source file; a
notebook's page
  links to its exercise page and back;
- the exercise pages show every stub (`raise NotImplementedError`) and their hints, collapsed.
Screenshots of the landing page and of notebook 07's page go to build/site-screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

pytestmark = pytest.mark.site

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "build" / "site"
SHOTS = REPO / "build" / "site-screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIP_DIRS = {"_static", "_sources", "_downloads", "_images", "_src"}


def site_pages() -> list[str]:
    """Every HTML page of the site, as paths relative to build/site/ (the
    theme's templates aside)."""
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if p.relative_to(SITE).parts[0] not in SKIP_DIRS and p.name != "index.html"
    )


def solution_notebooks() -> list[str]:
    return sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))


def exercise_notebooks() -> list[str]:
    """The exercise versions (notebook 00, copied beside them without exercises, is no page)."""
    return sorted(
        p.stem
        for p in (REPO / "notebooks" / "exercises").glob("[0-9][0-9]_*.py")
        if "NotImplementedError" in p.read_text()
    )


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(
            f"error: no built site in {SITE}: run `make site` first (it builds build/site/)"
        )
    return SITE


@pytest.fixture(scope="module")
def base_url(site):
    """The site served over HTTP on localhost for the duration of the module."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(
            "error: Debian's chromium is not installed: run `make browser` "
            "(apt-get install chromium) before the site's browser check"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "error: playwright is not installed: pip install -e '.[site]' (make site-check does)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Visit:
    """One page opened in a fresh tab: what the console and the network said, what
    the page holds."""

    def __init__(self, browser, base_url: str, path: str):
        self.url = urljoin(base_url, path)
        self.errors: list[str] = []
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context = context
        page = context.new_page()
        self.page = page

        def refuse_outside(route):
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                self.errors.append(f"request outside the site: {route.request.url}")
                route.abort()

        context.route("**/*", refuse_outside)
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"failed request: {r.url}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"),
        )
        response = page.goto(self.url, wait_until="load")
        if response is None or response.status != 200:
            self.errors.append(f"HTTP {response.status if response else '?'} for the page itself")
        if page.evaluate("typeof MathJax !== 'undefined' && !!MathJax.startup"):
            page.evaluate("MathJax.startup.promise")  # typesetting done
        page.wait_for_load_state("networkidle")

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def visits(browser, base_url):
    """Every page of the site, opened once; the tests below read what each showed."""
    opened = {path: Visit(browser, base_url, path) for path in site_pages()}
    yield opened
    for visit in opened.values():
        visit.close()


def test_the_site_has_every_page(site):
    pages = set(site_pages())
    expected = {
        "README.html",
        "notebooks/exercises/README.html",
        "notebooks/exercises/INSTRUCTOR.html",
        "benchmarks/README.html",
        "benchmarks/PERFORMANCE.html",
    }
    expected |= {f"notebooks/{n}.html" for n in solution_notebooks()}
    expected |= {f"notebooks/exercises/{n}.html" for n in exercise_notebooks()}
    if (REPO / "checkpoints" / "README.md").is_file():
        expected.add("checkpoints/README.html")
    assert not expected - pages, f"pages missing from the site: {sorted(expected - pages)}"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file(), (
        "the site does not serve its MathJax"
    )


def test_the_site_opens_on_the_landing_page(browser, base_url):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(base_url)  # index.html leads to the README's page
        page.wait_for_url("**/README.html")
        page.wait_for_load_state("load")
        assert "Quickstart" in page.inner_text("main")
        assert page.locator("main table a[href*='notebooks/']").count() >= len(solution_notebooks())
    finally:
        context.close()


def test_every_page_loads_without_errors(visits):
    problems = [f"{path}: {e}" for path, v in visits.items() for e in v.errors]
    assert not problems, "\n".join(problems)


def test_every_image_is_shown(visits):
    problems, count = [], 0
    for path, v in visits.items():
        for img in v.page.evaluate(
            """[...document.images].map(i => {
                i.scrollIntoView();
                return [i.getAttribute('src'), i.complete && i.naturalWidth > 0]; })"""
        ):
            count += 1
            if not img[1]:
                problems.append(f"{path}: image not shown: {img[0]}")
    assert not problems, "\n".join(problems)
    assert count >= len(solution_notebooks()), f"only {count} images in the whole site"


def test_every_internal_link_and_anchor_resolves(visits, base_url):
    ids = {
        v.page.url.split("#")[0]: set(
            v.page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
        )
        for v in visits.values()
    }
    checked: dict[str, int] = {}
    problems = []
    any_visit = next(iter(visits.values()))
    for path, v in visits.items():
        hrefs = v.page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
        for href in hrefs:
            if not href.startswith(base_url):
                continue
            target, fragment = urldefrag(href)
            if target not in checked:
                checked[target] = any_visit.context.request.get(target).status
            if checked[target] != 200:
                problems.append(f"{path}: link to {href}: HTTP {checked[target]}")
            elif fragment and target.endswith(".html"):
                if target not in ids:
                    ids[target] = set(
                        re.findall(r'id="([^"]+)"', any_visit.context.request.get(target).text())
                    )
                if fragment not in ids[target]:
                    problems.append(f"{path}: link to {href}: no element with id {fragment!r}")
    assert not problems, "\n".join(problems)
    assert len(checked) > 20, f"only {len(checked)} internal links were found"


def test_maths_is_typeset(visits):
    problems, typeset = [], 0
    for path, v in visits.items():
        formulas, rendered, errors = v.page.evaluate("""[
            document.querySelectorAll('.math').length,
            [...document.querySelectorAll('.math')]
                .filter(m => m.querySelector('mjx-container')).length,
            document.querySelectorAll('mjx-merror').length]""")
        typeset += rendered
        if rendered != formulas:
            problems.append(f"{path}: {formulas - rendered} of {formulas} formulas not typeset")
        if errors:
            problems.append(f"{path}: {errors} formulas typeset as errors (bad TeX)")
    assert not problems, "\n".join(problems)
    attention = visits["notebooks/02_attention.html"].page
    assert attention.locator("mjx-container").count() > 10, (
        "notebook 02's attention formula was not typeset"
    )
    assert typeset > 50, f"only {typeset} formulas typeset in the whole site"


def test_every_page_says_how_to_run_it_and_links_its_source(visits, base_url):
    problems = []
    for path, v in visits.items():
        if path in ("genindex.html", "search.html"):
            continue
        banner = v.page.locator(".site-banner")
        if banner.count() != 1:
            problems.append(f"{path}: no banner at its top")
            continue
        text = banner.inner_text()
        for needed in ("make lab", "python -m vitdino_core.data download imagenette-96"):
            if needed not in text:
                problems.append(f"{path}: the banner does not say {needed!r}")
        source = banner.locator("a.site-source")
        if (
            source.count() != 1
            or v.context.request.get(
                source.get_attribute("href") and urljoin(v.page.url, source.get_attribute("href"))
            ).status
            != 200
        ):
            problems.append(f"{path}: the banner does not link a source file that the site serves")
        first = v.page.evaluate(
            "document.querySelector('.site-banner').previousElementSibling?.tagName === 'H1'"
        )
        if not first:
            problems.append(f"{path}: the banner is not right under the page's title")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", exercise_notebooks())
def test_notebook_and_exercise_pages_link_both_ways(visits, name):
    solution, exercise = (
        visits[f"notebooks/{name}.html"].page,
        visits[f"notebooks/exercises/{name}.html"].page,
    )
    to_exercise = solution.locator(".site-banner a.site-exercise-link")
    to_solution = exercise.locator(".site-banner a.site-solution-link")
    assert to_exercise.count() == 1 and to_solution.count() == 1
    assert urldefrag(to_exercise.evaluate("a => a.href"))[0] == exercise.url
    assert urldefrag(to_solution.evaluate("a => a.href"))[0] == solution.url


@pytest.mark.parametrize("name", exercise_notebooks())
def test_exercise_page_shows_its_stubs_and_collapsed_hints(visits, name):
    source = (REPO / "notebooks" / "exercises" / f"{name}.py").read_text()
    page = visits[f"notebooks/exercises/{name}.html"].page
    stubs = len(re.findall(r"^\s+raise NotImplementedError\(", source, re.MULTILINE))
    hints = source.count("<details>")
    assert stubs > 0 and hints > 0, f"{name}: the exercise source has no stub or no hint"
    shown = page.evaluate("""[...document.querySelectorAll('.cell_input')]
        .filter(c => /raise NotImplementedError\\(/.test(c.innerText)).length""")
    assert shown >= stubs, f"{name}: {shown} stub cells shown, the source has {stubs}"
    details = page.evaluate(
        """[...document.querySelectorAll('article.bd-article details')].map(d => [
        d.open, d.querySelector('summary')?.innerText || '', d.getBoundingClientRect().height])"""
    )
    assert len(details) == hints, (
        f"{name}: {len(details)} <details> on the page, {hints} hints in the source"
    )
    assert all(not is_open for is_open, _, _ in details), f"{name}: a hint is open on arrival"
    assert all(summary.strip() for _, summary, _ in details), (
        f"{name}: a hint without a visible summary"
    )
    summary = page.locator("article.bd-article details > summary").first
    summary.click()  # a hint opens on a click and shows more than its summary line
    hint = "document.querySelector('article.bd-article details')"
    assert page.evaluate(f"{hint}.open")
    assert page.evaluate(f"{hint}.innerText.length") > len(summary.inner_text()) + 20


@pytest.mark.parametrize("name", solution_notebooks())
def test_notebook_page_shows_outputs(visits, name):
    page = visits[f"notebooks/{name}.html"].page
    outputs = page.locator(".cell_output").count()
    assert outputs > 0, f"{name}: no cell output on the page (was it executed?)"
    source = (REPO / "notebooks" / f"{name}.py").read_text()
    if "plt." in source:
        assert page.locator(".cell_output img").count() > 0, (
            f"{name}: draws figures but its page shows none"
        )


def test_screenshots(visits):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path, name in (
        ("README.html", "landing"),
        ("notebooks/07_attention_maps.html", "notebook_07"),
    ):
        page = visits[path].page
        if path.startswith("notebooks/"):  # the first figure of the notebook, with its context
            page.locator(".cell_output img").first.scroll_into_view_if_needed()
            page.evaluate("window.scrollBy(0, -250)")
        else:
            page.evaluate("window.scrollTo(0, 0)")
        out = SHOTS / f"{name}.png"
        page.screenshot(path=str(out))
        assert out.stat().st_size > 20_000, f"{out} looks empty"
