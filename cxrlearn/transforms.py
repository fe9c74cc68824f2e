"""Image transforms written by hand: resize, flip, small affine jitter, channels, normalise.

Every image goes through the same two stages:

1. **prepare** (deterministic, done once and cacheable): contrast-stretch the full-size
   image (`cxrlearn.contrast`), resize it to `S x S` with antialiasing, and round to 8 bits.
   Rounding is like saving the stretched image as a PNG, which the reference project did;
   doing it everywhere (training, evaluation, the exported model) keeps every path identical.
2. **transform** (per epoch): random flip and affine jitter for training, then repeat the
   grey channel (or not), then normalise: `x' = (x - mean) / std`.

Normalisation uses the ImageNet statistics (mean 0.485, 0.456, 0.406; std 0.229, 0.224,
0.225) because pretrained ResNet weights expect them. A one-channel model uses their
averages (0.449, 0.226), so that a grey image repeated three times and normalised per channel
is close to the one-channel version.

Random transforms take a `torch.Generator`, so that a seed decides every flip: the same seed
gives the same augmented images, whatever the number of data-loading workers.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cxrlearn.contrast import stretch_contrast_tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GREY_MEAN",
    "GREY_STD",
    "resize",
    "prepare",
    "Resize",
    "RandomHorizontalFlip",
    "RandomAffine",
    "ToChannels",
    "Normalize",
    "Compose",
    "train_transform",
    "eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.449,)  # mean of the three ImageNet means
GREY_STD = (0.226,)  # mean of the three ImageNet stds


def resize(x: Tensor, size: int) -> Tensor:
    """Resize to `size x size` with bilinear interpolation and antialiasing.

    Antialiasing averages over the pixels each output pixel covers when shrinking; without it
    a 2000-pixel X-ray shrunk to 128 pixels aliases (fine ribs turn into moire).

    Shape:
        x: (C, H, W) or (B, C, H, W), float -> (C, size, size) or (B, C, size, size)
    """
    batched = x.dim() == 4
    xb = x if batched else x.unsqueeze(0)
    if xb.shape[-2] == size and xb.shape[-1] == size:
        out = xb
    else:
        out = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return out if batched else out.squeeze(0)


def prepare(
    image: np.ndarray | Tensor, image_size: int, low: float = 2.0, high: float = 98.0
) -> Tensor:
    """Stage 1: stretch contrast, resize, round to 8 bits.

    Args:
        image: One grey image, e.g. from `cxrlearn.data.load_image`.
        image_size: Side S of the square output.
        low: Lower stretch percentile.
        high: Upper stretch percentile.

    Returns:
        uint8 image.

    Shape:
        image: (H, W) -> (1, S, S)
    """
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    x = x.reshape(1, 1, x.shape[-2], x.shape[-1])  # (1, 1, H, W)
    x = stretch_contrast_tensor(x, low, high)  # (1, 1, H, W) in [0, 1]
    x = resize(x, image_size)  # (1, 1, S, S)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).squeeze(0)


class Resize:
    """Resize to a square of side `size` (see `resize`)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return resize(x, self.size)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `p`.

    Chest X-rays are not symmetric (the heart sits on the left), so a flip is a mild lie; it
    still helps with small data, and the reference project used it.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if torch.rand((), generator=generator).item() < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomAffine:
    """Small random rotation, zoom and shift, as a patient is never placed twice the same way.

    One affine map per image: rotate by an angle in [-degrees, degrees], scale by a factor in
    [1 - scale, 1 + scale], shift by up to `translate` of the width and height. Pixels that
    come from outside the image are filled with 0 (black, like the film's border).
    """

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, translate: float = 0.05) -> None:
        self.degrees, self.scale, self.translate = degrees, scale, translate

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(4, generator=generator) * 2 - 1  # four numbers in [-1, 1]
        angle = math.radians(self.degrees) * u[0].item()
        zoom = 1.0 + self.scale * u[1].item()
        tx, ty = self.translate * 2 * u[2].item(), self.translate * 2 * u[3].item()
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        # affine_grid maps output coordinates in [-1, 1] to input coordinates.
        theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=x.dtype)  # (1, 2, 3)
        xb = x.unsqueeze(0)  # (1, C, H, W)
        grid = F.affine_grid(theta, list(xb.shape), align_corners=False)  # (1, H, W, 2)
        return F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False).squeeze(0)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(degrees={self.degrees}, scale={self.scale}, "
            f"translate={self.translate})"
        )


class ToChannels:
    """Repeat a grey image to `num_channels` channels (3 for ImageNet weights, or keep 1).

    Shape:
        (1, H, W) -> (num_channels, H, W)
    """

    def __init__(self, num_channels: int = 3) -> None:
        self.num_channels = num_channels

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x.expand(self.num_channels, -1, -1).contiguous()

    def __repr__(self) -> str:
        return f"ToChannels({self.num_channels})"


class Normalize:
    """Per channel: `(x - mean) / std`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)  # (C, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)  # (C, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def _normalize_for(channels: int) -> Normalize:
    if channels == 3:
        return Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if channels == 1:
        return Normalize(GREY_MEAN, GREY_STD)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def train_transform(channels: int = 3, flip: bool = True, affine: bool = True) -> Compose:
    """Stage 2 for training: random flip and affine jitter, channels, normalisation.

    Input is a prepared image as float in [0, 1], `(1, S, S)`.
    """
    steps: list = []
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    if affine:
        steps.append(RandomAffine())
    return Compose([*steps, ToChannels(channels), _normalize_for(channels)])


def eval_transform(channels: int = 3) -> Compose:
    """Stage 2 for evaluation and prediction: channels and normalisation, nothing random."""
    return Compose([ToChannels(channels), _normalize_for(channels)])
