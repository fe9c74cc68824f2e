"""Learning curves: loss and scores per epoch, for training and validation.

Read them for three things: both losses falling (learning), validation loss rising while
training loss falls (overfitting: more augmentation or fewer epochs), and validation scores
jumping about (a validation split too small to choose an epoch with confidence).

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

__all__ = ["plot_history"]


def plot_history(history: Sequence[dict[str, float]]) -> Figure:
    """Loss (left) and accuracy / macro-F1 (right) per epoch, from `fit`'s history."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.2))
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
