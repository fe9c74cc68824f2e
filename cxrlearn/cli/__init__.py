"""The `cxrlearn` command: argument parsing, printing and exit codes, nothing else.

Each sub-command lives in its own module with a one-line `HELP`, `add_parser(subparsers)`,
which declares its arguments, and `run(args, console)`, which calls the library and prints
with rich. Heavy imports (torch, matplotlib) happen inside `run`, and only the command being
run has its arguments built, so `cxrlearn --help` and `cxrlearn data check` start in a
fraction of a second.

Every command names a trained model the same way, `--model PATH`: a run folder, a
checkpoint or an exported file (`cxrlearn.trained.open_model`).

Expected faults (`CxrlearnError`, a full disk, a file that cannot be written) are printed
as one red line and exit with status 1, without a traceback; anything else is a bug and
keeps its traceback. Ctrl-C exits with status 130 and SIGTERM (`kill`, `docker stop`, a
cluster's scheduler) with 143, the shell's conventions; in training both abandon the epoch in
progress and keep the last finished one in `last.pt`, to resume from.

Printing never fails on the terminal's encoding: on a latin-1 or ASCII terminal a character
it cannot show comes out as `?` (and rich draws tables with ASCII lines).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cxrlearn import __version__
from cxrlearn.errors import CxrlearnError, Terminated, TrainingInterrupted

__all__ = ["COMMANDS", "main", "build_parser", "progress_bar", "check_outputs", "positive_int",
           "nonnegative_int", "positive_float", "fraction", "port"]

# Sub-command modules, in the order `cxrlearn --help` lists them.
COMMANDS = ("demo", "train", "evaluate", "gradcam", "export", "predict", "app", "data", "grade")

# Operating-system faults a user can fix: a full disk, a read-only or forbidden folder.
USER_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
               errno.ELOOP, errno.ENOTEMPTY, errno.EFBIG}


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser; `commands` get their full arguments, the others a stub.

    The stubs keep `cxrlearn --help` complete without importing what the other commands
    need (some defaults come from torch-based settings such as `TrainConfig`).
    """
    parser = argparse.ArgumentParser(
        prog="cxrlearn",
        description="Chest X-ray classification, built to be learned. "
        "A teaching tool, not a diagnostic device.",
    )
    parser.add_argument("--version", action="version", version=f"cxrlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"cxrlearn.cli.{name}")
        if name in commands:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    console = Console(file=_Printable(sys.stdout))
    err = Console(file=_Printable(sys.stderr), stderr=True)
    try:
        with _sigterm_raises():
            return int(args.func(args, console) or 0)
    except CxrlearnError as e:
        if isinstance(e, TrainingInterrupted):  # Ctrl-C or SIGTERM in training, what was kept
            err.print(f"[yellow]interrupted:[/] {escape(e.message)}", highlight=False,
                      soft_wrap=True)
            return 128 + int(e.signal_number)
        # escape: a path such as "scans[v2]" would otherwise be read as rich markup.
        err.print(f"[bold red]error:[/] {escape(_one_line(str(e)))}", highlight=False,
                  soft_wrap=True)
        return 1
    except OSError as e:
        if e.errno not in USER_FAULTS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(_one_line(where + (e.strerror or str(e))))}",
                  highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            err.print("[yellow]terminated[/] (SIGTERM)")
            return 128 + signal.SIGTERM
        err.print("[yellow]interrupted[/]")
        return 128 + signal.SIGINT


def _one_line(text: str) -> str:
    """The message on one line, even when a file name or a quoted text in it holds breaks."""
    return " ".join(text.splitlines())


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises `Terminated` (a KeyboardInterrupt), so that a
    `kill` stops training as Ctrl-C does: the epoch in progress is abandoned, `last.pt` keeps
    the last finished one, and the exit status is 143. Without this handler SIGTERM would
    end the process at once, wherever it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class _Printable:
    """A text stream that writes any file name on any terminal.

    Bytes of a file name that are not UTF-8 (they reach Python as lone surrogates) come out
    as `\\xe9` escapes, and characters the terminal's encoding lacks (a latin-1 or ASCII
    terminal, `LANG=C`) as `?`, instead of a UnicodeEncodeError in the middle of a table.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        raw = text.encode("utf-8", "surrogateescape")  # the file name's own bytes back
        text = raw.decode("utf-8", "backslashreplace")
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        try:
            text = text.encode(encoding, "replace").decode(encoding)
        except LookupError:  # an encoding Python does not know: keep ASCII only
            text = text.encode("ascii", "replace").decode("ascii")
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding, ...
        return getattr(self._stream, name)


def progress_bar(console: Console, *extra_columns: TextColumn) -> Progress:
    """A rich progress bar: description, bar, n/total, elapsed, ETA, then `extra_columns`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None if console.width >= 100 else 20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=False,
    )


def check_outputs(out: Path, names: list[str] | tuple[str, ...], overwrite: bool) -> None:
    """Refuse to replace a user's files: the outputs that exist need `--overwrite`.

    Raises:
        CxrlearnError: `out` is a file, or holds one of `names` and `overwrite` is False.
    """
    if out.exists() and not out.is_dir():
        raise CxrlearnError("exists and is not a folder", path=out)
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise CxrlearnError(f"already holds {', '.join(taken[:3])}"
                            f"{', ...' if len(taken) > 3 else ''}; choose another folder, or "
                            "replace them with --overwrite", path=out)


# Argument types: a bad value is argparse's one-line error (exit 2), before any work.

def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = float(_number(float, text))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A float strictly between 0 and 1."""
    value = float(_number(float, text))
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = int(_number(int, text))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
