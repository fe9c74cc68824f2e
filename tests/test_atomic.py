"""Atomic writes: a file appears whole or not at all, and killed writers' leftovers go."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from cxrlearn.atomic import (
    pid_is_running,
    remove_stale_temporaries,
    temporary_folder,
    write_atomic,
)
from cxrlearn.errors import CxrlearnError


def _dead_pid() -> int:
    """The id of a process that has just ended (an oracle for `pid_is_running`)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_pid_is_running():
    assert pid_is_running(os.getpid())
    assert not pid_is_running(_dead_pid())


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "report.json"
    write_atomic(path, lambda f: f.write(b"old"))

    def half_then_full(f):
        f.write(b"half a rep")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CxrlearnError, match=r"report.json: could not write the report "
                       r"\(No space left on device\); the previous file is intact"):
        write_atomic(path, half_then_full, "the report")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "taken").write_bytes(b"a file where a folder should be")
    with pytest.raises(CxrlearnError, match="could not write the manifest"):
        write_atomic(tmp_path / "taken" / "manifest.csv", lambda f: f.write(b"x"),
                     "the manifest")
    with pytest.raises(CxrlearnError, match="could not write the file"):
        with temporary_folder(tmp_path / "taken" / "model.pt"):
            pass


def test_temporary_folder_is_beside_the_target_and_always_removed(tmp_path):
    target = tmp_path / "out" / "model.pt"
    with temporary_folder(target) as folder:
        assert folder.parent == target.parent and folder.is_dir()
        assert folder.name.startswith(f".model.pt.{os.getpid()}.")
        (folder / target.name).write_bytes(b"checked")
        os.replace(folder / target.name, target)
    assert target.read_bytes() == b"checked" and not folder.exists()
    with pytest.raises(RuntimeError), temporary_folder(target) as folder:
        (folder / target.name).write_bytes(b"rejected")
        raise RuntimeError("the check failed")
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_only_the_leftovers_of_dead_writers_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    path = tmp_path / "last.pt"
    leftovers = [tmp_path / f".last.pt.{dead}.tmp", tmp_path / f".last.pt.{alive}.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    (tmp_path / f".last.pt.{dead}.abcd.tmp").mkdir()  # a temporary_folder
    (tmp_path / f".last.pt.{dead}.abcd.tmp" / "last.pt").write_bytes(b"half")
    (tmp_path / f".best.pt.{dead}.tmp").write_bytes(b"another file's")
    remove_stale_temporaries(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".best.pt.{dead}.tmp",
                                                         f".last.pt.{alive}.tmp"]
