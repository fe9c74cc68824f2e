"""One way to turn a model file into predictions, whatever kind of file it is.

A model file is either an export (`cxrlearn.export`: `.pt`, `.ptl`, `.pt2`, holding
`cxrlearn.json`) or a training checkpoint (`best.pt`). `open_model` looks inside the file,
not at its name, and returns a `Predictor`: the class names and a function from a raw grey
image to probabilities. With a checkpoint it also keeps the eager network, which Grad-CAM
needs (an exported graph has no hooks to attach to). `cxrlearn predict` and the app both
use it.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import Preprocess, eager_probs, load_exported, read_metadata

__all__ = ["Predictor", "open_model"]


@dataclass
class Predictor:
    """What `predict` needs from a model file, whichever kind it is."""

    kind: str  # "checkpoint", or the export's file format
    class_names: tuple[str, ...]
    probs: Callable[[np.ndarray], torch.Tensor]  # (H, W) -> (K,)
    model: nn.Module | None = None  # the eager network, for Grad-CAM (checkpoints only)
    preprocess: Preprocess | None = None
    notes: list[str] = field(default_factory=list)


def open_model(path: Path) -> Predictor:
    """An export (it holds cxrlearn.json) or else a checkpoint; errors name the file."""
    metadata = read_metadata(path)
    if metadata is not None:
        exported = load_exported(path)
        notes = []
        if metadata.input_size is not None:
            h, w = metadata.input_size
            notes.append(f"{path.name} is a torch.export program for {h}x{w} inputs: images "
                         "of other sizes are resized to that first")
        return Predictor(metadata.file_format, metadata.class_names,
                         lambda image: exported(image, fit_size=True)[0], notes=notes)
    try:
        ckpt = load_checkpoint(path)
    except CxrlearnError:
        raise
    except Exception as e:  # torch.load fails on arbitrary bytes in many ways (KeyError, ...)
        raise CxrlearnError("neither a cxrlearn export nor a readable checkpoint "
                            f"({type(e).__name__}: {e})",
                            path=path) from None
    model = model_from_checkpoint(ckpt, path)
    try:
        preprocess = Preprocess.from_dict(ckpt["meta"]["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise CxrlearnError(f"checkpoint has no usable meta.preprocess ({e})", path=path) from None
    temperature = float(ckpt.get("temperature", 1.0))  # set by calibration, if it was run
    return Predictor("checkpoint", tuple(ckpt["class_names"]),
                     lambda image: eager_probs(model, [image], preprocess, temperature)[0],
                     model=model, preprocess=preprocess)
