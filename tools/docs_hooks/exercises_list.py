"""The list of exercises on docs/exercises.md, written at build time from `EXERCISES`.

docs/exercises.md holds the prose and a marker; this hook replaces the marker with one
table per lesson, headed by the lesson's own title (id, the function to write, what it does,
the library function it is checked against), read from `cxrlearn.exercises.EXERCISES`. A
new exercise therefore appears on the page without anyone editing it;
tests/test_exercises.py checks that every id is listed.
"""

from __future__ import annotations

from markers import fill_marker, lesson_titles
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PAGE = "exercises.md"
MARKER = "<!-- exercises-list -->"



def exercise_tables() -> str:
    """Markdown: a heading and a table of exercises for every lesson."""
    from cxrlearn.exercises import EXERCISES

    parts = []
    for lesson, title in lesson_titles().items():
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
    return fill_marker(markdown, page, PAGE, MARKER, exercise_tables)
