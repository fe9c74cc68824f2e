"""Tests for cxrlearn.evaluation.report: the text layout written out by hand, and the rich table."""

from __future__ import annotations

import doctest
import io

import numpy as np
from rich.console import Console

import cxrlearn.evaluation.report
from cxrlearn.cli.evaluate import report_table
from cxrlearn.evaluation.metrics import classification_report
from cxrlearn.evaluation.report import report_text

NAMES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
REFERENCE_CM = np.array([[26, 2, 2, 0], [2, 24, 4, 0], [1, 3, 25, 1], [0, 1, 4, 25]])

# scikit-learn's layout, typed out: the name column is as wide as the longest name, then
# every column is one space plus 9 characters, right-aligned.
#   precision 26/29 25/35 ... ; recall 26/30 ...; f1 52/59 48/60 50/65 50/56
#   macro precision 0.8431, recall 0.8333, f1 0.8359; equal supports, so weighted = macro
REFERENCE_TEXT = """\
                 precision    recall  f1-score   support

          COVID       0.90      0.87      0.88        30
   Lung_Opacity       0.80      0.80      0.80        30
         Normal       0.71      0.83      0.77        30
Viral Pneumonia       0.96      0.83      0.89        30

       accuracy                           0.83       120
      macro avg       0.84      0.83      0.84       120
   weighted avg       0.84      0.83      0.84       120
"""


def reference_report() -> dict:
    pairs = [(i, j) for i in range(4) for j in range(4) for _ in range(REFERENCE_CM[i, j])]
    y_true, y_pred = np.array(pairs).T
    return classification_report(y_true, y_pred, NAMES)


# Made-up intervals, so that these tests do not depend on the bootstrap.
INTERVALS = {
    "accuracy": (0.7565, 0.8894),
    "macro avg": {"f1-score": (0.766, 0.894)},
    "COVID": {"recall": (0.736, 0.970)},
    "Normal": {"recall": (0.696, 0.960)},
    "confidence": 0.9,
}


def test_text_matches_scikit_learn_layout():
    assert report_text(reference_report()) == REFERENCE_TEXT


def test_text_digits():
    text = report_text(reference_report(), digits=4)
    assert "          COVID     0.8966    0.8667    0.8814        30\n" in text
    assert "       accuracy                         0.8333       120\n" in text


def test_text_with_intervals():
    text = report_text(reference_report(), INTERVALS)
    lines = text.splitlines()
    table_lines = [line for line in lines[:-2] if line]  # without the caption
    assert len({len(line) for line in table_lines}) == 1  # columns stay aligned
    # Two extra spaces before a widened column: "0.90" and the recall interval stay apart.
    assert "COVID       0.90   0.87 [0.74, 0.97]" in text
    assert "Normal       0.71   0.83 [0.70, 0.96]" in text
    assert "Lung_Opacity       0.80                0.80" in text  # no interval, no bracket
    assert "accuracy" in lines[-5] and lines[-5].endswith("0.83 [0.76, 0.89]       120")
    assert "0.84 [0.77, 0.89]" in lines[-4]
    assert "[" not in lines[-3]  # weighted avg has no interval
    assert lines[-1] == ("[low, high]: 90% intervals (Wilson; macro-F1: percentile bootstrap, "
                        "approximate)")


def render(table) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_table_rows_and_cells():
    table = report_table(reference_report(), title="Test set")
    assert [c.header for c in table.columns] == ["", "precision", "recall", "f1-score", "support"]
    assert table.row_count == 4 + 3
    cells = [[str(cell) for cell in column._cells] for column in table.columns]
    assert cells[0] == [*NAMES, "accuracy", "macro avg", "weighted avg"]
    assert cells[1] == ["0.90", "0.80", "0.71", "0.96", "", "0.84", "0.84"]
    assert cells[3] == ["0.88", "0.80", "0.77", "0.89", "0.83", "0.84", "0.84"]
    assert cells[4] == ["30"] * 4 + ["120"] * 3
    # Every row of the text report appears, cell for cell, in the rendered table.
    rendered = render(table)
    assert "Test set" in rendered
    for line in REFERENCE_TEXT.splitlines()[2:]:
        if line.strip():
            assert all(word in rendered for word in line.split())


def test_table_with_intervals_shows_brackets_literally():
    table = report_table(reference_report(), INTERVALS)
    rendered = render(table)
    # Brackets are not swallowed as rich markup.
    assert "0.87 [0.74, 0.97]" in rendered
    assert "0.83 [0.76, 0.89]" in rendered
    assert "[low, high]: 90% intervals" in rendered


def test_docstring_examples():
    assert doctest.testmod(cxrlearn.evaluation.report).failed == 0


def test_thirty_of_thirty_prints_a_lower_bound_below_095_in_text_and_table():
    """Issue 27: wherever the report is printed (the text, the command line's table, the
    lesson), a class right 30 times of 30 shows an interval, not 1.00 [1.00, 1.00]."""
    from cxrlearn.evaluation.uncertainty import report_intervals

    names = ["COVID", "Normal"]
    y_true = np.repeat([0, 1], 30)
    y_pred = np.r_[np.zeros(30, int), np.ones(25, int), np.zeros(5, int)]
    report = classification_report(y_true, y_pred, names)
    intervals = report_intervals(y_true, y_pred, names, n_resamples=100)
    text = report_text(report, intervals)
    covid = next(line for line in text.splitlines() if line.strip().startswith("COVID"))
    assert "1.00 [0.89, 1.00]" in covid and "[1.00, 1.00]" not in text
    table = render(report_table(report, intervals))
    assert "1.00 [0.89, 1.00]" in table and "[1.00, 1.00]" not in table
