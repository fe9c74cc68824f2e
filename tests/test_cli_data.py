"""`cxrlearn data check` and `cxrlearn data sample`, in-process and once as a real process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from cxrlearn.cli import main


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    # rich wraps at the terminal width (80 when captured); keep each table row on one line.
    monkeypatch.setenv("COLUMNS", "200")


def row(out: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with `first_cell`."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{out}")


def test_check_counts_per_class(tmp_path, copy_sample, capsys):
    root = copy_sample(tmp_path / "d", per_class=3, classes=("COVID", "Normal"))
    shutil.copy(next((root / "COVID").iterdir()), root / "Normal" / "extra.jpg")  # PNG bytes
    (root / "notes").mkdir()
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert row(out, "COVID") == ["COVID", "3", "0"]
    assert row(out, "Normal") == ["Normal", "4", "0"]
    assert row(out, "total") == ["total", "7", "0"]
    assert "of which across classes: 1" in out  # extra.jpg is a copy of a COVID image
    assert f"{root / 'notes'}: not a class folder, ignored" in out


def test_check_names_a_corrupt_file(tmp_path, copy_sample, capsys):
    root = copy_sample(tmp_path / "d", per_class=2)
    bad = root / "Viral Pneumonia" / "broken[1].png"  # brackets are not rich markup here
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot the rest of a PNG")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert row(out, "Viral Pneumonia") == ["Viral Pneumonia", "3", "1"]
    assert row(out, "total") == ["total", "9", "1"]
    assert f"bad file: {bad}: " in out
    assert "Traceback" not in out


def test_check_lists_cross_class_duplicates(tmp_path, copy_sample, capsys):
    root = copy_sample(tmp_path / "d", per_class=2, classes=("COVID", "Lung_Opacity", "Normal"))
    original = sorted((root / "COVID").iterdir())[1]
    shutil.copy(original, root / "Normal" / "copy[old].png")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "near-duplicate pairs (<= 12 of 256 bits): 1, of which across classes: 1" in out
    assert row(out, original.name) == [original.name, "COVID", "copy[old].png", "Normal", "0"]


def test_check_missing_folder(tmp_path, capsys):
    missing = tmp_path / "no[/such]" / "dir"
    assert main(["data", "check", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"error: {missing}: folder not found"
    assert "Traceback" not in captured.err


def test_sample_copies_400_pngs(tmp_path, sample_root, capsys):
    dest = tmp_path / "sample"
    assert main(["data", "sample", str(dest)]) == 0
    assert "copied 400 X-rays" in capsys.readouterr().out
    copied = sorted(p.relative_to(dest) for p in dest.rglob("*.png"))
    assert len(copied) == 400
    assert copied == sorted(p.relative_to(sample_root) for p in sample_root.rglob("*.png"))
    some = copied[123]
    assert (dest / some).read_bytes() == (sample_root / some).read_bytes()


def test_sample_into_an_empty_folder_is_fine(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "sample", str(tmp_path / "empty")]) == 0
    assert len(list((tmp_path / "empty").rglob("*.png"))) == 400


def test_sample_refuses_a_non_empty_folder(tmp_path, capsys):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["data", "sample", str(dest)]) == 1
    err = capsys.readouterr().err
    assert str(dest) in err and "not an empty folder" in err
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


def test_real_process_exit_code_and_no_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlearn", "data", "check", str(missing)],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: folder not found"]


def test_sample_brings_its_sources_and_terms(tmp_path, sample_root, capsys):
    dest = tmp_path / "sample"
    assert main(["data", "sample", str(dest)]) == 0
    sources = (dest / "SOURCES.md").read_text()
    assert sources == (sample_root.parent / "SOURCES.md").read_text()
    assert "## Terms" in sources and "SOURCES.md" in capsys.readouterr().out


def test_check_reports_broken_links_and_any_class_names(tmp_path, copy_sample, capsys):
    root = copy_sample(tmp_path / "d", per_class=2, classes=("COVID", "Normal"))
    (root / "Normal").rename(root / "Healthy")  # any folder name is a class
    (root / "COVID" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "Healthy" in out and "COVID" in out
    assert "gone.png: a link to" in out and "does not exist" in out
