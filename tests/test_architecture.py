"""The package's shape: layers point one way, the faces stay on top, nothing goes in circles.

House style, section 16: a lower layer never imports a higher one, nothing imports the faces
(`cli`, `app`), and printing (`rich`) belongs to the faces. The docs' architecture page lists
the modules in the order of `LAYERS` below. These tests read every module's imports from its
source (`ast`), so a forbidden import fails here before anyone has to notice it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cxrlearn"

# Lowest first. A module may import modules of its own layer or of lower ones.
LAYERS = [
    ["errors"],
    ["contrast"],
    ["transforms"],
    ["data"],
    ["resnet", "transfer"],
    ["device", "seeding", "schedule", "evaluation"],
    ["checkpoint", "distributed"],
    ["training"],
    ["gradcam", "heatmap"],
    ["export"],
    ["trained"],
    ["runs"],
    ["sample_run"],
    ["app", "cli", "exercises", "__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


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


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in _modules()} - set(LAYER) - {""})
    assert missing == [], f"add these modules to LAYERS (and to docs/architecture.md): {missing}"


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
