"""ResNet18: stack residual blocks so that a deep network is as easy to train as a shallow one.

A residual block does not learn the wanted mapping H(x) directly; it learns the residual
F(x) = H(x) - x and adds the input back through a shortcut (He et al. 2016, "Deep Residual
Learning for Image Recognition", CVPR, arXiv:1512.03385, eq. 1 and 2):

    y = ReLU(F(x) + W_s x),    F(x) = BN(conv3x3(ReLU(BN(conv3x3(x)))))

W_s is the identity when the block keeps the shape of x, and a strided 1x1 convolution
followed by batch norm (a "projection", option B of the paper) when the block halves the
feature map or changes the number of channels, because F(x) and x must have the same shape
to be added. If F can do no better it can learn to be zero, so an extra block never has to
make the network worse; this is what lets 18, 34 or 152 layers train.

ResNet18 = a stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of two blocks each
with 64, 128, 256 and 512 channels, global average pooling and one linear layer `fc`.
Attribute names follow torchvision, so `resnet18().state_dict()` has torchvision's 122 keys
and its ImageNet checkpoint loads with `strict=True` (`cxrlearn.transfer`). `summary` shows, as
plain text, what each stage does to the shape of a batch and how many parameters it holds.

Lesson: lessons/02_resnet18_blocks.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "count_parameters",
    "ResNet",
    "StageRow",
    "arch_meta",
    "conv1x1",
    "conv3x3",
    "resnet18",
    "summary",
    "summary_rows",
]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with padding 1 and no bias (the batch norm after it has one).

    Shape:
        (B, in_channels, h, w) -> (B, out_channels, ceil(h / stride), ceil(w / stride))
    """
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution without bias: the projection shortcut W_s of a residual block.

    Shape:
        (B, in_channels, h, w) -> (B, out_channels, ceil(h / stride), ceil(w / stride))
    """
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: y = ReLU(F(x) + W_s x) (He et al. 2016, fig. 2).

    The first convolution carries the stride, so a block with `stride=2` halves the feature
    map. When the stride is not 1 or the width changes, `downsample` (1x1 conv + BN) projects
    x to the shape of F(x); otherwise it is None and the shortcut is the identity.

    Args:
        in_channels: Channels of the input x.
        out_channels: Channels of F(x) and of the output.
        stride: Stride of the first convolution and of the projection.

    Shape:
        (B, in_channels, h, w) -> (B, out_channels, ceil(h / stride), ceil(w / stride))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)  # W_s x: (B, out_channels, h', w')

        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))  # F(x), no ReLU before the addition (paper, eq. 1)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks; `blocks_per_stage=(2, 2, 2, 2)` is ResNet18.

    Shapes stage by stage, for a 224 x 224 input (other sizes: each step rounds up):

        input           (B, in_channels, 224, 224)
        conv1 7x7/2     (B,  64, 112, 112)   then bn1, relu
        maxpool 3x3/2   (B,  64,  56,  56)
        layer1          (B,  64,  56,  56)
        layer2          (B, 128,  28,  28)   first block has stride 2 and a projection
        layer3          (B, 256,  14,  14)
        layer4          (B, 512,   7,   7)
        avgpool         (B, 512,   1,   1)   flattened to (B, 512)
        fc              (B, num_classes)

    Weights start as in torchvision: convolutions He-normal (fan_out), batch norms
    weight 1 and bias 0, `fc` PyTorch's default linear init.

    Batch norms that `freeze_backbone` froze stay in eval mode even after `model.train()`:
    it writes their names into `frozen_norms`, and `train` is overridden to put exactly
    those back. A frozen layer then really is fixed, running statistics included, which is
    what fine-tuning a small data set on top of ImageNet features needs. Nothing is guessed
    from `requires_grad`: a copy with its gradients turned off (an average of the weights)
    still measures its own statistics in train mode. `train` is not part of `forward`, so
    the model stays scriptable, but a scripted copy no longer knows this rule; script for
    inference.

    Args:
        blocks_per_stage: Number of BasicBlocks in layer1..layer4 ((3, 4, 6, 3) is ResNet34).
        num_classes: K, the number of outputs of `fc`.
        in_channels: 3 for RGB, 1 for grey images.

    Shape:
        (B, in_channels, H, W) -> (B, num_classes) logits, for any H, W >= 1.
    """

    # `frozen_norms` matters to `train` only, so TorchScript (which compiles for inference)
    # skips it: it cannot read this annotation, and warns about one written in `__init__`.
    __jit_ignored_attributes__ = ["frozen_norms"]
    frozen_norms: list[str]

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage needs 4 numbers, got {blocks_per_stage!r}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_layer(64, 128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_layer(128, 256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_layer(256, 512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        self.frozen_norms = []  # kept in eval mode by `train` (`freeze_backbone`)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 (arXiv:1502.01852): keeps activation variance steady
                # through ReLU layers.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(
        in_channels: int, out_channels: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        # Only the first block changes the shape; the others keep it.
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer1(x)  # (B, 64, H/4, W/4)
        x = self.layer2(x)  # (B, 128, H/8, W/8)
        x = self.layer3(x)  # (B, 256, H/16, W/16)
        x = self.layer4(x)  # (B, 512, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512, 1, 1) -> (B, 512)
        return self.fc(x)  # (B, K)

    def train(self, mode: bool = True) -> ResNet:
        """Set train or eval mode, but keep the batch norms in `frozen_norms` in eval mode.

        Args:
            mode: True for training mode, False for evaluation mode.

        Returns:
            The model itself.
        """
        super().train(mode)
        for name in self.frozen_norms:
            self.get_submodule(name).eval()
        return self


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet18 (He et al. 2016, arXiv:1512.03385, table 1), with torchvision's names.

    Args:
        num_classes: K, the number of outputs (1000 for ImageNet, 4 for cxrlearn).
        in_channels: 3 for RGB, 1 for grey X-rays.

    Returns:
        A freshly initialised ResNet; 11,689,512 parameters for K = 1000, 11,178,564 for 4.

    Shape:
        (B, in_channels, H, W) -> (B, num_classes)

    Example:
        >>> model = resnet18(num_classes=4)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 4])
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def arch_meta(num_classes: int, in_channels: int) -> dict[str, Any]:
    """The architecture as a checkpoint stores it (`meta["arch"]`): what `resnet18` needs to
    build the same network again.

    Example:
        >>> arch_meta(4, 3)
        {'name': 'resnet18', 'num_classes': 4, 'in_channels': 3}
    """
    return {"name": "resnet18", "num_classes": num_classes, "in_channels": in_channels}


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------


class StageRow(NamedTuple):
    """One stage of a ResNet in `summary_rows`."""

    name: str
    output_shape: tuple[int, ...]
    num_params: int
    trainable_params: int


def summary_rows(model: ResNet, input_size: Sequence[int]) -> list[StageRow]:
    """Output shape and parameter counts of each stage: stem, layer1..layer4, pool, fc.

    Runs one forward pass on zeros in eval mode under `torch.no_grad()` and restores the
    model's mode afterwards, so batch norm statistics are not touched.

    Args:
        model: A ResNet.
        input_size: (B, C, H, W) of the input to try.

    Returns:
        One `StageRow` per stage; their `num_params` add up to the model's.
    """
    stages: list[tuple[str, list[nn.Module]]] = [
        ("stem", [model.conv1, model.bn1, model.relu, model.maxpool]),
        ("layer1", [model.layer1]),
        ("layer2", [model.layer2]),
        ("layer3", [model.layer3]),
        ("layer4", [model.layer4]),
        ("pool", [model.avgpool, nn.Flatten(1)]),
        ("fc", [model.fc]),
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            x = torch.zeros(tuple(input_size), device=device)
            for name, modules in stages:
                for m in modules:
                    x = m(x)
                params = [p for m in modules for p in m.parameters()]
                rows.append(
                    StageRow(
                        name,
                        tuple(x.shape),
                        sum(p.numel() for p in params),
                        sum(p.numel() for p in params if p.requires_grad),
                    )
                )
    finally:
        model.train(was_training)
    return rows


def summary(model: ResNet, input_size: Sequence[int]) -> str:
    """The rows of `summary_rows` as a plain-text table, with a total row.

    Columns: stage, output shape, params and trainable; numbers are right-aligned with
    thousands separators. Plain text, so that the library imports no display package (rich
    belongs to the faces, `cli` and `app`); `print(summary(model, (1, 3, 224, 224)))`:

        ResNet, input (1, 3, 224, 224)
        stage   output shape          params   trainable
        ------  ----------------  ----------  ----------
        stem    (1, 64, 56, 56)        9,536       9,536
        ...
        fc      (1, 1000)            513,000     513,000
        ------  ----------------  ----------  ----------
        total                     11,689,512  11,689,512

    Args:
        model: A ResNet.
        input_size: (B, C, H, W) of the input to try.

    Returns:
        The title line and the table, lines joined by newlines (no trailing newline).
    """
    rows = summary_rows(model, input_size)
    header = ("stage", "output shape", "params", "trainable")
    body = [(r.name, str(r.output_shape), f"{r.num_params:,}", f"{r.trainable_params:,}")
            for r in rows]
    total = ("total", "", f"{sum(r.num_params for r in rows):,}",
             f"{sum(r.trainable_params for r in rows):,}")
    widths = [max(len(cells[i]) for cells in (header, *body, total)) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        # Text columns left-aligned, number columns right-aligned, two spaces between.
        return "  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]),
                          cells[2].rjust(widths[2]), cells[3].rjust(widths[3])]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [f"{type(model).__name__}, input {tuple(input_size)}", line(header), rule,
             *map(line, body), rule, line(total)]
    return "\n".join(lines)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable numbers in `model`, trainable or frozen; buffers (batch norm's
    running statistics) are not parameters and do not count.

    Example:
        >>> count_parameters(resnet18(num_classes=1000))
        11689512
    """
    return sum(p.numel() for p in model.parameters())
