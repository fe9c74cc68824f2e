"""`cxrlearn evaluate`: the held-out report, with intervals, calibration and plots.

Reproduces the reference project's report (per-class precision, recall, F1 and support,
accuracy, macro and weighted averages, confusion matrix) and adds what reading it honestly
needs: 95% intervals, one-vs-rest AUCs, sensitivity and specificity, and calibration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.calibration import apply_temperature, expected_calibration_error
from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.cli.progress import progress_bar
from cxrlearn.device import select_device
from cxrlearn.errors import CxrlearnError
from cxrlearn.metrics import (
    UndefinedMetricWarning,
    classification_report,
    confusion_matrix,
    sensitivity_specificity,
)
from cxrlearn.plots import (
    plot_confident_mistakes,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
)
from cxrlearn.report import report_table
from cxrlearn.roc import one_vs_rest_auc
from cxrlearn.runs import Run, logits_of, open_run
from cxrlearn.uncertainty import report_intervals

__all__ = ["add_parser", "evaluate_run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="report on the held-out test split of a run")
    p.add_argument("--run", type=Path, required=True, help="run folder (from cxrlearn train)")
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--data", type=Path, default=None,
                   help="data folder, if it moved since training")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=run)


def _intervals_table(rep: dict, intervals: dict) -> Table:
    t = Table(title="95% intervals")
    for col in ("measure", "value", "interval"):
        t.add_column(col)
    lo, hi = intervals["accuracy"]
    t.add_row("accuracy (Wilson)", f"{rep['accuracy']:.2%}", f"[{lo:.1%}, {hi:.1%}]")
    lo, hi = intervals["macro avg"]["f1-score"]
    t.add_row("macro-F1 (bootstrap)", f"{rep['macro avg']['f1-score']:.3f}",
              f"[{lo:.3f}, {hi:.3f}]")
    return t


def _json_safe(value):
    """`value` with every NaN or infinity replaced by None (JSON's null).

    An undefined score (the AUC or sensitivity of a class absent from the split) is NaN;
    `json.dumps` would write it as the bare word NaN, which is not JSON and which strict
    readers (JavaScript's JSON.parse, jq) reject.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def evaluate_run(run: Run, split: str, out: Path, device: torch.device, console: Console,
                 batch_size: int = 64) -> dict:
    """Predict one split of a run, print the report, write report.json, predictions.csv, plots."""
    data = run.dataset(split)
    with progress_bar(console) as progress:
        task = progress.add_task(f"predicting {split}", total=len(data))
        logits, y = logits_of(run.model, data, device, batch_size,
                              on_batch=lambda n: progress.advance(task, n),
                              flip_average=run.flip_average)
    probs_raw = torch.softmax(logits, dim=1).numpy()
    probs = torch.softmax(apply_temperature(logits, run.temperature), dim=1).numpy()
    y_true = y.numpy()
    y_pred = probs.argmax(axis=1)
    names = list(run.class_names)

    # Undefined scores (a class never predicted, or absent from the split) are expected on
    # small splits: say so once, as a note, rather than as a Python warning with a source line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        rep = classification_report(y_true, y_pred, names)
        intervals = report_intervals(y_true, y_pred, names, seed=0)
        cm = confusion_matrix(y_true, y_pred, len(names))
        sens, spec = sensitivity_specificity(cm)
        aucs = one_vs_rest_auc(y_true, probs)
    notes = dict.fromkeys(str(w.message) for w in caught
                          if issubclass(w.category, UndefinedMetricWarning))
    for w in caught:  # anything else is unexpected: let it through unchanged
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    result = {
        "split": split, "n": int(len(y_true)), "checkpoint": str(run.checkpoint_path),
        "report": rep,
        "intervals": intervals,
        "confusion_matrix": cm.tolist(),
        "sensitivity": dict(zip(names, map(float, sens), strict=True)),
        "specificity": dict(zip(names, map(float, spec), strict=True)),
        "auc": dict(zip(names, map(float, aucs), strict=True)),
        "temperature": run.temperature,
        "ece": {"before_temperature": expected_calibration_error(probs_raw, y_true),
                "after_temperature": expected_calibration_error(probs, y_true)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", *[f"p_{n}" for n in names]])
        for path, t, p, row in zip(data.paths, y_true, y_pred, probs, strict=True):
            w.writerow([path, names[t], names[p], *[f"{v:.6f}" for v in row]])
    images = np.stack([data.prepared(i)[0].numpy() / 255.0 for i in range(len(data))])
    with warnings.catch_warnings():
        # The ROC plot recomputes the curves: their warnings are already in `notes`.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        figures = {
            "confusion_matrix.png": plot_confusion_matrix(cm, names),
            "roc_curves.png": plot_roc_curves(y_true, probs, names),
            "reliability.png": plot_reliability_diagram(probs, y_true),
            "confident_mistakes.png": plot_confident_mistakes(images, y_true, probs, names),
        }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=100)

    console.print(report_table(rep, intervals, title=f"{split} split, {len(y_true)} images"))
    console.print(_intervals_table(rep, intervals))
    extra = Table(title="one-vs-rest")
    for col in ("class", "sensitivity", "specificity", "AUC"):
        extra.add_column(col, justify="right")
    for k, n in enumerate(names):
        extra.add_row(n, f"{sens[k]:.3f}", f"{spec[k]:.3f}", f"{aucs[k]:.3f}")
    console.print(extra)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"calibration: ECE {result['ece']['before_temperature']:.3f} before, "
                  f"{result['ece']['after_temperature']:.3f} after temperature "
                  f"T = {run.temperature:.2f}")
    console.print(f"wrote report.json, predictions.csv and {len(figures)} plots to [bold]{out}[/]")
    return result


def _open(args: argparse.Namespace) -> Run:
    """`open_run`, with errors that say what to do when the data folder has moved."""
    if args.data is not None and not args.data.is_dir():
        raise CxrlearnError("data folder not found (given with --data)", path=args.data)
    try:
        return open_run(args.run, args.checkpoint, args.data)
    except CxrlearnError:
        if args.data is not None or not (args.run / args.checkpoint).is_file():
            raise
        # The manifest's paths are relative to the data folder recorded at training time;
        # if that folder is gone, say so (and how to fix it) rather than name one image.
        ckpt = load_checkpoint(args.run / args.checkpoint)
        recorded = Path(ckpt["meta"]["data_root"])
        if not recorded.is_dir():
            raise CxrlearnError("the run's data folder is gone; if it moved, give its new "
                                "place with --data", path=recorded) from None
        raise


def run(args: argparse.Namespace, console: Console) -> int:
    the_run = _open(args)
    evaluate_run(the_run, args.split, args.out or args.run, select_device(args.device), console,
                 args.batch_size)
    return 0
