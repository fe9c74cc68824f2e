"""Plain helpers that several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np
import torch

from cxrlearn.data import XrayDataset
from cxrlearn.resnet import resnet18
from cxrlearn.transforms import Preprocess


def random_resnet(seed: int = 0, num_classes: int = 4) -> torch.nn.Module:
    """A seeded ResNet18 in eval mode whose BatchNorm layers hold non-trivial running
    statistics, so that a copy that forgot eval mode (or the statistics) answers otherwise."""
    torch.manual_seed(seed)
    model = resnet18(num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def toy_data(n_per_class: int, seed: int, transform, size: int = 16) -> XrayDataset:
    """Learnable toy images: class k (of 4) has a bright horizontal band at height k.

    Bands, not quadrants: the training transform flips left-right, which must not change
    the class.
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(4):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size)).astype(np.uint8)
            band = size // 4
            img[k * band : (k + 1) * band, :] += 150
            images.append(img)
            labels.append(k)
    paths = [f"toy-{i}.png" for i in range(len(labels))]  # never read: images are given
    return XrayDataset(paths, labels, Preprocess(size), transform, images=np.stack(images),
                       seed=seed)


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A run's history without what the machine's speed decides (`seconds`, `images_per_s`):
    what two runs of the same seed must agree on."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
            for r in history]
