"""`cxrlearn grade NOTEBOOK|FOLDER ...`: run students' notebooks, tabulate their exercises.

`--csv FILE` never replaces an existing file without `--overwrite`; the refusal comes before
any notebook runs, not after minutes of grading.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.cli import add_overwrite_argument, check_new_file, positive_float
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser"]

HELP = "run students' notebooks in fresh kernels and tabulate their exercises' verdicts"

# What a table cell shows for each status; the CSV holds the status words themselves.
CELL = {"passed": "[green]✓ passed[/]", "failed": "[red]✗ failed[/]",
        "not solved yet": "[dim]· not solved[/]", "not run": "[yellow]– not run[/]"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grade", help=HELP,
        description="Run each notebook (a copy; the file is never modified) top to bottom in "
                    "a fresh kernel of this Python environment, with a time limit, and print "
                    "one row per notebook and one column per exercise: passed, failed, not "
                    "solved yet, or not run (its check cell never ran). A notebook that "
                    "crashes, hangs or is not a notebook says so in its row. The exit status "
                    "is 0 whenever grading ran, whatever the scores.")
    p.add_argument("paths", nargs="+", type=Path, metavar="NOTEBOOK|FOLDER",
                   help="notebooks, or folders searched for *.ipynb")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="also write the table as CSV, with each verdict's message")
    add_overwrite_argument(p, "CSV files")
    p.add_argument("--timeout", type=positive_float, default=900.0, metavar="SECONDS",
                   help="time limit per notebook (default 900)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.csv is not None:
        check_new_file(args.csv, args.overwrite)
    try:
        import nbclient  # noqa: F401  (checked here, used by grade_notebook)

        from cxrlearn.exercises.grading import find_notebooks, grade_notebook
    except ModuleNotFoundError as e:
        raise CxrlearnError(f"grading needs {e.name}: pip install nbclient nbformat "
                            "ipykernel (or the dev extra)") from None
    try:
        notebooks = find_notebooks(args.paths)
    except FileNotFoundError as e:
        raise CxrlearnError("no such file or folder", path=Path(e.filename)) from None
    if not notebooks:
        raise CxrlearnError("holds no notebook (*.ipynb)", path=args.paths[0])
    grades = []
    for path in notebooks:
        console.print(f"grading {escape(str(path))} ...", highlight=False)
        grade = grade_notebook(path, timeout=args.timeout)
        grades.append(grade)
        console.print(f"  {grade.seconds:.0f} s, {escape(grade.summary())}", highlight=False)
    ids = sorted({i for g in grades for i in g.exercises})
    console.print(_table(grades, ids))
    if args.csv is not None:
        _write_csv(args.csv, grades, ids)
        console.print(f"wrote {escape(str(args.csv))}", highlight=False)
    return 0


def status_of(grade, exercise_id: str) -> str:
    """The status shown for one exercise of one notebook ("" where it has no such check)."""
    if exercise_id in grade.statuses:
        return grade.statuses[exercise_id]
    return "not run" if exercise_id in grade.checks else ""


def _table(grades: list, ids: list[str]) -> Table:
    table = Table(title="Exercises", title_justify="left")
    table.add_column("notebook", overflow="fold")
    table.add_column("run", overflow="fold")
    table.add_column("passed", justify="right")
    for exercise_id in ids:
        table.add_column(exercise_id, overflow="fold")
    for g in grades:
        run_cell = escape(g.summary())
        if g.problem:
            run_cell = f"[bold red]{run_cell}[/]"
        cells = [CELL.get(status_of(g, i), "") for i in ids]
        table.add_row(escape(g.path.name), run_cell, f"{g.passed}/{len(g.exercises)}", *cells)
    return table


def _write_csv(path: Path, grades: list, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "run", "passed", "exercises", *ids,
                         *[f"{i} message" for i in ids]])
        for g in grades:
            writer.writerow([str(g.path), g.summary(), g.passed, len(g.exercises),
                             *[status_of(g, i) for i in ids],
                             *[g.messages.get(i, "") for i in ids]])
