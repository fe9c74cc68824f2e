"""`cxrlearn predict IMAGE... --model PATH`: classify X-ray files, print a table or JSON.

PATH is whatever `cxrlearn.trained.open_model` opens: a run folder, a checkpoint (`best.pt`)
or an exported file (`.pt`, `.ptl`, `.pt2`, read as data, never run). With a checkpoint,
`--gradcam DIR` also writes the Grad-CAM figure of each image (`cxrlearn gradcam`'s). A file
that cannot be read is reported and skipped; the exit status is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser"]

HELP = "classify X-ray files (PNG, JPEG, DICOM) with a trained or exported model"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help=HELP,
        description="Print the predicted class and the probability of every class for each "
                    "image. A teaching tool, not a diagnostic device.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="PNG, JPEG or DICOM (.dcm, needs pydicom) files")
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="a run folder, its checkpoint (best.pt), or a model.pt/.ptl/.pt2 "
                        "from cxrlearn export")
    p.add_argument("--gradcam", type=Path, default=None, metavar="DIR",
                   help="also write a Grad-CAM figure per image to DIR (needs a checkpoint)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.cli.gradcam import write_overlays
    from cxrlearn.data import load_image
    from cxrlearn.trained import open_model

    model = open_model(args.model)
    notes = list(model.notes)
    no_gradcam = None if args.gradcam is None else model.missing_network("Grad-CAM")
    overlays = args.gradcam is not None and no_gradcam is None
    results: list[dict[str, Any]] = []
    readable: list[Path] = []
    prepared: list[Any] = []  # with overlays: each image as the network sees it, S x S
    for path in args.images:
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
                       for r in write_overlays(model, readable, args.gradcam, overwrite=True,
                                               prepared=prepared)
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
    longest = max((len(r["file"]) for r in good), default=4)
    # File names stay whole: the probability headers wrap instead.
    table.add_column("file", no_wrap=True, min_width=min(longest, console.width // 2))
    table.add_column("prediction", no_wrap=True)
    for name in class_names:
        table.add_column(escape(name), justify="right", min_width=5)
    for r in good:
        cells = [f"[bold]{p:.3f}[/]" if name == r["prediction"] else f"{p:.3f}"
                 for name, p in r["probabilities"].items()]
        table.add_row(escape(r["file"]), escape(r["prediction"]), *cells)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for r in results:
        if "gradcam" in r:
            console.print(f"Grad-CAM: {escape(r['gradcam'])}", highlight=False, soft_wrap=True)
    for r in results:
        if "error" in r:
            console.print(f"[red]bad file:[/] {escape(r['file'])}: {escape(r['error'])}",
                          highlight=False, soft_wrap=True)
