"""Is one recipe better than another, or did the validation images decide? A paired bootstrap.

Run: .venv/bin/python benchmarks/paired.py --runs DIR --recipes A B [--seeds 0 1 2]

Reads the runs that `benchmarks/accuracy.py --out DIR` trained (`DIR/A-seed0/best.pt`, ...).
A seed's two runs share their split and their initial weights, so their best networks can be
scored on the very same validation images. The bootstrap redraws those images with
replacement (Efron 1979) and scores both networks on each redraw: how far macro-F1 moves is
what the choice of images alone does to a score, and the spread of the paired difference B - A
says whether a gap between the recipes is larger than that. The last row pools the seeds: the
r-th redraws of all the seeds make one redraw of every image, whose differences it averages.

The table gives, per seed, each network's macro-F1 with its bootstrap standard deviation, the
difference with its 95% interval, and the share of images on which the two answer differently.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cxrlearn.device import select_device
from cxrlearn.evaluation.metrics import macro_f1
from cxrlearn.trained import open_model

RESAMPLES = 2000


def val_predictions(folder: Path, device: torch.device
                    ) -> tuple[list[str], int, np.ndarray, np.ndarray]:
    """The validation images' paths, the number of classes, the labels and the best
    network's answers."""
    model = open_model(folder / "best.pt")
    data = model.dataset("val")
    logits, y = model.logits(data, device)
    paths = [str(row.path) for row in model.split if row.split == "val"]
    return paths, len(model.class_names), y.numpy(), logits.argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="accuracy.py's --out folder")
    ap.add_argument("--recipes", nargs=2, required=True, metavar=("A", "B"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    console = Console(width=120)
    device = select_device()
    a, b = args.recipes
    rng = np.random.default_rng(0)

    table = Table(title=f"validation macro-F1, {b} against {a}, paired by seed "
                        f"({RESAMPLES} bootstrap redraws of the images)")
    for col in ("seed", "images", a, b, f"{b} - {a}", "95% interval", "answers differ"):
        table.add_column(col, justify="right")
    differences = []  # per seed: B - A on the images, and on each redraw of them
    for seed in args.seeds:
        paths_a, k, y, pred_a = val_predictions(args.runs / f"{a}-seed{seed}", device)
        paths_b, _, y_b, pred_b = val_predictions(args.runs / f"{b}-seed{seed}", device)
        if paths_a != paths_b or not np.array_equal(y, y_b):
            raise SystemExit(f"seed {seed}: the runs of {a} and {b} validate on different "
                             "images; a paired comparison needs the same split")
        redraws = rng.integers(0, len(y), size=(RESAMPLES, len(y)))  # (R, N) image indices
        f_a = np.array([macro_f1(y[i], pred_a[i], k) for i in redraws])  # (R,)
        f_b = np.array([macro_f1(y[i], pred_b[i], k) for i in redraws])
        score_a, score_b = macro_f1(y, pred_a, k), macro_f1(y, pred_b, k)
        differences.append((score_b - score_a, f_b - f_a))
        low, high = np.percentile(f_b - f_a, [2.5, 97.5])
        table.add_row(str(seed), str(len(y)), f"{score_a:.3f} ± {f_a.std():.3f}",
                      f"{score_b:.3f} ± {f_b.std():.3f}", f"{score_b - score_a:+.3f}",
                      f"[{low:+.3f}, {high:+.3f}]", f"{np.mean(pred_a != pred_b):.1%}")

    # Each seed's redraws are its own, drawn independently: the r-th of every seed together
    # make one redraw of all the images, and its mean over the seeds one pooled difference.
    mean_diff = statistics.mean(diff for diff, _ in differences)
    pooled = np.mean([redrawn for _, redrawn in differences], axis=0)  # (R,)
    low, high = np.percentile(pooled, [2.5, 97.5])
    table.add_row("mean", "", "", "", f"{mean_diff:+.3f}", f"[{low:+.3f}, {high:+.3f}]", "")
    console.print(table)


if __name__ == "__main__":
    main()
