"""Transfer learning: start from ImageNet weights, then fit them to grey X-rays and 4 classes.

A network trained on ImageNet has already learnt edges, textures and shapes; on a small
medical data set, starting from those weights usually beats starting from random ones
(and training only the new head first is cheaper still). Three changes adapt it:

- **Grey input.** X-rays are grey; ImageNet weights expect RGB. Two equivalent answers:
  repeat the grey channel three times (`x.repeat(1, 3, 1, 1)`), or build
  `resnet18(in_channels=1)` and let `load_imagenet_weights` sum the first layer's weights
  over R, G and B (`sum_rgb_weights`). A convolution is linear, so for a grey image both
  give the same output (tested). The second is three times cheaper in the first layer.
  Either way, normalise the grey image with one mean and one standard deviation:
  per-channel ImageNet statistics would make the three copies differ.
- **A new head.** ImageNet has 1000 classes; `replace_head` (or loading into a 4-class
  model, which skips `fc`) gives a fresh `fc` with K outputs.
- **Freezing.** `freeze_backbone` stops gradients outside the named modules; frozen batch
  norms stay in eval mode (`ResNet.train`), so their statistics do not drift either.

Downloads are hash-checked and read with `weights_only=True`: a weights file cannot run code.

Lesson: lessons/02_resnet18_blocks.ipynb
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from cxrlearn.errors import CxrlearnError
from cxrlearn.resnet import ResNet

__all__ = [
    "RESNET18_IMAGENET_URL",
    "LoadReport",
    "freeze_backbone",
    "load_imagenet_weights",
    "replace_head",
    "sum_rgb_weights",
    "unfreeze",
]

RESNET18_IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
"""torchvision's ResNet18 ImageNet weights (IMAGENET1K_V1, about 45 MB). The `-f37072fd` in the
name is the start of the file's sha256, which `torch.hub` checks after downloading."""

# The pattern torch.hub uses to find the hash prefix in a file name ("name-<hex>.ext"). It
# skips the check silently when the name has none, so we insist on at least 8 hex digits.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")


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
            "and give its path: cxrlearn train --pretrained FILE (in Python, "
            "load_imagenet_weights(model, FILE))",
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
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # not a refusal: damaged bytes
            raise CxrlearnError(f"not a readable PyTorch checkpoint ({_first_line(err)})",
                                path=path) from None
        # PyTorch's message is eight lines that end by suggesting weights_only=False, which
        # would run whatever code the file holds: never passed on.
        raise CxrlearnError(
            "holds pickled Python objects, not only tensors, and cxrlearn never unpickles "
            "those (they could run code); save a plain state dict: "
            "torch.save(model.state_dict(), PATH)",
            path=path,
        ) from None
    except Exception as err:  # a damaged pickle can fail in many ways (IndexError too)
        raise CxrlearnError(
            f"not a readable PyTorch checkpoint, truncated or another kind of file "
            f"({_first_line(err)})",
            path=path,
        ) from None
    return _check_state_dict(state, path)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


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
    trainable parameter are written into `model.frozen_norms`: they are put in eval mode now
    and stay there after `model.train()` (see `ResNet.train`), so their running mean and
    variance do not drift either.

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
    model.frozen_norms = [name for name, m in model.named_modules()
                          if isinstance(m, nn.BatchNorm2d)
                          and not any(p.requires_grad for p in m.parameters())]
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
    model.frozen_norms = []
    model.train(model.training)
    return model
