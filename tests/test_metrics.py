"""cxrlearn.evaluation.metrics: hand-computed matrices and reports, and hypothesis properties.

scikit-learn is not a dependency: the expected reports are written out by hand (as
fractions) and the properties are checked against a brute-force loop over the samples.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cxrlearn.evaluation.metrics
from cxrlearn.evaluation.metrics import (
    UndefinedMetricWarning,
    classification_report,
    confusion_matrix,
    per_class_scores,
    sensitivity_specificity,
)

NAMES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]

# A test set shaped like the reference project's: 30 images per class, 100 of 120 right.
REFERENCE_CM = np.array(
    [
        [26, 2, 2, 0],
        [2, 24, 4, 0],
        [1, 3, 25, 1],
        [0, 1, 4, 25],
    ]
)


def labels_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y_true, y_pred with exactly the counts of `cm` (rows true, columns predicted)."""
    k = len(cm)
    pairs = [(i, j) for i in range(k) for j in range(k) for _ in range(cm[i, j])]
    y_true, y_pred = np.array(pairs).T
    return y_true, y_pred


def brute_force_report(y_true, y_pred, k):
    """Per-class precision, recall, F1 and support by counting sample by sample."""
    rows = []
    for c in range(k):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, tp + fn))
    return rows


def assert_report_close(actual: dict, expected: dict, rel: float = 1e-12) -> None:
    """Same keys in the same order, and every number equal to within `rel`."""
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert list(actual[key]) == list(value), key
            assert actual[key] == pytest.approx(value, rel=rel), key
        else:
            assert actual[key] == pytest.approx(value, rel=rel), key


labelled = st.integers(1, 5).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60),
    )
)


def test_confusion_matrix_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 2, 1, 1, 0]
    expected = [[1, 1, 1], [0, 2, 0], [1, 0, 0]]  # rows true, columns predicted
    cm = confusion_matrix(y_true, y_pred, num_classes=3)
    assert cm.tolist() == expected
    assert cm.dtype == np.int64
    # An absent class still gets its row and column.
    assert confusion_matrix([0], [0], num_classes=3).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_labels_from_cm_round_trip():
    y_true, y_pred = labels_from_cm(REFERENCE_CM)
    assert len(y_true) == 120
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 4), REFERENCE_CM)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 3], [0, 1]), ([0, -1], [0, 1]), ([0, 1], [0]), ([[0, 1]], [[0, 1]]), ([0.0], [0.0])],
)
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred):
    with pytest.raises(ValueError):
        confusion_matrix(y_true, y_pred, num_classes=3)


def test_reference_report_by_hand():
    y_true, y_pred = labels_from_cm(REFERENCE_CM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class is predicted and present: no warning
        report = classification_report(y_true, y_pred, NAMES)
    # TP / column sum, TP / row sum, 2TP / (row sum + column sum)
    per_class = {
        "COVID": (26 / 29, 26 / 30, 52 / 59),
        "Lung_Opacity": (24 / 30, 24 / 30, 48 / 60),
        "Normal": (25 / 35, 25 / 30, 50 / 65),
        "Viral Pneumonia": (25 / 26, 25 / 30, 50 / 56),
    }
    expected = {
        name: {"precision": p, "recall": r, "f1-score": f, "support": 30}
        for name, (p, r, f) in per_class.items()
    }
    expected["accuracy"] = 100 / 120
    macro = {
        metric: sum(v[i] for v in per_class.values()) / 4
        for i, metric in enumerate(["precision", "recall", "f1-score"])
    }
    expected["macro avg"] = macro | {"support": 120}
    expected["weighted avg"] = macro | {"support": 120}  # equal supports: same as macro
    assert list(report) == [*NAMES, "accuracy", "macro avg", "weighted avg"]
    assert_report_close(report, expected)
    # Types as scikit-learn's output_dict: Python floats, Python int supports.
    assert type(report["accuracy"]) is float
    for key in [*NAMES, "macro avg", "weighted avg"]:
        assert [type(v) for v in report[key].values()] == [float, float, float, int]
    assert f"{report['accuracy']:.2%}" == "83.33%"


def test_zero_division_gives_zero_and_warns_once():
    # Class 1 is never predicted (no precision); class 2 never occurs and is never
    # predicted (no precision, recall or F1).
    y_true = [0, 0, 1, 1]
    y_pred = [0, 0, 0, 0]
    with pytest.warns(UndefinedMetricWarning) as record:
        report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert len(record) == 1
    assert "'b'" in str(record[0].message) and "'c'" in str(record[0].message)
    assert "'a'" not in str(record[0].message)
    assert issubclass(UndefinedMetricWarning, RuntimeWarning)
    assert report["a"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1-score": 2 / 3, "support": 2}
    )
    assert report["b"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 2}
    assert report["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert report["accuracy"] == 0.5
    assert report["macro avg"] == pytest.approx(
        {"precision": 0.5 / 3, "recall": 1 / 3, "f1-score": 2 / 9, "support": 4}
    )
    assert report["weighted avg"] == pytest.approx(
        {"precision": 0.25, "recall": 0.5, "f1-score": 1 / 3, "support": 4}
    )


def test_report_rejects_reserved_or_repeated_names():
    with pytest.raises(ValueError):
        classification_report([0, 1], [0, 1], ["a", "a"])
    with pytest.raises(ValueError):
        classification_report([0, 1], [0, 1], ["a", "accuracy"])
    with pytest.raises(ValueError):
        classification_report([], [], ["a"])


@settings(max_examples=60, deadline=None)
@given(labelled)
def test_report_matches_brute_force_and_properties(case):
    k, pairs = case
    y_true, y_pred = map(np.array, zip(*pairs, strict=True))
    names = [f"class{i}" for i in range(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        report = classification_report(y_true, y_pred, names)
    n = len(y_true)
    oracle = brute_force_report(y_true.tolist(), y_pred.tolist(), k)
    for name, (p, r, f, s) in zip(names, oracle, strict=True):
        assert report[name] == pytest.approx(
            {"precision": p, "recall": r, "f1-score": f, "support": s}, abs=1e-12
        )
    supports = np.array([report[name]["support"] for name in names])
    assert supports.sum() == n
    cm = confusion_matrix(y_true, y_pred, k)
    assert report["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert report["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    for metric in ("precision", "recall", "f1-score"):
        values = np.array([report[name][metric] for name in names])
        assert report["macro avg"][metric] == pytest.approx(values.mean())
        assert report["weighted avg"][metric] == pytest.approx((values * supports).sum() / n)
    assert report["macro avg"]["support"] == report["weighted avg"]["support"] == n


@settings(max_examples=40, deadline=None)
@given(labelled, st.randoms(use_true_random=False))
def test_permuting_samples_changes_nothing(case, rnd):
    k, pairs = case
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    names = [str(i) for i in range(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        a = classification_report(*map(list, zip(*pairs, strict=True)), names)
        b = classification_report(*map(list, zip(*shuffled, strict=True)), names)
    assert a == b  # the same confusion matrix, so bit-for-bit the same numbers


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5).flatmap(lambda k: st.permutations(range(k)).map(lambda p: (k, p))))
def test_perfect_predictions_give_one_everywhere(case):
    k, order = case
    y = np.array(list(order) * 3)  # every class present
    report = classification_report(y, y, [str(i) for i in range(k)])
    assert report["accuracy"] == 1.0
    for key in [*map(str, range(k)), "macro avg", "weighted avg"]:
        assert [report[key][m] for m in ("precision", "recall", "f1-score")] == [1.0] * 3


def test_per_class_scores_flags_undefined():
    cm = np.array([[2, 0, 0], [2, 0, 0], [0, 0, 0]])
    scores = per_class_scores(cm)
    assert scores["undefined"].tolist() == [False, True, True]
    assert scores["support"].tolist() == [2, 2, 0]
    np.testing.assert_allclose(scores["f1-score"], [2 / 3, 0.0, 0.0])


def test_sensitivity_specificity_by_hand():
    sens, spec = sensitivity_specificity(REFERENCE_CM)
    # Sensitivity is recall: TP / row sum.
    np.testing.assert_allclose(sens, [26 / 30, 24 / 30, 25 / 30, 25 / 30])
    # Specificity: TN / (TN + FP) with 90 negatives per class; FP = column sum - TP.
    np.testing.assert_allclose(spec, [(90 - 3) / 90, (90 - 6) / 90, (90 - 10) / 90, (90 - 1) / 90])


def test_sensitivity_specificity_undefined_is_nan():
    # Every sample is class 0: class 0 has no negatives, class 1 no positives.
    sens, spec = sensitivity_specificity(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(sens, [0.75, np.nan])
    np.testing.assert_allclose(spec, [np.nan, 0.75])


def test_metrics_imports_numpy_only():
    # The layering rule: metrics knows numbers, not models. Read its imports from the source
    # (importing it would also run cxrlearn/__init__.py, which is not this module's business).
    tree = ast.parse(Path(cxrlearn.evaluation.metrics.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {a.name for node in nodes if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "warnings", "collections.abc", "numpy"}
