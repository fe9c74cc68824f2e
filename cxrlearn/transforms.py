"""Image transforms written by hand: resize, flip, small affine jitter, channels, normalise.

Every image goes through the same two stages:

1. **prepare** (deterministic, done once and cacheable): contrast-stretch the full-size
   image (`cxrlearn.contrast`), resize it to `S x S` with antialiasing, and round to 8 bits.
   Rounding is like saving the stretched image as a PNG, which the reference project did;
   doing it everywhere (training, evaluation, the exported model) keeps every path identical.
2. **transform** (per epoch): random flip, shift or affine jitter for training, then repeat
   the grey channel (or not), then normalise: `x' = (x - mean) / std`.

One augmentation works on whole batches instead of single images: `BatchMix` (MixUp and
CutMix) blends each image with another of its batch, and the training loop blends their
labels' losses the same way (`cxrlearn.training.train_one_epoch`).

Normalisation uses the ImageNet statistics (mean 0.485, 0.456, 0.406; std 0.229, 0.224,
0.225) because pretrained ResNet weights expect them. A one-channel model uses their
averages (0.449, 0.226), so that a grey image repeated three times and normalised per channel
is close to the one-channel version.

Random transforms take a `torch.Generator`, so that a seed decides every flip: the same seed
gives the same augmented images, whatever the number of data-loading workers.

`Preprocess` is the pipeline's settings in one frozen dataclass (the side S, the stretch
percentiles, the channels, the normalisation), with their defaults, written down once. A
checkpoint stores it as `meta.preprocess`, an exported file in its `cxrlearn.json`; whatever
turns a raw X-ray into the network's input (evaluation, Grad-CAM, export, the app) reads it
from there and calls `Preprocess.network_input`.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cxrlearn.contrast import HIGH, LOW, stretch_contrast_tensor
from cxrlearn.settings import between, check_fields, from_plain, one_of, setting, to_plain

__all__ = [
    "as_float_image",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GREY_MEAN",
    "GREY_STD",
    "MAX_IMAGE_SIZE",
    "Preprocess",
    "resize",
    "prepare",
    "Resize",
    "RandomHorizontalFlip",
    "RandomAffine",
    "RandomShift",
    "BatchMix",
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
MAX_IMAGE_SIZE = 2048
"""Largest side S a network input may have: 4 times ImageNet's 224 px and more than any
X-ray classifier here needs. A checkpoint asking for more is refused before any memory is
allocated for it."""


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
    image: np.ndarray | Tensor, image_size: int, low: float = LOW, high: float = HIGH
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


class RandomShift:
    """Shift the image by up to `fraction` of its side in each direction, filling by mirroring.

    The image is padded by `p = round(fraction * S)` pixels on every side with its own mirror
    image (reflection padding, as in the fast CIFAR-10 training recipes), then a random
    `S x S` window is cut out: every output pixel is a real pixel of the X-ray, with no
    black border for the network to learn from, and no interpolation (a whole-pixel shift
    does not blur).

    Shape:
        (C, S, S) -> (C, S, S)
    """

    def __init__(self, fraction: float = 0.0625) -> None:
        self.fraction = fraction

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        side_h, side_w = x.shape[-2:]
        p = min(round(self.fraction * min(side_h, side_w)), min(side_h, side_w) - 1)
        if p < 1:
            return x
        padded = F.pad(x.unsqueeze(0), (p, p, p, p), mode="reflect").squeeze(0)  # (C, S+2p, S+2p)
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
        return padded[..., dy:dy + side_h, dx:dx + side_w]

    def __repr__(self) -> str:
        return f"RandomShift(fraction={self.fraction})"


class BatchMix:
    """MixUp and CutMix: each image of a batch blended with another image of the same batch.

    MixUp (Zhang et al. 2018, arXiv 1710.09412) takes `share * x + (1 - share) * x'`;
    CutMix (Yun et al. 2019, arXiv 1905.04899) pastes a box of `x'` into `x`, `share` then
    being the part of `x` left. `x'` is the batch in a random order and `share` is drawn
    from Beta(alpha, alpha). The label is blended by the same share; since cross-entropy is
    linear in the target, the loop blends the two losses instead (`share * loss(y) +
    (1 - share) * loss(y')`). A network cannot learn such blends by heart, which is the
    point once a run is long enough to memorise its training set. With both alphas above 0,
    a coin chooses one of them for each batch.

    Args:
        mixup: MixUp's alpha; 0 never mixes.
        cutmix: CutMix's alpha; 0 never cuts.
        rng: Where every draw comes from (seed it for repeatable runs).
    """

    def __init__(self, mixup: float, cutmix: float, rng: np.random.Generator) -> None:
        if mixup < 0 or cutmix < 0 or mixup == cutmix == 0:
            raise ValueError(f"need alphas >= 0, one of them above 0, got {mixup}, {cutmix}")
        self.mixup, self.cutmix, self.rng = mixup, cutmix, rng

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, float]:
        """Blend a batch.

        Returns:
            The blended batch, each image's partner (an index into the batch) and the share
            of each image's own label.

        Shape:
            x: (B, C, H, W) -> (B, C, H, W), (B,), a float
        """
        partner = torch.from_numpy(self.rng.permutation(x.shape[0]))  # (B,)
        cut = self.mixup == 0 or (self.cutmix > 0 and self.rng.random() < 0.5)
        share = float(self.rng.beta(*(2 * [self.cutmix if cut else self.mixup])))
        if not cut:
            return share * x + (1 - share) * x[partner], partner, share
        h, w = x.shape[-2:]
        r = math.sqrt(1 - share)  # a box with (1 - share) of the area, centred anywhere
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0, y1 = max(cy - round(r * h / 2), 0), min(cy + round(r * h / 2), h)
        x0, x1 = max(cx - round(r * w / 2), 0), min(cx + round(r * w / 2), w)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x[partner][..., y0:y1, x0:x1]
        return out, partner, 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box, as clipped

    def __repr__(self) -> str:
        return f"BatchMix(mixup={self.mixup}, cutmix={self.cutmix})"


class ToChannels:
    """Repeat a grey image to `num_channels` channels (3 for ImageNet weights, or keep 1).

    Shape:
        (1, H, W) -> (num_channels, H, W)
    """

    def __init__(self, num_channels: int) -> None:
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


@dataclass(frozen=True)
class Preprocess:
    """How a raw grey X-ray becomes the network's input: the settings and their defaults.

    `network_input(image)` is `prepare` (stretch, resize to S, 8 bits), `/ 255`, then
    `eval_transform` with this object's mean and std. A checkpoint stores `to_dict()` as
    `meta["preprocess"]`; `from_dict` reads it back, checking every value. Each field is a
    setting (`cxrlearn.settings`): `cxrlearn train`'s `--image-size` and `--channels` are
    built from it.

    The defaults of `mean` and `std` depend on `channels`: ImageNet's for 3 channels,
    their average for 1.
    """

    image_size: int = setting(
        128, help="The side S of the square image the network sees, in pixels.",
        check=between(16, MAX_IMAGE_SIZE), flag="--image-size", metavar="S", group="model")
    low: float = setting(LOW, help="The lower contrast-stretch percentile.",
                         check=between(0, 100))
    high: float = setting(HIGH, help="The upper contrast-stretch percentile.",
                          check=between(0, 100))
    channels: int = setting(
        3, help="3 repeats the grey image three times (the ImageNet layout); 1 keeps one "
                "channel, with conv1 summed over RGB.",
        check=one_of((1, 3)), flag="--channels", group="model")
    mean: tuple[float, ...] | None = setting(
        None, help="The per-channel mean subtracted after scaling to [0, 1]. None means "
                   "ImageNet's for 3 channels and their average for 1.")
    std: tuple[float, ...] | None = setting(
        None, help="The per-channel standard deviation divided by. None means as for mean.")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.low <= self.high:
            raise ValueError(f"need 0 <= low <= high <= 100, got {self.low}, {self.high}")
        default = _normalize_for(self.channels)
        # The other channel count's default, in a copy made with other channels
        # (`dataclasses.replace`, `cxrlearn train --channels 1`), was filled in, not chosen.
        other = _normalize_for(4 - self.channels)  # channels is 1 or 3
        # A frozen dataclass: fill the defaults that depend on `channels` the only way it allows.
        mean = default.mean if self.mean in (None, other.mean) else tuple(map(float, self.mean))
        std = default.std if self.std in (None, other.std) else tuple(map(float, self.std))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if len(mean) != self.channels or len(std) != self.channels:
            raise ValueError(f"need {self.channels} mean and std values, got {mean}, {std}")
        if not all(math.isfinite(v) and v > 0 for v in std) or not all(map(math.isfinite, mean)):
            raise ValueError(f"mean must be finite and std positive, got {mean}, {std}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Read a stored `to_dict()` (`cxrlearn.settings.from_plain`): missing fields take
        their defaults, others are ignored; the side alone is never guessed.

        Raises:
            ValueError: No image_size, or a value of the wrong type or out of range (the
                message says which).
        """
        if not isinstance(d, Mapping) or "image_size" not in d:
            raise ValueError("no image_size")
        return from_plain(cls, d)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON: tuples become lists."""
        return to_plain(self)

    def train_transform(self, flip: bool = True, affine: bool = True,
                        shift: float = 0.0) -> Compose:
        """Stage 2 for training with this object's channels, mean and std; `shift` > 0 adds
        a `RandomShift` of up to that fraction of the side."""
        steps: list = []
        if flip:
            steps.append(RandomHorizontalFlip(0.5))
        if shift > 0:
            steps.append(RandomShift(shift))
        if affine:
            steps.append(RandomAffine())
        return Compose([*steps, ToChannels(self.channels), Normalize(self.mean, self.std)])

    def eval_transform(self) -> Compose:
        """Stage 2 for evaluation with this object's channels, mean and std."""
        return self.train_transform(flip=False, affine=False)

    def prepare(self, image: np.ndarray | Tensor) -> Tensor:
        """Stage 1 (`prepare`): what the network sees, as 8 bits. Shape: (H, W) -> (1, S, S)."""
        return prepare(as_float_image(image), self.image_size, self.low, self.high)

    def network_input(self, image: np.ndarray | Tensor) -> Tensor:
        """The network's input for one raw grey image: stage 1, `/ 255`, stage 2.

        Args:
            image: As `cxrlearn.data.load_image` returns it (float in [0, 1]); uint8 is
                divided by 255 first, as `load_image` does for 8-bit files.

        Shape:
            image: (H, W) -> (C, S, S)
        """
        return self.from_prepared(self.prepare(image))

    def from_prepared(self, prepared: Tensor) -> Tensor:
        """Stage 2 on what `prepare` returned: `/ 255`, channels, normalisation.

        Shape:
            prepared: uint8 (1, S, S) -> (C, S, S)
        """
        return self.eval_transform()(prepared.to(torch.float32) / 255.0)



def train_transform(channels: int = Preprocess.channels, flip: bool = True,
                    affine: bool = True) -> Compose:
    """Stage 2 for training: random flip and affine jitter, channels, normalisation.

    Input is a prepared image as float in [0, 1], `(1, S, S)`. The same as
    `Preprocess(channels=channels).train_transform(flip, affine)`.
    """
    return Preprocess(channels=channels).train_transform(flip, affine)


def eval_transform(channels: int = Preprocess.channels) -> Compose:
    """Stage 2 for evaluation and prediction: channels and normalisation, nothing random."""
    return Preprocess(channels=channels).eval_transform()


def as_float_image(image: np.ndarray | Tensor) -> Tensor:
    """A grey image as a float tensor in the scale `load_image` gives: uint8 is divided by 255."""
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x
