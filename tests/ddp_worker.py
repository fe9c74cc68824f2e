"""Run under torchrun by tests/test_distributed.py: one rank of a tiny data-parallel fit.

Usage: torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT_DIR
Rank 0 writes OUT_DIR/last.pt (through `fit`) and OUT_DIR/final.pt (the final weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlearn.data import XrayDataset
from cxrlearn.distributed import detect, init_process_group
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transforms import Preprocess, eval_transform, train_transform

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
CONFIG = TrainConfig(num_epochs=3, batch_size=8, lr=1e-2, warmup_epochs=1, seed=3)
META = {"arch": {"name": "tiny-nobn", "num_classes": 4, "in_channels": 3}}


class TinyNoBN(nn.Module):
    """No BatchNorm: per-replica statistics would (rightly) make DDP differ from one process."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, (4, 1)).flatten(1))


def toy(n_per_class: int, seed: int, transform) -> XrayDataset:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(4):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (16, 16)).astype(np.uint8)
            img[k * 4 : k * 4 + 4, :] += 150
            images.append(img)
            labels.append(k)
    return XrayDataset([f"toy-{i}" for i in range(len(labels))], labels, Preprocess(16), transform,
                       images=np.stack(images), seed=seed)


def train(out: Path | None, device: torch.device | None = None) -> nn.Module:
    """`fit` alone, or under torchrun once the process group is up (it notices by itself)."""
    torch.manual_seed(0)
    model = TinyNoBN()
    fit(model, toy(8, 0, train_transform()), toy(3, 1, eval_transform()), CONFIG,
        device or torch.device("cpu"), CLASSES, out_dir=out, meta=META)
    return model


if __name__ == "__main__":
    out = Path(sys.argv[1])
    env = detect()
    assert env is not None, "run me under torchrun"
    device = init_process_group(env, torch.device("cpu"))
    model = train(out, device)
    if env.is_main:
        torch.save(model.state_dict(), out / "final.pt")
    torch.distributed.destroy_process_group()
