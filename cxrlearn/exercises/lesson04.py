"""Lesson 04 (evaluation): the confusion matrix, macro-F1, the Wilson interval, the ECE.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, compare_arrays, compare_numbers

__all__ = ["EXERCISES"]

CONFUSION_MATRIX = Exercise(
    id="04.confusion_matrix",
    signature="confusion_matrix(y_true, y_pred, num_classes) -> array",
    summary="A (K, K) array of counts, cm[i, j] = how many images of true class i were "
            "predicted as class j (rows true, columns predicted).",
    reference_path="cxrlearn.evaluation.metrics:confusion_matrix",
    cases=gen.label_triples(),
    edge_cases=[
        ("a class never predicted", ([0, 1, 2], [0, 1, 1], 3)),
        ("one sample", ([0], [0], 1)),
        ("a class absent from both", ([0, 1], [1, 0], 3)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=0),
    hint_text="Start from np.zeros((num_classes, num_classes), dtype=int) (K from the "
              "argument, not from the labels: a class may never appear) and add 1 at "
              "[true, predicted] for every pair. Rows are the true class.",
)

MACRO_F1 = Exercise(
    id="04.macro_f1",
    signature="macro_f1(y_true, y_pred, num_classes) -> float",
    summary="The plain mean over the K classes of each class's F1 = 2 TP / (2 TP + FP + FN); "
            "a class with 0/0 (never present, never predicted) has F1 = 0.",
    reference_path="cxrlearn.evaluation.metrics:macro_f1",
    see_also=("cxrlearn.evaluation.metrics:per_class_scores",),
    cases=gen.label_triples(),
    edge_cases=[
        ("a class never predicted", ([0, 1, 2, 2], [0, 1, 1, 1], 3)),
        ("perfect", ([0, 1, 1], [0, 1, 1], 2)),
        ("one sample", ([1], [0], 2)),
        ("a class absent from both", ([0, 1], [0, 1], 3)),
    ],
    compare=lambda got, want, case: compare_numbers(got, want, atol=1e-9),
    tolerance="1e-09",
    hint_text="Build the confusion matrix. For each class k: TP = cm[k, k], FP = column k "
              "minus TP, FN = row k minus TP, F1_k = 2 TP / (2 TP + FP + FN), or 0 when the "
              "denominator is 0. Macro = the mean of the K values: every class counts the "
              "same. Not the micro average (pooled counts), which equals the accuracy here.",
)


def _wilson_cases(n: int) -> st.SearchStrategy:
    return st.tuples(st.integers(0, n), st.just(n), st.sampled_from([1.96, 1.0, 2.576, 1.645]))


WILSON_INTERVAL = Exercise(
    id="04.wilson_interval",
    signature="wilson_interval(successes, n, z=1.96) -> (low, high)",
    summary="The Wilson score interval of the proportion successes / n: centre "
            "(p + z²/2n) / (1 + z²/n), half-width z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).",
    reference_path="cxrlearn.evaluation.uncertainty:wilson_interval_z",
    see_also=("cxrlearn.evaluation.uncertainty:wilson_interval",),
    cases=st.integers(1, 200).flatmap(_wilson_cases),
    edge_cases=[
        ("0 of 1", (0, 1)),
        ("30 correct of 30", (30, 30)),
        ("100 of 120", (100, 120)),
        ("1 of 2 with z = 1", (1, 2, 1.0)),
    ],
    compare=lambda got, want, case: compare_numbers(got, tuple(want), atol=1e-9,
                                                    names=("low", "high")),
    tolerance="1e-09 on each bound",
    hint_text="p = successes / n; shrink = 1 + z * z / n; centre = (p + z * z / (2 * n)) / "
              "shrink; half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)). "
              "Return (centre - half, centre + half), as plain floats. Not the Wald interval "
              "p ± z sqrt(p(1-p)/n): at 30 of 30 it has zero width.",
)


def _ece_cases() -> st.SearchStrategy:
    def with_labels(probs: np.ndarray) -> st.SearchStrategy:
        n, k = probs.shape
        y = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
        return st.tuples(st.just(probs), y, st.sampled_from([15, 1, 2, 10]))
    return gen.probability_rows().flatmap(with_labels)


ECE = Exercise(
    id="04.expected_calibration_error",
    signature="expected_calibration_error(probs, y_true, num_bins=15) -> float",
    summary="ECE = sum over equal-width confidence bins of (|B_m| / N) |acc(B_m) - "
            "conf(B_m)|, confidence = the top probability; bin m holds (m/M, (m+1)/M], the "
            "first also 0.",
    reference_path="cxrlearn.evaluation.calibration:expected_calibration_error",
    see_also=("cxrlearn.evaluation.calibration:reliability_bins",),
    cases=_ece_cases(),
    edge_cases=[
        ("one sample, right", (np.array([[0.9, 0.1]]), [0], 15)),
        ("a confidence of exactly 1", (np.array([[1.0, 0.0], [0.3, 0.7]]), [1, 1], 15)),
        ("everything in one bin", (np.array([[0.6, 0.4], [0.62, 0.38], [0.4, 0.6]]),
                                   [0, 1, 1], 15)),
    ],
    compare=lambda got, want, case: compare_numbers(got, want, atol=1e-9),
    tolerance="1e-09",
    hint_text="confidence = probs.max(axis=1), correct = probs.argmax(axis=1) == y_true. "
              "Put each confidence in a bin: edges = np.linspace(0, 1, M + 1), bin = "
              "np.searchsorted(edges, confidence) - 1, clipped to [0, M - 1] (so 1.0 lands in "
              "the last bin). Per non-empty bin, |mean(correct) - mean(confidence)|, weighted "
              "by the bin's share of the N samples (not a plain mean over bins).",
)

EXERCISES = [CONFUSION_MATRIX, MACRO_F1, WILSON_INTERVAL, ECE]
