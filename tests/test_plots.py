"""Tests for cxrlearn.evaluation.plots: what each figure draws matches the numbers it was given."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cxrlearn.evaluation.calibration import expected_calibration_error, reliability_bins
from cxrlearn.evaluation.plots import (
    plot_confident_mistakes,
    plot_confusion_matrix,
    plot_lr_range,
    plot_reliability_diagram,
    plot_roc_curves,
)
from cxrlearn.evaluation.roc import one_vs_rest_auc

NAMES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
CM = np.array([[26, 2, 2, 0], [2, 24, 4, 0], [1, 3, 25, 1], [0, 1, 4, 25]])


def sample_predictions(n: int = 40, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y_true = np.r_[np.arange(k), rng.integers(0, k, size=n - k)]  # every class present
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y_true]  # mostly right
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # (N, K)
    return y_true, probs


def png_size(fig: Figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    buffer.seek(0)
    with Image.open(buffer) as image:
        assert image.format == "PNG"
        image.load()  # decodes every byte: a truncated file fails here
        return image.size


def test_confusion_matrix_heatmaps_show_the_matrix():
    fig = plot_confusion_matrix(CM, NAMES)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    counts_ax, rates_ax = fig.axes
    # seaborn writes one text per cell, row by row.
    assert [t.get_text() for t in counts_ax.texts] == [str(v) for v in CM.ravel()]
    rates = CM / CM.sum(axis=1, keepdims=True)
    assert [t.get_text() for t in rates_ax.texts] == [f"{v:.2f}" for v in rates.ravel()]
    assert [t.get_text() for t in counts_ax.get_yticklabels()] == NAMES
    assert [t.get_text() for t in counts_ax.get_xticklabels()] == NAMES
    assert counts_ax.get_ylabel() == "True" and counts_ax.get_xlabel() == "Predicted"


def test_confusion_matrix_empty_row_is_zero_not_nan():
    cm = np.array([[3, 1], [0, 0]])
    _, rates_ax = plot_confusion_matrix(cm, ["a", "b"]).axes
    assert [t.get_text() for t in rates_ax.texts] == ["0.75", "0.25", "0.00", "0.00"]


def test_roc_curves_one_line_per_class_with_auc_in_legend():
    y_true, probs = sample_predictions()
    fig = plot_roc_curves(y_true, probs, NAMES)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == len(NAMES) + 1  # plus the chance diagonal
    aucs = one_vs_rest_auc(y_true, probs)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    expected = [f"{n} (AUC = {a:.3f})" for n, a in zip(NAMES, aucs, strict=True)]
    assert labels == [*expected, "chance (AUC = 0.5)"]
    # Each line ends at (1, 1) and starts at (0, 0).
    for line in ax.lines[: len(NAMES)]:
        x, y = line.get_data()
        assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)


def test_reliability_diagram_bars_are_the_bin_accuracies():
    y_true, probs = sample_predictions(n=200)
    fig = plot_reliability_diagram(probs, y_true, num_bins=10)
    assert len(fig.axes) == 2
    acc_ax, count_ax = fig.axes
    bins = reliability_bins(probs, y_true, num_bins=10)
    filled = bins["count"] > 0
    heights = [p.get_height() for p in acc_ax.patches]
    np.testing.assert_allclose(heights, bins["accuracy"][filled])
    np.testing.assert_array_equal([p.get_height() for p in count_ax.patches], bins["count"])
    ece = expected_calibration_error(probs, y_true, num_bins=10)
    assert f"ECE = {ece:.3f}" in acc_ax.get_title()


def test_confident_mistakes_gallery():
    y_true = np.array([0, 1, 2, 0, 1, 2, 0])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.6, 0.3, 0.1],  # wrong, 0.6
            [0.05, 0.9, 0.05],  # wrong, 0.9
            [0.2, 0.7, 0.1],  # wrong, 0.7
            [0.1, 0.8, 0.1],  # right
            [0.5, 0.2, 0.3],  # wrong, 0.5
            [0.3, 0.3, 0.4],  # wrong, 0.4
        ]
    )
    images = np.random.default_rng(0).random((7, 16, 12, 1))  # (N, H, W, 1)
    fig = plot_confident_mistakes(images, y_true, probs, ["a", "b", "c"], max_images=3, ncols=2)
    assert len(fig.axes) == 3  # 3 of the 5 mistakes; the grid's 4th cell removed
    titles = [ax.get_title() for ax in fig.axes]
    expected = ["true: c\npred: b (0.90)", "true: a\npred: b (0.70)", "true: b\npred: a (0.60)"]
    assert titles == expected
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown, images[2, ..., 0])  # the 0.90 mistake's image
    width, height = png_size(fig)
    assert width > 0 and height > 0


def test_confident_mistakes_rgb_and_none():
    y = np.array([0, 1])
    images = np.zeros((2, 8, 8, 3))
    right = np.array([[0.8, 0.2], [0.1, 0.9]])
    fig = plot_confident_mistakes(images, y, right, ["a", "b"])
    assert len(fig.axes) == 1 and fig.axes[0].texts[0].get_text() == "No mistakes"
    wrong = right[::-1]
    fig = plot_confident_mistakes(images, y, wrong, ["a", "b"])
    assert len(fig.axes) == 2
    assert fig.axes[0].images[0].get_array().shape == (8, 8, 3)
    with pytest.raises(ValueError):
        plot_confident_mistakes(images[:1], y, wrong, ["a", "b"])


@pytest.mark.parametrize("name", ["cm", "roc", "reliability"])
def test_figures_save_as_valid_png(tmp_path, name):
    y_true, probs = sample_predictions()
    fig = {
        "cm": lambda: plot_confusion_matrix(CM, NAMES),
        "roc": lambda: plot_roc_curves(y_true, probs, NAMES),
        "reliability": lambda: plot_reliability_diagram(probs, y_true),
    }[name]()
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=40)
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        w_in, h_in = fig.get_size_inches()
        assert image.size == (round(w_in * 40), round(h_in * 40))


def test_roc_curves_differ_without_colour_and_carry_their_names():
    """Issue 27: curves told apart by line style and marker (in print, for colour-blind
    readers), and each class's name written beside its curve, not only in the legend."""
    y_true, probs = sample_predictions()
    ax = plot_roc_curves(y_true, probs, NAMES).axes[0]
    curves = ax.lines[: len(NAMES)]
    looks = {(str(line.get_linestyle()), line.get_marker()) for line in curves}
    assert len(looks) == len(NAMES)  # no two classes look alike in grey
    assert ax.lines[-1].get_linestyle() == ":"  # chance differs from every class
    assert all(str(line.get_linestyle()) != ":" for line in curves)
    assert [t.get_text() for t in ax.texts] == list(NAMES)
    for text, line in zip(ax.texts, curves, strict=True):
        x, y = text.xy  # the label sits on its own curve
        assert any(np.isclose(x, xs) and np.isclose(y, ys)
                   for xs, ys in zip(*line.get_data(), strict=True))


def test_lr_range_plot_draws_the_curve_and_marks_both_peaks():
    lrs = [1e-6 * 10 ** (i / 10) for i in range(50)]
    losses = [1.4 - 0.02 * i for i in range(45)] + [2, 5, 20, 80, 200]
    fig = plot_lr_range(lrs, losses, suggested=1e-4, current=2e-3)
    (ax,) = fig.axes
    curve, suggested, current = ax.get_lines()
    assert list(curve.get_xdata()) == lrs and list(curve.get_ydata()) == losses
    assert list(suggested.get_xdata()) == [1e-4, 1e-4]
    assert list(current.get_xdata()) == [2e-3, 2e-3]
    assert ax.get_xscale() == "log"
    # The explosion is cut off so that the falling part fills the plot.
    assert ax.get_ylim()[1] < 10 and ax.get_ylim()[1] > max(losses[:10])
    assert len(plot_lr_range(lrs, losses, suggested=1e-4).axes[0].get_lines()) == 2
