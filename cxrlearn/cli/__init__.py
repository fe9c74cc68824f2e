"""The `cxrlearn` command: argument parsing, printing and exit codes, nothing else.

Each sub-command lives in its own module with a one-line `HELP`, `add_parser(subparsers)`,
which declares its arguments, and `run(args, console)`, which calls the library and prints
with rich. Heavy imports (torch, matplotlib) happen inside `run`, and only the command being
run has its arguments built, so `cxrlearn --help` and `cxrlearn data check` start in a
fraction of a second.

One vocabulary, defined here once: every command that uses a trained model takes
`--model PATH` (`add_model_argument`: a run folder, a checkpoint or an exported file, opened
with `cxrlearn.trained.open_model`); every command that runs the network takes `--device`
(`add_device_argument`); every command that writes refuses to replace an existing file
unless it is given `--overwrite` (`add_overwrite_argument`, `check_outputs`,
`check_new_file`), and says which file it would replace. Old spellings (`--run`,
`--checkpoint`) are a one-line error that names the new one; an unknown option gets the
nearest known one ("did you mean --epochs?"); a bare `cxrlearn` lists the commands.

The command starts with OpenMP's threads waiting passively (`OMP_WAIT_POLICY=PASSIVE`,
unless the user chose a policy): by default they spin while they wait, which on a laptop
with a browser beside the training makes every step several times slower
(benchmarks/threads.py measures it; benchmarks/README.md records the numbers).

Expected faults (`CxrlearnError`, a full disk, a file that cannot be written) are printed
as one red line and exit with status 1, without a traceback; anything else is a bug and
keeps its traceback. Ctrl-C exits with status 130 and SIGTERM (`kill`, `docker stop`, a
cluster's scheduler) with 143, the shell's conventions; in training both let the step in
progress finish and save the epoch so far in `interrupted.pt` (the last finished epoch stays
in `last.pt`), and `cxrlearn train --resume` goes on from there exactly.

Printing never fails on the terminal's encoding: on a latin-1 or ASCII terminal a character
it cannot show comes out as `?` (and rich draws tables with ASCII lines).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
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

__all__ = ["COMMANDS", "main", "build_parser", "progress_bar", "check_outputs", "check_new_file",
           "add_model_argument", "add_device_argument", "add_overwrite_argument",
           "suggest_option", "longest_word", "class_headers", "positive_int",
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
        epilog="Run cxrlearn COMMAND --help for the options of one command.")
    parser.add_argument("--version", action="version", version=f"cxrlearn {__version__}",
                        help="Print the version and exit.")
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
    # Before torch is imported (the commands import it when they run): OpenMP reads the
    # policy once, when it starts. A user's own choice is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    if not argv:  # a bare `cxrlearn`: what it can do, not a usage error
        parser.print_help()
        return 0
    _refuse_typos(parser, argv)
    args = parser.parse_args(argv)
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
    `kill` stops training as Ctrl-C does (`cxrlearn.training`: the step in progress finishes,
    the epoch so far is saved in `interrupted.pt`), and the exit status is 143. Without this
    handler SIGTERM would end the process at once, wherever it was."""
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


def _command_parser(parser: argparse.ArgumentParser,
                    argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of the (sub-)command `argv` names: `train`'s, `data check`'s, ..."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        words = [a for a in argv if not a.startswith("-")]
        chosen = next((subs[0].choices[w] for w in words if subs and w in subs[0].choices),
                      None)
        if chosen is None:
            return parser
        parser = chosen


def suggest_option(parser: argparse.ArgumentParser, given: str) -> str | None:
    """The option of `parser` nearest to a mistyped one (`--epocs` -> `--epochs`), or None.

    Example:
        >>> p = argparse.ArgumentParser(); _ = p.add_argument("--image-size")
        >>> suggest_option(p, "--image_size")
        '--image-size'
    """
    known = [o for a in parser._actions if a.help != argparse.SUPPRESS
             for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _refuse_typos(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit 2 with one line for an option the command does not know, naming the nearest.

    Checked before argparse parses: argparse would report a required option missing first,
    or the top-level usage, and never suggest. A prefix of a known option (`--epoch`) is
    argparse's to accept.
    """
    command = _command_parser(parser, argv)
    options = [o for a in command._actions for o in a.option_strings]
    for arg in argv:
        if arg == "--":
            return
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or any(o.startswith(name) for o in options):
            continue
        guess = suggest_option(command, name)
        hint = f"; did you mean {guess}?" if guess else ""
        command.exit(2, f"{command.prog}: error: unknown option {name}{hint} "
                        f"({command.prog} --help lists them)\n")


# The one vocabulary of the commands: a model, a device, what may be replaced.

MODEL_HELP = ("The trained model: a run folder (its best.pt), a checkpoint (best.pt or "
              "last.pt), or a file written by cxrlearn export (.pt, .ptl, .pt2).")
DEVICE_HELP = ("Where the network runs: auto (CUDA, else Apple MPS, else the CPU), cpu, "
               "cuda, cuda:N or mps. Default: auto.")


class _Renamed(argparse.Action):
    """An option of an older cxrlearn: one line that names what replaced it, exit 2."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str = "",
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.use = use

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.exit(2, f"{parser.prog}: error: {option_string} is gone; {self.use}\n")


def add_model_argument(p: argparse.ArgumentParser, required: bool = True,
                       extra: str = "") -> None:
    """`--model PATH`, the same in every command, and the old spellings' one-line error.

    Args:
        p: The command's parser.
        required: Whether the command needs it (`cxrlearn app` explains itself without it).
        extra: A sentence added to the help: what this command does with the model.
    """
    p.add_argument("--model", type=Path, required=required, metavar="PATH",
                   help=f"{MODEL_HELP} {extra}".strip())
    p.add_argument("--run", action=_Renamed, dest="_renamed_run",
                   use="use --model PATH (a run folder, a checkpoint or an exported file)")
    p.add_argument("--checkpoint", action=_Renamed, dest="_renamed_checkpoint",
                   use="use --model PATH with the file itself, e.g. --model runs/NAME/last.pt")


def add_device_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--device`, the same in every command that runs the network."""
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)


def add_overwrite_argument(p: argparse.ArgumentParser, what: str) -> None:
    """`--overwrite`: `what` (e.g. "report files") may replace files of the same names."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"Replace {what} that already exist. Without it, nothing is "
                        "replaced and the command names what it would replace.")


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


def check_outputs(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace a user's files: the outputs that exist need `--overwrite`.

    Raises:
        CxrlearnError: `out` is a file, or holds one of `names` and `overwrite` is False.
    """
    if out.exists() and not out.is_dir():
        raise CxrlearnError("exists and is not a folder", path=out)
    taken = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    if taken and not overwrite:
        raise CxrlearnError(f"already holds {', '.join(taken[:3])}"
                            f"{', ...' if len(taken) > 3 else ''}; choose another folder, or "
                            "replace them with --overwrite", path=out)


def check_new_file(path: Path, overwrite: bool, reading: Sequence[Path] = ()) -> None:
    """Refuse to write `path` over an existing file without `--overwrite`, and ever over a
    file the command is reading (`reading`: the model itself), even with it.

    Raises:
        CxrlearnError: Which file, and why it stays.
    """
    if any(_same_file(path, r) for r in reading):
        raise CxrlearnError("is the model being read; it is never replaced, even with "
                            "--overwrite: choose another output path", path=path)
    if path.is_dir():
        raise CxrlearnError("is a folder; give a file path", path=path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CxrlearnError("already exists; choose another path, or replace it with "
                            "--overwrite", path=path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def longest_word(texts: Sequence[str]) -> int:
    """The length of the longest word in `texts`: the narrowest column that wraps them
    between words and never cuts one (rich cuts a word that is wider than its column)."""
    return max((len(w) for t in texts for w in t.split()), default=1)


def class_headers(names: Sequence[str], room: int) -> tuple[list[str], list[int], str | None]:
    """Headers and widths for one column per class in `room` columns of text, and a legend.

    Each name is a header when every column fits at the width of its longest word (headers
    wrap between words); otherwise the columns are numbered `1`, `2`, ... and the legend
    (`1 = Healthy, 2 = Pneumothorax with spaces`) says which is which. Either way no class
    name is cut.

    Returns:
        The headers, the width of each column's text, and the legend (None when the
        headers are the names).
    """
    widths = [max(5, longest_word([n])) for n in names]  # 5: "0.123"
    if sum(w + 3 for w in widths) <= room:  # + 3: padding and border
        return list(names), widths, None
    keys = [str(i + 1) for i in range(len(names))]
    return keys, [5] * len(names), ", ".join(f"{k} = {n}" for k, n in zip(keys, names,
                                                                             strict=True))


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
