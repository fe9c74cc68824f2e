"""The search index without what a reader never reads: the lessons' copy-button text.

mkdocs-jupyter gives every code cell a copy button holding a hidden "Copied!" notice and a
hidden `<pre>` with the cell's source for the clipboard. The search plugin indexes both, so
a search result showed "Copied!" and then the code twice. After the build, this hook drops
the notice and the clipboard copy from `search/search_index.json`; the page keeps its button,
and the code shown on the page stays in the index once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig

# The notice, then the clipboard's copy of the cell: always together, in this order.
CLIPBOARD = re.compile(r"Copied!\s*(?:<pre>.*?</pre>\s*)?", re.S)


def clean(text: str) -> str:
    """One entry's text without copy-button notices and clipboard copies.

    Example:
        >>> clean("In [1]: Copied! <pre>x = 1\\n</pre> x = 1 <pre>1</pre>")
        'In [1]: x = 1 <pre>1</pre>'
    """
    return CLIPBOARD.sub("", text)


def on_post_build(config: MkDocsConfig) -> None:
    path = Path(config.site_dir) / "search" / "search_index.json"
    if not path.is_file():
        return
    index = json.loads(path.read_text("utf-8"))
    for entry in index.get("docs", []):
        entry["text"] = clean(entry.get("text", ""))
    path.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), "utf-8")
