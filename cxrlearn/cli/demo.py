"""`cxrlearn demo`: the whole reference pipeline on the bundled sample, on a CPU, in minutes.

Split (seeded, stratified, duplicates kept together), contrast stretching, ResNet18 trained
from scratch, evaluation on the held-out test split, Grad-CAM overlays for a few test
images, and export of a self-contained TorchScript file that then predicts test images.
Every step prints where its output went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cxrlearn.cli.evaluate import evaluate_run
from cxrlearn.cli.gradcam import write_overlays
from cxrlearn.cli.train import add_train_arguments, train_run
from cxrlearn.data import load_image
from cxrlearn.device import select_device
from cxrlearn.export import export_torchscript, load_exported
from cxrlearn.runs import open_run

__all__ = ["add_parser"]

DEMO_EPOCHS = 15
GRADCAM_PER_CLASS = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the bundled sample (CPU, minutes)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: a new runs/demo-<date>-<time>)")
    add_train_arguments(p, epochs=DEMO_EPOCHS)
    p.set_defaults(func=run, data=None, classes=None)


def run(args: argparse.Namespace, console: Console) -> int:
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    console.print(Panel.fit(
        "cxrlearn demo: train ResNet18 on 400 real chest X-rays (bundled sample)\n"
        "A teaching tool, not a diagnostic device.", style="bold"))
    start = time.perf_counter()
    console.rule("1. split, contrast stretching, training")
    trained = train_run(args, console, out, resume=False)
    console.rule("2. evaluation on the held-out test split (opened once, now)")
    device = select_device(args.device)
    run_ = open_run(out)
    evaluate_run(run_, "test", out, device, console)

    console.rule("3. Grad-CAM on a few test images of each class")
    test_rows = [r for r in run_.rows if r.split == "test"]
    picked = [r.path for k in range(len(run_.class_names))
              for r in [r for r in test_rows if r.label == k][:GRADCAM_PER_CLASS]]
    results = write_overlays(run_.model, run_.ckpt, picked, out / "gradcam", device)
    for r in results:
        name = Path(r["path"]).name
        if "error" in r:
            console.print(f"  {name}: {r['error']}", highlight=False)
        else:
            console.print(f"  {name}: predicted {r['predicted']} ({r['probability']:.2f}) "
                          f"-> {r['output']}", highlight=False)

    console.rule("4. export: one TorchScript file with the preprocessing inside")
    exported = export_torchscript(run_.checkpoint_path, out / "model.pt")
    console.print(f"wrote {out / 'model.pt'}; reloaded, it matches the Python pipeline to "
                  f"{exported.max_abs_diff:.1e} (limit 1e-5)")
    model = load_exported(out / "model.pt", run_.class_names)
    table = Table(title="predictions of the exported file (test images, unseen in training)")
    for col in ("file", "true class", "predicted", "probability"):
        table.add_column(col)
    for r in [next(r for r in test_rows if r.label == k) for k in range(len(run_.class_names))]:
        probs = model(load_image(r.path))[0]
        k = int(probs.argmax())
        table.add_row(r.path.name, run_.class_names[r.label], run_.class_names[k],
                      f"{float(probs[k]):.2f}")
    console.print(table)
    console.rule("done")
    console.print("Start the app on this model with: "
                  f"[bold]cxrlearn app --model {trained.out / 'best.pt'}[/]")
    console.print(f"everything is in [bold]{trained.out}[/] "
                  f"({time.perf_counter() - start:.0f} s):")
    for name in ("manifest.csv", "config.json", "history.csv", "learning_curves.png",
                 "best.pt", "last.pt", "report.json", "predictions.csv", "confusion_matrix.png",
                 "gradcam/", "model.pt"):
        console.print(f"  {trained.out / name}")
    return 0
