"""ROC curves and AUC: how well the predicted probabilities rank the images of each class.

A classification report judges the arg-max decision only. The ROC curve judges the scores
behind it: for class k (one-vs-rest: class k is positive, the three others negative), sweep
a threshold t from +inf down to -inf and predict "k" when probs[:, k] >= t. Each threshold
gives one point

    FPR(t) = FP(t) / (number of negatives),    TPR(t) = TP(t) / (number of positives)

from (0, 0) to (1, 1). The area under it, by the trapezoid rule, is the AUC. It equals the
Mann-Whitney statistic: the probability that a random positive outscores a random
negative, counting ties as one half,

    AUC = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)

(Hanley & McNeil, Radiology 143:29-36, 1982). That identity needs care with ties: images
with the same score cross the threshold together, so they form one diagonal step of the
curve, whose trapezoid counts each tied (positive, negative) pair as exactly one half.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from cxrlearn.evaluation.metrics import UndefinedMetricWarning, as_labels

__all__ = ["roc_curve", "auc", "one_vs_rest_roc", "one_vs_rest_auc"]


def roc_curve(
    y_true: np.ndarray | Sequence[bool], scores: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of one binary problem, one point per distinct score.

    Point i predicts positive for every sample with `score >= thresholds[i]`; point 0 is
    (0, 0) with threshold +inf. Unlike scikit-learn we keep collinear points (no
    `drop_intermediate`); the AUC is the same.

    If there are no positives (or no negatives) TPR (or FPR) is 0/0: it is NaN, with an
    `UndefinedMetricWarning`, and so is the AUC.

    Args:
        y_true: True where the sample is positive (any 0/1 or bool array).
        scores: Higher means more likely positive, e.g. `probs[:, k]`. Must be finite.

    Returns:
        `(fpr, tpr, thresholds)`; fpr and tpr rise from 0 to 1, thresholds fall.

    Shape:
        y_true, scores: (N,) -> each (M + 1,), M = number of distinct scores
    """
    positive = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if positive.ndim != 1 or positive.shape != s.shape:
        raise ValueError(f"y_true {positive.shape} and scores {s.shape} must be equal (N,)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    order = np.argsort(-s)  # highest score first: the order in which samples turn positive
    s, positive = s[order], positive[order]
    tps = np.cumsum(positive)  # (N,) true positives once the first i+1 samples are in
    fps = np.cumsum(~positive)  # (N,)
    # A threshold cannot split tied scores: keep only the last sample of each run of ties,
    # so a tie is one step (a diagonal segment when it mixes positives and negatives).
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tps, fps, thresholds = tps[last_of_run], fps[last_of_run], s[last_of_run]
    num_pos, num_neg = tps[-1] if tps.size else 0, fps[-1] if fps.size else 0
    if num_pos == 0 or num_neg == 0:
        warnings.warn(
            "ROC curve needs positives and negatives; the missing side's rate is NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN, warned above
        tpr = np.r_[0, tps] / num_pos
        fpr = np.r_[0, fps] / num_neg
    return fpr, tpr, np.r_[np.inf, thresholds]


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve through the points (x[i], y[i]), by the trapezoid rule.

    Each segment contributes its width times its mean height. Written out instead of
    `np.trapezoid` (numpy >= 2.0 only) because it is one line and it is the whole idea.

    Args:
        x: Increasing x coordinates (e.g. FPR).
        y: y coordinates (e.g. TPR).

    Returns:
        The area, a float (NaN if any point is NaN).

    Shape:
        x, y: (M,) -> scalar
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def one_vs_rest_roc(
    y_true: np.ndarray | Sequence[int], probs: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One ROC curve per class: class k against all the others, scored by `probs[:, k]`.

    Args:
        y_true: True class indices in [0, K).
        probs: Predicted probabilities (or any scores), one column per class.

    Returns:
        K tuples `(fpr, tpr, thresholds)`, as `roc_curve` returns them.

    Shape:
        y_true: (N,), probs: (N, K) -> K curves
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
    y_true = as_labels(y_true, probs.shape[1], "y_true")
    return [roc_curve(y_true == k, probs[:, k]) for k in range(probs.shape[1])]


def one_vs_rest_auc(y_true: np.ndarray | Sequence[int], probs: np.ndarray) -> np.ndarray:
    """The AUC of each class's one-vs-rest ROC curve (NaN for a class absent from y_true).

    Args:
        y_true: True class indices in [0, K).
        probs: Predicted probabilities, one column per class.

    Returns:
        AUC per class, float64.

    Shape:
        y_true: (N,), probs: (N, K) -> (K,)
    """
    return np.array([auc(fpr, tpr) for fpr, tpr, _ in one_vs_rest_roc(y_true, probs)])
