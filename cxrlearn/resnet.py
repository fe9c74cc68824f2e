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
and its ImageNet checkpoint loads with `strict=True`.

X-rays are grey; ImageNet weights expect RGB. Two equivalent answers are offered: repeat the
grey channel three times (`x.repeat(1, 3, 1, 1)`), or build `resnet18(in_channels=1)` and
let `load_imagenet_weights` sum the first layer's weights over R, G and B. A convolution is
linear, so for a grey image both give the same output (tested). The second is three times
cheaper in the first layer. Either way, normalise the grey image with one mean and one
standard deviation: per-channel ImageNet statistics would make the three copies differ.

Lesson: lessons/02_resnet18_blocks.ipynb
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from rich.table import Table
from torch import Tensor, nn

from cxrlearn.errors import CxrlearnError

__all__ = [
    "RESNET18_IMAGENET_URL",
    "BasicBlock",
    "LoadReport",
    "ResNet",
    "StageRow",
    "conv1x1",
    "conv3x3",
    "freeze_backbone",
    "load_imagenet_weights",
    "replace_head",
    "resnet18",
    "sum_rgb_weights",
    "summary",
    "summary_rows",
    "unfreeze",
]

RESNET18_IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
"""torchvision's ResNet18 ImageNet weights (IMAGENET1K_V1, about 45 MB). The `-f37072fd` in the
name is the start of the file's sha256, which `torch.hub` checks after downloading."""

# The pattern torch.hub uses to find the hash prefix in a file name ("name-<hex>.ext"). It
# skips the check silently when the name has none, so we insist on at least 8 hex digits.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")


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

    Batch norms whose parameters are all frozen (`freeze_backbone`) stay in eval mode even
    after `model.train()`: `train` is overridden to put them back. A frozen layer then
    really is fixed, running statistics included, which is what fine-tuning a small data
    set on top of ImageNet features needs. `train` is not part of `forward`, so the model
    stays scriptable, but a scripted copy no longer knows this rule; script for inference.

    Args:
        blocks_per_stage: Number of BasicBlocks in layer1..layer4 ((3, 4, 6, 3) is ResNet34).
        num_classes: K, the number of outputs of `fc`.
        in_channels: 3 for RGB, 1 for grey images.

    Shape:
        (B, in_channels, H, W) -> (B, num_classes) logits, for any H, W >= 1.
    """

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
        """Set train or eval mode, but keep fully frozen batch norms in eval mode.

        Args:
            mode: True for training mode, False for evaluation mode.

        Returns:
            The model itself.
        """
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and _is_frozen(m):
                m.eval()
        return self


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return len(params) > 0 and not any(p.requires_grad for p in params)


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


# ---------------------------------------------------------------------------------------
# Transfer learning
# ---------------------------------------------------------------------------------------


def sum_rgb_weights(weight: Tensor) -> Tensor:
    """Turn a first-layer RGB kernel into a grey one by summing over R, G and B.

    For a grey image g repeated as (g, g, g): sum_c W_c * g = (sum_c W_c) * g, so the grey
    model gives the RGB model's output on the repeated image.

    Args:
        weight: Convolution weight with 3 input channels. Not modified.

    Returns:
        A new tensor with 1 input channel.

    Shape:
        (C_out, 3, k, k) -> (C_out, 1, k, k)
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a (C_out, 3, k, k) weight, got {tuple(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class LoadReport:
    """What `load_imagenet_weights` did; the library prints nothing, the caller may.

    Attributes:
        source: The file path or URL the weights came from.
        loaded: Keys copied from the checkpoint into the model.
        skipped: Model keys left as they were (the `fc` head when the class count differs).
        adapted: Keys changed on the way (`conv1.weight` summed over RGB for grey input).
    """

    source: str
    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    adapted: tuple[str, ...]

    def __str__(self) -> str:
        text = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.adapted:
            text += f"; summed over RGB: {', '.join(self.adapted)}"
        if self.skipped:
            text += f"; kept the model's own (class count differs): {', '.join(self.skipped)}"
        return text


def load_imagenet_weights(
    model: ResNet,
    source: str | os.PathLike[str] | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> LoadReport:
    """Copy ImageNet weights in torchvision's format into `model`, in place.

    With `source=None` this downloads torchvision's ResNet18 file (`RESNET18_IMAGENET_URL`,
    about 45 MB) once into the torch hub cache (`torch.hub.get_dir()/checkpoints`) and
    reuses it afterwards. Downloads are checked: the hex digits between a `-` and the
    extension in the file name (`-f37072fd.`) must start the file's sha256. A file already
    in the cache is not checked again. Files are read with `weights_only=True`, so a
    checkpoint cannot run code.

    The `fc` head is skipped when the model has another number of classes (it keeps its
    fresh weights and the report lists it). For `in_channels=1` models, `conv1.weight` is
    summed over RGB (`sum_rgb_weights`).

    Args:
        model: A ResNet with torchvision's names, e.g. `resnet18(num_classes=4)`.
        source: Path of a local `.pth` file, an `http(s)://` URL, or None for the default.
        model_dir: Where downloads are stored; default is the torch hub cache.
        progress: Show torch.hub's download progress bar (on stderr).

    Returns:
        A `LoadReport` with the loaded, skipped and adapted keys.

    Raises:
        CxrlearnError: The file is missing, truncated, not a state dict, for another
            architecture, fails the hash check, or cannot be downloaded. The message names it.
    """
    source = RESNET18_IMAGENET_URL if source is None else source
    name = os.fspath(source)
    if urlparse(name).scheme in ("http", "https"):
        state = _download_state_dict(name, model_dir, progress)
    else:
        state = _read_state_dict(Path(name))

    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CxrlearnError(
            f"not a checkpoint for this ResNet: {len(missing)} keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "pass a state dict saved from torchvision's resnet18 or cxrlearn's",
            path=name,
        )

    new_state: dict[str, Tensor] = {}
    loaded: list[str] = []
    skipped: list[str] = []
    adapted_keys: list[str] = []
    for key, target in own.items():
        if key not in state:  # an old checkpoint without num_batches_tracked
            new_state[key] = target
            continue
        value = state[key]
        rgb_into_grey = value.dim() == 4 and value.shape[1] == 3 and target.shape[1] == 1
        if key == "conv1.weight" and rgb_into_grey:
            value = sum_rgb_weights(value)
            adapted_keys.append(key)
        if key.startswith("fc.") and value.shape != target.shape:
            new_state[key] = target
            skipped.append(key)
            continue
        if value.shape != target.shape:
            raise CxrlearnError(
                f"{key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target.shape)} in the model; is it the same architecture?",
                path=name,
            )
        new_state[key] = value
        loaded.append(key)

    model.load_state_dict(new_state, strict=True)
    return LoadReport(name, tuple(loaded), tuple(skipped), tuple(adapted_keys))


def _download_state_dict(
    url: str, model_dir: str | os.PathLike[str] | None, progress: bool
) -> Mapping[str, Tensor]:
    file_name = os.path.basename(urlparse(url).path)
    match = _HASH_IN_NAME.search(file_name)
    if match is None or len(match.group(1)) < 8:
        raise CxrlearnError(
            "the file name carries no '-<sha256 prefix>.' so the download cannot be "
            "checked; download it yourself and pass the local path",
            path=url,
        )
    model_dir = os.path.join(torch.hub.get_dir(), "checkpoints") if model_dir is None else model_dir
    cached = Path(model_dir, file_name)
    try:
        # Writes one "Downloading: ..." line to stdout when the file is not cached yet.
        state = torch.hub.load_state_dict_from_url(
            url,
            model_dir=os.fspath(model_dir),
            map_location="cpu",
            progress=progress,
            check_hash=True,
            weights_only=True,
        )
    except RuntimeError as err:
        if "invalid hash value" not in str(err):
            raise _unreadable_cache(cached, url, err) from err
        raise CxrlearnError(
            f"the download does not match the hash in its name ({err}); nothing was kept",
            path=url,
        ) from err
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors
        raise CxrlearnError(
            f"could not download ({err}); without internet, copy the file to this machine "
            "and pass its path as source",
            path=url,
        ) from err
    except Exception as err:  # a damaged pickle can fail in many ways (IndexError too)
        raise _unreadable_cache(cached, url, err) from err
    return _check_state_dict(state, url)


def _unreadable_cache(cached: Path, url: str, err: Exception) -> CxrlearnError:
    return CxrlearnError(
        f"the cached copy {cached} is not a readable PyTorch checkpoint ({err}); "
        "delete it and try again",
        path=url,
    )


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise CxrlearnError("no such file; pass the path of a .pth state dict", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged pickle can fail in many ways (IndexError too)
        raise CxrlearnError(
            f"not a readable PyTorch checkpoint, truncated or another kind of file ({err})",
            path=path,
        ) from err
    return _check_state_dict(state, path)


def _check_state_dict(state: object, where: str | Path) -> Mapping[str, Tensor]:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CxrlearnError(
            "does not hold a state dict (a mapping of names to tensors)", path=where
        )
    return state


def replace_head(model: ResNet, num_classes: int) -> ResNet:
    """Give `model` a fresh `fc` layer with `num_classes` outputs, in place.

    The new layer has PyTorch's default linear init and the old layer's device and dtype.

    Args:
        model: A ResNet (anything with a linear `fc` attribute).
        num_classes: K, the new number of outputs.

    Returns:
        The same model, for chaining.

    Shape:
        model output (B, K_old) -> (B, num_classes)
    """
    old = model.fc
    model.fc = nn.Linear(
        old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
    )
    return model


def freeze_backbone(model: ResNet, trainable: Sequence[str] = ("fc",)) -> list[str]:
    """Stop gradients everywhere except in the modules named in `trainable`, in place.

    A parameter stays trainable when its name is a name in `trainable` or starts with one
    followed by a dot (`"layer4"` keeps `layer4.0.conv1.weight`). Batch norms left with no
    trainable parameter are put in eval mode now and stay there after `model.train()`
    (see `ResNet.train`), so their running mean and variance do not drift either.

    Args:
        model: A ResNet.
        trainable: Module names to keep trainable, e.g. `("fc",)` or `("layer4", "fc")`.

    Returns:
        The names of the parameters that remain trainable (hand them to the optimizer).

    Raises:
        CxrlearnError: A name in `trainable` matches no parameter (probably a typo).
    """
    names = [name for name, _ in model.named_parameters()]
    for prefix in trainable:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise CxrlearnError(f"no parameter is called {prefix!r} or lies under it")
    kept: list[str] = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(name == t or name.startswith(t + ".") for t in trainable))
        if p.requires_grad:
            kept.append(name)
    model.train(model.training)  # re-applies the frozen-BN rule in the current mode
    return kept


def unfreeze(model: ResNet) -> ResNet:
    """Make every parameter trainable again; batch norms follow the model's mode again.

    Args:
        model: A ResNet, e.g. after `freeze_backbone`.

    Returns:
        The same model, for chaining.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(model.training)
    return model


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


def summary(model: ResNet, input_size: Sequence[int]) -> Table:
    """The rows of `summary_rows` as a rich `Table`, with a total row.

    Print it with `rich.print(table)` or `rich.console.Console(width=100).print(table)`.

    Args:
        model: A ResNet.
        input_size: (B, C, H, W) of the input to try.

    Returns:
        A `rich.table.Table` with columns stage, output shape, params and trainable.
    """
    rows = summary_rows(model, input_size)
    table = Table(title=f"{type(model).__name__}, input {tuple(input_size)}")
    table.add_column("stage")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    for row in rows:
        table.add_row(
            row.name, str(row.output_shape), f"{row.num_params:,}", f"{row.trainable_params:,}"
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        f"{sum(r.num_params for r in rows):,}",
        f"{sum(r.trainable_params for r in rows):,}",
    )
    return table
