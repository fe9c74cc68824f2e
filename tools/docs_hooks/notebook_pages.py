"""Lesson pages as a student should see them: a working table of contents, no tool tags, and
a link to the notebook itself.

mkdocs-jupyter renders a lesson with nbconvert, but builds its table of contents from a
Markdown copy with the code spans cut out, so a heading such as "Check: the hand-built block
equals the library's `BasicBlock`" gets one anchor in the contents and another on the page.
This hook rebuilds the table of contents from the headings of the rendered page, so the two
cannot differ. It also removes the chips that show each code cell's tags (`nbval-ignore-output`
is for the test runner, not for the reader), and puts a download link to the `.ipynb` under
the lesson's title: mkdocs-jupyter's `include_source` copies the file next to the page but
shows no link.

Two things for readers who do not see the lesson the way its author did. A figure's caption is
the Markdown cell under it, starting "*Figure:*" (tests/test_lessons_structure.py holds every
lesson to that); nbconvert gives every image the alt text "No description has been provided",
so the hook gives each image of the cell above a caption the caption's words as its alt text,
for screen readers. And a worked solution (a cell tagged `solution`) is folded into a
`<details>` block, "Worked solution", so that a student sees the exercise before its answer.

And a lesson's link to a docs page, written as Markdown writes it (`../how-to/export-formats.md`,
relative to `docs/lessons/`), is given the page's address, as mkdocs does on its own pages:
nbconvert leaves it pointing at the `.md` source, which the site does not have.

Checked by tests/test_docs_site.py.
"""

from __future__ import annotations

import copy
import html
import posixpath
from pathlib import PurePosixPath

from bs4 import BeautifulSoup
from markdown.extensions.toc import nest_toc_tokens
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from mkdocs.structure.toc import get_toc
from mkdocs.utils import get_relative_url

CAPTION = "Figure:"
HEADINGS = ", ".join(f".jp-MarkdownCell h{level}[id]" for level in range(1, 7))
# Material's "download" icon (theme/.icons/material/download.svg), inline like its own buttons.
DOWNLOAD_ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
                 '<path d="M5 20h14v-2H5m14-9h-4V3H9v6H5l7 7z"/></svg>')


def table_of_contents(soup: BeautifulSoup) -> list[dict]:
    """Nested TOC tokens (Python-Markdown's format) of the Markdown cells' headings."""
    flat = []
    for heading in soup.select(HEADINGS):
        title = copy.copy(heading)  # a copy, so the page keeps its "¶" link
        for anchor in title.select("a.anchor-link"):
            anchor.decompose()
        flat.append({"level": int(heading.name[1]), "id": heading["id"],
                     "name": html.escape(title.get_text().strip(), quote=False)})
    return nest_toc_tokens(flat)


def download_link(notebook_name: str) -> BeautifulSoup:
    """A line under the lesson's title that downloads its notebook.

    The notebook sits next to the page (mkdocs-jupyter's include_source puts it there), so the
    bare file name is the right relative address with or without directory URLs. A line, not
    one of Material's floating buttons: nbconvert's notebook box would shrink beside a float.
    """
    return BeautifulSoup(
        f'<p class="cxrlearn-download"><a href="{notebook_name}" download>'
        f'<span class="twemoji">{DOWNLOAD_ICON}</span> Download this lesson as a notebook</a> '
        f"(<code>{notebook_name}</code>) to run it in JupyterLab.</p>", "html.parser")


def caption_alt_texts(soup: BeautifulSoup) -> int:
    """Give each image of a cell whose next cell is a caption that caption as alt text.

    Returns how many images got one.
    """
    given = 0
    for caption in soup.select(".jp-MarkdownCell"):
        text = " ".join(caption.get_text(" ").split())
        if not text.startswith(CAPTION):
            continue
        figure_cell = caption.find_previous_sibling(class_="jp-Cell")
        if figure_cell is None:
            continue
        alt = text[len(CAPTION):].strip().replace("¶", "").strip()
        for img in figure_cell.select(".jp-OutputArea img"):
            img["alt"] = alt
            given += 1
    return given


def fold_solutions(soup: BeautifulSoup) -> int:
    """Wrap each cell tagged `solution` in a closed `<details>`; returns how many."""
    # nbconvert nests a cell's div in another with the same classes: fold the outer one only.
    cells = [cell for cell in soup.select(".jp-Cell.celltag_solution")
             if cell.find_parent(class_="celltag_solution") is None]
    for cell in cells:
        details = soup.new_tag("details", attrs={"class": "cxrlearn-solution"})
        summary = soup.new_tag("summary")
        summary.string = "Worked solution (try the exercise first)"
        cell.wrap(details)
        details.insert(0, summary)
    return len(cells)


def page_links(soup: BeautifulSoup, page: Page, files: Files) -> int:
    """Point links to `.md` pages at the built pages; returns how many were changed."""
    changed = 0
    for a in soup.select("a[href]"):
        target, _, anchor = a["href"].partition("#")
        if "://" in target or not target.endswith(".md"):
            continue
        uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), target))
        file = files.get_file_from_path(uri)
        if file is None:
            continue  # left as written: tests/test_docs_site.py reports the broken link
        a["href"] = get_relative_url(file.url, page.url) + (f"#{anchor}" if anchor else "")
        changed += 1
    return changed


def on_page_content(content: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return content
    soup = BeautifulSoup(content, "html.parser")
    for toolbar in soup.select(".celltoolbar"):
        toolbar.decompose()
    page.toc = get_toc(table_of_contents(soup))
    caption_alt_texts(soup)
    fold_solutions(soup)
    page_links(soup, page, files)
    link = download_link(PurePosixPath(page.file.src_uri).name)
    title = soup.select_one(".jp-MarkdownCell h1")
    if title is None:
        soup.insert(0, link)
    else:
        title.insert_after(link)
    return str(soup)
