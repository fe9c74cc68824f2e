"""The whole prediction pipeline as one module: raw X-ray in, probabilities out.

`EndToEndModel` holds the network and the preprocessing settings, and its `forward` does,
inside the graph, what `cxrlearn.transforms` does in Python: stretch, resize, round to 8
bits, repeat channels, normalise, the network, the temperature and the softmax. Scripted
or exported, it is a file that an app can run without knowing any of those steps.

`eager_probs` is the same pipeline built from the Python functions the training used
(`Preprocess.network_input`, the network, the temperature); the export checks, and the
tests, compare the two.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrlearn.contrast import stretch_contrast_tensor
from cxrlearn.device import full_float32
from cxrlearn.transforms import Preprocess, as_float_image
from cxrlearn.transforms import resize as resize_image

__all__ = ["EndToEndModel", "eager_probs", "resize_hw", "weights_sha256"]


class EndToEndModel(nn.Module):
    """A raw grey X-ray in, class probabilities out: preprocessing + network + softmax.

    `forward` reproduces `eager_probs` operation by operation:

        x = image / 255                     only for uint8 input, as `load_image` does
        x = stretch_contrast_tensor(x)      per image, on the full-size image
        x = resize(x, S)                    bilinear, antialiased
        x = round(255 x) / 255              the 8-bit rounding of `transforms.prepare`
        x = (repeat(x, C) - mean) / std
        probs = softmax(model(x) / T)

    Every step is written with operations TorchScript and `torch.export` understand, and
    every attribute has a type TorchScript can infer (int, float, Tensor), which is what
    makes `torch.jit.script(EndToEndModel(...))` work. The network is a copy of the one
    passed in, in eval mode, with gradients switched off; the caller's model is not changed.

    Args:
        model: The classifier, mapping (B, C, S, S) to logits (B, K).
        preprocess: The settings the model was trained with.
        temperature: T from temperature scaling (`cxrlearn.evaluation.calibration`); 1 leaves the
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
        logits = self.model(self.preprocess(image))  # (B, K)
        return torch.softmax(logits / self.temperature, dim=1)


@torch.no_grad()
def eager_probs(
    model: nn.Module,
    images: Sequence[np.ndarray | Tensor],
    preprocess: Preprocess,
    temperature: float = 1.0,
) -> Tensor:
    """Class probabilities the plain Python way: `Preprocess.network_input`, the model, T,
    softmax.

    This is the reference an exported file must match. The model runs in eval mode and
    is put back in the mode it was in, on its own device, in full float32 there too
    (`cxrlearn.device.full_float32`: no TF32 on a GPU).

    Args:
        model: The classifier.
        images: Grey images, each (H, W), of any sizes (see `Preprocess.network_input`).
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
        x = torch.stack([preprocess.network_input(im) for im in images])  # (N, C, S, S)
        with full_float32():  # on a GPU too: the reference is held to 1e-5, TF32 is not
            logits = model(x.to(device)).float().cpu()  # (N, K)
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
    x = as_float_image(image).to(torch.float32)[None, None]  # (1, 1, H0, W0)
    if tuple(x.shape[-2:]) == tuple(size):
        return x[0, 0].numpy().copy()
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].numpy()
