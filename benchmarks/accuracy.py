"""How good a model do the CLI's defaults give, from scratch, in a fixed CPU budget?

Run: .venv/bin/python benchmarks/accuracy.py --data DIR [--minutes 20] [--image-size 128]

Trains ResNet18 from scratch (no pretrained weights) with `cxrlearn train`'s defaults at
128 px, choosing the number of epochs so that training fits in `--minutes` (measured on a
first, short timing run of two epochs), evaluates once on its own held-out test split (30
images per class by default), and prints accuracy and macro-F1 with 95% intervals.

Target on a 2-core CPU: macro-F1 >= 0.94 on the 4-class pool within 20 minutes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cxrlearn.cli import main as cli_main
from cxrlearn.device import select_device
from cxrlearn.metrics import classification_report
from cxrlearn.runs import logits_of, open_run
from cxrlearn.schedule import scaled_side
from cxrlearn.training import TrainConfig
from cxrlearn.uncertainty import report_intervals


def _train(args: list[str]) -> None:
    """`cxrlearn train ARGS`; its error was printed, so stop with its exit status."""
    rc = cli_main(["train", *args])
    if rc != 0:
        sys.exit(rc)


def epochs_in_budget(probe: Path, probe_s: float, budget_s: float) -> tuple[int, float]:
    """The most epochs whose predicted wall time fits `budget_s`, and that time.

    The probe's last two epochs give training seconds at two image sides (its first epoch
    also pays for warming up, and is left out); an epoch's training time is modelled as
    `a + b * side**2` (cost grows with the pixels). Validation time at full size is
    measured here; what is left of the probe's time is set-up (split, cache, calibration).
    """
    with (probe / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    sides = [int(r["image_size"]) for r in rows]
    secs = [float(r["seconds"]) for r in rows]
    (s1, s2), (t1, t2) = sides[1:], secs[1:]
    if s1 == s2:
        a, b = (t1 + t2) / 2, 0.0
    else:
        b = (t2 - t1) / (s2**2 - s1**2)
        a = t2 - b * s2**2
    run = open_run(probe)
    val = run.dataset("val")  # prepared here; training keeps them in memory
    t = time.perf_counter()
    logits_of(run.model, val, select_device())
    val_s = time.perf_counter() - t
    config = json.loads((probe / "config.json").read_text())
    train_config, full = TrainConfig(**config["train"]), config["preprocess"]["image_size"]
    # validations at each epoch's size, and the calibration at full size (two passes with
    # flip averaging)
    val_total = val_s * ((2 if run.flip_average else 1) + sum((s / full) ** 2 for s in sides))
    setup_s = max(0.0, probe_s - sum(secs) - val_total)

    def predicted(n: int) -> float:
        schedule = dataclasses.replace(train_config, num_epochs=n)
        plan = [scaled_side(full, schedule.image_scale(e)) for e in range(n)]
        # validation runs at the size just trained at (calibration at full size)
        return setup_s + val_s + sum(a + b * s**2 + val_s * (s / full) ** 2 for s in plan)

    # Epoch times drift by about 7% between the probe and the run on a 2-core machine (an idle
    # run of 15 epochs predicted at 19.8 min took 21.2): plan for 93% of the budget.
    n = 1
    while predicted(n + 1) <= 0.93 * budget_s:
        n += 1
    return n, predicted(n)


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

    # 1. time three short epochs (with progressive resizing: two at the smallest size, one at
    # full size), to know how many epochs fit in the budget
    probe = out / "probe"
    t = time.perf_counter()
    _train(["--data", str(args.data), "--out", str(probe), "--epochs", "3",
            "--image-size", str(args.image_size), "--seed", str(args.seed), *args.extra])
    probe_s = time.perf_counter() - t
    epochs, predicted_s = epochs_in_budget(probe, probe_s, args.minutes * 60)
    console.print(f"probe: 3 epochs in {probe_s:.0f} s; training {epochs} epochs, "
                  f"predicted {predicted_s / 60:.1f} min")

    # 2. the real run
    run_dir = out / "run"
    t = time.perf_counter()
    _train(["--data", str(args.data), "--out", str(run_dir), "--epochs", str(epochs),
            "--image-size", str(args.image_size), "--seed", str(args.seed), *args.extra])
    minutes = (time.perf_counter() - t) / 60

    # 3. open the test split once
    run = open_run(run_dir)
    logits, y = logits_of(run.model, run.dataset("test"), select_device(),
                          flip_average=run.flip_average)
    y_pred = torch.argmax(logits, dim=1).numpy()
    rep = classification_report(y.numpy(), y_pred, list(run.class_names))
    iv = report_intervals(y.numpy(), y_pred, list(run.class_names), seed=0)

    table = Table(title=f"Accuracy benchmark: {args.data}, {args.image_size} px, from scratch")
    for col in ("epochs", "train minutes", "best val macro-F1", "test images",
                "accuracy [95% CI]", "macro-F1 [95% CI]"):
        table.add_column(col, justify="right")
    lo, hi = iv["accuracy"]
    flo, fhi = iv["macro avg"]["f1-score"]
    best_val = run.ckpt["history"][run.ckpt["epoch"] - 1]["val_macro_f1"]  # best.pt's epoch
    table.add_row(str(epochs), f"{minutes:.1f}", f"{best_val:.3f}", str(len(y)),
                  f"{rep['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
                  f"{rep['macro avg']['f1-score']:.3f} [{flo:.3f}, {fhi:.3f}]")
    console.print(table)


if __name__ == "__main__":
    main()
