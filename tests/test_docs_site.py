"""The documentation site as a reader gets it, built once with `mkdocs build --strict`.

Every internal link and anchor of every page resolves; no page loads anything from another
host; lesson pages show no cell tags and link to their notebook; the command-line page lists
every command and option of the real parser; and, in headless Chromium with every request
to another host refused, every formula of every lesson (and of the Markdown pages) is
typeset. The build-time work is in tools/docs_hooks/ (offline_math, notebook_pages,
cli_reference).

Playwright drives Debian's Chromium (/usr/bin/chromium); it never downloads a browser. The
browser test is skipped only when that browser is missing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest
from bs4 import BeautifulSoup
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from cxrlearn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine with no display, GPU or network, as root (hence --no-sandbox).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # every browser wait; a contended CPU is slow, a hung page still fails
# Links to other sites, and data inside the address: nothing to follow here.
NOT_FOLLOWED = ("http", "https", "mailto", "data")
# Tags whose address the browser fetches by itself as the page loads.
LOADED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src",
          "video": "src", "link": "href"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built by the real command into a temporary folder; or the build that
    scripts/test.sh made with the same command just before the tests
    (`CXRLEARN_BUILT_SITE`), so that one run of the suite builds the docs once."""
    built = os.environ.get("CXRLEARN_BUILT_SITE")
    if built:
        assert (Path(built) / "index.html").is_file(), f"{built} holds no built site"
        return Path(built)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def pages(site) -> dict[str, BeautifulSoup]:
    """Every HTML page of the site, parsed, by its path relative to the site's root."""
    return {path.relative_to(site).as_posix(): BeautifulSoup(path.read_text("utf-8"),
                                                             "html.parser")
            for path in sorted(site.rglob("*.html"))}


def _lesson_page(lesson: Path) -> str:
    return f"lessons/{lesson.stem}/index.html"


def _resolve(site: Path, page: str, address: str) -> tuple[str, str]:
    """(path relative to the site's root, fragment) that `address` on `page` points at.

    A folder means its index.html. The path may climb out of the site ("../" once too
    often); the caller reports that.
    """
    parts = urlsplit(address)
    path = unquote(parts.path)
    if not path:
        target = page
    elif path.startswith("/"):
        target = posixpath.normpath(path.lstrip("/") or ".")
    else:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
    if (site / target).is_dir():
        target = posixpath.normpath(f"{target}/index.html")
    return target, unquote(parts.fragment)


def _addresses(soup: BeautifulSoup) -> Iterator[tuple[str, str, str]]:
    """(tag name, attribute, value) of every href and src on the page."""
    for tag in soup.find_all(True):
        for attribute in ("href", "src"):
            value = tag.get(attribute)
            if value is not None:
                yield tag.name, attribute, value


def _ids(soup: BeautifulSoup) -> set[str]:
    return ({tag["id"] for tag in soup.find_all(id=True)}
            | {tag["name"] for tag in soup.find_all("a", attrs={"name": True})})


def test_every_internal_link_and_anchor_resolves(site, pages):
    ids = {path: _ids(soup) for path, soup in pages.items()}
    broken = []
    for page, soup in pages.items():
        for tag, attribute, value in _addresses(soup):
            where = f"{page}: <{tag} {attribute}={value[:120]!r}>"
            parts = urlsplit(value)
            if parts.scheme in NOT_FOLLOWED or (parts.netloc and not parts.scheme):
                continue
            if parts.scheme:
                broken.append(f"{where}: a {parts.scheme}: address, not a file of the site")
                continue
            if not value.strip():
                if attribute == "src":
                    broken.append(f"{where}: empty src")
                continue
            target, fragment = _resolve(site, page, value)
            if target.split("/")[0] == "..":
                broken.append(f"{where}: points outside the site")
            elif not (site / target).is_file():
                broken.append(f"{where}: no file {target}")
            elif fragment and target not in ids:
                broken.append(f"{where}: #{fragment} in {target}, which is not an HTML page")
            elif fragment and fragment not in ids[target]:
                broken.append(f"{where}: no id {fragment!r} in {target}")
    broken = list(dict.fromkeys(broken))  # a contents link shows up in two navigations
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(broken)


def test_no_page_loads_anything_from_another_host(pages):
    """Scripts, styles, fonts and images come from the site itself: it works offline."""
    outside = []
    for page, soup in pages.items():
        for tag, attribute in LOADED.items():
            for element in soup.find_all(tag, attrs={attribute: True}):
                if tag == "link" and not {"stylesheet", "icon", "preload", "modulepreload",
                                          "manifest"} & set(element.get("rel", [])):
                    continue  # rel="canonical" and the like are not fetched
                parts = urlsplit(element[attribute])
                if parts.scheme not in ("", "data") or parts.netloc:
                    outside.append(f"{page}: <{tag} {attribute}={element[attribute]!r}>")
    assert not outside, "\n".join(outside)


def _cell_tags(lesson: Path) -> set[str]:
    cells = json.loads(lesson.read_text("utf-8"))["cells"]
    return {tag for cell in cells for tag in cell.get("metadata", {}).get("tags", [])}


def test_no_lesson_page_shows_cell_tags(pages):
    assert any(_cell_tags(lesson) for lesson in LESSONS), "no lesson has cell tags to hide"
    shown = []
    for lesson in LESSONS:
        soup = pages[_lesson_page(lesson)]
        tags = _cell_tags(lesson)
        for text in soup.find_all(string=True):
            # Prose may name a tag; a chip is a text of its own outside the Markdown cells.
            if text.strip() in tags and not text.find_parent(class_="jp-MarkdownCell"):
                shown.append(f"{lesson.name}: <{text.parent.name}> {text.strip()!r}")
        shown += [f"{lesson.name}: .{cls}" for cls in ("celltoolbar", "cell-tag")
                  if soup.select(f".{cls}")]
    assert not shown, "\n".join(shown)


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_page_links_to_its_notebook(site, pages, lesson):
    page = _lesson_page(lesson)
    links = [a for a in pages[page].find_all("a", href=True)
             if _resolve(site, page, a["href"])[0].endswith(".ipynb")]
    assert links, f"{page} has no link to a notebook"
    for a in links:
        target, _ = _resolve(site, page, a["href"])
        assert PurePosixPath(target).name == lesson.name
        assert a.get_text(strip=True), "the link has no visible text"
        # The file a student downloads is the lesson itself, outputs and all.
        assert (site / target).read_bytes() == lesson.read_bytes()


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("cxrlearn",)
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path and its parser, `cxrlearn data check` included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _section(soup: BeautifulSoup, anchor: str) -> list:
    """The elements from the heading with id `anchor` to the next heading."""
    heading = soup.find(id=anchor)
    assert heading is not None and re.fullmatch(r"h[1-6]", heading.name), f"no heading #{anchor}"
    elements = []
    for sibling in heading.find_next_siblings():
        if re.fullmatch(r"h[1-6]", sibling.name):
            break
        elements.append(sibling)
    return elements


def test_cli_page_lists_every_command_option_and_default(pages):
    soup = pages["cli/index.html"]
    missing = []
    commands = list(_commands(build_parser()))
    assert any(len(path) == 3 for path, _ in commands), "expected sub-sub-commands (data check)"
    for path, parser in commands:
        name = " ".join(path)
        rows = {}  # each option string or positional name -> the text of its table row
        for element in _section(soup, "-".join(path)):
            for row in element.find_all("tr"):
                first = row.find("td")
                if first is not None:
                    for word in re.split(r"[,\s]+", first.get_text()):
                        rows.setdefault(word, row.get_text(" ", strip=True))
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                if option not in rows:
                    missing.append(f"{name}: {option}")
            default = action.default
            if action.option_strings and action.nargs != 0 and default not in (
                    None, argparse.SUPPRESS) and not action.required:
                shown = (" ".join(map(str, default)) if isinstance(default, list | tuple)
                         else str(default))
                if shown not in rows.get(action.option_strings[-1], ""):
                    missing.append(f"{name}: {action.option_strings[-1]} default {shown!r}")
        for sub_path, _ in commands:
            if sub_path[:-1] == path and not soup.find("a", href=f"#{'-'.join(sub_path)}"):
                missing.append(f"{name}: no link to {' '.join(sub_path)}")
    assert "--help" in soup.get_text()
    assert not missing, "\n".join(missing)


# The browser test ------------------------------------------------------------------------

def _formulas(lesson: Path) -> int:
    """How many $...$ and $$...$$ formulas the lesson's Markdown cells hold."""
    count = 0
    for cell in json.loads(lesson.read_text("utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            text = re.sub(r"```.*?```|`[^`]*`", "", "".join(cell["source"]), flags=re.S)
            count += len(re.findall(r"\$\$.+?\$\$|\$[^$]+?\$", text.replace(r"\$", ""),
                                    flags=re.S))
    return count


MATH_PAGES = [*(_lesson_page(lesson) for lesson in LESSONS if _formulas(lesson)),
              "contributing/index.html"]  # a Markdown page, math through arithmatex


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request in the test output
        pass


@pytest.fixture(scope="module")
def browser(site) -> Iterator[tuple[object, str]]:
    """(Chromium context, URL of the site served on 127.0.0.1)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                    "chromium) to run the browser test")

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright, \
                tempfile.TemporaryDirectory(prefix="cxrlearn-chromium-") as profile:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                viewport={"width": 1400, "height": 900})
            try:
                yield context, f"http://127.0.0.1:{server.server_address[1]}"
            finally:
                context.close()
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


# Run in the page once MathJax has finished: what became of each formula in the article.
TYPESET_REPORT = """() => {
    const article = document.querySelector("article");
    const jax = MathJax.Hub.getAllJax(article);
    const shown = jax.map(j => document.getElementById(j.inputID + "-Frame"));
    const sized = shown.filter(e => e && e.getBoundingClientRect().width > 0
                                      && e.getBoundingClientRect().height > 0);
    // Text a reader sees in the prose (not code, not the hidden MathML for screen readers).
    const prose = [];
    const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const node = walker.currentNode;
        if (!node.parentElement.closest("pre, code, script, style, .MJX_Assistive_MathML"))
            prose.push(node.textContent);
    }
    return {
        count: jax.length,
        sized: sized.length,
        errors: jax.filter(j => j.texError).map(j => j.originalText),  // TeX it could not parse
        raw: shown.filter(e => e && /\\\\[A-Za-z]/.test(e.innerText)).map(e => e.innerText),
        arithmatex: article.querySelectorAll(".arithmatex").length,
        prose: prose.join(""),
    };
}"""


@pytest.mark.parametrize("page_path", MATH_PAGES, ids=lambda p: p.split("/")[-2])
def test_formulas_are_typeset_with_the_network_blocked(browser, page_path):
    context, url = browser
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    refused, failed, problems = [], [], []

    def route(request_route) -> None:
        address = request_route.request.url
        # about:blank: MathJax 2 probes web-font loading with a font at about:blank.
        if address.startswith((url + "/", "data:", "blob:")) or address == "about:blank":
            request_route.continue_()
        else:
            refused.append(address)
            request_route.abort()

    page.route("**/*", route)
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(f"{url}/{page_path.removesuffix('index.html')}")
        page.wait_for_function("() => window.MathJax && window.MathJax.Hub")
        # "End" is MathJax's signal that the page's first typesetting is done; the queued
        # callback then runs after any typesetting queued before it. (The hook must return
        # nothing: MathJax would wait for a returned callback, and "End" would never end.)
        finished = page.evaluate("""ms => new Promise(done => {
            setTimeout(() => done(false), ms);
            MathJax.Hub.Register.StartupHook("End", () => { MathJax.Hub.Queue(() => done(true)); });
        })""", TIMEOUT_MS)
        report = page.evaluate(TYPESET_REPORT) if finished else None
    except PlaywrightTimeoutError:
        report = None
    finally:
        page.close()

    assert refused == [], "requests to other hosts"
    assert failed == [] and problems == []
    assert report is not None, f"MathJax did not typeset {page_path} in {TIMEOUT_MS} ms"
    if page_path.startswith("lessons/"):
        lesson = ROOT / "lessons" / f"{page_path.split('/')[1]}.ipynb"
        expected = _formulas(lesson)
    else:
        expected = report["arithmatex"]
    assert expected > 0
    assert report["count"] >= expected, "some formulas were not typeset"
    assert report["sized"] == report["count"], "some typeset formulas take no space"
    assert report["errors"] == [], "TeX that MathJax could not parse"
    assert report["raw"] == [], "formulas with TeX commands left as text (undefined macros)"
    assert "$$" not in report["prose"]
    assert not re.search(r"\\(frac|operatorname|mathrm|text|left|right)\b", report["prose"])


# Issue 24: what a reader tripped on -----------------------------------------------------

def test_getting_started_comes_before_architecture_in_the_nav(pages):
    nav = [a.get_text(strip=True) for a in pages["index.html"].select("nav.md-nav--primary a")]
    assert "Getting started" in nav and "Architecture" in nav
    assert nav.index("Getting started") < nav.index("Architecture")


def test_search_results_hold_no_copy_button_text_and_code_once(site):
    index = json.loads((site / "search" / "search_index.json").read_text("utf-8"))
    texts = {entry["location"]: entry["text"] for entry in index["docs"]}
    assert not [where for where, text in texts.items() if "Copied!" in text]
    lesson = next(text for where, text in texts.items()
                  if where.startswith("lessons/01_data_and_contrast"))
    assert lesson.count("from cxrlearn.contrast import stretch_contrast") == 1


def _open(context, url: str, width: int = 1400, height: int = 900):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_viewport_size({"width": width, "height": height})
    page.goto(url)
    return page


def test_every_page_has_previous_and_next_links_in_its_footer(browser):
    context, url = browser
    page = _open(context, f"{url}/getting-started/")
    try:
        footer = page.locator("footer .md-footer__link")
        assert footer.count() == 2
        assert "Home" in page.text_content("footer .md-footer__link--prev")
        assert "Architecture" in page.text_content("footer .md-footer__link--next")
    finally:
        page.close()


def test_the_palette_toggle_switches_to_dark_mode(browser):
    context, url = browser
    page = _open(context, f"{url}/")
    try:
        def scheme() -> str:
            return page.evaluate("() => document.body.getAttribute('data-md-color-scheme')")

        seen = {scheme()}
        for _ in range(3):  # system -> light -> dark (or the like): each click is one step
            page.click("form[data-md-component=palette] label:visible")
            seen.add(scheme())
        assert {"default", "slate"} <= seen
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        page.evaluate("() => document.body.setAttribute('data-md-color-scheme', 'slate')")
        dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert dark != "rgb(255, 255, 255)" and (background != dark or scheme() == "slate")
    finally:
        page.close()


def test_module_names_in_the_architecture_table_are_never_broken(browser):
    context, url = browser
    for width in (1400, 390):
        page = _open(context, f"{url}/architecture/", width, 844)
        try:
            broken = page.eval_on_selector_all(
                "article table code",
                "codes => codes.filter(c => c.getClientRects().length > 1)"
                ".map(c => c.textContent)")
            count = page.eval_on_selector_all("article table code", "codes => codes.length")
            assert count > 10 and broken == [], f"at {width} px: {broken}"
        finally:
            page.close()


def test_lesson_05s_display_equation_scrolls_at_phone_width(browser):
    context, url = browser
    page = _open(context, f"{url}/lessons/05_grad_cam_with_hooks/", 390, 844)
    try:
        page.wait_for_function("() => window.MathJax && window.MathJax.Hub")
        assert page.evaluate("""ms => new Promise(done => {  // as in the typesetting test
            setTimeout(() => done(false), ms);
            MathJax.Hub.Register.StartupHook("End", () => { MathJax.Hub.Queue(() => done(true)); });
        })""", TIMEOUT_MS), "MathJax did not finish"
        report = page.eval_on_selector_all(".MathJax_Display", """boxes => boxes.map(b => ({
            right: b.getBoundingClientRect().right, overflow: getComputedStyle(b).overflowX,
            wide: b.scrollWidth > b.clientWidth}))""")
        assert report
        for box in report:
            assert box["right"] <= 390 + 1, box  # the box ends on the screen ...
            assert box["overflow"] in ("auto", "scroll"), box  # ... and scrolls its equation
        assert any(box["wide"] for box in report), "no equation wider than a phone to test"
    finally:
        page.close()


def _captions(lesson: Path) -> list[str]:
    """The words of each figure caption of a lesson (the Markdown under an image), in order."""
    cells = json.loads(lesson.read_text("utf-8"))["cells"]
    found = []
    for before, cell in zip(cells, cells[1:], strict=False):
        images = sum("image/png" in out.get("data", {}) for out in before.get("outputs", []))
        text = "".join(cell["source"]).strip()
        if images and cell["cell_type"] == "markdown" and text.startswith("*Figure:*"):
            found += [text] * images
    return found


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_figures_have_their_caption_as_alt_text(pages, lesson):
    """Issue 27: a screen reader reads the caption, not "No description has been provided"."""
    images = pages[_lesson_page(lesson)].select(".jp-OutputArea img")
    captions = _captions(lesson)
    assert len(images) == len(captions), "every figure has a caption (test_lessons_structure)"
    for img, caption in zip(images, captions, strict=True):
        words = " ".join(caption.replace("*Figure:*", "").split())
        # The alt is the rendered caption's text: Markdown marks gone, the words kept.
        alt = img.get("alt", "")
        assert alt and "No description" not in alt
        assert words.replace("`", "").replace("*", "")[:40] in alt.replace("`", ""), (alt, words)


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_solutions_are_folded_away(pages, lesson):
    """A worked solution sits in a closed <details>, so the exercise comes before its answer."""
    cells = json.loads(lesson.read_text("utf-8"))["cells"]
    solutions = sum("solution" in c.get("metadata", {}).get("tags", []) for c in cells)
    soup = pages[_lesson_page(lesson)]
    folded = soup.select("details.cxrlearn-solution")
    assert solutions and len(folded) == solutions
    for details in folded:
        assert "open" not in details.attrs
        assert details.find("summary").get_text(strip=True).startswith("Worked solution")
        assert details.select_one(".jp-CodeCell")  # the code is inside, not beside it
    assert not [c for c in soup.select(".celltag_solution") if not c.find_parent("details")]
