"""`cxrlearn grade`: notebooks run in fresh kernels, their verdicts in a table and a CSV.

The fast tests grade small notebooks made here: stubs that are not solved yet, the same
notebook solved with the library's references, one that raises, one that hangs, a file that
is not a notebook. Grading the real lessons takes minutes: set CXRLEARN_GRADE_LESSONS=1
to run that test too.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import cxrlearn.cli as cli
from cxrlearn.exercises import EXERCISES

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
SMALL = ["01.stretch", "04.macro_f1", "08.shard_indices"]


def stub(exercise_id: str) -> str:
    e = EXERCISES[exercise_id]
    params = e.signature.split(" -> ")[0][len(e.name):]
    return f"def your_{e.name}{params}:\n    raise NotImplementedError  # your code here"


def solved(exercise_id: str) -> str:
    """The library's reference under the stub's name."""
    name = EXERCISES[exercise_id].name
    return ("import functools\n"
            f"_e = EXERCISES[{exercise_id!r}]\n"
            f"your_{name} = functools.partial(_e.reference, **_e.reference_kwargs)")


def write_notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def exercise_cells(ids: list[str], body=stub) -> list[str]:
    cells = ["from cxrlearn.exercises import EXERCISES"]
    for i in ids:
        cells += [body(i), f"EXERCISES[{i!r}].check(your_{EXERCISES[i].name})"]
    return cells


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_stubs_are_not_solved_yet_and_solved_copies_pass(tmp_path, capsys):
    folder = tmp_path / "class"
    folder.mkdir()
    unsolved = write_notebook(folder / "alice.ipynb", exercise_cells(SMALL))
    write_notebook(folder / "bob.ipynb", exercise_cells(SMALL, body=solved))
    before = unsolved.read_bytes()
    out_csv = tmp_path / "grades.csv"
    assert cli.main(["grade", str(folder), "--csv", str(out_csv), "--timeout", "300"]) == 0
    rows = {Path(r["notebook"]).name: r for r in read_csv(out_csv)}
    assert [rows["alice.ipynb"][i] for i in SMALL] == ["not solved yet"] * 3
    assert [rows["bob.ipynb"][i] for i in SMALL] == ["passed"] * 3
    assert rows["bob.ipynb"]["passed"] == "3" and rows["alice.ipynb"]["passed"] == "0"
    assert rows["alice.ipynb"]["run"] == "ran"
    assert "not solved yet" in rows["alice.ipynb"]["01.stretch message"]
    assert unsolved.read_bytes() == before  # never modified
    printed = capsys.readouterr().out
    assert "Exercises" in printed and "alice.ipynb" in printed and "✓ passed" in printed


def test_crashes_hangs_and_broken_files_get_a_clear_cell(tmp_path, capsys):
    raises = write_notebook(tmp_path / "raises.ipynb",
                            ["1 / 0", *exercise_cells(["08.shard_indices"], body=solved)])
    hangs = write_notebook(tmp_path / "hangs.ipynb",
                           ["import time\ntime.sleep(600)", *exercise_cells(["04.macro_f1"])])
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not a notebook")
    out_csv = tmp_path / "grades.csv"
    status = cli.main(["grade", str(raises), str(hangs), str(broken), "--csv", str(out_csv),
                       "--timeout", "20"])
    assert status == 0
    rows = {Path(r["notebook"]).name: r for r in read_csv(out_csv)}
    assert rows["raises.ipynb"]["run"] == "1 cell raised (cell 1: ZeroDivisionError)"
    assert rows["raises.ipynb"]["08.shard_indices"] == "passed"  # later cells still ran
    assert rows["hangs.ipynb"]["run"] == "timed out after 20 s"
    assert rows["hangs.ipynb"]["04.macro_f1"] == "not run"
    assert rows["broken.ipynb"]["run"].startswith("not a readable notebook")
    assert "Traceback" not in capsys.readouterr().out


def test_a_missing_path_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("nope: no such file or folder") and "\n" not in err


def test_csv_keeps_an_existing_file_without_overwrite(tmp_path):
    """Refused before any notebook runs: one line that names the file, exit 1, the file as
    it was. A real process: the exit status is the point."""
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not a notebook")  # graded without a kernel, in an instant
    mine = tmp_path / "grades.csv"
    mine.write_text("my marks\n")
    done = subprocess.run([sys.executable, "-m", "cxrlearn", "grade", str(broken), "--csv",
                           str(mine)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: {mine}: already exists; choose another path, "
                                   "or replace it with --overwrite")
    assert "grading" not in done.stdout  # refused before any notebook ran
    assert mine.read_text() == "my marks\n"


def test_csv_replaces_a_file_with_overwrite(tmp_path, capsys):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not a notebook")
    mine = tmp_path / "grades.csv"
    mine.write_text("my marks\n")
    assert cli.main(["grade", str(broken), "--csv", str(mine), "--overwrite"]) == 0
    rows = read_csv(mine)
    assert [Path(r["notebook"]).name for r in rows] == ["broken.ipynb"]
    # rich wraps a long path anywhere, even inside a name: compare without white space
    assert f"wrote{mine}" in "".join(capsys.readouterr().out.split())


def test_grade_is_a_command():
    assert "grade" in cli.COMMANDS
    args = cli.build_parser(["grade"]).parse_args(["grade", "x.ipynb", "--timeout", "5"])
    assert args.timeout == 5.0 and args.csv is None


@pytest.mark.skipif(os.environ.get("CXRLEARN_GRADE_LESSONS") != "1",
                    reason="grades all the lessons twice (many minutes): "
                           "set CXRLEARN_GRADE_LESSONS=1")
def test_the_committed_lessons_are_not_solved_yet_and_a_solved_copy_passes(tmp_path):
    solved_dir = tmp_path / "solved"
    shutil.copytree(LESSONS, solved_dir)
    for path in solved_dir.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "your-turn" in cell.metadata.get("tags", []):
                name = cell.source.split("def your_")[1].split("(")[0]
                (exercise_id,) = [i for i, e in EXERCISES.items() if e.name == name]
                cell.source = solved(exercise_id)
        nbformat.write(nb, path)
    for folder, expected in ((LESSONS, "not solved yet"), (solved_dir, "passed")):
        out_csv = tmp_path / f"{folder.name}.csv"
        assert cli.main(["grade", str(folder), "--csv", str(out_csv)]) == 0
        rows = read_csv(out_csv)
        assert len(rows) == 8
        for row in rows:
            mine = [i for i in EXERCISES if row[i]]
            assert mine and all(row[i] == expected for i in mine), row
        assert sorted(i for r in rows for i in EXERCISES if r[i]) == sorted(EXERCISES)
