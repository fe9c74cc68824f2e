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

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["NEAR_CHANCE_MARGIN", "quality_warning", "is_near_chance"]

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
