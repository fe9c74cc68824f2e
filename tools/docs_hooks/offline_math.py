"""Formulas typeset with no network: MathJax ships with the site, not from a CDN.

The lesson pages come from nbconvert, whose template loads MathJax 2.7 from a CDN and
configures it for `$...$` and `$$...$$` (mkdocs-jupyter leaves the address empty, so the
formulas stayed raw LaTeX). The Markdown pages' formulas come from pymdownx.arithmatex in
generic mode, as `\\(...\\)` and `\\[...\\]` inside `class="arithmatex"`. Classrooms and CI
have no CDN, so this hook copies MathJax 2.7, as the Python package jupyter-server-mathjax
ships it, into the site under `assets/mathjax/`, and gives every page with math one
`<script>` that loads it by a relative address (which works under any base path and from
file://). nbconvert's own configuration block stays on the lesson pages and still applies.

That package ships MathJax's HTML-CSS output with the STIX-Web fonts only, so MathJax is
told to use exactly those (otherwise it asks for the TeX fonts it does not have).

Checked by tests/test_docs_site.py: every lesson page typesets in Chromium with the network
blocked.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

MATHJAX_DIR = "assets/mathjax"
# The package's one combined configuration (TeX and MathML in, HTML-CSS out); Safe turns off
# \href and the like, as nbconvert's default address does.
MATHJAX_ENTRY = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
# nbconvert's loader (base/mathjax.html.j2); its configuration block right after it is kept.
NBCONVERT_LOADER = re.compile(r'<!-- Load mathjax -->\s*<script src="[^"]*">\s*</script>')
NBCONVERT_CONFIG = 'type="text/x-mathjax-config"'
ARITHMATEX = 'class="arithmatex"'

FONTS = {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None}
# For screen readers MathJax also puts a hidden MathML copy of each formula in the page, and
# styles its double-struck, script and fraktur letters with TeX fonts the package does not
# ship (so \mathbb{R} made Chromium ask for a missing file). Nobody sees that copy: it keeps
# the page's font.
ASSISTIVE_STYLE = "<style>.MJX_Assistive_MathML * { font-family: inherit !important; }</style>"
# Markdown pages: only what arithmatex marked is math; a "$" in prose stays a dollar.
ARITHMATEX_TEX2JAX = {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                      "processEscapes": False, "ignoreClass": ".*|", "processClass": "arithmatex"}


def mathjax_static_dir() -> Path:
    """The folder of MathJax files inside the installed jupyter-server-mathjax package.

    Found without importing the package, which would start loading jupyter_server.
    """
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("jupyter-server-mathjax is not installed, and the docs need its MathJax "
                          "files: .venv/bin/python -m pip install -c constraints.txt -e '.[dev]'")
    static = Path(spec.submodule_search_locations[0]) / "static"
    if not (static / "MathJax.js").is_file():
        raise PluginError(f"{static} has no MathJax.js: reinstall jupyter-server-mathjax")
    return static


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add MathJax's files to the site, so that `mkdocs build` and `mkdocs serve` copy them."""
    static = mathjax_static_dir()
    for path in sorted(static.rglob("*")):
        if path.is_file():
            uri = f"{MATHJAX_DIR}/{path.relative_to(static).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def mathjax_scripts(page_url: str, notebook: bool) -> str:
    """The configuration and the loader for one page, addressed relative to `page_url`."""
    settings: dict = {"HTML-CSS": FONTS, "messageStyle": "none"}
    if not notebook:  # a notebook page configures tex2jax in nbconvert's block
        settings["tex2jax"] = ARITHMATEX_TEX2JAX
    src = get_relative_url(f"{MATHJAX_DIR}/{MATHJAX_ENTRY}", page_url)
    # window.MathJax set before MathJax.js loads is MathJax 2's documented way to configure it.
    return (f"{ASSISTIVE_STYLE}\n<script>window.MathJax = {json.dumps(settings)};</script>\n"
            f'<script src="{src}"></script>\n')


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    """Drop nbconvert's CDN loader; load the site's own MathJax where there is math."""
    output = NBCONVERT_LOADER.sub("", output)
    notebook = NBCONVERT_CONFIG in output
    if not (notebook or ARITHMATEX in output):
        return output
    # At the end of the body: every configuration block above is in the document by then.
    head, body_end, tail = output.rpartition("</body>")
    if not body_end:
        raise PluginError(f"{page.file.src_uri}: no </body> to put MathJax before")
    return head + mathjax_scripts(page.url, notebook) + body_end + tail
