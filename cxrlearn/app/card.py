"""The model card: what the app says about how good its model is, and when not to trust it.

Bars of percentages look authoritative whatever the network learned: an untrained network
answering 30 / 33 / 18 / 18 % looks, on a page, much like a good one. So the app shows what
the model file knows about its own quality, next to every answer: the validation scores of
the epoch training kept (`best.pt` stores them), the test scores once `cxrlearn evaluate` has
run (written beside the checkpoint, in `test_scores.json`, since evaluating never changes
the model file; `cxrlearn.trained.TrainedModel.scores` reads both), and chance, 1/K for K
classes. And it warns, in words, when

    no macro-F1 is known                                 (an exported file carries none), or
    min(val_macro_f1, test_macro_f1) < 1/K + NEAR_CHANCE_MARGIN        (1/K + 0.15)

Macro-F1, because guessing at random scores about 1/K on it whatever the class balance,
and a network that answers one class for everything scores less (2 / (K (K + 1)), 0.1 for
four classes), while its accuracy can look fine on unbalanced data. The margin, 0.15, is
about two and a half standard errors of a score measured on a few dozen validation images
(the bundled sample's split): below it, the model is not clearly better than a guess. The
lower of the two scores counts, because validation chose the epoch and so flatters it.

The numbers come from the model file, which anyone can write: `read_card` is the one place
the card's fields (`epoch`, `scores`, `history`, `test_scores`) are read, and each is checked
there once. A field that is not what `cxrlearn train` writes (a score of 10**400, a list
where a table belongs, a history of integers, an epoch past the history, test scores as
text) is left out with a note, and the app starts without it: a card that says less,
never a traceback.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrlearn.checkpoint import is_real

__all__ = ["MAX_EPOCH", "NEAR_CHANCE_MARGIN", "Card", "is_near_chance", "quality_warning",
           "read_card"]

MAX_EPOCH = 1_000_000
"""Largest epoch number believed; a file claiming more was not written by training."""

NEAR_CHANCE_MARGIN = 0.15
"""A model whose macro-F1 is below 1/K + this is called near chance (see the module)."""


def quality_warning(scores: Mapping[str, float], num_classes: int, file: str,
                    exported: bool = False, margin: float = NEAR_CHANCE_MARGIN) -> str | None:
    """Why the answers of a model should not be trusted, or None when its scores are fine.

    Args:
        scores: What the model file says: `val_macro_f1`, `test_macro_f1`, ... (may be empty).
        num_classes: K, the number of classes.
        file: The model file's name, for the message.
        exported: Whether the file is an export (which never carries scores).
        margin: How far above chance (1/K) the macro-F1 must be.

    Returns:
        A sentence for a person, or None.
    """
    chance = 1.0 / num_classes
    known = {part: scores[f"{part}_macro_f1"] for part in ("val", "test")
             if f"{part}_macro_f1" in scores}
    if not known:
        why = ("an exported file keeps the weights, not how well they did; start the app "
               "with its checkpoint (best.pt) to see its validation scores" if exported else
               "the checkpoint holds no validation scores (cxrlearn train stores them)")
        return f"{file} carries no scores; its quality is unknown: {why}"
    part, worst = min(known.items(), key=lambda item: item[1])
    if not is_near_chance(worst, num_classes, margin):
        return None
    name = {"val": "validation", "test": "test"}[part]
    return (f"near chance: {file} scored a macro-F1 of {worst:.2f} on the {name} images, "
            f"where guessing among {num_classes} classes scores about {chance:.2f} (the app "
            f"warns below {chance + margin:.2f}); its answers are close to guesses")


def is_near_chance(macro_f1: float, num_classes: int,
                   margin: float = NEAR_CHANCE_MARGIN) -> bool:
    """True when a macro-F1 is below chance (1/K) plus `margin`: the rule behind the warning.

    Example:
        >>> is_near_chance(0.30, 4), is_near_chance(0.40, 4), is_near_chance(0.90, 4)
        (True, False, False)
    """
    return macro_f1 < 1.0 / num_classes + margin


@dataclass(frozen=True)
class Card:
    """What a model file says of itself, checked: see `read_card`."""

    epoch: int | None = None
    scores: dict[str, float | int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def read_card(checkpoint: Mapping[str, Any] | None, file: str = "the model file") -> Card:
    """The epoch and the scores a checkpoint states, each checked; the app's one reader.

    The validation scores are `scores` (what `cxrlearn train` stores), else the `val_*`
    entries of `history[epoch - 1]`; `test_scores` (from `cxrlearn evaluate`) are added.
    A score is kept when it is a finite real number (not a bool), and, for an F1 or an
    accuracy, between 0 and 1. Whatever fails a check is left out and named in `notes`.

    Args:
        checkpoint: The checkpoint's plain data (`TrainedModel.checkpoint`), or None for an
            exported file (which states nothing).
        file: The file's name, for the notes.

    Returns:
        The checked epoch (None when absent or invalid), scores and notes.

    Example:
        >>> read_card({"epoch": 2, "scores": {"val_macro_f1": 0.8, "val_loss": 10**400}})
        ... # doctest: +NORMALIZE_WHITESPACE
        Card(epoch=2, scores={'val_macro_f1': 0.8},
             notes=("the model file's scores: 'val_loss' is not a finite number; left out",))
    """
    if checkpoint is None:
        return Card()
    notes: list[str] = []
    epoch = checkpoint.get("epoch")
    if epoch is not None and not (_is_int(epoch) and 0 <= epoch <= MAX_EPOCH):
        notes.append(f"{file}'s epoch {_show(epoch)} is not an epoch number; left out")
        epoch = None
    scores = _table(checkpoint.get("scores"), f"{file}'s scores", notes)
    history = checkpoint.get("history")
    if not scores and epoch and history is not None:
        if not isinstance(history, list | tuple):
            notes.append(f"{file}'s history is not a list of epochs; left out")
        elif epoch > len(history):
            notes.append(f"{file} says epoch {epoch}, but its history has {len(history)} "
                         "epochs; no validation scores")
        else:
            row = _table(history[epoch - 1], f"{file}'s history, epoch {epoch},", notes)
            scores = {k: v for k, v in row.items() if k.startswith("val_")}
    tests = _table(checkpoint.get("test_scores"), f"{file}'s test scores", notes)
    return Card(epoch=epoch, scores={**scores, **tests}, notes=tuple(notes))


def _table(value: Any, what: str, notes: list[str]) -> dict[str, float | int]:
    """The entries of a {name: number} table that pass the checks; notes for the others."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        notes.append(f"{what} are not a table of names and numbers "
                     f"({type(value).__name__}); left out")
        return {}
    kept: dict[str, float | int] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not is_real(number):
            notes.append(f"{what}: {_show(name)} is not a finite number; left out")
        elif name.endswith(("macro_f1", "accuracy")) and not 0 <= number <= 1:
            notes.append(f"{what}: {name} = {_show(number)} is not between 0 and 1; left out")
        else:
            kept[name] = number
    return kept


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value for a note: its text, cut to 40 characters (a file may hold anything)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
