"""How good a model do the CLI's defaults give, from scratch, in a fixed CPU budget?

Run: .venv/bin/python benchmarks/accuracy.py --data DIR [--minutes 20] [--image-size 128]

Trains ResNet18 from scratch (no pretrained weights) with `cxrlearn train`'s defaults at
128 px, choosing the number of epochs so that training fits in `--minutes` (measured on a
first, short timing run), evaluates once on its own held-out test split (30 images per class
by default), and prints accuracy and macro-F1 with 95% intervals.

Target on a 2-core CPU: macro-F1 >= 0.94 on the 4-class pool within 20 minutes.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cxrlearn.cli import main as cli_main
from cxrlearn.cli.runs import logits_of, open_run, split_dataset
from cxrlearn.device import select_device
from cxrlearn.metrics import classification_report
from cxrlearn.uncertainty import report_intervals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("extra", nargs="*", help="more `cxrlearn train` options, after --")
    args = ap.parse_args()
    console = Console(width=120)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr-accuracy-"))

    # 1. time one epoch, to know how many fit in the budget
    probe = out / "probe"
    t = time.perf_counter()
    cli_main(["train", "--data", str(args.data), "--out", str(probe), "--epochs", "1",
              "--image-size", str(args.image_size), "--seed", str(args.seed), *args.extra])
    per_epoch = time.perf_counter() - t
    epochs = max(1, math.floor(args.minutes * 60 / per_epoch))
    console.print(f"one epoch (with set-up) took {per_epoch:.0f} s: training {epochs} epochs")

    # 2. the real run
    run_dir = out / "run"
    t = time.perf_counter()
    cli_main(["train", "--data", str(args.data), "--out", str(run_dir), "--epochs", str(epochs),
              "--image-size", str(args.image_size), "--seed", str(args.seed), *args.extra])
    minutes = (time.perf_counter() - t) / 60

    # 3. open the test split once
    run = open_run(run_dir)
    logits, y = logits_of(run.model, split_dataset(run, "test"), select_device())
    y_pred = torch.argmax(logits, dim=1).numpy()
    rep = classification_report(y.numpy(), y_pred, list(run.class_names))
    iv = report_intervals(y.numpy(), y_pred, list(run.class_names), seed=0)

    table = Table(title=f"Accuracy benchmark: {args.data}, {args.image_size} px, from scratch")
    for col in ("epochs", "train minutes", "test images", "accuracy [95% CI]",
                "macro-F1 [95% CI]"):
        table.add_column(col, justify="right")
    lo, hi = iv["accuracy"]
    flo, fhi = iv["macro avg"]["f1-score"]
    table.add_row(str(epochs), f"{minutes:.1f}", str(len(y)),
                  f"{rep['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
                  f"{rep['macro avg']['f1-score']:.3f} [{flo:.3f}, {fhi:.3f}]")
    console.print(table)


if __name__ == "__main__":
    main()
