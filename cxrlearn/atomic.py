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

Ctrl-C (SIGINT) or a polite kill (SIGTERM) that arrives during the write waits until the
rename is done (`signals_deferred`), and is then delivered as usual: an interrupted run
stops with a whole file on the disk and says "interrupted", never "could not write".

Every file cxrlearn writes goes through here: checkpoints, the prepared-image cache, the
split manifest, a run's settings and history, reports and figures (`write_atomic`), and
exported models, which are written and checked inside a private folder before they are
renamed into place (`temporary_folder`).

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from cxrlearn.errors import CxrlearnError

__all__ = ["write_atomic", "temporary_folder", "replace_folder", "remove_stale_temporaries",
           "remove_stale_in", "pid_is_running", "signals_deferred"]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


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
        with signals_deferred():
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


def replace_folder(built: Path, path: Path) -> None:
    """Rename the folder `built` onto `path`, replacing whatever folder `path` was.

    `os.replace` refuses to rename a folder over one that is not empty ("Directory not
    empty"), so an old folder is first renamed aside to a dead temporary
    (`.NAME.PID.old.tmp`, which `remove_stale_temporaries` would clear if we were killed
    now) and then deleted. A reader sees the old folder, no folder for an instant, or the
    new one; never a mix.

    Raises:
        OSError: The rename failed (another process put a folder there in between, say).
    """
    with signals_deferred():
        if path.exists():
            aside = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(built, path)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM for the duration of the block, then deliver them.

    A write cut in the middle by Ctrl-C would otherwise surface as a strange I/O error
    ("unexpected pos ...") from deep inside `torch.save`. Only the main thread can set
    signal handlers; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    # None: a handler set outside Python; the default is the closest we can restore.
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in _DEFERRED}
    for sig in _DEFERRED:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):  # each one once, in the order they came
            signal.raise_signal(sig)  # now the usual handler runs: KeyboardInterrupt, ...


def remove_stale_temporaries(path: Path) -> None:
    """Delete what writers of `path` left when they were killed mid-write: `.NAME.PID.tmp`
    files (`write_atomic`) and `.NAME.PID.XXXX.tmp` folders (`temporary_folder`), for every
    PID that no longer runs."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        _remove_if_stale(tmp)


def remove_stale_in(folder: Path) -> None:
    """`remove_stale_temporaries` for every name at once: each `.*.tmp` in `folder` whose
    writer no longer runs (a cache folder shared by many names, such as the sample runs)."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            _remove_if_stale(tmp)


def _remove_if_stale(tmp: Path) -> None:
    # `.NAME.PID.tmp` or `.NAME.PID.XXXX.tmp`: the PID is the second or third part from the
    # end. Each candidate that is a number must be a dead process (a random XXXX that
    # happens to be digits only makes us keep a leftover, never delete a live write).
    parts = tmp.name.split(".")
    pids = [int(p) for p in parts[-3:-1] if p.isdigit()]
    if pids and not any(pid_is_running(pid) for pid in pids):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """`name` with glob's special characters ([, *, ?) matched literally."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in name)


def pid_is_running(pid: int) -> bool:
    """True while process `pid` runs on this machine: a temporary file or lock named after
    it is then still in use."""
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists and sends nothing
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _could_not_write(path: Path, what: str, error: OSError) -> CxrlearnError:
    kept = "; the previous file is intact" if path.exists() else ""
    reason = error.strerror or str(error).splitlines()[0]
    return CxrlearnError(f"could not write {what} ({reason}){kept}", path=path)
