"""The `cxrlearn` command: argument parsing, printing and exit codes, nothing else.

Each sub-command lives in its own module with two functions: `add_parser(subparsers)`,
which declares its arguments, and `run(args, console)`, which does the work by calling the
library and prints with rich. Expected faults (`CxrlearnError`) are printed as one red line
and exit with status 1, without a traceback; anything else is a bug and keeps its traceback.
Ctrl-C exits with status 130, the shell's convention.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from cxrlearn import __version__
from cxrlearn.errors import CxrlearnError

__all__ = ["main", "build_parser"]

# Sub-command modules, in the order `cxrlearn --help` lists them.
COMMANDS = ("demo", "train", "evaluate", "gradcam", "export", "predict", "app", "data")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cxrlearn",
        description="Chest X-ray classification, built to be learned. "
        "A teaching tool, not a diagnostic device.",
    )
    parser.add_argument("--version", action="version", version=f"cxrlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cxrlearn.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return int(args.func(args, console) or 0)
    except CxrlearnError as e:
        # escape: a path such as "scans[v2]" would otherwise be read as rich markup.
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
