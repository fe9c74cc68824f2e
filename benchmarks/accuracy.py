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
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cxrlearn.device import select_device
from cxrlearn.evaluation.metrics import classification_report
from cxrlearn.evaluation.uncertainty import report_intervals
from cxrlearn.runs import RunEvents, RunSettings, train_run
from cxrlearn.schedule import SizeSchedule
from cxrlearn.settings import replace_settings
from cxrlearn.trained import TrainedModel


class _Printer(RunEvents):
    """Messages and one line per epoch (the benchmark's log)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def epoch(self, row: dict[str, float]) -> None:
        self.console.print(f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.3f} "
                           f"val macro-F1 {row['val_macro_f1']:.3f} {row['image_size']} px "
                           f"{row['seconds']:.0f} s", highlight=False)


def epochs_in_budget(probe: TrainedModel, probe_s: float, budget_s: float) -> tuple[int, float]:
    """The most epochs whose predicted wall time fits `budget_s`, and that time.

    The probe's last two epochs give training seconds at two image sides (its first epoch
    also pays for warming up, and is left out); an epoch's training time is modelled as
    `a + b * side**2` (cost grows with the pixels). Validation time at full size is
    measured here; what is left of the probe's time is set-up (split, cache, calibration).
    """
    with (probe.folder / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    sides = [int(r["image_size"]) for r in rows]
    secs = [float(r["seconds"]) for r in rows]
    (s1, s2), (t1, t2) = sides[1:], secs[1:]
    if s1 == s2:
        a, b = (t1 + t2) / 2, 0.0
    else:
        b = (t2 - t1) / (s2**2 - s1**2)
        a = t2 - b * s2**2
    val = probe.dataset("val")  # prepared here; training keeps them in memory
    t = time.perf_counter()
    probe.logits(val, select_device())
    val_s = time.perf_counter() - t
    full = probe.preprocess.image_size
    # validations at each epoch's size, and the calibration at full size
    val_total = val_s * (1 + sum((s / full) ** 2 for s in sides))
    setup_s = max(0.0, probe_s - sum(secs) - val_total)
    sizes = probe.checkpoint["config"].get("sizes") if probe.checkpoint else None
    schedule = SizeSchedule(**sizes) if sizes else None

    def predicted(n: int) -> float:
        plan = [full if schedule is None else schedule.side(full, e, n) for e in range(n)]
        # validation runs at the size just trained at (calibration at full size)
        return setup_s + val_s + sum(a + b * s**2 + val_s * (s / full) ** 2 for s in plan)

    # Epoch times drift by about 7% between the probe and the run on a 2-core machine (an idle
    # run of 15 epochs predicted at 19.8 min took 21.2): plan for 93% of the budget.
    n = 1
    while predicted(n + 1) <= 0.93 * budget_s:
        n += 1
    return n, predicted(n)


def main() -> None:
    defaults = RunSettings()  # cxrlearn train's, read from their one definition
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--image-size", type=int, default=defaults.preprocess.image_size)
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=defaults.train.seed)
    ap.add_argument("--progressive-resize", type=float, default=defaults.train.sizes.start,
                    help="starting share of the side (1: off), as cxrlearn train")
    ap.add_argument("--augment", default=defaults.augment, help="as cxrlearn train")
    args = ap.parse_args()
    console = Console(width=120)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr-accuracy-"))
    device = select_device()
    sizes = None if args.progressive_resize >= 1 else SizeSchedule(args.progressive_resize)
    base = replace_settings(defaults, data_root=args.data, image_size=args.image_size,
                            augment=args.augment, seed=args.seed, sizes=sizes)

    def settings(epochs: int) -> RunSettings:
        return replace_settings(base, num_epochs=epochs)

    # 1. time three short epochs (with progressive resizing: two at the smallest size, one at
    # full size), to know how many epochs fit in the budget
    t = time.perf_counter()
    probe = train_run(settings(3), out / "probe", device, events=_Printer(console))
    probe_s = time.perf_counter() - t
    epochs, predicted_s = epochs_in_budget(probe, probe_s, args.minutes * 60)
    console.print(f"probe: 3 epochs in {probe_s:.0f} s; training {epochs} epochs, "
                  f"predicted {predicted_s / 60:.1f} min")

    # 2. the real run
    t = time.perf_counter()
    model = train_run(settings(epochs), out / "run", device, events=_Printer(console))
    minutes = (time.perf_counter() - t) / 60

    # 3. open the test split once
    logits, y = model.logits(model.dataset("test"), device)
    y_pred = torch.argmax(logits, dim=1).numpy()
    rep = classification_report(y.numpy(), y_pred, list(model.class_names))
    iv = report_intervals(y.numpy(), y_pred, list(model.class_names), seed=0)

    table = Table(title=f"Accuracy benchmark: {args.data}, {args.image_size} px, from scratch")
    for col in ("epochs", "train minutes", "best val macro-F1", "test images",
                "accuracy [95% CI]", "macro-F1 [95% CI]"):
        table.add_column(col, justify="right")
    lo, hi = iv["accuracy"]
    flo, fhi = iv["macro avg"]["f1-score"]
    table.add_row(str(epochs), f"{minutes:.1f}", f"{model.scores['val_macro_f1']:.3f}",
                  str(len(y)), f"{rep['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
                  f"{rep['macro avg']['f1-score']:.3f} [{flo:.3f}, {fhi:.3f}]")
    console.print(table)


if __name__ == "__main__":
    main()
