"""The package's shape: one map, layers that point one way, the faces on top, no circles.

House style, section 16: a lower layer never imports a higher one, nothing imports the faces
(`cli`, `app`), and printing (`rich`) belongs to the faces. The layers and the lessons of every
module are stated once, in `cxrlearn/layout.py`: these tests read them from there, check each
module's imports against the layers (from its source, with `ast`, so a forbidden import fails
here before anyone has to notice it), each module's `Lesson:` line against its lessons, and
the README's lesson table against the map. The docs' architecture page is generated from the
same map (tools/docs_hooks/module_map.py).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from cxrlearn.layout import LAYERS as MAP
from cxrlearn.layout import LESSON_NUMBERS, MODULES, lessons_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cxrlearn"
LESSONS = ROOT / "lessons"

# Lowest first. A module may import modules of its own layer or of lower ones.
LAYERS = [list(dict.fromkeys(m.name.split(".")[0] for m in layer.modules)) for layer in MAP]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ARRIVING: set[str] = set()  # modules listed in the map before they exist (none now)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (absolute names), everywhere or at module level only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _top(module: str) -> str:
    """`cxrlearn.data.images` -> `data`; `cxrlearn` itself -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _entry(module: str) -> str | None:
    """The map's entry for a module (`data.dicom`): its own, or that of a package listed
    without any of its submodules (which then stands for all of them); else None."""
    name = module.removeprefix("cxrlearn.")
    if name in MODULES:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:i])
        if package in MODULES:
            listed_children = [m for m in MODULES if m.startswith(package + ".")]
            return None if listed_children else package
    return None


def test_every_module_is_in_the_map():
    missing = sorted(m for m in _modules() if _top(m) and _entry(m) is None)
    assert missing == [], f"add these modules to cxrlearn/layout.py: {missing}"


def test_every_map_entry_is_a_module():
    existing = {m.removeprefix("cxrlearn.") for m in _modules()}
    gone = sorted(name for name in MODULES if name not in existing and name not in ARRIVING)
    assert gone == [], f"cxrlearn/layout.py lists modules that do not exist: {gone}"


def test_each_package_sits_in_one_layer():
    layers_of: dict[str, set[int]] = {}
    for i, layer in enumerate(MAP):
        for m in layer.modules:
            layers_of.setdefault(m.name.split(".")[0], set()).add(i)
    assert {name: found for name, found in layers_of.items() if len(found) > 1} == {}
    assert all(m.lessons == tuple(sorted(set(m.lessons))) for m in MODULES.values())
    assert all(set(m.lessons) <= set(LESSON_NUMBERS) for m in MODULES.values())


def _notebooks() -> dict[int, Path]:
    return {int(p.name[:2]): p for p in sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))}


def test_the_map_knows_every_lesson():
    assert tuple(_notebooks()) == LESSON_NUMBERS


LESSON_LINE = re.compile(r"^(Lessons?):(.*?)(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)


def lesson_line(docstring: str) -> tuple[str, list[str]] | None:
    """("Lesson" or "Lessons", the notebook paths named) of a docstring's `Lesson:` paragraph
    (it may wrap over several lines, up to a blank line), or None without one."""
    found = LESSON_LINE.search(docstring)
    if found is None:
        return None
    return found.group(1), re.findall(r"lessons/[\w.-]+\.ipynb", found.group(2))


@pytest.mark.parametrize("module", [m for m in sorted(_modules()) if _top(m)], ids=str)
def test_lesson_line_agrees_with_the_map(module):
    """`Lesson: lessons/NN_name.ipynb` (`Lessons: a, b` for several) names the map's lessons;
    a module the map gives no lesson has no such line."""
    docstring = ast.get_docstring(ast.parse(_modules()[module].read_text(encoding="utf-8"))) or ""
    want = lessons_of(module)
    line = lesson_line(docstring)
    if not want:
        assert line is None, f"{module}: the map gives it no lesson, its docstring names one"
        return
    assert line is not None, f"{module}: add a line 'Lesson: lessons/NN_....ipynb' for {want}"
    word, paths = line
    notebooks = _notebooks()
    assert paths == [f"lessons/{notebooks[n].name}" for n in want], (
        f"{module}: the map (cxrlearn/layout.py) says lessons {want}")
    assert word == ("Lesson" if len(want) == 1 else "Lessons")


def test_the_lesson_line_reader_catches_a_wrong_line():
    assert lesson_line("Idea.\n\nLesson: lessons/06_x.ipynb\n") == (
        "Lesson", ["lessons/06_x.ipynb"])
    assert lesson_line("Lessons: lessons/03_a.ipynb,\n  lessons/04_b.ipynb\n\nMore.") == (
        "Lessons", ["lessons/03_a.ipynb", "lessons/04_b.ipynb"])
    assert lesson_line("No lesson here; see lessons/01_a.ipynb.") is None


def readme_lesson_table() -> dict[int, set[str]]:
    """Lesson number -> the modules its row of README.md's "What is inside" table names:
    `evaluation` (`metrics`, `roc`) counts as evaluation, evaluation.metrics, evaluation.roc."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## What is inside", 1)[1].split("\n## ", 1)[0]
    rows: dict[int, set[str]] = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d\d) ·[^|]*\|([^|]*)\|", line)
        if row is None:
            continue
        names: set[str] = set()
        for name, inner in re.findall(r"`([\w.]+)`(?:\s*\(([^)]*)\))?", row.group(2)):
            names.add(name)
            names |= {f"{name}.{sub}" for sub in re.findall(r"`([\w.]+)`", inner)}
        rows[int(row.group(1))] = names
    return rows


def test_the_readme_lesson_table_agrees_with_the_map():
    """Each lesson's row names exactly the modules the map gives that lesson; a module that
    every lesson uses (the exercises) is not repeated in every row."""
    want = {n: {m.name for m in MODULES.values()
                if n in m.lessons and m.lessons != LESSON_NUMBERS} for n in LESSON_NUMBERS}
    assert readme_lesson_table() == want


def _code_cells(notebook: Path) -> list[str]:
    """The notebook's code cells as Python: IPython magics and shell lines become `pass`."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c["cell_type"] == "code"]
    return [re.sub(r"^(\s*)[%!].*$", r"\1pass", source, flags=re.MULTILINE)
            for source in sources if not source.lstrip().startswith("%%")]


def _uses_the_cli(source: str) -> bool:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
                a.name == "cxrlearn.cli" or a.name.startswith("cxrlearn.cli.") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module is not None and (
                node.module == "cxrlearn.cli" or node.module.startswith("cxrlearn.cli.")
                or (node.module == "cxrlearn" and any(a.name == "cli" for a in node.names))):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "cli" and isinstance(
                node.value, ast.Name) and node.value.id == "cxrlearn":
            return True
    return False


@pytest.mark.parametrize("notebook", sorted(LESSONS.glob("*.ipynb")), ids=lambda p: p.name)
def test_no_lesson_imports_the_cli(notebook):
    """Lessons teach the library; the command line is a face over it (issue 25)."""
    assert not [s for s in _code_cells(notebook) if _uses_the_cli(s)]


def test_the_cli_checker_catches_each_way_in():
    for bad in ("from cxrlearn.cli.evaluate import report_table", "import cxrlearn.cli",
                "from cxrlearn import cli", "import cxrlearn\ncxrlearn.cli.main([])",
                "if True:\n    from cxrlearn.cli import main"):
        assert _uses_the_cli(bad), bad
    for fine in ("from cxrlearn.runs import evaluate_run", "import cxrlearn.client_side",
                 "print('cxrlearn.cli')"):
        assert not _uses_the_cli(fine), fine


def test_the_map_imports_nothing_of_the_package():
    assert _imports(PACKAGE / "layout.py") <= {"__future__", "__future__.annotations",
                                               "dataclasses", "dataclasses.dataclass"}


# cxrlearn/__init__.py has no layer: it reaches its modules lazily, by name, on demand.
@pytest.mark.parametrize("module", [m for m in sorted(_modules()) if _top(m)], ids=str)
def test_imports_point_down(module):
    here = _top(module)
    wrong = []
    for name in _imports(_modules()[module]):
        if name.startswith("cxrlearn.") and LAYER.get(_top(name), -1) > LAYER[here]:
            wrong.append(name)
    assert wrong == [], f"{module} (layer {LAYER[here]}) imports higher modules: {wrong}"


def test_nothing_below_the_faces_imports_the_cli():
    importers = [module for module, path in _modules().items()
                 if _top(module) not in ("cli", "__main__")
                 and any(n == "cxrlearn.cli" or n.startswith("cxrlearn.cli.")
                         for n in _imports(path))]
    assert importers == []
    benchmarks = [p.name for p in (ROOT / "benchmarks").glob("*.py")
                  if any(n.startswith("cxrlearn.cli") for n in _imports(p))]
    assert benchmarks == []


def test_rich_is_imported_by_the_faces_only():
    users = [module for module, path in _modules().items()
             if _top(module) not in ("cli", "app")
             and any(n == "rich" or n.startswith("rich.") for n in _imports(path))]
    assert users == []


def test_no_import_circle_at_module_level():
    """A module's top-level imports form no cycle (a cycle is what forced the old
    images <-> dicom import into a function)."""
    modules = _modules()
    graph = {m: {n for n in _imports(p, top_level_only=True) if n in modules and n != m}
             for m, p in modules.items()}
    # A package's `__init__` imports its own submodules: that is not a circle, but its
    # submodules importing the package's names would be; keep both edges and look.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from cxrlearn.cli import main\nimport rich.table\n")
    assert "cxrlearn.cli" in _imports(bad) and "rich.table" in _imports(bad)
    assert LAYER[_top("cxrlearn.cli")] > LAYER[_top("cxrlearn.training")]


def test_importing_the_library_imports_no_plotting_library():
    """matplotlib (and seaborn, which imports it) load when a figure is drawn, not before:
    the app, the command line and a training run that draws nothing never pay for them."""
    import subprocess
    import sys

    modules = ("cxrlearn.gradcam, cxrlearn.evaluation, cxrlearn.heatmap, "
               "cxrlearn.evaluation.plots, cxrlearn.trained, cxrlearn.runs")
    code = (f"import sys\nimport {modules}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'seaborn')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
def test_the_maps_example_runs():
    import doctest

    import cxrlearn.layout

    assert doctest.testmod(cxrlearn.layout).failed == 0
