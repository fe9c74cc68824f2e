"""`cxrlearn evaluate --model runs/NAME`: the held-out report, with intervals and plots.

Reproduces the reference project's report (per-class precision, recall, F1 and support,
accuracy, macro and weighted averages, confusion matrix) and adds what reading it honestly
needs: 95% intervals, one-vs-rest AUCs, sensitivity and specificity, and calibration. The
model is only read, never changed: the test scores are written beside it, in
`test_scores.json`, where the app's model card finds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cxrlearn.cli import (
    add_device_argument,
    add_model_argument,
    add_overwrite_argument,
    check_outputs,
    longest_word,
    positive_int,
)
from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # the library (torch, numpy) is imported when a command runs, not before
    from cxrlearn.runs import Evaluation
    from cxrlearn.trained import TrainedModel

__all__ = ["HELP", "add_parser", "evaluate_model", "print_evaluation", "report_table"]

HELP = "Report on the held-out test split of a run."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=" ".join(
        __doc__.split("\n\n")[1].split()))
    add_model_argument(p, extra="It must be a checkpoint in its run folder (best.pt, or "
                                "runs/NAME/last.pt), which holds the split.")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="Which part of the run's split to evaluate. Default: test.")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="The data folder, if it moved since training.")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="The folder for the report's files. Default: the run folder.")
    add_overwrite_argument(p, "report files")
    add_device_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="Images per forward pass. Default: 64.")
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
    # Class names wrap between words, never cut (rich cuts a word wider than its column).
    table.add_column("", justify="right", style="bold",
                     min_width=longest_word([name for name, _ in classes]))
    for header in HEADERS:
        table.add_column(header, justify="right")
    for i, (name, cells) in enumerate(classes):
        table.add_row(*map(Text, [name, *cells]), end_section=i == len(classes) - 1)
    for name, cells in summary:
        table.add_row(*map(Text, [name, *cells]))
    return table


def evaluate_model(model: TrainedModel, split: str, out: Path, device: Any, console: Console,
                   batch_size: int = 64) -> Evaluation:
    """`cxrlearn.runs.evaluate_run` with a progress bar, then its report printed."""
    from cxrlearn.cli.train import RichEvents
    from cxrlearn.runs import evaluate_run

    events = RichEvents(console, num_epochs=0)  # no epochs here: progress bars only
    result = evaluate_run(model, out, device, split=split, batch_size=batch_size,
                          events=events)
    print_evaluation(result, console)
    return result


def print_evaluation(result: Evaluation, console: Console) -> None:
    """The report, its intervals, the one-vs-rest scores, the notes and calibration."""
    rep, intervals = result.report, result.intervals
    console.print(report_table(rep, intervals, title=f"{result.split} split, {result.n} images"))
    console.print(_intervals_table(rep, intervals))
    extra = Table(title="one-vs-rest")
    for col in ("class", "sensitivity", "specificity", "AUC"):
        extra.add_column(col, justify="right",
                         min_width=longest_word(list(result.auc)) if col == "class" else None)
    for n in result.auc:
        extra.add_row(escape(n), f"{result.sensitivity[n]:.3f}", f"{result.specificity[n]:.3f}",
                      f"{result.auc[n]:.3f}")
    console.print(extra)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"calibration: ECE {result.ece['before_temperature']:.3f} before, "
                  f"{result.ece['after_temperature']:.3f} after temperature "
                  f"T = {result.temperature:.2f}")
    folder = result.files[0].parent
    console.print(f"wrote {', '.join(p.name for p in result.files)} to "
                  f"[bold]{escape(str(folder))}[/]", highlight=False, soft_wrap=True)
    if result.split == "test":
        console.print(f"test scores written beside the model, for the app: "
                      f"{escape(str(result.checkpoint.parent / 'test_scores.json'))}",
                      highlight=False, soft_wrap=True)


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
    from cxrlearn.runs import EVALUATION_FILES
    from cxrlearn.trained import open_model

    if args.data is not None and not args.data.is_dir():
        raise CxrlearnError("data folder not found (given with --data)", path=args.data)
    model = open_model(args.model, data_root=args.data)
    model.require_network("evaluation")  # before any file is written
    _ = model.split  # a split whose images are gone is the first thing to say
    out = args.out if args.out is not None else model.folder
    # An earlier evaluation's files, in the run folder as anywhere else, are the user's
    # until they say otherwise.
    check_outputs(out, EVALUATION_FILES, overwrite=args.overwrite)
    evaluate_model(model, args.split, out, select_device(args.device), console,
                   args.batch_size)
    return 0
