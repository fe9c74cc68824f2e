"""How good a model do `cxrlearn train`'s defaults give, from scratch, for a fixed budget?

Run: .venv/bin/python benchmarks/accuracy.py --data DIR [--budget 30] [--image-size 128]
     [--seeds 0 1 2] [--recipes new flip old] [--plot FILE] [--curves CSV] [--test]

The budget is counted in epoch-equivalents, the same on every machine: one is the training
compute of one epoch of ResNet18 at 128 px over the data's training split, and an epoch at
side s costs (s / 128)^2 of one (progressive resizing's small epochs cost less). The number
of epochs is the largest whose epochs, at the sides the size schedule gives them, fit the
budget. Precise BN's forward passes (`--precise-bn`, at most a few batches an epoch) and
validation are not counted: they train nothing.

Recipes, each trained once per seed: `new`, `cxrlearn train`'s defaults; `flip`, the
defaults of version 0.3 with precise BN (a left-right flip only, no average of the
weights); `old`, the defaults as they were before issue 22 (also BatchNorm's running
statistics used as trained, `precise_bn_batches=0`); and screens of changes to `new`
(`mixup`: MixUp with alpha 0.2; `cutmix`: CutMix with alpha 1, as Yun et al. 2019 trained
CIFAR and ImageNet; `shift16`: a shift of up to 12.5% of the side, 16 px at 128 px,
instead of 6.25%; `shift-only` and `average-only`: each of the two changes that made `new`
from `flip`, alone; `ema6`: an average over 6 epochs instead of 3; `mixup-ema6`: both MixUp and that
longer average; `full`: no progressive resizing, every epoch at the full side, so fewer
epochs fit the budget).

The table gives each recipe's best validation macro-F1 (mean and standard deviation over the
seeds); the plot (`--plot`) its validation macro-F1 against the epoch-equivalents spent,
mean and range over the seeds, for this call's runs and for those recorded in `--curves` by
earlier calls. `--test` opens the test split of the new recipe's runs once, at the end. A
run already finished in `--out` (by an earlier call, or another process given other
`--seeds`) is read back, not trained again: seeds can be trained in parallel and then
tabulated and plotted together. One stopped midway (Ctrl-C, or a session that ended) is
resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import cxrlearn.runs as run_module  # noqa: E402
from cxrlearn.device import select_device  # noqa: E402
from cxrlearn.evaluation.metrics import classification_report  # noqa: E402
from cxrlearn.runs import (  # noqa: E402
    SHIFT,
    RunEvents,
    RunSettings,
    resumable,
    stored_settings,
    train_run,
)
from cxrlearn.schedule import SizeSchedule  # noqa: E402
from cxrlearn.settings import replace_settings  # noqa: E402
from cxrlearn.trained import open_model  # noqa: E402

REFERENCE_SIDE = 128
RECIPES = {"new": {}, "flip": {"augment": "flip", "ema_epochs": 0.0},
           "old": {"augment": "flip", "ema_epochs": 0.0, "precise_bn_batches": 0},
           "mixup": {"mixup": 0.2}, "shift16": {"shift": 0.125},
           "shift-only": {"ema_epochs": 0.0}, "average-only": {"augment": "flip"},
           "ema6": {"ema_epochs": 6.0}, "full": {"sizes": None},
           "cutmix": {"cutmix": 1.0}, "mixup-ema6": {"mixup": 0.2, "ema_epochs": 6.0},
           "affine": {"augment": "flip+affine"}, "sd": {"stochastic_depth": 0.1},
           "mixup04": {"mixup": 0.4}, "mixup-ls0": {"mixup": 0.2, "label_smoothing": 0.0},
           "altflip": {"flips": "alternate"}}
"""Each recipe as its changes to `cxrlearn train`'s defaults; `shift` is not a setting but
`cxrlearn.runs.SHIFT`, the largest shift of `--augment flip+shift`."""
LABELS = {"new": "now: flip + shift, average of 3 epochs", "flip": "before: flip, no average",
          "old": "before issue 22: no precise BN",
          "mixup": "now + MixUp (alpha 0.2)", "shift16": "now, shifts up to 16 px",
          "shift-only": "flip + shift, no average", "average-only": "flip, average of 3 epochs",
          "ema6": "now, average of 6 epochs", "full": "now, at 128 px throughout",
          "cutmix": "now + CutMix (alpha 1)",
          "mixup-ema6": "now + MixUp (alpha 0.2), average of 6 epochs",
          "affine": "flip + rotation, zoom and shift (black borders), average of 3 epochs",
          "sd": "now + stochastic depth (0.1 for the last block)",
          "mixup04": "now + MixUp (alpha 0.4)",
          "mixup-ls0": "now + MixUp (alpha 0.2), no label smoothing",
          "altflip": "now, with alternating flips"}
"""Each recipe's name in the plot's legend."""


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


def epoch_cost(side: int) -> float:
    """One epoch at `side` pixels, in epoch-equivalents: `(side / 128)^2`."""
    return (side / REFERENCE_SIDE) ** 2


def sides(full: int, epochs: int, schedule: SizeSchedule | None) -> list[int]:
    """The side each epoch of a run trains at."""
    return [full if schedule is None else schedule.side(full, e, epochs) for e in range(epochs)]


def epochs_in_budget(budget: float, full: int, schedule: SizeSchedule | None) -> int:
    """The most epochs (at least 1) whose cost, summed over their sides, is within `budget`.

    >>> epochs_in_budget(30, 128, None), epochs_in_budget(30, 64, None)
    (30, 120)
    """
    n = 1
    while sum(map(epoch_cost, sides(full, n + 1, schedule))) <= budget + 1e-9:
        n += 1
    return n


def curve(history: Sequence[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Epoch-equivalents spent after each epoch, and the validation macro-F1 then."""
    spent, xs = 0.0, []
    for row in history:
        spent += epoch_cost(int(row["image_size"]))
        xs.append(spent)
    return xs, [row["val_macro_f1"] for row in history]


def read_curves(path: Path) -> dict[str, dict[int, tuple[list[float], list[float]]]]:
    """The curves recorded in `path` (`--curves`): {recipe: {seed: (epoch-equivalents, F1)}}."""
    curves: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                xs, ys = curves.setdefault(row["recipe"], {}).setdefault(int(row["seed"]),
                                                                        ([], []))
                xs.append(float(row["epoch_equivalents"]))
                ys.append(float(row["val_macro_f1"]))
    return curves


def write_curves(path: Path, curves: dict[str, dict[int, tuple[list[float], list[float]]]]
                 ) -> None:
    """Every recipe's curve per seed, one row per epoch: the numbers behind the plot."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["recipe", "seed", "epoch", "epoch_equivalents", "val_macro_f1"])
        for name, runs in curves.items():
            for seed, (xs, ys) in sorted(runs.items()):
                for epoch, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
                    out.writerow([name, seed, epoch, f"{x:.4f}", f"{y:.4f}"])


def plot(curves: dict[str, list[tuple[list[float], list[float]]]], path: Path,
         title: str) -> None:
    """Validation macro-F1 against epoch-equivalents: each recipe's mean over its seeds, and
    the range between the lowest and highest seed shaded."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        n = min(len(xs) for xs, _ in runs)
        xs = runs[0][0][:n]
        ys = [[f1[i] for _, f1 in runs] for i in range(n)]
        ax.plot(xs, [statistics.mean(y) for y in ys],
                label=f"{LABELS.get(name, name)} ({len(runs)} seeds)")
        ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.25)
    ax.set(xlabel=f"epoch-equivalents (ResNet18 epochs at {REFERENCE_SIDE} px)",
           ylabel="validation macro-F1", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    defaults = RunSettings()  # cxrlearn train's, read from their one definition
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=30.0,
                    help="epoch-equivalents: epochs at side s cost (s/128)^2 each")
    ap.add_argument("--image-size", type=int, default=defaults.preprocess.image_size)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--out", type=Path, default=None, help="runs folder (default: a temp dir)")
    ap.add_argument("--plot", type=Path, default=None, help="write the curve here (PNG)")
    ap.add_argument("--curves", type=Path, default=None,
                    help="a CSV of curves (recipe, seed, epoch, epoch_equivalents, "
                         "val_macro_f1): this call's runs are written into it, and the "
                         "plot also draws the recipes recorded there by earlier calls")
    ap.add_argument("--test", action="store_true",
                    help="open the test split of the new recipe's runs, once, at the end")
    args = ap.parse_args()
    console = Console(width=120)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr-accuracy-"))
    device = select_device()
    base = replace_settings(defaults, data_root=args.data, image_size=args.image_size)
    epochs = epochs_in_budget(args.budget, args.image_size, base.train.sizes)
    console.print(f"budget {args.budget:g} epoch-equivalents: with the defaults {epochs} epochs at "
                  f"{sides(args.image_size, epochs, base.train.sizes)} px")

    curves = read_curves(args.curves) if args.curves else {}
    best: dict[str, list[float]] = {}
    run_epochs: dict[str, int] = {}  # each recipe's: its sizes decide how many fit the budget
    models = {}
    for name in args.recipes:
        for seed in args.seeds:
            changes = dict(RECIPES[name])
            run_module.SHIFT = changes.pop("shift", SHIFT)  # read by the run's training transform
            recipe = replace_settings(base, seed=seed, **changes)  # its own sizes, its epochs
            settings = replace_settings(recipe, num_epochs=epochs_in_budget(
                args.budget, args.image_size, recipe.train.sizes))
            run_epochs[name] = settings.train.num_epochs
            folder = out / f"{name}-seed{seed}"
            if (folder / "history.csv").is_file():  # finished by an earlier call: read it
                model = open_model(folder)
                if stored_settings(folder) != settings:
                    raise SystemExit(f"{folder} holds a run with other settings")
                console.print(f"{folder}: finished earlier, read back", highlight=False)
            else:  # new, or stopped midway by an earlier call: go on from its checkpoint
                stopped = resumable(folder)
                if stopped:
                    console.print(f"{folder}: resuming the run stopped there", highlight=False)
                model = train_run(settings, folder, device, resume=stopped,
                                  events=_Printer(console))
            # The whole run's history (best.pt's stops at the chosen epoch).
            with open(folder / "history.csv", newline="") as f:
                history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
            curves.setdefault(name, {})[seed] = curve(history)
            best.setdefault(name, []).append(model.scores["val_macro_f1"])
            models[name, seed] = model

    table = Table(title=f"{args.data.name}, {args.image_size} px, {args.budget:g} "
                        "epoch-equivalents, from scratch")
    for col in ("recipe", "epochs", "seeds", "best val macro-F1 per seed", "mean", "sd"):
        table.add_column(col, justify="right")
    for name, scores in best.items():
        sd = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        table.add_row(name, str(run_epochs[name]), " ".join(map(str, args.seeds)),
                      " ".join(f"{s:.3f}" for s in scores), f"{statistics.mean(scores):.3f}",
                      f"{sd:.3f}")
    console.print(table)
    if args.curves is not None:
        write_curves(args.curves, curves)
        console.print(f"wrote {args.curves}")
    if args.plot is not None:
        plot({name: list(runs.values()) for name, runs in curves.items()}, args.plot,
             f"{args.data.name}, {args.image_size} px")
        console.print(f"wrote {args.plot}")

    if args.test and "new" in best:  # the test split, opened once, for the chosen recipe
        test_f1 = []
        for seed in args.seeds:
            model = models["new", seed]
            logits, y = model.logits(model.dataset("test"), device)
            rep = classification_report(y.numpy(), torch.argmax(logits, 1).numpy(),
                                        list(model.class_names))
            recalls = " ".join(f"{c} {rep[c]['recall']:.2f}" for c in model.class_names)
            console.print(f"test, new recipe, seed {seed}: accuracy {rep['accuracy']:.3f} "
                          f"macro-F1 {rep['macro avg']['f1-score']:.3f}; recall {recalls}",
                          highlight=False)
            test_f1.append(rep["macro avg"]["f1-score"])
        console.print(f"test macro-F1, new recipe, mean over seeds {args.seeds}: "
                      f"{statistics.mean(test_f1):.3f}", highlight=False)


if __name__ == "__main__":
    main()
