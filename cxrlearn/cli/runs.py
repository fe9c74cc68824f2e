"""Reading a run folder back: its checkpoint, its split, and datasets for each part."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxrlearn.data import XrayDataset, prepare_images, read_manifest
from cxrlearn.data.splits import SplitRow
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import Preprocess
from cxrlearn.training import predict
from cxrlearn.transforms import eval_transform

__all__ = ["Run", "open_run", "split_dataset", "logits_of"]


@dataclass
class Run:
    """A trained run: its folder, checkpoint, model, classes and split."""

    folder: Path
    checkpoint_path: Path
    ckpt: dict[str, Any]
    model: nn.Module
    class_names: tuple[str, ...]
    rows: list[SplitRow]
    data_root: Path

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.ckpt["meta"]["preprocess"]

    @property
    def flip_average(self) -> bool:
        """Whether predictions average the image and its mirror image (`cxrlearn.tta`)."""
        return Preprocess.from_dict(self.preprocess).flip_average  # off in older checkpoints

    @property
    def temperature(self) -> float:
        return float(self.ckpt.get("temperature", 1.0))

    def save_temperature(self, temperature: float) -> None:
        """Store a fitted temperature in the checkpoint (atomically)."""
        self.ckpt["temperature"] = float(temperature)
        save_checkpoint(self.checkpoint_path, {k: v for k, v in self.ckpt.items()
                                               if k != "format"})


def open_run(folder: Path, checkpoint: str = "best.pt", data_root: Path | None = None) -> Run:
    """Load `folder/checkpoint` and `folder/manifest.csv`.

    Raises:
        CxrlearnError: The folder, checkpoint or manifest is missing or unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CxrlearnError("run folder not found", path=folder)
    ckpt_path = folder / checkpoint
    ckpt = load_checkpoint(ckpt_path)
    class_names = tuple(ckpt["class_names"])
    root = Path(data_root) if data_root is not None else Path(ckpt["meta"]["data_root"])
    rows = read_manifest(folder / "manifest.csv", root, class_names)
    return Run(folder, ckpt_path, ckpt, model_from_checkpoint(ckpt, ckpt_path), class_names,
               rows, root)


def split_dataset(run: Run, split: str, cache_dir: Path | None = None) -> XrayDataset:
    """The evaluation-mode dataset of one part of the run's split (no augmentation)."""
    rows = [r for r in run.rows if r.split == split]
    if not rows:
        raise CxrlearnError(f"the manifest has no {split!r} images", path=run.folder)
    p = run.preprocess
    prepared = prepare_images([r.path for r in rows], p["image_size"], p["low"], p["high"],
                              cache_dir=cache_dir)
    return XrayDataset([r.path for r in rows], [r.label for r in rows], p["image_size"],
                       eval_transform(p["channels"]), images=prepared.images,
                       low=p["low"], high=p["high"])


def logits_of(model: nn.Module, data: XrayDataset, device: torch.device,
              batch_size: int = 64, on_batch=None,
              flip_average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(N, K)` and labels `(N,)` of a dataset, in order (see `training.predict`)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return predict(model.to(device), loader, device, on_batch=on_batch,
                   flip_average=flip_average)
