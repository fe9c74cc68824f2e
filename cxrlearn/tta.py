"""Test-time augmentation: ask the network twice, once with the X-ray mirrored.

With `--augment flip` the network was trained on every X-ray and on its left-right mirror
image, so at test time both are pictures it knows how to read. Averaging its two answers
is a small ensemble for the price of one more forward pass:

    logits = (model(x) + model(mirror(x))) / 2

The average is taken over logits, not probabilities, so everything downstream (argmax,
the loss, temperature scaling in `cxrlearn.calibration`) works on it unchanged. A
flip-averaged network gives the same answer for an image and its mirror image, whatever
its weights: that is the property the tests check.

`cxrlearn train --tta flip` stores the choice with the model (`meta.preprocess.flip_average`),
so that `cxrlearn evaluate`, `predict`, `export` and the app all report the same
predictions. It is off by default: on the pool benchmark it changed the validation
macro-F1 of seven trained networks by -1.1 to +1.8 points, and by -1.1 and 0.0 for the two
trained with the current defaults (`benchmarks/README.md`). Whether it helps is a
question for each recipe's validation split.
Grad-CAM explains the first of the two passes, the image as it is.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["mirror", "flip_averaged_logits", "model_logits"]


def mirror(x: Tensor) -> Tensor:
    """The left-right mirror image of a batch: the last (width) axis reversed.

    Shape:
        x: (..., H, W) -> (..., H, W)
    """
    return torch.flip(x, dims=[-1])


def flip_averaged_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The mean of the model's logits for `x` and for its mirror image.

    Shape:
        x: (B, C, H, W) -> (B, K)
    """
    return (model(x) + model(mirror(x))) / 2


def model_logits(model: nn.Module, x: Tensor, flip_average: bool = False) -> Tensor:
    """`model(x)`, or `flip_averaged_logits(model, x)` when `flip_average` is set.

    Shape:
        x: (B, C, H, W) -> (B, K)
    """
    return flip_averaged_logits(model, x) if flip_average else model(x)
