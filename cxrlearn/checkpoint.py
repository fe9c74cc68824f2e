"""Checkpoints: everything needed to resume a run exactly, written so nothing is ever lost.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts: model,
optimiser and schedule states, the epoch, the random states, the config, the class names
and the history. Plain data means it loads with `torch.load(..., weights_only=True)`, which
refuses to run code hidden in a file: never unpickle a file you did not make.

Writes are atomic: the checkpoint goes to a temporary file in the same folder, is flushed
to disk, and is then renamed over the old one. A crash or a full disk mid-write leaves the
previous checkpoint intact, never half a file.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlearn.errors import CxrlearnError
from cxrlearn.resnet import resnet18

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "cxrlearn-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(
    path: str | Path, class_names: tuple[str, ...] | list[str] | None = None
) -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`) and check it is one of ours.

    Args:
        path: A `best.pt` or `last.pt`.
        class_names: If given, the classes the caller expects; a mismatch is an error.

    Raises:
        CxrlearnError: Missing, unreadable, not a cxrlearn checkpoint, or other classes.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrlearnError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways (KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CxrlearnError(f"not a readable checkpoint ({first})", path=path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CxrlearnError(
            "not a cxrlearn checkpoint (made by another program, or a bare state dict)", path=path
        )
    if class_names is not None and list(ckpt["class_names"]) != list(class_names):
        raise CxrlearnError(
            f"checkpoint was trained for classes {list(ckpt['class_names'])}, "
            f"not {list(class_names)}",
            path=path,
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Build the network a checkpoint describes (`ckpt["meta"]["arch"]`) and load its weights.

    Returns the model in eval mode.
    """
    arch = ckpt.get("meta", {}).get("arch", {})
    if arch.get("name") != "resnet18":
        raise CxrlearnError(f"unknown architecture {arch.get('name')!r}", path=path)
    model = resnet18(num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CxrlearnError(f"weights do not fit resnet18: {str(e).splitlines()[0]}",
                            path=path) from None
    return model.eval()
