"""The whole prediction pipeline as one module: raw X-ray in, probabilities out.

`EndToEndModel` holds the network and the preprocessing settings, and its `forward` does,
inside the graph, what `cxrlearn.transforms` does in Python: stretch, resize, round to 8
bits, repeat channels, normalise, the network, the temperature and the softmax. Scripted
or exported, it is a file that an app can run without knowing any of those steps.

`eager_probs` is the same pipeline built from the Python functions the training used; the
export checks, and the tests, compare the two.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrlearn.contrast import stretch_contrast_tensor
from cxrlearn.transforms import IMAGENET_MEAN, IMAGENET_STD, Compose, Normalize, ToChannels
from cxrlearn.transforms import prepare as prepare_image
from cxrlearn.transforms import resize as resize_image
from cxrlearn.tta import model_logits

__all__ = [
    "Preprocess",
    "EndToEndModel",
    "eager_input",
    "eager_probs",
    "resize_hw",
    "weights_sha256",
]


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes the network's input; stored in checkpoints as `meta.preprocess`.

    Attributes:
        image_size: S, the side of the square the network sees.
        low: Lower contrast-stretch percentile.
        high: Upper contrast-stretch percentile.
        channels: 3 (grey repeated, ImageNet layout) or 1.
        mean: Per-channel mean subtracted after scaling to [0, 1]; one value per channel.
        std: Per-channel standard deviation divided by.
        flip_average: Average the logits of the image and of its mirror image
            (test-time augmentation, `cxrlearn.tta`). Not preprocessing strictly, but a
            setting of the pipeline the model was evaluated with, so it travels with it.
    """

    image_size: int
    low: float = 2.0
    high: float = 98.0
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    flip_average: bool = False

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"need {self.channels} mean and std values, got {self.mean}, "
                             f"{self.std}")
        if not 0.0 <= self.low <= self.high <= 100.0:
            raise ValueError(f"need 0 <= low <= high <= 100, got {self.low}, {self.high}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Read the `preprocess` dictionary of a checkpoint's `meta` (lists become tuples)."""
        return cls(image_size=int(d["image_size"]), low=float(d.get("low", 2.0)),
                   high=float(d.get("high", 98.0)), channels=int(d.get("channels", 3)),
                   mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
                   flip_average=bool(d.get("flip_average", False)))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class EndToEndModel(nn.Module):
    """A raw grey X-ray in, class probabilities out: preprocessing + network + softmax.

    `forward` reproduces `eager_probs` operation by operation:

        x = image / 255                     only for uint8 input, as `load_image` does
        x = stretch_contrast_tensor(x)      per image, on the full-size image
        x = resize(x, S)                    bilinear, antialiased
        x = round(255 x) / 255              the 8-bit rounding of `transforms.prepare`
        x = (repeat(x, C) - mean) / std
        logits = model(x), or (model(x) + model(mirror(x))) / 2 with flip_average
        probs = softmax(logits / T)

    Every step is written with operations TorchScript and `torch.export` understand, and
    every attribute has a type TorchScript can infer (int, float, Tensor), which is what
    makes `torch.jit.script(EndToEndModel(...))` work. The network is a copy of the one
    passed in, in eval mode, with gradients switched off; the caller's model is not changed.

    Args:
        model: The classifier, mapping (B, C, S, S) to logits (B, K).
        preprocess: The settings the model was trained with.
        temperature: T from temperature scaling (`cxrlearn.calibration`); 1 leaves the
            logits as they are.

    Shape:
        image: (H, W) or (B, 1, H, W), uint8 or float, any H, W -> probs (B, K)
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = copy.deepcopy(model).cpu().float().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # an inference file: no autograd graph in its outputs
        self.image_size = int(preprocess.image_size)
        self.low = float(preprocess.low)
        self.high = float(preprocess.high)
        self.channels = int(preprocess.channels)
        self.flip_average = bool(preprocess.flip_average)
        self.temperature = float(temperature)
        # Buffers, not parameters: saved in the file, never trained.
        c = preprocess.channels
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32)
                             .view(1, c, 1, 1))  # (1, C, 1, 1)
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32)
                             .view(1, c, 1, 1))  # (1, C, 1, 1)
        self.eval()

    @torch.jit.export
    def preprocess(self, image: Tensor) -> Tensor:
        """The network's input for a raw image: stretch, resize, 8 bits, channels, normalise.

        Exported with the file (`@torch.jit.export`), so an app can look at what the
        network sees.

        Shape:
            image: (H, W) or (B, 1, H, W) -> (B, C, S, S) float32
        """
        if image.dim() == 2:
            x = image.unsqueeze(0).unsqueeze(0)  # (1, 1, H, W)
        elif image.dim() == 4 and image.shape[1] == 1:
            x = image
        else:
            raise ValueError("expected one grey image (H, W) or a batch (B, 1, H, W), got "
                             + str(image.shape))
        if x.numel() == 0:
            raise ValueError("cannot classify an empty image")
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0  # exactly what load_image does with 8-bit files
        x = stretch_contrast_tensor(x, self.low, self.high)  # (B, 1, H, W) in [0, 1]
        x = resize_image(x, self.image_size)  # (B, 1, S, S)
        x = (x * 255.0).round().clamp(0.0, 255.0).to(torch.uint8)  # as transforms.prepare
        x = x.to(torch.float32) / 255.0
        x = x.expand(-1, self.channels, -1, -1)  # (B, C, S, S), grey repeated
        return (x - self.mean) / self.std

    def forward(self, image: Tensor) -> Tensor:
        x = self.preprocess(image)  # (B, C, S, S)
        logits = self.model(x)  # (B, K)
        if self.flip_average:  # cxrlearn.tta.flip_averaged_logits, written out for TorchScript
            logits = (logits + self.model(torch.flip(x, dims=[-1]))) / 2
        return torch.softmax(logits / self.temperature, dim=1)


def _as_float_image(image: np.ndarray | Tensor) -> Tensor:
    """A grey image as float32 in the scale `load_image` gives: uint8 is divided by 255."""
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x


def eager_input(image: np.ndarray | Tensor, preprocess: Preprocess) -> Tensor:
    """The network's input for one image, built with the Python functions training used.

    `transforms.prepare` (stretch, resize, round to 8 bits), `/ 255` as `XrayDataset`
    does, then channels and normalisation (`ToChannels`, `Normalize`) as in
    `transforms.eval_transform`, with the mean and std of `preprocess`.

    Args:
        image: One grey image as `load_image` returns it (float in [0, 1]); uint8 is
            divided by 255 first, as `load_image` does for 8-bit files.
        preprocess: The model's settings.

    Shape:
        image: (H, W) -> (C, S, S)
    """
    prepared = prepare_image(_as_float_image(image), preprocess.image_size, preprocess.low,
                             preprocess.high)  # (1, S, S) uint8
    transform = Compose([ToChannels(preprocess.channels),
                         Normalize(preprocess.mean, preprocess.std)])
    return transform(prepared.to(torch.float32) / 255.0)


@torch.no_grad()
def eager_probs(
    model: nn.Module,
    images: Sequence[np.ndarray | Tensor],
    preprocess: Preprocess,
    temperature: float = 1.0,
) -> Tensor:
    """Class probabilities the plain Python way: `eager_input`, the model, T, softmax.

    With `preprocess.flip_average` the logits are `cxrlearn.tta.flip_averaged_logits`.

    This is the reference an exported file must match. The model runs in eval mode and
    is put back in the mode it was in.

    Args:
        model: The classifier.
        images: Grey images, each (H, W), of any sizes (see `eager_input`).
        preprocess: The model's settings.
        temperature: T; the logits are divided by it before the softmax.

    Returns:
        One row of probabilities per image.

    Shape:
        images: N x (H, W) -> (N, K)
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.stack([eager_input(im, preprocess) for im in images])  # (N, C, S, S)
        x = x.to(device)
        logits = model_logits(model, x, preprocess.flip_average).float().cpu()  # (N, K)
    finally:
        model.train(was_training)
    return torch.softmax(logits / temperature, dim=1)


def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A fingerprint of a model's weights: sha256 over names, dtypes, shapes and bytes.

    Keys are taken in sorted order, so the hash depends on the values only, not on the
    order of the dictionary. Buffers (batch-norm statistics) count: they change outputs.

    Args:
        state_dict: Names to tensors, e.g. `model.state_dict()`.

    Returns:
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def resize_hw(image: np.ndarray | Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resize one grey image to (H, W), square or not, with the filter of `transforms.resize`
    (bilinear, antialiased). Used to fit images to a fixed-size `torch.export` program.

    Shape:
        image: (H0, W0) -> (H, W) float32
    """
    x = _as_float_image(image).to(torch.float32)[None, None]  # (1, 1, H0, W0)
    if tuple(x.shape[-2:]) == tuple(size):
        return x[0, 0].numpy().copy()
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].numpy()
