"""Lessons import from cxrlearn; they never redefine what it exports (house style, section 11).

A lesson that defines its own `stretch_contrast` at top level would shadow the library's: the
"check against the library" cells would then compare the hand-built version with itself. So
every name in any cxrlearn module's `__all__` is off limits for top-level `def`, `class` and
assignment targets in `lessons/*.ipynb`. Hand-built versions get their own names
(`my_stretch`, `basic_block_by_hand`).
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import cxrlearn

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
SKIPPED_PREFIXES: tuple[str, ...] = ()  # every module, the faces (cli, app) included


def exported_names() -> dict[str, str]:
    """Every name in the `__all__` of every importable cxrlearn module -> one module naming it.

    The faces (`cli`, `app`) count too: a lesson that prints a report imports the command
    line's `report_table`. `__main__` is skipped; so is a module whose import fails only
    because an optional dependency (not a cxrlearn module) is missing.
    """
    names: dict[str, str] = {name: "cxrlearn" for name in cxrlearn.__all__}
    for info in pkgutil.walk_packages(cxrlearn.__path__, prefix="cxrlearn."):
        mod_name = info.name
        if mod_name.startswith(SKIPPED_PREFIXES) or mod_name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not e.name.startswith("cxrlearn"):
                continue  # an optional extra (fastapi, pydicom, ...) that is not installed
            raise
        for name in getattr(module, "__all__", ()):
            names.setdefault(name, mod_name)
    return names


def _bound_names(target: ast.expr) -> list[str]:
    """Names an assignment target binds: `a`, `a, (b, *c)`, `[a, b]`. Not `a.b` or `a[0]`."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _bound_names(elt)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def _top_level_definitions(body: list[ast.stmt]) -> list[tuple[str, int]]:
    """(name, line) of each def, class and assignment at module level.

    Statements inside top-level `if`/`for`/`while`/`with`/`try` blocks run at module level
    too, so they are searched; function and class bodies are not.
    """
    found: list[tuple[str, int]] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append((node.name, node.lineno))
        elif isinstance(node, ast.Assign):
            found += [(n, node.lineno) for t in node.targets for n in _bound_names(t)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            found += [(n, node.lineno) for n in _bound_names(node.target)]
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            found += [(n, node.lineno) for n in _bound_names(node.target)]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    found += [(n, node.lineno) for n in _bound_names(item.optional_vars)]
        for block in ("body", "orelse", "finalbody"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found += _top_level_definitions(getattr(node, block, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            found += _top_level_definitions(handler.body)
    return found


def _python_source(cell_source: str) -> str | None:
    """The cell as Python: IPython line magics and shell lines become `pass`; a cell magic
    (`%%time`, `%%bash`) makes the whole cell something other than Python (None)."""
    if cell_source.lstrip().startswith("%%"):
        return None
    lines = []
    for line in cell_source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def redefinitions(notebook: dict, exported: dict[str, str]) -> list[str]:
    """One message per top-level definition, in any code cell, of an exported name."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        python = _python_source(source)
        if python is None:
            continue
        for name, line in _top_level_definitions(ast.parse(python).body):
            if name in exported:
                problems.append(
                    f"cell {index}, line {line}: defines {name!r}, which {exported[name]} "
                    "exports; import it, or give the hand-built version another name"
                )
    return problems


def _notebook(*sources: str) -> dict:
    return {"cells": [{"cell_type": "code", "source": s} for s in sources], "nbformat": 4}


def test_exported_names_are_collected():
    names = exported_names()
    # From the lowest modules, which always exist, to show the walk reaches sub-packages.
    assert names["stretch_contrast"] == "cxrlearn.contrast"
    assert names["load_image"].startswith("cxrlearn.data")
    assert "resize" in names and "CxrlearnError" in names
    assert names["report_table"] == "cxrlearn.cli.evaluate"  # the faces are covered too
    assert names["create_app"].startswith("cxrlearn.app")


def test_checker_catches_offending_cells():
    exported = exported_names()
    bad = _notebook(
        "import numpy as np\nfrom cxrlearn.contrast import stretch_contrast",
        "def stretch_contrast(x):\n    return x",
        "resize = 3",
        "a, (b, *load_image) = 1, (2, 3)",
        "class XrayDataset:\n    pass",
        "%matplotlib inline\nif True:\n    dhash: int = 0",
        "for hamming in range(3):\n    pass",
    )
    problems = redefinitions(bad, exported)
    assert [p.split("'")[1] for p in problems] == [
        "stretch_contrast", "resize", "load_image", "XrayDataset", "dhash", "hamming",
    ]
    assert problems[0].startswith("cell 1, line 1: defines 'stretch_contrast'")


def test_checker_allows_imports_and_local_names():
    fine = _notebook(
        "from cxrlearn.contrast import stretch_contrast\nimport cxrlearn.data as data",
        "def my_stretch(x):\n    resize = 2  # local, not top level\n    return x",
        "x = stretch_contrast(img)\nobj.resize = 1\nd['dhash'] = 2",
        "%%time\nresize = 1",  # not Python: a cell magic
        "class Helper:\n    load_image = None",
    )
    assert redefinitions(fine, exported_names()) == []


@pytest.mark.parametrize("path", sorted(LESSONS.glob("*.ipynb")), ids=lambda p: p.name)
def test_lesson_does_not_redefine_exports(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert redefinitions(notebook, exported_names()) == []
