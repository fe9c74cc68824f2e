"""How sure is a test score? Confidence intervals for accuracy, recall, precision, macro-F1.

83.33% accuracy on 120 test images is 100 successes in 120 trials, not a property of the
model: another 120 images would give another number. Two ways to say how far it could move:

Wilson score interval (Wilson, JASA 22:209-212, 1927) for a proportion p = k / n, with z
the normal quantile (1.96 for 95%):

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

Unlike the textbook p +- z sqrt(p (1 - p) / n), it never leaves [0, 1] and keeps its
coverage near p = 0 or 1 and for small n. For 100 / 120 it gives [75.7%, 88.9%]: with 30
images per class, two models 5 points apart are not clearly different.

Percentile bootstrap (Efron, Annals of Statistics 7:1-26, 1979) for scores that are not a
simple proportion, such as macro-F1 (a class's recall and precision are proportions and get
Wilson: a bootstrap of 30 correct of 30 is [1, 1], an interval of zero width): draw N test
samples with replacement, many times, recompute the score on each draw, and read the interval
off the percentiles of those scores.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from cxrlearn.evaluation.metrics import as_labels, confusion_matrix, per_class_scores

__all__ = ["wilson_interval", "bootstrap_interval", "report_intervals", "wilson_interval_z"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion `successes / n`.

    Args:
        successes: Number of successes k (e.g. correct predictions), 0 <= k <= n.
        n: Number of trials (e.g. test images), at least 1.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        `(low, high)`, both in [0, 1].

    Example:
        >>> low, high = wilson_interval(100, 120)
        >>> f"[{low:.1%}, {high:.1%}]"
        '[75.7%, 88.9%]'
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got {successes} / {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # two-sided: 1.96 for 0.95
    p = successes / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 the formula gives low = 0 exactly (and high = 1 at k = n), but centre - half
    # cancels in floating point to about 1e-17; write the exact end down.
    low = 0.0 if successes == 0 else float(centre - half)
    high = 1.0 if successes == n else float(centre + half)
    return low, high


def bootstrap_interval(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    statistic: Callable[[np.ndarray, np.ndarray], float | np.ndarray],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of `statistic(y_true, y_pred)`.

    Each resample draws N indices with replacement from a `numpy.random.Generator` seeded
    with `seed`, so the interval is the same on every run. Resamples where a component of
    the statistic is NaN (e.g. the recall of a class that was not drawn) are left out for
    that component; a component that is NaN in every resample gets a NaN interval.

    Args:
        y_true: True labels.
        y_pred: Predicted labels.
        statistic: Maps resampled `(y_true, y_pred)` to a float or to S floats.
        n_resamples: Number of bootstrap resamples; 1000-2000 gives stable 95% bounds.
        confidence: Coverage, in (0, 1): the bounds are the (1 - c)/2 and (1 + c)/2
            percentiles of the resampled statistics.
        seed: Seed of the random generator.

    Returns:
        `(low, high)`, each a float64 array shaped like the statistic's value.

    Shape:
        y_true, y_pred: (N,) -> ((S,), (S,)), or (() , ()) for a scalar statistic
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if n == 0 or y_pred.shape != y_true.shape:
        raise ValueError("y_true and y_pred must be non-empty and of equal shape (N,)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)  # (N,) a test set of the same size, with repeats
        values.append(np.asarray(statistic(y_true[idx], y_pred[idx]), dtype=np.float64))
    stats = np.stack(values)  # (n_resamples, S) or (n_resamples,)
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        # An all-NaN component warns "All-NaN slice"; its NaN interval is the documented answer.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(stats, [tail, 100 - tail], axis=0)
    return low, high


def report_intervals(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Intervals to show next to a classification report's point values.

    Accuracy and each class's recall and precision are proportions, so they get the Wilson
    interval: recall = TP / support, precision = TP / (images predicted as the class). A
    percentile bootstrap of a class that is always right collapses to [1.00, 1.00] (every
    resample is right too), an interval of zero width from 30 images; Wilson gives about
    [0.89, 1.00] for 30 of 30. A class never predicted has no precision to estimate: its
    interval is [0, 1]. Macro-F1 is not a proportion; it gets a percentile bootstrap (zero
    division as 0.0, like the report), which is what it is: an approximation that can be
    too narrow when a class is small or perfect, so read it as a rough width.

    Args:
        y_true: True class indices in [0, K).
        y_pred: Predicted class indices in [0, K).
        class_names: The K class names, as given to `classification_report`.
        confidence: Coverage of every interval, in (0, 1).
        n_resamples: Bootstrap resamples (macro-F1 only).
        seed: Bootstrap seed.

    Returns:
        The report's keys, holding `(low, high)` tuples of floats:
        `{"accuracy": (lo, hi), "macro avg": {"f1-score": (lo, hi)},
        name: {"precision": (lo, hi), "recall": (lo, hi)}, ..., "confidence": confidence}`.

    Shape:
        y_true, y_pred: (N,)

    Example:
        >>> ivs = report_intervals([0] * 30 + [1] * 30, [0] * 30 + [1] * 30, ["a", "b"])
        >>> low, high = ivs["a"]["recall"]
        >>> f"[{low:.2f}, {high:.2f}]"
        '[0.89, 1.00]'
    """
    k = len(class_names)
    y_true = as_labels(y_true, k, "y_true")
    y_pred = as_labels(y_pred, k, "y_pred")

    def macro_f1(t: np.ndarray, p: np.ndarray) -> float:
        return float(per_class_scores(confusion_matrix(t, p, k))["f1-score"].mean())

    low, high = bootstrap_interval(
        y_true, y_pred, macro_f1, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    cm = confusion_matrix(y_true, y_pred, k)  # (K, K) rows true, columns predicted
    intervals: dict = {
        "accuracy": wilson_interval(int((y_true == y_pred).sum()), len(y_true), confidence),
        "macro avg": {"f1-score": (float(low), float(high))},
    }
    for i, name in enumerate(class_names):
        hits, support, predicted = int(cm[i, i]), int(cm[i].sum()), int(cm[:, i].sum())
        intervals[name] = {
            "precision": _proportion_interval(hits, predicted, confidence),
            "recall": _proportion_interval(hits, support, confidence),
        }
    intervals["confidence"] = confidence
    return intervals


def _proportion_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson for k of n; [0, 1] when there are no trials (nothing is known)."""
    return wilson_interval(k, n, confidence) if n > 0 else (0.0, 1.0)


def wilson_interval_z(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """`wilson_interval` with the normal quantile z given directly, as textbooks write it.

    z = 1.96 is the 95% interval; the coverage is 2 Phi(z) - 1 (Phi the normal CDF), which
    `wilson_interval` turns back into z.

    Args:
        successes: Number of successes k, 0 <= k <= n.
        n: Number of trials, at least 1.
        z: The normal quantile, > 0.

    Returns:
        `(low, high)`, both in [0, 1].

    Example:
        >>> low, high = wilson_interval_z(100, 120)
        >>> f"[{low:.1%}, {high:.1%}]"
        '[75.7%, 88.9%]'
    """
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    return wilson_interval(successes, n, confidence=2 * NormalDist().cdf(z) - 1)
