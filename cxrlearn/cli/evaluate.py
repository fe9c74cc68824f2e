"""`cxrlearn evaluate --model runs/NAME`: the held-out report, with intervals and plots.

Reproduces the reference project's report (per-class precision, recall, F1 and support,
accuracy, macro and weighted averages, confusion matrix) and adds what reading it honestly
needs: 95% intervals, one-vs-rest AUCs, sensitivity and specificity, and calibration. The
test scores are also stored in the checkpoint, so that the app can show them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cxrlearn.cli import check_outputs, positive_int
from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # the library (torch, numpy) is imported when a command runs, not before
    from cxrlearn.runs import Evaluation
    from cxrlearn.trained import TrainedModel

__all__ = ["HELP", "add_parser", "evaluate_model", "print_evaluation", "report_table"]

HELP = "report on the held-out test split of a run"


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
        extra.add_column(col, justify="right")
    for n in result.auc:
        extra.add_row(escape(n), f"{result.sensitivity[n]:.3f}", f"{result.specificity[n]:.3f}",
                      f"{result.auc[n]:.3f}")
    console.print(extra)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"calibration: ECE {result.ece['before_temperature']:.3f} before, "
                  f"{result.ece['after_temperature']:.3f} after temperature "
                  f"T = {result.temperature:.2f}")
    plots = sum(path.suffix == ".png" for path in result.files)
    folder = result.files[0].parent
    console.print(f"wrote report.json, predictions.csv and {plots} plots to "
                  f"[bold]{escape(str(folder))}[/]", highlight=False)


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
    check_outputs(out, EVALUATION_FILES, overwrite=args.overwrite or args.out is None)
    evaluate_model(model, args.split, out, select_device(args.device), console,
                   args.batch_size)
    return 0
