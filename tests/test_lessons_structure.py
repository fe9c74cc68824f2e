"""The shape of a lesson a student works through (issue 27), read from the committed notebooks.

Every lesson gives the student their turn: a stub cell tagged `your-turn` (`def your_<name>`,
`raise NotImplementedError`), then the cell that checks it (`EXERCISES["NN.name"].check(
your_<name>)`), then the worked solution, tagged `solution` (nbval runs it; the docs site
folds it away). A lesson stays short (at most 45 cells), shows a picture before it asks for
work (lessons 06 and 07 are about files and a web app, and start with their words), and
every figure has a caption: the markdown cell right under a cell with an image output starts
with `*Figure:*` and says what the picture shows (the docs site makes it the image's alt
text). No figure uses `jet`, which is neither perceptually uniform nor colour-blind safe.

The stored outputs are what is read, so a figure that the notebook no longer draws, or a
caption that lost its figure, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from cxrlearn.exercises import EXERCISES

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
MAX_CELLS = 45
NO_FIGURE_BEFORE_WORK = {"06", "07"}  # export and the app: files and HTTP, not pictures
CAPTION = "*Figure:*"
_CHECK = re.compile(r"""EXERCISES\[\s*["'](\d\d\.\w+)["']\s*\]\s*\.check\(\s*(\w+)\s*\)""")
_JET = re.compile(r"""["']jet["']|\bcm\.jet\b|\bcmap\s*=\s*["']?jet\b""")


def _cells(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _has_image(cell) -> bool:
    return cell.cell_type == "code" and any(
        "image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
        for out in cell.get("outputs", []))


def _is_check(cell) -> bool:
    return cell.cell_type == "code" and bool(_CHECK.search(cell.source))


def test_there_are_nine_lessons():
    assert [p.name[:2] for p in LESSONS] == [f"{n:02d}" for n in range(1, 10)]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_at_most_45_cells(path):
    assert len(_cells(path)) <= MAX_CELLS, f"{path.name}: {len(_cells(path))} cells"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_your_turn_then_check_then_solution(path):
    """Each your-turn stub is followed by its check and then by its solution; every exercise
    of the lesson is one of them, and no solution cell stands alone."""
    cells = _cells(path)
    lesson = int(path.name[:2])
    seen: list[str] = []
    for i, cell in enumerate(cells):
        if "your-turn" not in _tags(cell):
            continue
        stub = re.search(r"^def (your_\w+)\(", cell.source, re.M)
        assert stub, f"{path.name} cell {i}: a your-turn cell defines `def your_<name>(`"
        assert "NotImplementedError" in cell.source, f"{path.name} cell {i}: stub is solved"
        check = cells[i + 1] if i + 1 < len(cells) else None
        match = _CHECK.search(check.source) if check is not None else None
        assert match and match.group(2) == stub.group(1), (
            f"{path.name} cell {i + 1}: the cell after `{stub.group(1)}` checks it")
        exercise = EXERCISES[match.group(1)]
        assert exercise.lesson == lesson and stub.group(1) == f"your_{exercise.name}"
        solution = cells[i + 2] if i + 2 < len(cells) else None
        assert solution is not None and "solution" in _tags(solution), (
            f"{path.name} cell {i + 2}: the worked solution (tag `solution`) follows the check")
        assert solution.cell_type == "code" and "NotImplementedError" not in solution.source
        seen.append(exercise.id)
    mine = sorted(e.id for e in EXERCISES.values() if e.lesson == lesson)
    assert sorted(seen) == mine, f"{path.name}: your-turn cells for {mine}"
    solutions = [i for i, c in enumerate(cells) if "solution" in _tags(c)]
    assert len(solutions) == len(seen), f"{path.name}: a solution cell without its stub"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_figure_before_the_first_check(path):
    if path.name[:2] in NO_FIGURE_BEFORE_WORK:
        pytest.skip("this lesson starts with files and HTTP, not pictures")
    cells = _cells(path)
    first_check = next(i for i, c in enumerate(cells) if _is_check(c))
    figures = [i for i, c in enumerate(cells[:first_check]) if _has_image(c)]
    assert figures, f"{path.name}: no stored figure before the first check (cell {first_check})"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_figure_has_a_caption_and_every_caption_a_figure(path):
    cells = _cells(path)
    for i, cell in enumerate(cells):
        if _has_image(cell):
            after = cells[i + 1] if i + 1 < len(cells) else None
            assert after is not None and after.cell_type == "markdown" and (
                after.source.lstrip().startswith(CAPTION)), (
                f"{path.name} cell {i}: a figure needs a caption cell starting {CAPTION!r}")
            words = after.source.lstrip()[len(CAPTION):].split()
            assert len(words) >= 5, f"{path.name} cell {i + 1}: say what the figure shows"
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith(CAPTION):
            assert i > 0 and _has_image(cells[i - 1]), (
                f"{path.name} cell {i}: a caption under a cell that stored no figure")


def test_the_sample_network_trains_aloud_in_a_cell_nbval_ignores():
    """A lesson run alone from an empty cache trains the sample network (minutes): every
    `sample_run(...)` call says so, a line per epoch with the time left
    (`events=NotebookProgress()`, as in lesson 04), in a cell tagged `nbval-ignore-output`
    (the lines hold times and this machine's losses). From the cache it prints nothing."""
    calls = {(path.stem[:2], line.strip(), "nbval-ignore-output" in _tags(cell))
             for path in LESSONS for cell in _cells(path) if cell.cell_type == "code"
             for line in cell.source.splitlines() if re.search(r"\bsample_run\(", line)}
    assert {n for n, _, _ in calls} >= {"04", "05", "06", "07"}, calls
    quiet = [(n, line) for n, line, _ in calls if "events=NotebookProgress()" not in line]
    checked = [(n, line) for n, line, ignored in calls if not ignored]
    assert not quiet and not checked, (quiet, checked)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_no_jet_in_the_lessons(path):
    for i, cell in enumerate(_cells(path)):
        if cell.cell_type == "code":
            assert not _JET.search(cell.source), f"{path.name} cell {i} uses the jet colour map"


def test_no_jet_in_the_library():
    for module in sorted((ROOT / "cxrlearn").rglob("*.py")):
        for n, line in enumerate(module.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            assert not _JET.search(code), f"{module.relative_to(ROOT)}:{n} uses jet"


def test_the_jet_detector_detects():
    """The searches above can fail: they find jet written the usual ways."""
    for source in ('cmap="jet"', "plt.cm.jet(x)", "cmap='jet'", "colormaps['jet']"):
        assert _JET.search(source), source
    assert not _JET.search('cmap="cividis"  # not the jet of old')
