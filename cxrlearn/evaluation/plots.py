"""Evaluation figures: learning curves, confusion matrix, ROC curves, reliability, mistakes.

Each function takes arrays and returns a `matplotlib.figure.Figure` built directly (not
through `pyplot`): no global figure state, no GUI backend, nothing shown. Save one with
`fig.savefig("cm.png", dpi=100)`; in a notebook, a figure that ends a cell is displayed.
The numbers come from the other modules of `cxrlearn.evaluation` (metrics, roc,
calibration); the figures only draw them.

Learning curves (`plot_history`, from `fit`'s history) are read for three things: both
losses falling (learning), validation loss rising while training loss falls (overfitting:
more augmentation or fewer epochs), and validation scores jumping about (a validation split
too small to choose an epoch with confidence); lesson 03 reads them.

Look at the mistakes, not only the scores: the most confident wrong predictions are where
a model has learnt a shortcut (a burnt-in marker, a scanner's border) or a label is wrong.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlearn.evaluation.calibration import expected_calibration_error, reliability_bins
from cxrlearn.evaluation.metrics import as_labels
from cxrlearn.evaluation.roc import auc, one_vs_rest_roc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_history",
    "plot_lr_range",
    "plot_confusion_matrix",
    "plot_roc_curves",
    "plot_reliability_diagram",
    "plot_confident_mistakes",
]


def _figure(**options: Any) -> Figure:
    """A new figure, built without pyplot. matplotlib is imported here, when the first
    figure is drawn: importing the library imports no plotting library."""
    from matplotlib.figure import Figure

    return Figure(**options)


def plot_history(history: Sequence[dict[str, float]]) -> Figure:
    """Loss (left) and accuracy / macro-F1 (right) per epoch, from `fit`'s history."""
    epochs = [r["epoch"] for r in history]
    fig = _figure(figsize=(9, 3.2))
    ax_loss, ax_score = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_score.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train accuracy")
    ax_score.plot(epochs, [r["val_accuracy"] for r in history], "o-", label="val accuracy")
    ax_score.plot(epochs, [r["val_macro_f1"] for r in history], "s--", label="val macro-F1")
    ax_score.set(xlabel="epoch", ylim=(0, 1.02), title="scores")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lr_range(lrs: Sequence[float], losses: Sequence[float], suggested: float,
                  current: float | None = None) -> Figure:
    """The learning-rate range test (`cxrlearn.training.lr_range_test`): each step's loss
    against its learning rate on a log axis, the suggested peak and (if given) the
    settings' own peak marked. A good peak lies where the loss falls fastest, well before
    it turns up."""
    fig = _figure(figsize=(6, 3.4))
    ax = fig.subplots()
    ax.plot(lrs, losses, "-", color="0.3", label="loss of each step's batch")
    ax.axvline(suggested, color="tab:blue", linestyle="--",
               label=f"suggested peak {suggested:.1e}")
    if current is not None:
        ax.axvline(current, color="tab:orange", linestyle=":",
                   label=f"the settings' peak {current:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="learning-rate range test")
    # The explosion at the end would flatten the useful part: show up to a little above
    # where the loss began.
    top = min(max(losses), 1.25 * max(losses[:10])) if losses else 1.0
    ax.set_ylim(0, top * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Two heatmaps side by side: counts, and rows normalised to sum to 1.

    The row-normalised matrix shows recall on its diagonal and, off it, where each class's
    images go when they are missed. A class with no true samples gets a row of zeros.

    Args:
        cm: A confusion matrix from `cxrlearn.evaluation.metrics.confusion_matrix`, rows true.
        class_names: The K class names, used as tick labels.

    Returns:
        A figure with 2 axes; each cell is annotated (counts as integers, rates with 2
        decimals).

    Shape:
        cm: (K, K)
    """
    import seaborn as sns  # seaborn imports matplotlib: here, when a figure is drawn

    cm = np.asarray(cm)
    support = cm.sum(axis=1, keepdims=True)  # (K, 1)
    rates = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)  # (K, K)
    fig = _figure(figsize=(11, 4.5), layout="constrained")
    ax_counts, ax_rates = fig.subplots(1, 2)
    labels = list(class_names)
    for ax, data, fmt, title in (
        (ax_counts, cm, "d", "Counts"),
        (ax_rates, rates, ".2f", "Row-normalised (recall on the diagonal)"),
    ):
        sns.heatmap(
            data,
            annot=True,
            fmt=fmt,
            cmap="Blues",
            cbar=False,
            square=True,
            xticklabels=labels,
            yticklabels=labels,
            ax=ax,
        )
        ax.set(title=title, xlabel="Predicted", ylabel="True")
    return fig


ROC_STYLES: tuple[tuple[Any, str], ...] = (
    ("-", "o"), ("--", "s"), ("-.", "^"), ((0, (5, 1, 1, 1, 1, 1)), "D"))
"""(line style, marker) of the k-th ROC curve, so that curves differ in print and for colour-blind
readers, not by colour alone; the chance diagonal is dotted."""


def _label_point(fpr: np.ndarray, tpr: np.ndarray, k: int, K: int) -> tuple[float, float]:
    """Where to write a curve's name: its point at a false positive rate spread by class,
    so that the K names do not sit on one another."""
    target = 0.05 + 0.5 * k / max(K, 1)  # fpr 0.05, 0.175, 0.3, ... for K = 4
    i = int(np.searchsorted(fpr, target, side="right")) - 1
    i = min(max(i, 0), len(fpr) - 1)
    return float(fpr[i]), float(tpr[i])


def plot_roc_curves(
    y_true: np.ndarray | Sequence[int], probs: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """One-vs-rest ROC curve of every class on one axes, with its AUC in the legend.

    Args:
        y_true: True class indices in [0, K).
        probs: Predicted probabilities, one column per class.
        class_names: The K class names.

    Returns:
        A figure with 1 axes: K curves (each with its own line style, marker and a label
        written beside it) and the dotted chance diagonal.

    Shape:
        y_true: (N,), probs: (N, K)
    """
    fig = _figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    curves = one_vs_rest_roc(y_true, probs)
    for k, (name, (fpr, tpr, _)) in enumerate(zip(class_names, curves, strict=True)):
        # Told apart without colour too: each class has its own line style and marker, and its
        # name is written at the end of its curve's steepest rise (a direct label).
        style = ROC_STYLES[k % len(ROC_STYLES)]
        (line,) = ax.plot(fpr, tpr, linestyle=style[0], marker=style[1], markevery=0.2,
                          markersize=5, label=f"{name} (AUC = {auc(fpr, tpr):.3f})")
        ax.annotate(name, _label_point(fpr, tpr, k, len(class_names)), color=line.get_color(),
                    fontsize=9, textcoords="offset points", xytext=(6, -4 - 9 * (k % 2)))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance (AUC = 0.5)")
    ax.set(
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title="ROC, one class vs the rest",
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
    )
    ax.legend(loc="lower right")
    return fig


def plot_reliability_diagram(
    probs: np.ndarray, y_true: np.ndarray | Sequence[int], num_bins: int = 15
) -> Figure:
    """Accuracy against confidence per bin (top) and how many samples each bin holds (bottom).

    Bars below the diagonal mean overconfidence. The ECE is in the title.

    Args:
        probs: Predicted probabilities, each row summing to 1.
        y_true: True class indices in [0, K).
        num_bins: Number of equal-width confidence bins.

    Returns:
        A figure with 2 axes sharing the confidence axis.

    Shape:
        probs: (N, K), y_true: (N,)
    """
    bins = reliability_bins(probs, y_true, num_bins)
    ece = expected_calibration_error(probs, y_true, num_bins)
    edges = bins["bin_edges"]
    left, width = edges[:-1], np.diff(edges)
    fig = _figure(figsize=(5, 6), layout="constrained")
    ax_acc, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = bins["count"] > 0  # empty bins have no accuracy to draw
    ax_acc.bar(
        left[filled],
        bins["accuracy"][filled],
        width=width[filled],
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    ax_acc.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax_acc.set(ylabel="Accuracy", ylim=(0, 1), title=f"Reliability diagram (ECE = {ece:.3f})")
    ax_acc.legend(loc="upper left")
    ax_count.bar(left, bins["count"], width=width, align="edge", edgecolor="black")
    ax_count.set(xlabel="Confidence (top probability)", ylabel="Count", xlim=(0, 1))
    return fig


def plot_confident_mistakes(
    images: np.ndarray,
    y_true: np.ndarray | Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    max_images: int = 8,
    ncols: int = 4,
) -> Figure:
    """A gallery of the wrong predictions made with the highest confidence.

    Args:
        images: The test images, greyscale `(N, H, W)` or `(N, H, W, 1)`, or RGB
            `(N, H, W, 3)` with values in [0, 1]. Greyscale is shown with its own range.
        y_true: True class indices in [0, K).
        probs: Predicted probabilities, one column per class.
        class_names: The K class names.
        max_images: At most this many mistakes are shown, most confident first.
        ncols: Images per row.

    Returns:
        A figure with one axes per mistake shown, titled with the true class, the
        predicted class and its probability; one empty axes saying so if there is none.

    Shape:
        images: (N, H, W) or (N, H, W, C), y_true: (N,), probs: (N, K)
    """
    images = np.asarray(images)
    probs = np.asarray(probs, dtype=np.float64)
    y_true = as_labels(y_true, probs.shape[1], "y_true")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # (N, H, W, 1) -> (N, H, W)
    if len(images) != len(y_true) or len(probs) != len(y_true):
        raise ValueError("images, y_true and probs must have the same length N")
    y_pred = probs.argmax(axis=1)  # (N,)
    confidence = probs.max(axis=1)  # (N,)
    wrong = np.flatnonzero(y_pred != y_true)
    # Most confident first; stable sort keeps dataset order among equal confidences.
    shown = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_images]
    if shown.size == 0:
        fig = _figure(figsize=(4, 1.5), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, "No mistakes", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ncols = min(ncols, shown.size)
    nrows = -(-shown.size // ncols)  # ceiling division
    fig = _figure(figsize=(2.6 * ncols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, i in zip(axes, shown, strict=False):
        ax.imshow(images[i], cmap="gray" if images[i].ndim == 2 else None)
        ax.set_title(
            f"true: {class_names[y_true[i]]}\npred: {class_names[y_pred[i]]} ({confidence[i]:.2f})",
            fontsize=9,
        )
        ax.set_axis_off()
    for ax in axes[shown.size :]:
        fig.delaxes(ax)  # the grid's unused cells: no empty frames
    return fig
