"""`cxrlearn predict IMAGE... --model PATH`: classify X-ray files, print a table or JSON.

PATH is whatever `cxrlearn.trained.open_model` opens: a run folder, a checkpoint (`best.pt`)
or an exported file (`.pt`, `.ptl`, `.pt2`, read as data, never run). With a checkpoint,
`--gradcam DIR` also writes the Grad-CAM figure of each image (`cxrlearn gradcam`'s), and
replaces none that exists without `--overwrite`. A folder stands for the images in it (and
in its sub-folders). A file that cannot be read is reported and skipped; the exit status
is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.cli import (
    add_device_argument,
    add_model_argument,
    add_overwrite_argument,
    check_outputs,
    class_headers,
    longest_word,
)
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser", "expand_images", "spaces_hint", "temperature_note"]

HELP = "Classify X-ray files (PNG, JPEG, DICOM) with a trained or exported model."
DICOM_SUFFIXES = (".dcm", ".dicom")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help=HELP,
        description="Print the predicted class and the probability of every class for each "
                    "image. A teaching tool, not a diagnostic device.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="PNG, JPEG or DICOM (.dcm, needs pydicom) files, or folders of them.")
    add_model_argument(p)
    p.add_argument("--gradcam", type=Path, default=None, metavar="DIR",
                   help="Also write a Grad-CAM figure per image to DIR (needs a checkpoint).")
    add_overwrite_argument(p, "Grad-CAM figures")
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.set_defaults(func=run)


def expand_images(paths: list[Path]) -> list[Path]:
    """`paths` with each folder replaced by the images in it and its sub-folders, sorted.

    Files are kept as given, readable or not: a bad one is reported in its row. A folder
    without images is kept too, and reported as such.
    """
    from cxrlearn.data.images import is_image_file

    expanded: list[Path] = []
    for path in paths:
        found = sorted(p for p in path.rglob("*") if p.is_file() and (
            is_image_file(p) or p.suffix.lower() in DICOM_SUFFIXES)) if path.is_dir() else []
        expanded += found or [path]
    return expanded


def spaces_hint(paths: list[Path]) -> str | None:
    """A note when missing arguments, joined by spaces, name a file or folder that exists:
    a path with spaces that was not quoted, split by the shell into several words."""
    words = [str(p) for p in paths]
    for i in range(len(words)):
        for j in range(i + 2, len(words) + 1):
            joined = " ".join(words[i:j])
            if Path(joined).exists() and not any(Path(w).exists() for w in words[i:j]):
                return (f"{' '.join(repr(w) for w in words[i:j])} look like one path with "
                        f"spaces, split by the shell: quote the path, as in \"{joined}\"")
    return None


def temperature_note(model: Any) -> str | None:
    """A note when a checkpoint carries no calibrated temperature (`last.pt`): its
    probabilities are the raw softmax, more confident than the calibrated ones."""
    if model.kind != "checkpoint" or "temperature" in (model.checkpoint or {}):
        return None
    best = model.folder / "best.pt"
    use = (f"use {best} (or the run folder) for calibrated probabilities"
           if best.is_file() and model.path.name != "best.pt" else
           "train with cxrlearn train, which fits one on the validation split")
    return (f"{model.path.name} carries no calibrated temperature: its probabilities are "
            f"the uncalibrated softmax, often far more confident than they should be; {use}")


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.cli.gradcam import overlay_name, write_overlays
    from cxrlearn.data import load_image
    from cxrlearn.device import select_device
    from cxrlearn.trained import open_model

    model = open_model(args.model)
    device = select_device(args.device)
    if model.network is not None:
        model.network.to(device)
    notes = [*model.notes, *filter(None, [temperature_note(model)])]
    if model.network is None and device.type != "cpu":
        notes.append(f"{model.path.name} is an exported file: it runs on the CPU")
    images = expand_images(args.images)
    hint = spaces_hint(args.images)
    if hint:
        notes.append(hint)
    no_gradcam = None if args.gradcam is None else model.missing_network("Grad-CAM")
    overlays = args.gradcam is not None and no_gradcam is None
    if overlays:  # refused before any work, naming the figures it would replace
        taken: set[str] = set()
        check_outputs(args.gradcam, [overlay_name(p, taken) for p in images], args.overwrite)
    results: list[dict[str, Any]] = []
    readable: list[Path] = []
    prepared: list[Any] = []  # with overlays: each image as the network sees it, S x S
    for path in images:
        if path.is_dir():
            results.append({"file": str(path), "error": "a folder with no PNG, JPEG or DICOM "
                                                        "image in it"})
            continue
        try:
            image = load_image(path)
        except CxrlearnError as e:
            results.append({"file": str(path), "error": e.message})
            continue
        if overlays:  # decoded and stretched once, for the probabilities and the overlay
            prepared.append(model.prepare(image))
            probs = model.probs_prepared(prepared[-1:])[0].tolist()
        else:
            probs = model.probs([image])[0].tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        results.append({"file": str(path), "prediction": model.class_names[best],
                        "probabilities": dict(zip(model.class_names, probs, strict=True))})
        readable.append(path)
    if args.gradcam is not None:
        if no_gradcam is not None:
            notes.append(f"{no_gradcam}; no overlays were written")
        else:
            written = {str(r["path"]): str(r["output"])
                       for r in write_overlays(model, readable, args.gradcam,
                                               overwrite=args.overwrite, prepared=prepared)
                       if "output" in r}
            for r in results:
                if r["file"] in written:
                    r["gradcam"] = written[r["file"]]

    if args.json:
        doc = {"model": str(args.model), "kind": model.kind,
               "class_names": list(model.class_names), "notes": notes, "results": results}
        console.out(json.dumps(doc, indent=2), highlight=False)
    else:
        _print_table(console, args.model, model.kind, model.class_names, results, notes)
    return 1 if any("error" in r for r in results) else 0


def _print_table(console: Console, path: Path, kind: str, class_names: tuple[str, ...],
                 results: list[dict], notes: list[str]) -> None:
    table = Table(title=f"Predictions of {escape(path.name)} ({kind})",
                  caption="A teaching tool, not a diagnostic device.")
    good = [r for r in results if "error" not in r]
    # Nothing is cut: a file name wraps (whole on one line whenever it fits), a class name
    # wraps between words, and when the classes' columns cannot fit they are numbered and
    # a legend names them. Each column is 3 wider than its text (padding and border).
    longest = max((len(r["file"]) for r in good), default=4)
    predicted_width = max(10, longest_word([r["prediction"] for r in good]))
    room = console.width - 1 - 6 - predicted_width
    headers, widths, legend = class_headers(class_names, room - min(longest, room // 2))
    file_width = max(4, min(longest, room - sum(w + 3 for w in widths)))
    slack = room - sum(w + 3 for w in widths) - file_width  # spent on whole predictions
    predicted_width += max(0, min(slack, max((len(r["prediction"]) for r in good), default=0)
                                  - predicted_width))
    table.add_column("file", width=file_width, overflow="fold")
    table.add_column("prediction", width=predicted_width)
    for header, width in zip(headers, widths, strict=True):
        table.add_column(escape(header), justify="right", width=width)
    for r in good:
        cells = [f"[bold]{p:.3f}[/]" if name == r["prediction"] else f"{p:.3f}"
                 for name, p in r["probabilities"].items()]
        table.add_row(escape(r["file"]), escape(r["prediction"]), *cells)
    console.print(table)
    if legend is not None:
        console.print(f"columns: {escape(legend)}", highlight=False)  # wraps between words
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for r in results:
        if "gradcam" in r:
            console.print(f"Grad-CAM: {escape(r['gradcam'])}", highlight=False, soft_wrap=True)
    for r in results:
        if "error" in r:
            console.print(f"[red]bad file:[/] {escape(r['file'])}: {escape(r['error'])}",
                          highlight=False, soft_wrap=True)
