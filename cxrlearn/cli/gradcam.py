"""`cxrlearn gradcam IMAGE... --model runs/NAME/best.pt`: where did the network look?

For each X-ray: preprocess it exactly as training and evaluation did (the checkpoint's
`meta["preprocess"]`), predict, compute the Grad-CAM map of the predicted class (or of
`--target`), and write a three-panel PNG: the image the network saw, the map, the overlay.
The probability in the title and the table is calibrated with the checkpoint's
temperature when it has one (see `cxrlearn.calibration`), and averaged over the image and
its mirror image when the checkpoint says so (`cxrlearn.tta`); the map explains the pass
over the image as it is.

A map is a question to ask of the model, not an answer: heat on a shoulder, a text marker
or the edge of the film means the model may have learned a shortcut. See
`cxrlearn.gradcam` and lessons/05_grad_cam_with_hooks.ipynb.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from cxrlearn.calibration import apply_temperature
from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint
from cxrlearn.cli.progress import progress_bar
from cxrlearn.data import load_image
from cxrlearn.device import select_device
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import Preprocess
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import gradcam_figure
from cxrlearn.transforms import eval_transform, prepare
from cxrlearn.tta import model_logits

__all__ = ["add_parser", "load_for_gradcam", "write_overlays"]

PREPROCESS_KEYS = ("image_size", "low", "high", "channels")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help="write Grad-CAM overlays: where did the model look?")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG or JPEG X-rays")
    p.add_argument("--model", type=Path, required=True,
                   help="checkpoint, e.g. runs/NAME/best.pt (a run folder means its best.pt)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="explain this class for every image (default: the predicted class)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: gradcam/ beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run)


def load_for_gradcam(path: str | Path) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model, the checkpoint and its path; a run folder stands for its `best.pt`.

    Raises:
        CxrlearnError: The checkpoint is missing, unreadable, or lacks the preprocessing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    ckpt = load_checkpoint(path)
    preprocess = ckpt.get("meta", {}).get("preprocess", {})
    missing = [k for k in PREPROCESS_KEYS if k not in preprocess]
    if missing or "class_names" not in ckpt:
        raise CxrlearnError(
            "checkpoint lacks its preprocessing settings or class names "
            f"(missing: {', '.join(missing) or 'class_names'}); use a best.pt from cxrlearn train",
            path=path,
        )
    return model_from_checkpoint(ckpt, path), ckpt, path


def _target_index(target: str | None, class_names: Sequence[str]) -> int | None:
    if target is None:
        return None
    if target not in class_names:
        raise CxrlearnError(
            f"unknown class {target!r} for --target; this model knows "
            + ", ".join(repr(name) for name in class_names)
        )
    return list(class_names).index(target)


def _output_path(out_dir: Path, image: Path, taken: set[Path]) -> Path:
    """`<stem>_gradcam.png`, numbered when two inputs share a name (COVID/1.png, Normal/1.png)."""
    candidate = out_dir / f"{image.stem}_gradcam.png"
    n = 2
    while candidate in taken:
        candidate = out_dir / f"{image.stem}_gradcam-{n}.png"
        n += 1
    taken.add(candidate)
    return candidate


def write_overlays(
    model: nn.Module,
    ckpt: dict[str, Any],
    paths: Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device,
    target: str | None = None,
    on_image: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Write one Grad-CAM figure per image; a bad image is reported, not raised.

    Each image is prepared like the training and evaluation images: `load_image`, then
    `prepare` (contrast stretch, resize, 8 bits), then `/ 255` and `eval_transform`.

    Args:
        model: The classifier of `ckpt` (see `load_for_gradcam`); it is moved to `device`.
        ckpt: Its checkpoint: `class_names`, `meta["preprocess"]`, maybe `temperature`.
        paths: X-ray files.
        out_dir: Folder for the PNGs; created if needed.
        device: Where to run the model.
        target: Class name to explain for every image; None explains the predicted class.
        on_image: Called after each image (for a progress bar).

    Returns:
        One dict per input, in order: `path`, then either `error` (the message) or
        `predicted`, `probability` (of the predicted class, temperature-scaled),
        `target`, `target_probability` and `output` (the PNG written).

    Raises:
        CxrlearnError: `target` is not one of the checkpoint's classes.
    """
    class_names = list(ckpt["class_names"])
    target_index = _target_index(target, class_names)
    pre = Preprocess.from_dict(ckpt["meta"]["preprocess"])  # flip averaging off if unset
    # As `cxrlearn evaluate` does: training stored the mean and std of eval_transform.
    transform = eval_transform(pre.channels)
    temperature = float(ckpt.get("temperature", 1.0))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    taken: set[Path] = set()
    results: list[dict[str, Any]] = []
    with GradCAM(model) as cam:
        for path in map(Path, paths):
            try:
                image = load_image(path)  # (H, W) float in [0, 1]
            except CxrlearnError as e:
                results.append({"path": path, "error": e.message})
            else:
                prepared = prepare(image, pre.image_size, pre.low, pre.high)
                x = transform(prepared.float() / 255.0)[None].to(device)  # (1, C, S, S)
                with torch.no_grad():  # flip-averaged if the model is, as in predict
                    logits = model_logits(model, x, pre.flip_average).float().cpu()  # (1, K)
                probs = torch.softmax(apply_temperature(logits, temperature), dim=1)[0]  # (K,)
                predicted = int(probs.argmax())
                explained = predicted if target_index is None else target_index
                cams = cam(x, explained).cams  # (1, S, S)
                output = _output_path(out_dir, path, taken)
                title = f"{path.name}: {class_names[predicted]} (p = {float(probs[predicted]):.2f})"
                if explained != predicted:
                    title += f", map for {class_names[explained]}"
                # The image the network saw (prepared, (S, S) uint8), not the original file.
                gradcam_figure(prepared[0].numpy(), cams[0].cpu(), title).savefig(output)
                results.append({
                    "path": path, "predicted": class_names[predicted],
                    "probability": float(probs[predicted]), "target": class_names[explained],
                    "target_probability": float(probs[explained]), "output": output,
                })
            if on_image is not None:
                on_image()
    return results


def run(args: argparse.Namespace, console: Console) -> int:
    model, ckpt, ckpt_path = load_for_gradcam(args.model)
    _target_index(args.target, ckpt["class_names"])  # a wrong name fails before any work
    out_dir = args.out if args.out is not None else ckpt_path.parent / "gradcam"
    device = select_device(args.device)
    with progress_bar(console) as progress:
        task = progress.add_task("Grad-CAM", total=len(args.images))
        results = write_overlays(model, ckpt, args.images, out_dir, device, args.target,
                                 on_image=lambda: progress.advance(task))

    temperature = ckpt.get("temperature")
    caption = ("probabilities without calibration (no temperature in the checkpoint)"
               if temperature is None else
               f"probabilities calibrated with the checkpoint's temperature T = {temperature:.2f}")
    table = Table(title=f"Grad-CAM, {escape(str(ckpt_path))}", caption=caption)
    for col in ("file", "predicted", "probability", "target", "output"):
        # fold: a long file name wraps instead of being cut to "COVID-10…".
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
