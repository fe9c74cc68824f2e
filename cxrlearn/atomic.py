"""Files that appear whole or not at all: write a temporary beside the file, then rename it.

A process can be killed, or the disk fill up, in the middle of a write. Whoever reads the
file next (a resumed run, a lesson, the app) must then find the previous file, never half
of the new one. One recipe does it for every file: write a temporary sibling in the same
folder, flush it to the disk, and rename it over the target. A rename within one file
system is atomic (`os.replace`, on POSIX and Windows): a reader sees the old file or the
new one.

    .NAME.PID.tmp  --fsync-->  --os.replace-->  NAME

A temporary carries its writer's process id, so that the next writer of NAME can tell the
leftovers of a killed writer (its process runs no more) from a write in progress, and
remove them.

Every file cxrlearn writes goes through here: checkpoints, the prepared-image cache, the
split manifest, a run's settings and history, reports and figures (`write_atomic`), and
exported models, which are written and checked inside a private folder before they are
renamed into place (`temporary_folder`).

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from cxrlearn.errors import CxrlearnError

__all__ = ["write_atomic", "temporary_folder", "remove_stale_temporaries", "pid_is_running"]


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None],
                 what: str = "the file") -> Path:
    """Write a file through a temporary sibling, fsync and a rename: never half a file.

    Temporaries of writers that were killed are removed first.

    Args:
        path: The file to write; its folder is created if needed.
        write: Writes the contents into the open binary file it is given.
        what: The file, in the error message ("the checkpoint").

    Returns:
        `path`.

    Raises:
        CxrlearnError: The disk is full or the folder not writable; the old file at `path`
            is intact and no temporary is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it visible
        os.replace(tmp, path)
    except OSError as e:
        raise _could_not_write(path, what, e) from None
    finally:
        with suppress(OSError):  # e.g. the folder could not be made: no temporary exists
            tmp.unlink(missing_ok=True)
    return path


@contextmanager
def temporary_folder(path: str | Path, what: str = "the file") -> Iterator[Path]:
    """A private, empty folder beside `path`, removed with its contents on the way out.

    For what is built in more than one step before it counts (an exported model saved,
    loaded back and checked; a whole run): build `folder / path.name` inside it, then rename
    that onto `path`. The folder lies on the same file system as `path`, so the rename is
    atomic, and its name, `.NAME.PID.XXXX.tmp`, lets `remove_stale_temporaries` clear it
    away if this process is killed.

    Args:
        path: What will be renamed into place; its folder is created if needed.
        what: It, in the error message ("the file").

    Raises:
        CxrlearnError: The folder cannot be created (not writable, disk full).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                       dir=path.parent))
    except OSError as e:
        raise _could_not_write(path, what, e) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temporaries(path: Path) -> None:
    """Delete what writers of `path` left when they were killed mid-write: `.NAME.PID.tmp`
    files (`write_atomic`) and `.NAME.PID.XXXX.tmp` folders (`temporary_folder`), for every
    PID that no longer runs."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not pid_is_running(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def pid_is_running(pid: int) -> bool:
    """True while process `pid` runs on this machine: a temporary file or lock named after
    it is then still in use."""
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists and sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _could_not_write(path: Path, what: str, error: OSError) -> CxrlearnError:
    kept = "; the previous file is intact" if path.exists() else ""
    reason = error.strerror or str(error).splitlines()[0]
    return CxrlearnError(f"could not write {what} ({reason}){kept}", path=path)
