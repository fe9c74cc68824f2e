"""The architecture page's tables of modules, written at build time from `cxrlearn.layout`.

docs/architecture.md holds the prose and a marker; this hook replaces the marker with one
section per layer, lowest first, and a table of its modules: name, the lessons that teach
it (linked) and what it holds. The map in cxrlearn/layout.py is the one place where a
module's layer and lessons are stated; the architecture test reads the same map, so the
page, the test and the modules' `Lesson:` lines cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from markers import fill_marker
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PAGE = "architecture.md"
MARKER = "<!-- module-map -->"


def lesson_links(lessons: tuple[int, ...], notebooks: dict[int, str],
                 every: tuple[int, ...]) -> str:
    """`[03](lessons/03_....ipynb), [04](...)`; "every lesson" for all; a dash for none."""
    if not lessons:
        return "–"
    if lessons == every:
        return "every lesson"
    missing = [n for n in lessons if n not in notebooks]
    if missing:
        raise PluginError(f"cxrlearn/layout.py names lessons with no notebook: {missing}")
    return ", ".join(f"[{n:02d}](lessons/{notebooks[n]})" for n in lessons)


def module_map(notebooks: dict[int, str]) -> str:
    """The Markdown of every layer's section, from `cxrlearn.layout.LAYERS`."""
    from cxrlearn.layout import LAYERS, LESSON_NUMBERS

    parts = []
    for number, layer in enumerate(LAYERS, start=1):
        parts.append(f"### {number} · {layer.title}\n")
        parts.append("| module | lessons | what it holds |\n|---|---|---|")
        for module in layer.modules:
            parts.append(f"| `cxrlearn.{module.name}` | "
                         f"{lesson_links(module.lessons, notebooks, LESSON_NUMBERS)} | "
                         f"{module.summary} |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    notebooks = {int(p.name[:2]): p.name
                 for p in sorted((Path(config["docs_dir"]) / "lessons").glob("[0-9][0-9]_*.ipynb"))}
    return fill_marker(markdown, page, PAGE, MARKER, lambda: module_map(notebooks))
