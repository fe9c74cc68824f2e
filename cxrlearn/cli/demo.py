"""`cxrlearn demo`: the whole reference pipeline on the bundled sample, on a CPU, in minutes.

Split (seeded, stratified, duplicates kept together), contrast stretching, ResNet18 trained
from scratch, evaluation on the held-out test split, Grad-CAM overlays for a few test
images, and export of a self-contained TorchScript file that then predicts test images.
Each step is a library call (`train_run`, `open_model`, `TrainedModel.export`) or the same
writer another command uses; every step prints where its output went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cxrlearn.cli.train import add_training_arguments

__all__ = ["HELP", "DEMO_EPOCHS", "add_parser"]

HELP = "Run the whole pipeline on the bundled sample (on a CPU, in minutes)."
DEMO_EPOCHS = 15
GRADCAM_PER_CLASS = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP, description=" ".join(
        __doc__.split("\n\n")[1].split()))
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="The run folder, new or empty. Default: a new runs/demo-DATE-TIME.")
    add_training_arguments(p, demo_settings())
    p.set_defaults(func=run)


def demo_settings() -> Any:
    """The `RunSettings` a demo takes without flags: `cxrlearn train`'s, for `DEMO_EPOCHS`."""
    from cxrlearn.runs import RunSettings
    from cxrlearn.settings import replace_settings

    return replace_settings(RunSettings(), num_epochs=DEMO_EPOCHS)


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.cli.evaluate import evaluate_model
    from cxrlearn.cli.gradcam import write_overlays
    from cxrlearn.cli.train import RichEvents, settings_from_args
    from cxrlearn.data import load_image
    from cxrlearn.device import select_device
    from cxrlearn.runs import EVALUATION_FILES, train_run
    from cxrlearn.trained import TEST_SCORES_FILE, open_model

    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    console.print(Panel.fit(
        "cxrlearn demo: train ResNet18 on 400 real chest X-rays (bundled sample)\n"
        "A teaching tool, not a diagnostic device.", style="bold"))
    start = time.perf_counter()
    device = select_device(args.device)
    settings = settings_from_args(args, demo_settings())

    console.rule("1. split, contrast stretching, training")
    with RichEvents(console, settings.train.num_epochs) as events:
        model = train_run(settings, out, device, cache_dir=args.cache_dir, events=events)
    console.print(f"best validation macro-F1 {model.scores['val_macro_f1']:.3f} at epoch "
                  f"{model.epoch}", highlight=False)

    console.rule("2. evaluation on the held-out test split (opened once, now)")
    evaluate_model(model, "test", out, device, console)

    console.rule("3. Grad-CAM on a few test images of each class")
    test_rows = [r for r in model.split if r.split == "test"]
    picked = [r.path for k in range(len(model.class_names))
              for r in [r for r in test_rows if r.label == k][:GRADCAM_PER_CLASS]]
    for r in write_overlays(model, picked, out / "gradcam"):
        name = Path(r["path"]).name
        if "error" in r:
            console.print(f"  {escape(name)}: {escape(r['error'])}", highlight=False)
        else:
            console.print(f"  {escape(name)}: predicted {r['predicted']} "
                          f"({r['probability']:.2f}) -> {escape(str(r['output']))}",
                          highlight=False)

    console.rule("4. export: one TorchScript file with the preprocessing inside")
    exported = model.export(out / "model.pt")
    console.print(f"wrote {escape(str(out / 'model.pt'))}; reloaded, it matches the Python "
                  f"pipeline to {exported.max_abs_diff:.1e} (limit 1e-5)", highlight=False)
    app_model = open_model(out / "model.pt")  # read as data, as the app reads it
    table = Table(title="predictions of the exported file (test images, unseen in training)")
    for col in ("file", "true class", "predicted", "probability"):
        table.add_column(col)
    for r in [next(r for r in test_rows if r.label == k) for k in range(len(model.class_names))]:
        probs = app_model.probs([load_image(r.path)])[0]
        k = int(probs.argmax())
        table.add_row(escape(r.path.name), model.class_names[r.label], model.class_names[k],
                      f"{float(probs[k]):.2f}")
    console.print(table)
    console.rule("done")
    console.print("Start the app on this model with: "
                  f"[bold]cxrlearn app --model {escape(str(out))}[/]")
    console.print(f"everything is in [bold]{escape(str(out))}[/] "
                  f"({time.perf_counter() - start:.0f} s):")
    for name in ("manifest.csv", "config.json", "history.csv", "learning_curves.png",
                 "best.pt", "last.pt", *EVALUATION_FILES, TEST_SCORES_FILE, "gradcam/",
                 "model.pt"):
        console.print(f"  {escape(str(out / name))}", highlight=False, soft_wrap=True)
    return 0
