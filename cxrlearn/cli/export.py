"""`cxrlearn export --model runs/NAME`: write a trained model as self-contained files.

Each format has its suffix (`FORMATS`), and the suffix of the file written is always the
format's: `--out DIR/thesis` writes `DIR/thesis.pt`, `--out DIR/thesis.pt` the same file,
and with several formats each gets its own (`DIR/thesis.pt`, `DIR/thesis.ptl`); a suffix
that belongs to no format is refused. No file is replaced without `--overwrite`, and the
model being read never is, even with it.

`--device` is where the network runs while exporting: the Python pipeline that each file is
checked against (`cxrlearn.export.eager_probs`, in full float32 on a GPU too). The file
itself holds a float32 CPU copy of the network and is loaded back on the CPU for the check,
as an app loads it; int8 calibration runs that float file in onnxruntime, on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from cxrlearn.cli import (
    add_device_argument,
    add_model_argument,
    add_overwrite_argument,
    check_new_file,
)
from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # annotations only: the CLI imports torch when a command runs, not before
    import numpy as np

    from cxrlearn.export import ExportResult
    from cxrlearn.trained import TrainedModel

__all__ = ["HELP", "FORMATS", "add_parser", "parse_formats", "output_paths"]

HELP = "Write a trained model as a self-contained TorchScript, mobile or .pt2 file."
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
        description="Export a checkpoint with its preprocessing, class names and "
                    "temperature inside. Each file is loaded back and checked against the "
                    "Python pipeline, run on --device, on sample X-rays before it is kept.")
    add_model_argument(p, extra="It must be a checkpoint or its run folder: an exported "
                                "file holds no network to export again.")
    p.add_argument("--format", type=parse_formats, default=("torchscript",), dest="formats",
                   help="Comma-separated formats: torchscript (.pt), lite (.ptl, PyTorch "
                        "Mobile), export (.pt2, torch.export), onnx (.onnx, any ONNX runtime) "
                        "and web (a folder: the offline phone app). Default: torchscript.")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="For onnx and web: int8 static quantization, calibrated on the run's "
                        "training images, for a file about 4 times smaller.")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="The file to write. Its suffix is the format's: a path without one "
                        "gets it (DIR/thesis writes DIR/thesis.pt), and with several formats "
                        "each file gets its own. Default: model.pt (and .ptl, .pt2) beside "
                        "the checkpoint.")
    add_overwrite_argument(p, "files")
    add_device_argument(p)
    p.set_defaults(func=run)


def output_paths(out: Path, formats: tuple[str, ...]) -> list[Path]:
    """The file each format writes for `--out` (see the module docstring).

    Raises:
        CxrlearnError: `out` has a suffix that is no format's, or (with one format)
            another format's.
    """
    suffixes = set(FORMATS.values()) - {""}
    if out.suffix and out.suffix not in suffixes:
        raise CxrlearnError(f"{out.suffix} is not the suffix of an export format; name the "
                            f"file with {', '.join(FORMATS[f] for f in formats)} or without a "
                            "suffix", path=out)
    if len(formats) == 1 and out.suffix and out.suffix != FORMATS[formats[0]]:
        raise CxrlearnError(f"a {formats[0]} file is written as {FORMATS[formats[0]]}; name "
                            f"it {out.with_suffix(FORMATS[formats[0]]).name}", path=out)
    if formats == ("web",):
        return [out]  # the app's folder is --out itself
    stem = out.with_suffix("") if out.suffix in suffixes else out
    return [stem.with_name(stem.name + (FORMATS[name] or "-web")) for name in formats]


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.device import select_device
    from cxrlearn.trained import open_model

    device = select_device(args.device)  # a device that is not there: before any work
    model = open_model(args.model)  # fails early, once, with the file's own message
    model.require_network("export").to(device)  # before any file is written
    web_only = args.formats == ("web",)
    out = args.out if args.out is not None else model.folder / ("web" if web_only else "model")
    if out.is_dir() and not web_only:
        raise CxrlearnError("--out is a folder; give a file path such as DIR/model.pt",
                            path=out)
    paths = output_paths(out, args.formats)
    for name, path in zip(args.formats, paths, strict=True):  # refusals before any writing
        if name != "web":  # the app's folder: export_web refuses one that is not empty
            check_new_file(path, args.overwrite, reading=[model.path])
    failed = 0
    for name, path in zip(args.formats, paths, strict=True):
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
    """One format through `TrainedModel.export`; int8 (onnx and web only) is calibrated on
    the run's training images."""
    if quantize is None:
        return model.export(path, name)
    if name not in ("onnx", "web"):
        raise CxrlearnError(f"--quantize applies to onnx and web, not {name}")
    return model.export(path, name, quantize=quantize,
                        calibration_images=_calibration_images(model))


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
