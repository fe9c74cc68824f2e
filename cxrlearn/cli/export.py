"""`cxrlearn export --run runs/NAME`: write a run's best model as self-contained files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import FILE_FORMATS, export_lite, export_program, export_torchscript

__all__ = ["add_parser", "run"]

WRITERS = {"torchscript": export_torchscript, "lite": export_lite, "export": export_program}


def parse_formats(text: str) -> tuple[str, ...]:
    """`"torchscript,lite"` -> `("torchscript", "lite")`; unknown names are an argparse error."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FILE_FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(FILE_FORMATS)} (comma-separated)")
    return names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a run's best.pt as a self-contained TorchScript/mobile/.pt2 file",
        description="Export the best checkpoint of a run with its preprocessing, class names "
                    "and temperature inside. Each file is loaded back and checked against the "
                    "Python pipeline on sample X-rays before it is kept.")
    p.add_argument("--run", type=Path, required=True, help="run folder holding best.pt")
    p.add_argument("--format", type=parse_formats, default=("torchscript",), dest="formats",
                   help="comma-separated: torchscript (.pt), lite (.ptl, PyTorch Mobile), "
                        "export (.pt2, torch.export); default torchscript")
    p.add_argument("--out", type=Path, default=None,
                   help="output path; its suffix is set per format "
                        "(default RUN/model.pt, .ptl, .pt2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    best = args.run / "best.pt"
    if not best.is_file():
        raise CxrlearnError("no best.pt in the run folder; train first with "
                            "`cxrlearn train --out RUN`", path=args.run)
    load_checkpoint(best)  # fail early, once, with the checkpoint's own message
    base = args.out if args.out is not None else args.run / "model"
    failed = 0
    for name in args.formats:
        path = base.with_suffix(FILE_FORMATS[name])
        with console.status(f"exporting {name} to {escape(str(path))}"):
            try:
                result = WRITERS[name](best, path)
            except CxrlearnError as e:
                console.print(f"[bold red]{name} failed:[/] {escape(str(e))}",
                              highlight=False, soft_wrap=True)
                failed += 1
                continue
        size_mb = path.stat().st_size / 1e6
        console.print(f"wrote [bold]{escape(str(path))}[/] ({name}, {size_mb:.1f} MB); "
                      f"max |p - p_python| = {result.max_abs_diff:.1e} over "
                      f"{result.num_checks} checks", highlight=False, soft_wrap=True)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    return 1 if failed else 0
