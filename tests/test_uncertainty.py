"""cxrlearn.evaluation.uncertainty: Wilson against known values, the bootstrap against the CLT."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cxrlearn.evaluation.uncertainty
from cxrlearn.evaluation.uncertainty import bootstrap_interval, report_intervals, wilson_interval

NAMES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
REFERENCE_CM = np.array([[26, 2, 2, 0], [2, 24, 4, 0], [1, 3, 25, 1], [0, 1, 4, 25]])


def reference_labels() -> tuple[np.ndarray, np.ndarray]:
    pairs = [(i, j) for i in range(4) for j in range(4) for _ in range(REFERENCE_CM[i, j])]
    y_true, y_pred = np.array(pairs).T
    return y_true, y_pred


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def test_wilson_reference_accuracy():
    # 83.33% of 120 test images (100 right): the interval quoted in the lesson.
    low, high = wilson_interval(100, 120)
    assert (round(100 * low, 1), round(100 * high, 1)) == (75.7, 88.9)


def test_wilson_known_values():
    z2 = 1.959963984540054**2
    # With no successes the lower end is 0 and the upper end z^2 / (n + z^2).
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(z2 / (10 + z2), rel=1e-12)  # 0.2775, as tabulated
    # All successes: the mirror image.
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + z2), rel=1e-12) and high == 1.0
    # 1 of 2 at 95%: centre 1/2, half-width z sqrt(1/8 + z^2/16) / (1 + z^2/2).
    half = math.sqrt(z2) * math.sqrt(1 / 8 + z2 / 16) / (1 + z2 / 2)
    assert wilson_interval(1, 2) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-12)
    # 90%: z = 1.6449
    assert wilson_interval(0, 10, confidence=0.9)[1] == pytest.approx(
        1.6448536269514722**2 / (10 + 1.6448536269514722**2), rel=1e-12
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_properties(case):
    k, n = case
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    mirror_low, mirror_high = wilson_interval(n - k, n)
    assert (low, high) == pytest.approx((1 - mirror_high, 1 - mirror_low), abs=1e-12)
    narrow_low, narrow_high = wilson_interval(k, n, confidence=0.8)
    assert low <= narrow_low + 1e-15 and narrow_high <= high + 1e-15


def test_wilson_rejects_bad_input():
    for args in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(*args)
    with pytest.raises(ValueError):
        wilson_interval(1, 5, confidence=1.0)


def test_bootstrap_is_deterministic_for_a_seed():
    y_true, y_pred = reference_labels()
    a = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=500, seed=3)
    b = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=500, seed=3)
    c = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=500, seed=4)
    assert a == b
    assert a != c


def test_bootstrap_accuracy_agrees_with_normal_approximation():
    # For a mean of N = 120 Bernoulli outcomes, the percentile bootstrap should come close
    # to p +- 1.96 sqrt(p (1 - p) / N) (the bootstrap distribution is nearly normal).
    y_true, y_pred = reference_labels()
    low, high = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=2000, seed=0)
    p, n = 100 / 120, 120
    half = 1.959963984540054 * math.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - half, abs=0.015)
    assert high == pytest.approx(p + half, abs=0.015)


def test_bootstrap_of_a_constant_is_that_constant():
    y = np.array([0, 1, 1, 2])
    low, high = bootstrap_interval(y, y, lambda t, p: np.array([7.0, 1.0]), n_resamples=50)
    np.testing.assert_array_equal(low, [7.0, 1.0])
    np.testing.assert_array_equal(high, [7.0, 1.0])


def test_bootstrap_confidence_levels_nest():
    y_true, y_pred = reference_labels()
    low95, high95 = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=1000)
    low50, high50 = bootstrap_interval(y_true, y_pred, accuracy, n_resamples=1000, confidence=0.5)
    assert low95 < low50 < 100 / 120 < high50 < high95


def test_report_intervals_reference():
    y_true, y_pred = reference_labels()
    intervals = report_intervals(y_true, y_pred, NAMES, n_resamples=1000, seed=0)
    assert list(intervals) == ["accuracy", "macro avg", *NAMES, "confidence"]
    assert intervals["accuracy"] == wilson_interval(100, 120)
    assert intervals["confidence"] == 0.95
    low, high = intervals["macro avg"]["f1-score"]
    assert low < 0.8359 < high  # the point value, (52/59 + 48/60 + 50/65 + 50/56) / 4
    assert 0.05 < high - low < 0.25  # 120 images: several points either way, not 0 or 50
    recalls = [26 / 30, 24 / 30, 25 / 30, 25 / 30]
    for name, recall in zip(NAMES, recalls, strict=True):
        low, high = intervals[name]["recall"]
        assert low < recall < high
        assert all(isinstance(v, float) for v in (low, high))
    assert intervals == report_intervals(y_true, y_pred, NAMES, n_resamples=1000, seed=0)


def test_report_intervals_rare_class_and_perfect_class():
    # Class 0 always right: Wilson, not a collapsed bootstrap [1, 1]; class 2 has one sample:
    # 1 of 1 says little; class 1 is half right. Precision: class 0 is predicted 15 times,
    # 10 rightly; class 2 once, rightly.
    y_true = np.array([0] * 10 + [1] * 10 + [2])
    y_pred = np.array([0] * 10 + [1] * 5 + [0] * 5 + [2])
    intervals = report_intervals(y_true, y_pred, ["a", "b", "c"], n_resamples=300, seed=1)
    assert intervals["a"]["recall"] == wilson_interval(10, 10)
    assert intervals["c"]["recall"] == wilson_interval(1, 1)
    assert intervals["b"]["recall"] == wilson_interval(5, 10)
    assert intervals["a"]["precision"] == wilson_interval(10, 15)
    assert intervals["b"]["precision"] == wilson_interval(5, 5)
    assert intervals["c"]["recall"][0] < 0.25  # one image: almost nothing is known


def test_thirty_of_thirty_is_not_certain():
    """Issue 27: a class right 30 times of 30 gets a recall interval of non-zero width, the
    lower bound below 0.95 (Wilson: 0.886); the percentile bootstrap gives [1, 1]."""
    y = np.repeat([0, 1], 30)
    intervals = report_intervals(y, y, ["a", "b"], n_resamples=200)
    low, high = intervals["a"]["recall"]
    assert high == 1.0 and 0.88 < low < 0.89
    assert intervals["a"]["precision"] == (low, high)
    boot_low, boot_high = bootstrap_interval(y[:30], y[:30], accuracy, n_resamples=200)
    assert boot_low == boot_high == 1.0  # what the old report printed


def test_a_class_never_predicted_has_an_uninformative_precision():
    intervals = report_intervals([0, 1, 1], [1, 1, 1], ["a", "b"], n_resamples=50)
    assert intervals["a"]["precision"] == (0.0, 1.0)
    assert intervals["a"]["recall"] == wilson_interval(0, 1)


def test_docstring_examples():
    assert doctest.testmod(cxrlearn.evaluation.uncertainty).failed == 0
