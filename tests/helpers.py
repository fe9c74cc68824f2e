"""Plain helpers that several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from cxrlearn.resnet import resnet18


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
