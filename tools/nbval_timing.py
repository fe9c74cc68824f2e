"""A pytest plugin for the lessons' nbval run: a time table per lesson.

    python -m pytest --nbval --nbval-current-env -p tools.nbval_timing lessons

It lives here, loaded with `-p`, and not as lessons/conftest.py, so that lessons/ holds
the notebooks only: a student opening the folder in JupyterLab sees lessons, not pytest.
(Run from the repository's root, where `python -m pytest` finds the `tools` folder.)

nbval reports each cell; a student or an instructor wants to know how long each lesson takes
to run top to bottom. At the end of the run this prints one line per notebook: its cells, and
the seconds they took (kernel start-up included), so that the CI log holds the table.
"""

from __future__ import annotations

from collections import defaultdict

_seconds: dict[str, float] = defaultdict(float)
_cells: dict[str, int] = defaultdict(int)


def pytest_runtest_logreport(report) -> None:
    notebook = report.nodeid.split("::")[0]
    if notebook.endswith(".ipynb"):
        _seconds[notebook] += report.duration  # setup, call and teardown
        _cells[notebook] += report.when == "call"


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time per lesson")
    width = max(len(name) for name in _seconds)
    write(f"{'lesson':<{width}}  cells  seconds")
    for name in sorted(_seconds):
        write(f"{name:<{width}}  {_cells[name]:>5}  {_seconds[name]:>7.1f}")
    write(f"{'all':<{width}}  {sum(_cells.values()):>5}  {sum(_seconds.values()):>7.1f}")
