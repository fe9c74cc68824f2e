"""Reading a classifier's test results: the confusion matrix and the classification report.

Everything starts from the confusion matrix `cm`, with `cm[i, j]` the number of images of
true class `i` predicted as class `j` (rows true, columns predicted). For class `k`:

    TP = cm[k, k]        FP = column k minus TP        FN = row k minus TP
    precision = TP / (TP + FP)      recall = TP / (TP + FN)      (recall = sensitivity)
    F1 = 2 TP / (2 TP + FP + FN)    (the harmonic mean of precision and recall)
    specificity = TN / (TN + FP),   TN = everything outside row k and column k

Accuracy is trace(cm) / N. The macro average is the plain mean over classes (every class
counts the same); the weighted average weights each class by its support (number of true
images). The report has the same structure and numbers as scikit-learn's
`classification_report(..., output_dict=True)`, so results can be compared with papers and
with the reference project (120 test images, 30 per class, 83.33% accuracy).

A report is an estimate from a finite test set: `cxrlearn.evaluation.uncertainty` puts
intervals on it.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "UndefinedMetricWarning",
    "as_labels",
    "confusion_matrix",
    "per_class_scores",
    "classification_report",
    "class_rows",
    "sensitivity_specificity",
    "macro_f1",
]

# Names of the summary rows, in the order scikit-learn prints them.
SUMMARY_ROWS = ("accuracy", "macro avg", "weighted avg")


class UndefinedMetricWarning(RuntimeWarning):
    """A metric divided by zero (e.g. precision of a class never predicted) and was set to 0."""


def as_labels(y: np.ndarray | Sequence[int], num_classes: int, name: str = "y") -> np.ndarray:
    """Check that `y` holds class indices and return them as an int64 array (a new one).

    Args:
        y: Class indices, a list or an integer array.
        num_classes: K; every label must be in [0, K).
        name: What to call `y` in the error message.

    Returns:
        The labels as int64.

    Raises:
        ValueError: If `y` is not 1-D, not integer, or holds a label outside [0, K).

    Shape:
        y: (N,) -> (N,)
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    return arr


def confusion_matrix(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int], num_classes: int
) -> np.ndarray:
    """Count how often each true class was predicted as each class.

    Args:
        y_true: True class indices in [0, K).
        y_pred: Predicted class indices in [0, K).
        num_classes: K. Classes absent from both arrays still get a row and a column.

    Returns:
        `cm` with `cm[i, j]` = number of samples of true class i predicted as class j.

    Shape:
        y_true, y_pred: (N,) -> (K, K), int64

    Example:
        >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], num_classes=3).tolist()
        [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    y_true = as_labels(y_true, num_classes, "y_true")
    y_pred = as_labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    # Each (true, pred) pair gets one cell index true*K + pred; counting cells is bincount.
    cells = y_true * num_classes + y_pred
    counts = np.bincount(cells, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _divide(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """num / den elementwise, 0.0 where den == 0; also returns the mask of those places."""
    undefined = den == 0
    ratio = np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=~undefined)
    return ratio, undefined


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class, from a confusion matrix.

    A score whose denominator is zero is 0.0, scikit-learn's default (`zero_division="warn"`
    there also sets 0.0). This function never warns; `classification_report` does.

    Args:
        cm: A confusion matrix, rows true, columns predicted.

    Returns:
        `precision`, `recall`, `f1-score` (float64), `support` (int64), and `undefined`:
        a bool mask, True where precision, recall or F1 was a division by zero.

    Shape:
        cm: (K, K) -> each value (K,)
    """
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)  # TP + FP, per column
    support = cm.sum(axis=1)  # TP + FN, per row
    precision, p_undef = _divide(tp, predicted)
    recall, r_undef = _divide(tp, support)
    # 2TP / (2TP + FP + FN) rather than 2PR / (P + R): it stays defined when only one of
    # precision and recall is, which is how scikit-learn (>= 1.3) computes it too.
    f1, f_undef = _divide(2 * tp, predicted + support)
    return {
        "precision": precision,
        "recall": recall,
        "f1-score": f1,
        "support": support.astype(np.int64),
        "undefined": p_undef | r_undef | f_undef,
    }


def classification_report(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    class_names: Sequence[str],
) -> dict[str, dict[str, float | int] | float]:
    """Per-class precision, recall, F1 and support, accuracy, and macro and weighted averages.

    The dict matches scikit-learn's `classification_report(y_true, y_pred,
    labels=range(K), target_names=class_names, output_dict=True)` key for key and number
    for number. Metrics are Python floats; every `support` is a Python int (the number of
    true samples; N for the two averages).

    Zero division: a class that is never predicted has no precision, one that never occurs
    has no recall. Like scikit-learn, the value is set to 0.0 (which drags the macro average
    down). scikit-learn warns once per metric with `UndefinedMetricWarning`; we warn once per
    report, with an `UndefinedMetricWarning` (a `RuntimeWarning`) naming the classes.

    Args:
        y_true: True class indices in [0, K).
        y_pred: Predicted class indices in [0, K).
        class_names: The K class names, in index order; also the keys of the report.

    Returns:
        `{name: {"precision", "recall", "f1-score", "support"}, ..., "accuracy": float,
        "macro avg": {...}, "weighted avg": {...}}`, classes first, in index order.

    Shape:
        y_true, y_pred: (N,) with N >= 1
    """
    names = list(class_names)
    if len(set(names)) != len(names) or set(names) & set(SUMMARY_ROWS):
        raise ValueError(f"class names must be distinct and not one of {SUMMARY_ROWS}: {names}")
    cm = confusion_matrix(y_true, y_pred, num_classes=len(names))
    n = int(cm.sum())
    if n == 0:
        raise ValueError("cannot report on zero samples: y_true is empty")
    scores = per_class_scores(cm)
    if scores["undefined"].any():
        bad = [name for name, u in zip(names, scores["undefined"], strict=True) if u]
        warnings.warn(
            f"precision, recall or F1 divide by zero for {bad} (class never predicted or "
            "never present); set to 0.0 as scikit-learn does",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    metrics = ("precision", "recall", "f1-score")
    report: dict[str, dict[str, float | int] | float] = {}
    for k, name in enumerate(names):
        report[name] = {m: float(scores[m][k]) for m in metrics}
        report[name]["support"] = int(scores["support"][k])
    report["accuracy"] = float(np.trace(cm) / n)
    weights = scores["support"] / n  # (K,), sums to 1
    report["macro avg"] = {m: float(scores[m].mean()) for m in metrics} | {"support": n}
    report["weighted avg"] = {m: float(scores[m] @ weights) for m in metrics} | {"support": n}
    return report


def class_rows(report: Mapping[str, object]) -> list[str]:
    """The class names of a classification report, in order: every key but the summary rows.

    Args:
        report: A dict from `classification_report`.

    Returns:
        The class names, e.g. `["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]`.
    """
    return [key for key in report if key not in SUMMARY_ROWS]


def sensitivity_specificity(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest sensitivity and specificity of every class, the clinician's pair.

    For class k: sensitivity = TP / (TP + FN), the share of class-k images that are
    caught (the same number as recall); specificity = TN / (TN + FP), the share of the
    other images that are correctly not called k. Unlike the report, an undefined value
    (no image of class k, or no image of any other class) is NaN, not 0.0: it is unknown,
    not bad.

    Args:
        cm: A confusion matrix, rows true, columns predicted.

    Returns:
        `(sensitivity, specificity)`, float64.

    Shape:
        cm: (K, K) -> ((K,), (K,))
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = n - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN is the intent here
        return tp / (tp + fn), tn / (tn + fp)


def macro_f1(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int], num_classes: int
) -> float:
    """Macro-averaged F1: the plain mean of the K classes' F1 scores.

    Every class counts the same, however rare. A class that is never predicted and never
    present has F1 = 0/0, set to 0.0 as in `per_class_scores` (scikit-learn's
    `f1_score(..., average="macro", labels=range(K), zero_division=0)`).

    Args:
        y_true: True class indices in [0, K).
        y_pred: Predicted class indices in [0, K).
        num_classes: K; classes absent from both arrays still count (with F1 = 0).

    Returns:
        Macro-F1 in [0, 1].

    Shape:
        y_true, y_pred: (N,) -> scalar

    Example:
        >>> round(macro_f1([0, 0, 1, 2], [0, 1, 1, 1], num_classes=3), 4)
        0.3889
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return float(per_class_scores(cm)["f1-score"].mean())
