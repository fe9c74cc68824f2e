"""`cxrlearn gradcam IMAGE... --model runs/NAME`: where did the network look?

For each X-ray, `TrainedModel.explain` prepares it exactly as training and evaluation did
(the checkpoint's preprocessing), predicts (with the checkpoint's temperature), and computes
the Grad-CAM map of the predicted class (or of `--target`); `write_overlays` saves a
three-panel PNG: the image the network saw, the map, and the overlay (`heatmap.overlay`, the
same drawing the app shows). `cxrlearn predict --gradcam` writes the same files.

A map is a question to ask of the model, not an answer: heat on a shoulder, a text marker
or the edge of the film means the model may have learned a shortcut. See
`cxrlearn.gradcam` and lessons/05_grad_cam_with_hooks.ipynb.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.cli import (
    add_device_argument,
    add_model_argument,
    add_overwrite_argument,
    check_outputs,
    progress_bar,
)
from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # a name for the annotations only: `cxrlearn --help` imports no torch
    from torch import Tensor

__all__ = ["HELP", "add_parser", "write_overlays", "overlay_name"]

HELP = "Write Grad-CAM overlays: where did the model look?"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help=HELP, description=" ".join(
        __doc__.split("\n\n")[1].split()))
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="PNG, JPEG or DICOM X-rays.")
    add_model_argument(p, extra="It must be a checkpoint or its run folder: an exported "
                                "file has no layer to hook.")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="Explain this class for every image. Default: the predicted class.")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="The folder for the overlays. Default: gradcam/ beside the model.")
    add_overwrite_argument(p, "overlays")
    add_device_argument(p)
    p.set_defaults(func=run)


def overlay_name(image: Path, taken: set[str]) -> str:
    """`<stem>_gradcam.png`, numbered when two inputs share a name (COVID/1.png, Normal/1.png)."""
    stem = os.fsencode(image.stem).decode("utf-8", "backslashreplace")  # any bytes, a valid name
    candidate, n = f"{stem}_gradcam.png", 2
    while candidate in taken:
        candidate, n = f"{stem}_gradcam-{n}.png", n + 1
    taken.add(candidate)
    return candidate


def write_overlays(
    model: Any,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    target: str | None = None,
    on_image: Callable[[], None] | None = None,
    overwrite: bool = True,
    prepared: Sequence[Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Write one Grad-CAM figure per image; a bad image is reported, not raised.

    Args:
        model: A `cxrlearn.trained.TrainedModel` opened from a checkpoint.
        paths: X-ray files.
        out_dir: Folder for the PNGs; created if needed.
        target: Class name to explain for every image; None explains the predicted class.
        on_image: Called after each image (for a progress bar).
        overwrite: Replace existing files; otherwise an existing file is an error.
        prepared: The images of `paths` already through `model.prepare` (`cxrlearn
            predict` has them); None reads and prepares each file here.

    Returns:
        One dict per input, in order: `path`, then either `error` (the message) or
        `predicted`, `probability` (of the predicted class, temperature-scaled),
        `target`, `target_probability` and `output` (the PNG written).

    Raises:
        CxrlearnError: `target` is not one of the model's classes, the model is an export,
            or an overlay exists and `overwrite` is False.
    """
    from cxrlearn.atomic import write_atomic
    from cxrlearn.data import load_image
    from cxrlearn.heatmap import gradcam_figure

    names = list(model.class_names)
    target_index = _target_index(model, target)
    out_dir = Path(out_dir)
    taken: set[str] = set()
    outputs = [out_dir / overlay_name(Path(p), taken) for p in paths]
    check_outputs(out_dir, [o.name for o in outputs], overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    if prepared is not None and len(prepared) != len(outputs):
        raise ValueError(f"{len(prepared)} prepared images for {len(outputs)} paths")
    for i, (path, output) in enumerate(zip(map(Path, paths), outputs, strict=True)):
        try:
            # (1, S, S) uint8: the image stretched and resized, as the network sees it
            seen = model.prepare(load_image(path)) if prepared is None else prepared[i]
        except CxrlearnError as e:
            results.append({"path": path, "error": e.message})
        else:
            e = model.explain_prepared(seen, target_index)
            shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
            title = f"{shown}: {names[e.predicted]} (p = {float(e.probs[e.predicted]):.2f})"
            if e.target != e.predicted:
                title += f", map for {names[e.target]}"
            figure = gradcam_figure(e.seen, e.cam, title)  # the image the network saw
            write_atomic(output, lambda f, fig=figure: fig.savefig(f, format="png"))
            results.append({
                "path": path, "predicted": names[e.predicted],
                "probability": float(e.probs[e.predicted]), "target": names[e.target],
                "target_probability": float(e.probs[e.target]), "output": output,
            })
        if on_image is not None:
            on_image()
    return results


def _target_index(model: Any, target: str | None) -> int | None:
    """The index of the class `target` (None: explain the predicted class).

    Raises:
        CxrlearnError: The model is an exported file, or does not know `target`.
    """
    model.require_network("Grad-CAM")
    names = list(model.class_names)
    if target is not None and target not in names:
        raise CxrlearnError(f"unknown class {target!r} for --target; this model knows "
                            + ", ".join(repr(name) for name in names))
    return None if target is None else names.index(target)


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.device import select_device
    from cxrlearn.trained import open_model

    model = open_model(args.model)
    _target_index(model, args.target)  # its errors before the progress bar starts
    model.require_network("Grad-CAM").to(select_device(args.device))
    out_dir = args.out if args.out is not None else model.folder / "gradcam"
    taken: set[str] = set()  # refused before the progress bar starts, too
    check_outputs(out_dir, [overlay_name(p, taken) for p in args.images], args.overwrite)
    with progress_bar(console) as progress:
        task = progress.add_task("Grad-CAM", total=len(args.images))
        results = write_overlays(model, args.images, out_dir, args.target,
                                 on_image=lambda: progress.advance(task),
                                 overwrite=args.overwrite)

    caption = ("probabilities without calibration (no temperature in the checkpoint)"
               if model.temperature == 1.0 else
               f"probabilities calibrated with the checkpoint's temperature "
               f"T = {model.temperature:.2f}")
    table = Table(title=f"Grad-CAM, {escape(str(model.path))}", caption=caption)
    for col in ("file", "predicted", "probability", "target", "output"):
        table.add_column(col, overflow="fold", justify="right" if col == "probability" else "left")
    good = [r for r in results if "error" not in r]
    for r in good:
        # escape: rich would read "scan[v2].png" as markup and drop "[v2]".
        table.add_row(escape(r["path"].name), r["predicted"], f"{r['probability']:.3f}",
                      r["target"], escape(r["output"].name))
    console.print(table)
    for r in results:
        if "error" in r:
            console.print(f"[red]bad file:[/] {escape(str(r['path']))}: {escape(r['error'])}",
                          highlight=False, soft_wrap=True)
    console.print(f"wrote {len(good)} overlays to {escape(str(out_dir))}",
                  highlight=False, soft_wrap=True)
    console.print("[dim]A map shows what raised the score, not why; heat outside the lungs "
                  "is a warning sign. A teaching tool, not a diagnostic device.[/]")
    return 1 if len(good) < len(results) else 0
