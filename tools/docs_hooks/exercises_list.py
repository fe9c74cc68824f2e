"""The list of exercises on docs/exercises.md, written at build time from `EXERCISES`.

docs/exercises.md holds the prose and a marker; this hook replaces the marker with one
table per lesson (id, the function to write, what it does, the library function it is
checked against), read from `cxrlearn.exercises.EXERCISES`. A new exercise therefore appears
on the page without anyone editing it; tests/test_exercises.py checks that every id is listed.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PAGE = "exercises.md"
MARKER = "<!-- exercises-list -->"

LESSONS = {1: "01 · Data and contrast", 2: "02 · ResNet18, block by block",
           3: "03 · Training loop and devices", 4: "04 · Evaluation",
           5: "05 · Grad-CAM with hooks", 6: "06 · TorchScript export", 7: "07 · The app",
           8: "08 · Data-parallel training", 9: "09 · On the phone"}


def exercise_tables() -> str:
    """Markdown: a heading and a table of exercises for every lesson."""
    from cxrlearn.exercises import EXERCISES

    parts = []
    for lesson, title in LESSONS.items():
        rows = [e for e in EXERCISES.values() if e.lesson == lesson]
        parts += [f"### {title}", "",
                  "| id | write | what it does | checked against |",
                  "| --- | --- | --- | --- |"]
        for e in rows:
            summary = e.summary.replace("*", "\\*").replace("_", "\\_")  # plain text
            cells = [f"`{e.id}`", f"`{e.signature}`", summary,
                     f"`{e.reference_path.replace(':', '.')}`"]
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its marker {MARKER}: the list goes there")
    return markdown.replace(MARKER, exercise_tables())
