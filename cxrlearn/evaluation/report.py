"""Showing a classification report: scikit-learn's text layout, with intervals.

The text is laid out like scikit-learn's `classification_report` (and the reference
project's printout): a header `precision recall f1-score support`, one row per class, a
blank line, then `accuracy` (in the f1-score column), `macro avg` and `weighted avg`, with
2 decimals. Reading it honestly means reading the intervals too, so both renderers take the
optional output of `cxrlearn.evaluation.uncertainty.report_intervals` and print
`0.83 [0.76, 0.89]` where an interval exists. These functions build strings and cells;
printing them is the caller's job (the command line draws the same cells as a table).

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

from collections.abc import Mapping

from cxrlearn.evaluation.metrics import SUMMARY_ROWS, class_rows

__all__ = ["HEADERS", "report_cells", "report_caption", "report_text"]

HEADERS = ("precision", "recall", "f1-score", "support")
COLUMN_WIDTH = 9  # scikit-learn's column width
GAP = 2  # extra spaces before a column widened for intervals, so it does not touch its left


def _cell(value: float, interval: tuple[float, float] | None, digits: int) -> str:
    text = f"{value:.{digits}f}"
    if interval is not None:
        low, high = interval
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def report_cells(
    report: Mapping, intervals: Mapping | None = None, digits: int = 2
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """The report as text cells: (class rows, summary rows), each row (name, 4 cells).

    The cells under `HEADERS`, e.g. `("COVID", ["0.93", "0.90 [0.78, 1.00]", "0.92", "30"])`;
    `report_text` lays them out as text, the command line as a table.
    """
    intervals = intervals or {}

    def metric_row(name: str) -> tuple[str, list[str]]:
        scores, bounds = report[name], intervals.get(name, {})
        cells = [_cell(scores[m], bounds.get(m), digits) for m in HEADERS[:3]]
        return name, [*cells, str(scores["support"])]

    classes = [metric_row(name) for name in class_rows(report)]
    n = report["macro avg"]["support"]
    # The accuracy row has no precision or recall; its value sits under f1-score.
    accuracy = (
        "accuracy",
        ["", "", _cell(report["accuracy"], intervals.get("accuracy"), digits), str(n)],
    )
    summary = [accuracy, metric_row(SUMMARY_ROWS[1]), metric_row(SUMMARY_ROWS[2])]
    return classes, summary


def report_caption(intervals: Mapping | None) -> str | None:
    """What the brackets mean, or None without intervals."""
    if not intervals:
        return None
    level = intervals.get("confidence", 0.95)
    return (f"[low, high]: {level:.0%} intervals (Wilson; macro-F1: percentile bootstrap, "
            "approximate)")


def report_text(report: Mapping, intervals: Mapping | None = None, digits: int = 2) -> str:
    """The report as plain text, in scikit-learn's layout (identical without intervals).

    Args:
        report: The dict from `cxrlearn.evaluation.metrics.classification_report`.
        intervals: Optional dict from `cxrlearn.evaluation.uncertainty.report_intervals`. Columns
            widen to fit the intervals, and a last line says what they are.
        digits: Decimals of every score.

    Returns:
        Lines ending in a newline, like `print(classification_report(...))` in scikit-learn.

    Example:
        >>> from cxrlearn.evaluation.metrics import classification_report
        >>> print(report_text(classification_report([0, 1, 1], [0, 1, 0], ["a", "b"])))
                      precision    recall  f1-score   support
        <BLANKLINE>
                   a       0.50      1.00      0.67         1
                   b       1.00      0.50      0.67         2
        <BLANKLINE>
            accuracy                           0.67         3
           macro avg       0.75      0.75      0.67         3
        weighted avg       0.83      0.67      0.67         3
        <BLANKLINE>
    """
    classes, summary = report_cells(report, intervals, digits)
    all_rows = classes + summary
    name_width = max(len(name) for name, _ in all_rows)
    widths = []
    for j in range(4):
        column = [cells[j] for _, cells in all_rows]
        has_interval = any("[" in cell for cell in column)
        # Like scikit-learn, a long number overflows its 9 characters rather than widening
        # the column; only a column holding intervals is widened.
        widths.append(max(map(len, column)) + GAP if has_interval else COLUMN_WIDTH)

    def line(name: str, cells: list[str] | tuple[str, ...]) -> str:
        # Name right-aligned, then each cell right-aligned in its column after two spaces
        # (scikit-learn's spacing: one after the name column, one before every cell).
        return f"{name:>{name_width}} " + "".join(
            f" {c:>{w}}" for c, w in zip(cells, widths, strict=True)
        )

    lines = [line("", HEADERS), ""]
    lines += [line(name, cells) for name, cells in classes]
    lines.append("")
    lines += [line(name, cells) for name, cells in summary]
    caption = report_caption(intervals)
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"
