"""Grading a class's notebooks: run each in a fresh kernel and collect its exercises' verdicts.

`grade_notebook(path)` copies the notebook into a temporary folder (the student's file is
never modified), runs it top to bottom in a new Jupyter kernel of this Python environment
(nbclient, `allow_errors=True`: a cell that raises does not stop the later exercises), and
reads back what every `EXERCISES[...].check(...)` decided: the kernel gets the environment
variable `CXRLEARN_VERDICTS` naming a file, and `Exercise.check` appends each verdict to it
(`cxrlearn.exercises.core`). Verdicts written before a notebook hangs are kept.

What can go wrong with a notebook becomes its `problem`, never an exception: a file that is
not a notebook, a kernel that dies, a notebook that runs past its time limit. Cells that
raise are counted. The notebook runs in the temporary folder, so files it reads beside it
are not there; the bundled sample (`cxrlearn.data.sample_root()`) is.

Not a sandbox: the notebook's code runs with the grader's rights, and could write any
verdict it likes. This is for feedback and for a class's overview, not for exams.

It needs nbclient, nbformat and ipykernel (the dev extra).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrlearn.exercises.core import VERDICTS_ENV

__all__ = ["NotebookGrade", "grade_notebook", "exercise_ids_in", "find_notebooks"]

DEFAULT_TIMEOUT = 900.0
"""Seconds a notebook may run in all (the longest lesson takes a few minutes)."""

# A check cell: EXERCISES["01.stretch"].check(...), with either kind of quotes.
_CHECK = re.compile(r"""EXERCISES\[\s*["'](\d\d\.\w+)["']\s*\]\s*\.check\(""")


@dataclass
class NotebookGrade:
    """What grading one notebook found.

    Attributes:
        path: The notebook, as given.
        statuses: Exercise id -> the status of its last verdict ("passed", "failed",
            "not solved yet").
        messages: Exercise id -> the last verdict's message.
        checks: Ids of the exercises the notebook checks (its source names them).
        problem: Why the notebook did not run to the end, or None.
        cells_raised: How many cells raised an error.
        first_error: The first cell that raised, e.g. "cell 12: NameError".
        seconds: How long it ran.
    """

    path: Path
    statuses: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    problem: str | None = None
    cells_raised: int = 0
    first_error: str | None = None
    seconds: float = 0.0

    @property
    def exercises(self) -> list[str]:
        """Every exercise this notebook checks or recorded, sorted."""
        return sorted(set(self.checks) | set(self.statuses))

    @property
    def passed(self) -> int:
        return sum(status == "passed" for status in self.statuses.values())

    def summary(self) -> str:
        """How the run went, in a few words."""
        if self.problem:
            return self.problem
        if self.cells_raised:
            return (f"{self.cells_raised} cell{'s' if self.cells_raised > 1 else ''} raised "
                    f"({self.first_error})")
        return "ran"


def find_notebooks(paths: list[Path]) -> list[Path]:
    """The notebooks named, and those inside the folders named (recursively, without
    Jupyter's .ipynb_checkpoints), in order.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(2, "no such file or folder", str(path))
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb")
                            if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def exercise_ids_in(notebook: object) -> list[str]:
    """Ids of the exercises a notebook's code cells check, in order of first appearance."""
    ids: list[str] = []
    for cell in getattr(notebook, "cells", []):
        if cell.get("cell_type") == "code":
            ids += _CHECK.findall(cell.get("source", ""))
    return list(dict.fromkeys(ids))


def grade_notebook(path: Path, timeout: float = DEFAULT_TIMEOUT,
                   kernel_name: str = "python3") -> NotebookGrade:
    """Run a copy of the notebook at `path` in a fresh kernel and collect its verdicts."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    grade = NotebookGrade(Path(path))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrlearn-grade-") as tmp:
        copy = Path(tmp) / Path(path).name
        shutil.copyfile(path, copy)  # the student's file is only read, once
        try:
            nb = nbformat.read(copy, as_version=4)
        except Exception as e:  # not JSON, not a notebook: say so, grade the others
            grade.problem = f"not a readable notebook ({type(e).__name__})"
            return grade
        grade.checks = exercise_ids_in(nb)
        verdicts = Path(tmp) / "verdicts.jsonl"
        env = {**os.environ, VERDICTS_ENV: str(verdicts)}
        client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name=kernel_name,
                                record_timing=False, resources={"metadata": {"path": tmp}})
        try:
            # The kernel's own log lines (and its complaints when stopped) are not the grade.
            run = client.async_execute(env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            asyncio.run(asyncio.wait_for(run, timeout + 30))
        except (CellTimeoutError, asyncio.TimeoutError, TimeoutError):
            grade.problem = f"timed out after {timeout:g} s"
        except DeadKernelError:
            grade.problem = "the kernel died (a crash, or out of memory)"
        except Exception as e:  # the kernel would not start, and the like
            grade.problem = f"could not run: {type(e).__name__}: {' '.join(str(e).split())[:120]}"
        grade.seconds = time.perf_counter() - start
        _read_errors(nb, grade)
        _read_verdicts(verdicts, grade)
    return grade


def _read_errors(nb: object, grade: NotebookGrade) -> None:
    for index, cell in enumerate(getattr(nb, "cells", [])):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            grade.cells_raised += 1
            if grade.first_error is None:
                grade.first_error = f"cell {index + 1}: {errors[0].get('ename', 'error')}"


def _read_verdicts(verdicts: Path, grade: NotebookGrade) -> None:
    if not verdicts.exists():
        return
    for line in verdicts.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            grade.statuses[str(row["exercise"])] = str(row["status"])
            grade.messages[str(row["exercise"])] = str(row["message"])
        except (ValueError, KeyError, TypeError):  # a line the notebook mangled
            continue
