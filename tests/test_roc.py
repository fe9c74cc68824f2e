"""Tests for cxrlearn.evaluation.roc: hand-drawn curves and the Mann-Whitney oracle for the AUC."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrlearn.evaluation.metrics import UndefinedMetricWarning
from cxrlearn.evaluation.roc import auc, one_vs_rest_auc, one_vs_rest_roc, roc_curve


def mann_whitney(positive: np.ndarray, scores: np.ndarray) -> float:
    """P(s_pos > s_neg) + 0.5 P(s_pos == s_neg), over every (positive, negative) pair."""
    pos, neg = scores[positive], scores[~positive]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return sum(wins) / len(wins)


def test_curve_by_hand():
    # Sorted by score: P(0.9) N(0.8) P(0.7) N(0.1), 2 positives and 2 negatives.
    fpr, tpr, thresholds = roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.1])
    # Area: the step at TPR 0.5 over FPR 0..0.5, then 1 over 0.5..1.
    assert auc(fpr, tpr) == 0.75


def test_ties_form_one_diagonal_segment():
    # Scores 0.6 (P), 0.5 (P), 0.5 (N), 0.2 (N): the tie crosses the threshold together.
    fpr, tpr, thresholds = roc_curve([1, 1, 0, 0], [0.6, 0.5, 0.5, 0.2])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.6, 0.5, 0.2])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    # 3 pairs won outright, 1 tied pair counts one half: (3 + 0.5) / 4.
    assert auc(fpr, tpr) == 0.875


def test_all_scores_tied_is_chance():
    fpr, tpr, _ = roc_curve([1, 0, 1, 0, 0], [0.3] * 5)
    assert auc(fpr, tpr) == 0.5


def test_perfect_and_reversed_ranking():
    y = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.8, 0.95])
    assert auc(*roc_curve(y, scores)[:2]) == 1.0
    assert auc(*roc_curve(y, -scores)[:2]) == 0.0


def test_auc_trapezoid_by_hand():
    assert auc([0, 1], [0, 1]) == 0.5
    assert auc([0, 0.5, 1], [0, 1, 1]) == 0.75
    assert auc([0, 0.25, 1], [0.5, 0.5, 1]) == pytest.approx(0.25 * 0.5 + 0.75 * 0.75)


def test_no_positives_warns_and_gives_nan():
    with pytest.warns(UndefinedMetricWarning):
        fpr, tpr, _ = roc_curve([0, 0, 0], [0.1, 0.4, 0.2])
    assert np.isnan(tpr).all()
    np.testing.assert_array_equal(fpr, [0, 1 / 3, 2 / 3, 1])
    assert np.isnan(auc(fpr, tpr))


def test_bad_input_raises():
    with pytest.raises(ValueError):
        roc_curve([1, 0], [0.5])
    with pytest.raises(ValueError):
        roc_curve([1, 0], [0.5, np.nan])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40).filter(
        lambda pairs: 0 < sum(p for p, _ in pairs) < len(pairs)
    )
)
def test_auc_is_the_mann_whitney_probability(pairs):
    # Scores from a handful of integers, so that ties are common.
    positive = np.array([p for p, _ in pairs])
    scores = np.array([s for _, s in pairs], dtype=float)
    fpr, tpr, thresholds = roc_curve(positive, scores)
    assert auc(fpr, tpr) == pytest.approx(mann_whitney(positive, scores), abs=1e-12)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert len(thresholds) == len(np.unique(scores)) + 1


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_one_vs_rest_matches_each_binary_problem(k, seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(k), rng.integers(0, k, size=30)]  # every class present
    probs = rng.dirichlet(np.ones(k), size=len(y))  # (N, K)
    aucs = one_vs_rest_auc(y, probs)
    assert aucs.shape == (k,)
    for c in range(k):
        assert aucs[c] == pytest.approx(mann_whitney(y == c, probs[:, c]), abs=1e-12)
    curves = one_vs_rest_roc(y, probs)
    assert len(curves) == k
    # A strictly increasing transform of the scores keeps the ranking, so the AUC.
    np.testing.assert_allclose(one_vs_rest_auc(y, np.log(probs)), aucs)


def test_one_vs_rest_absent_class_is_nan():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        aucs = one_vs_rest_auc(y, probs)
    assert [type(w.message) for w in record] == [UndefinedMetricWarning]
    np.testing.assert_array_equal(aucs[:2], [1.0, 1.0])
    assert np.isnan(aucs[2])
