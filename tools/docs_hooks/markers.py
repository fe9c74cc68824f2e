"""What the hooks that write part of a page share: a marker in the page's Markdown that the
generated part replaces, and the lessons' titles read from the notebooks themselves.

mkdocs puts this folder on `sys.path` while it loads a hook, so a hook imports this module
as `markers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.pages import Page

LESSONS_DIR = Path(__file__).resolve().parents[2] / "lessons"


def fill_marker(markdown: str, page: Page, wanted: str, marker: str,
                make: Callable[[], str]) -> str:
    """`markdown` with `marker` replaced by `make()` on the page `wanted`; other pages as
    they are. A page that lost its marker fails the build (the generated part would vanish
    without a word)."""
    if page.file.src_uri != wanted:
        return markdown
    if marker not in markdown:
        raise PluginError(f"docs/{wanted} lost its marker {marker}: the generated part goes "
                          "there")
    return markdown.replace(marker, make())


def lesson_titles(folder: Path = LESSONS_DIR) -> dict[int, str]:
    """Each lesson's number and the title of its first heading ("03 · The training loop")."""
    titles = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        first = "".join(json.loads(path.read_text())["cells"][0]["source"]).splitlines()[0]
        titles[int(path.name[:2])] = first.lstrip("# ").strip()
    return titles
