"""`cxrlearn predict IMAGE... --model FILE`: classify X-ray files, print a table or JSON.

FILE is either an export (`cxrlearn export`: `.pt`, `.ptl`, `.pt2`) or a checkpoint
(`best.pt`); which one is found by looking inside, not at the name. With a checkpoint the
eager model runs, and `--gradcam DIR` also writes a heat-map overlay per image. A file that
cannot be read is reported and skipped; the exit status is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.data import load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import Preprocess, eager_input
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import overlay
from cxrlearn.predictor import Predictor, open_model
from cxrlearn.transforms import prepare

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify X-ray files (PNG, JPEG, DICOM) with an export or checkpoint",
        description="Print the predicted class and the probability of every class for each "
                    "image. A teaching tool, not a diagnostic device.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="PNG, JPEG or DICOM (.dcm, needs pydicom) files")
    p.add_argument("--model", type=Path, required=True,
                   help="model.pt/.ptl/.pt2 from `cxrlearn export`, or a checkpoint (best.pt)")
    p.add_argument("--gradcam", type=Path, default=None, metavar="DIR",
                   help="write a Grad-CAM overlay per image to DIR (needs a checkpoint)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _write_gradcam(cam: GradCAM, image: np.ndarray, preprocess: Preprocess, target: int,
                   out: Path) -> None:
    x = eager_input(image, preprocess)[None]  # (1, C, S, S)
    # The class the table reports (flip-averaged, if the model is); the map explains the
    # network's pass over the image as it is.
    result = cam(x, target)
    shown = prepare(image, preprocess.image_size, preprocess.low, preprocess.high)  # (1, S, S)
    Image.fromarray(overlay(shown[0].numpy(), result.cams[0])).save(out)


def run(args: argparse.Namespace, console: Console) -> int:
    predictor = open_model(args.model)
    gradcam_dir: Path | None = args.gradcam
    if gradcam_dir is not None and predictor.model is None:
        predictor.notes.append(f"Grad-CAM needs a checkpoint such as best.pt (it hooks a layer "
                               f"of the eager network); {args.model.name} is an exported "
                               "file, so no overlays were written")
        gradcam_dir = None
    if gradcam_dir is not None:
        gradcam_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    used_names: set[str] = set()
    cam = GradCAM(predictor.model) if gradcam_dir is not None else None
    with cam if cam is not None else nullcontext():
        for path in args.images:
            try:
                image = load_image(path)
                probs = predictor.probs(image).tolist()
            except CxrlearnError as e:
                results.append({"file": str(path), "error": e.message})
                continue
            best = int(np.argmax(probs))
            row = {"file": str(path), "prediction": predictor.class_names[best],
                   "probabilities": dict(zip(predictor.class_names, probs, strict=True))}
            if cam is not None and predictor.preprocess is not None:
                name = _unique(f"{path.stem}_gradcam.png", used_names)
                _write_gradcam(cam, image, predictor.preprocess, best, gradcam_dir / name)
                row["gradcam"] = str(gradcam_dir / name)
            results.append(row)

    if args.json:
        doc = {"model": str(args.model), "kind": predictor.kind,
               "class_names": list(predictor.class_names), "notes": predictor.notes,
               "results": results}
        console.out(json.dumps(doc, indent=2), highlight=False)
    else:
        _print_table(console, args.model, predictor, results)
    return 1 if any("error" in r for r in results) else 0


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name` with a counter, so two images called x.png do not overwrite."""
    stem, suffix = name.rsplit(".", 1)
    candidate, i = name, 1
    while candidate in used:
        candidate, i = f"{stem}-{i}.{suffix}", i + 1
    used.add(candidate)
    return candidate


def _print_table(console: Console, model: Path, predictor: Predictor, results: list[dict]) -> None:
    table = Table(title=f"Predictions of {escape(model.name)} ({predictor.kind})",
                  caption="A teaching tool, not a diagnostic device.")
    table.add_column("file", overflow="fold")
    table.add_column("prediction")
    for name in predictor.class_names:
        table.add_column(escape(name), justify="right")
    for r in results:
        if "error" in r:
            continue
        cells = [f"[bold]{p:.3f}[/]" if name == r["prediction"] else f"{p:.3f}"
                 for name, p in r["probabilities"].items()]
        table.add_row(escape(r["file"]), escape(r["prediction"]), *cells)
    console.print(table)
    for note in predictor.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for r in results:
        if "gradcam" in r:
            console.print(f"Grad-CAM: {escape(r['gradcam'])}", highlight=False, soft_wrap=True)
    for r in results:
        if "error" in r:
            console.print(f"[red]bad file:[/] {escape(r['file'])}: {escape(r['error'])}",
                          highlight=False, soft_wrap=True)
