"""`cxrlearn evaluate --model runs/NAME`: the held-out report, with intervals and plots.

Reproduces the reference project's report (per-class precision, recall, F1 and support,
accuracy, macro and weighted averages, confusion matrix) and adds what reading it honestly
needs: 95% intervals, one-vs-rest AUCs, sensitivity and specificity, and calibration. The
test scores are also stored in the checkpoint, so that the app can show them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cxrlearn.cli import check_outputs, positive_int, progress_bar
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "OUTPUTS", "add_parser", "evaluate_model", "report_table"]

HELP = "report on the held-out test split of a run"
OUTPUTS = ("report.json", "predictions.csv", "confusion_matrix.png", "roc_curves.png",
           "reliability.png", "confident_mistakes.png")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, metavar="RUN",
                   help="the run folder (from cxrlearn train), or a checkpoint in it")
    p.add_argument("--run", type=Path, dest="model", help=argparse.SUPPRESS)  # cxrlearn 0.1
    p.add_argument("--checkpoint", default="best.pt", metavar="NAME",
                   help="which checkpoint of the run folder (default best.pt)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="which part of the run's split (default test)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="the data folder, if it moved since training")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: the run folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace report files that already exist in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="images per forward pass (default 64)")
    p.set_defaults(func=run)


def report_table(report: dict, intervals: dict | None = None, digits: int = 2,
                 title: str | None = None) -> Table:
    """The classification report as a rich table: the cells of `report_text`, one per column.

    Args:
        report: From `cxrlearn.evaluation.metrics.classification_report`.
        intervals: Optional, from `cxrlearn.evaluation.uncertainty.report_intervals`; the
            caption then says what the brackets are.
        digits: Decimals of every score.
        title: Optional title above the table.
    """
    from cxrlearn.evaluation.report import HEADERS, report_caption, report_cells

    classes, summary = report_cells(report, intervals, digits)
    caption = report_caption(intervals)
    # Text() cells, not strings: rich would read "[0.76, 0.89]" or "[low, high]" as markup.
    table = Table(title=title, caption=None if caption is None else Text(caption))
    table.add_column("", justify="right", style="bold")
    for header in HEADERS:
        table.add_column(header, justify="right")
    for i, (name, cells) in enumerate(classes):
        table.add_row(*map(Text, [name, *cells]), end_section=i == len(classes) - 1)
    for name, cells in summary:
        table.add_row(*map(Text, [name, *cells]))
    return table


def _json_safe(value: Any) -> Any:
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


def evaluate_model(model: Any, split: str, out: Path, device: Any, console: Console,
                   batch_size: int = 64) -> dict:
    """Predict one part of a trained model's split, print the report, write its files.

    Writes report.json, predictions.csv and the plots to `out` (each atomically), and for
    the test split stores the test scores in the checkpoint.
    """
    import numpy as np
    import torch

    from cxrlearn.atomic import write_atomic
    from cxrlearn.evaluation.calibration import apply_temperature, expected_calibration_error
    from cxrlearn.evaluation.metrics import (
        UndefinedMetricWarning,
        classification_report,
        confusion_matrix,
        sensitivity_specificity,
    )
    from cxrlearn.evaluation.plots import (
        plot_confident_mistakes,
        plot_confusion_matrix,
        plot_reliability_diagram,
        plot_roc_curves,
    )
    from cxrlearn.evaluation.roc import one_vs_rest_auc
    from cxrlearn.evaluation.uncertainty import report_intervals

    data = model.dataset(split)
    with progress_bar(console) as progress:
        task = progress.add_task(f"predicting {split}", total=len(data))
        logits, y = model.logits(data, device, batch_size,
                                 on_batch=lambda n: progress.advance(task, n))
    probs_raw = torch.softmax(logits, dim=1).numpy()
    probs = torch.softmax(apply_temperature(logits, model.temperature), dim=1).numpy()
    y_true = y.numpy()
    y_pred = probs.argmax(axis=1)
    names = list(model.class_names)

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
        "split": split, "n": int(len(y_true)), "checkpoint": str(model.path),
        "report": rep,
        "intervals": intervals,
        "confusion_matrix": cm.tolist(),
        "sensitivity": dict(zip(names, map(float, sens), strict=True)),
        "specificity": dict(zip(names, map(float, spec), strict=True)),
        "auc": dict(zip(names, map(float, aucs), strict=True)),
        "temperature": model.temperature,
        "ece": {"before_temperature": expected_calibration_error(probs_raw, y_true),
                "after_temperature": expected_calibration_error(probs, y_true)},
    }
    out.mkdir(parents=True, exist_ok=True)
    report_json = json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n"
    write_atomic(out / "report.json", lambda f: f.write(report_json.encode()))
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["path", "true", "predicted", *[f"p_{n}" for n in names]])
    for path, t, p, row in zip(data.paths, y_true, y_pred, probs, strict=True):
        # A name that is not valid UTF-8 is written with escapes rather than lost.
        w.writerow([os.fsencode(path).decode("utf-8", "backslashreplace"), names[t],
                    names[p], *[f"{v:.6f}" for v in row]])
    write_atomic(out / "predictions.csv", lambda f: f.write(rows.getvalue().encode()))
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
        write_atomic(out / name, lambda f, fig=fig: fig.savefig(f, dpi=100, format="png"))
    if split == "test":
        model.update_checkpoint(test_scores={
            "test_accuracy": float(rep["accuracy"]),
            "test_macro_f1": float(rep["macro avg"]["f1-score"]), "test_images": len(y_true)})

    console.print(report_table(rep, intervals, title=f"{split} split, {len(y_true)} images"))
    console.print(_intervals_table(rep, intervals))
    extra = Table(title="one-vs-rest")
    for col in ("class", "sensitivity", "specificity", "AUC"):
        extra.add_column(col, justify="right")
    for k, n in enumerate(names):
        extra.add_row(escape(n), f"{sens[k]:.3f}", f"{spec[k]:.3f}", f"{aucs[k]:.3f}")
    console.print(extra)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"calibration: ECE {result['ece']['before_temperature']:.3f} before, "
                  f"{result['ece']['after_temperature']:.3f} after temperature "
                  f"T = {model.temperature:.2f}")
    console.print(f"wrote report.json, predictions.csv and {len(figures)} plots to "
                  f"[bold]{escape(str(out))}[/]", highlight=False)
    return result


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


def run(args: argparse.Namespace, console: Console) -> int:
    from cxrlearn.device import select_device
    from cxrlearn.trained import open_model

    if args.model is None:
        raise CxrlearnError("name the run to evaluate: cxrlearn evaluate --model runs/NAME")
    if args.data is not None and not args.data.is_dir():
        raise CxrlearnError("data folder not found (given with --data)", path=args.data)
    path = args.model / args.checkpoint if args.model.is_dir() else args.model
    model = open_model(path, data_root=args.data)
    model.require_network("evaluation")  # before any file is written
    out = args.out if args.out is not None else model.folder
    # The run folder's own report files are replaced by a new evaluation; a folder the
    # user named may hold their own files of those names.
    check_outputs(out, OUTPUTS, overwrite=args.overwrite or args.out is None)
    evaluate_model(model, args.split, out, select_device(args.device), console,
                   args.batch_size)
    return 0
