"""`cxrlearn demo`: the whole reference pipeline on the bundled sample, on a CPU, in minutes.

Split (seeded, stratified, duplicates kept together), contrast stretching, ResNet18 trained
from scratch, then each later stage of the pipeline as it exists. Every step prints where
its output went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from cxrlearn.cli.evaluate import evaluate_run
from cxrlearn.cli.runs import open_run
from cxrlearn.cli.train import add_train_arguments, train_run
from cxrlearn.device import select_device

__all__ = ["add_parser"]

DEMO_EPOCHS = 15


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
    evaluate_run(open_run(out), "test", out, select_device(args.device), console)
    console.rule("done")
    console.print(f"everything is in [bold]{trained.out}[/] "
                  f"({time.perf_counter() - start:.0f} s):")
    for name in ("manifest.csv", "config.json", "history.csv", "learning_curves.png",
                 "best.pt", "last.pt", "report.json", "predictions.csv", "confusion_matrix.png"):
        console.print(f"  {trained.out / name}")
    return 0
