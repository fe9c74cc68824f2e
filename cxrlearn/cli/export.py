"""`cxrlearn export --model runs/NAME`: write a run's best model as self-contained files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "FORMATS", "add_parser", "parse_formats"]

HELP = "write a run's best.pt as a self-contained TorchScript/mobile/.pt2 file"
# The export formats and their suffixes (cxrlearn.export.FILE_FORMATS, without torch).
FORMATS = {"torchscript": ".pt", "lite": ".ptl", "export": ".pt2"}


def parse_formats(text: str) -> tuple[str, ...]:
    """`"torchscript,lite"` -> `("torchscript", "lite")`; unknown names are an argparse error."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(FORMATS)} (comma-separated)")
    return names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help=HELP,
        description="Export the best checkpoint of a run with its preprocessing, class names "
                    "and temperature inside. Each file is loaded back and checked against the "
                    "Python pipeline on sample X-rays before it is kept.")
    p.add_argument("--model", type=Path, metavar="RUN",
                   help="the run folder, or a checkpoint (best.pt)")
    p.add_argument("--run", type=Path, dest="model", help=argparse.SUPPRESS)  # cxrlearn 0.1
    p.add_argument("--format", type=parse_formats, default=("torchscript",), dest="formats",
                   help="comma-separated: torchscript (.pt), lite (.ptl, PyTorch Mobile), "
                        "export (.pt2, torch.export) (default torchscript)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="output path; its suffix is set per format "
                        "(default RUN/model.pt, .ptl, .pt2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.trained import open_model

    if args.model is None:
        raise CxrlearnError("name the run to export: cxrlearn export --model runs/NAME")
    model = open_model(args.model)  # fails early, once, with the file's own message
    model.require_network("export")  # before any file is written
    base = args.out if args.out is not None else model.folder / "model"
    if base.is_dir():
        raise CxrlearnError("--out is a folder; give a file path such as DIR/model.pt",
                            path=base)
    failed = 0
    for name in args.formats:
        path = base.with_suffix(FORMATS[name])
        with console.status(f"exporting {name} to {escape(str(path))}"):
            try:
                result = model.export(path, name)
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
