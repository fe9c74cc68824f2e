"""`cxrlearn export --model runs/NAME`: write a run's best model as self-contained files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # annotations only: the CLI imports torch when a command runs, not before
    import numpy as np

    from cxrlearn.export import ExportResult
    from cxrlearn.trained import TrainedModel

__all__ = ["HELP", "FORMATS", "add_parser", "parse_formats"]

HELP = "write a run's best.pt as a self-contained TorchScript/mobile/.pt2 file"
# The export formats and their suffixes (cxrlearn.export.FILE_FORMATS, without torch).
FORMATS = {"torchscript": ".pt", "lite": ".ptl", "export": ".pt2",
           "onnx": ".onnx",  # cxrlearn.export.onnx: any ONNX runtime, a browser too
           "web": ""}  # cxrlearn.export.web: a folder, the offline phone app


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
                        "export (.pt2, torch.export), onnx (.onnx), web (a folder: the "
                        "offline phone app) (default torchscript)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="onnx and web: int8 static quantization, calibrated on the run's "
                        "training images (a file about 4 times smaller)")
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
    if base.is_dir() and args.formats != ("web",):
        raise CxrlearnError("--out is a folder; give a file path such as DIR/model.pt",
                            path=base)
    failed = 0
    for name in args.formats:
        path = base.with_suffix(FORMATS[name])
        if name == "web":  # a folder: --out itself, or RUN/web
            path = args.out if args.out is not None else model.folder / "web"
        with console.status(f"exporting {name} to {escape(str(path))}"):
            try:
                result = _export(model, path, name, args.quantize)
            except CxrlearnError as e:
                console.print(f"[bold red]{name} failed:[/] {escape(str(e))}",
                              highlight=False, soft_wrap=True)
                failed += 1
                continue
        size_mb = _size(path) / 1e6
        console.print(f"wrote [bold]{escape(str(path))}[/] ({name}, {size_mb:.1f} MB); "
                      f"max |p - p_python| = {result.max_abs_diff:.1e} over "
                      f"{result.num_checks} checks", highlight=False, soft_wrap=True)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    return 1 if failed else 0


def _export(model: TrainedModel, path: Path, name: str, quantize: str | None) -> ExportResult:
    """One format: the TorchScript family through `TrainedModel.export`, ONNX and the web
    app through their writers, with the network and settings the model holds."""
    if name not in ("onnx", "web"):
        if quantize:
            raise CxrlearnError(f"--quantize applies to onnx and web, not {name}")
        return model.export(path, name)
    from cxrlearn.export.onnx import export_onnx
    from cxrlearn.export.web import export_web

    options = dict(class_names=model.class_names, preprocess=model.preprocess,
                   temperature=model.temperature, quantize=quantize,
                   calibration_images=_calibration_images(model) if quantize else ())
    network = model.require_network("export")
    if name == "onnx":
        return export_onnx(network, path, **options)
    return export_web(network, path, scores=model.scores, **options)


def _calibration_images(model: TrainedModel, limit: int = 64) -> list[np.ndarray]:
    """The first `limit` training X-rays of the run's split: what int8 is calibrated on."""
    from cxrlearn.data import load_image

    rows = [r for r in model.split if r.split == "train"][:limit]
    if not rows:
        raise CxrlearnError("int8 needs the run's training images; the split has none",
                            path=model.path)
    return [load_image(r.path) for r in rows]


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (the web app)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
