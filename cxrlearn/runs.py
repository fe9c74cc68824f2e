"""A trained run read back from its folder: the checkpoint, the model, the split, the data.

`cxrlearn train` leaves a run folder: `manifest.csv` (which image went to which part of the
split), `best.pt` and `last.pt` (checkpoints), `config.json`, `history.csv`. `open_run`
reads it back as a `Run`, which knows how to rebuild the evaluation-mode dataset of any part
of the split and to compute the model's logits on it. Evaluation, calibration, the
benchmarks and the lessons all start from here.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxrlearn.data import XrayDataset, prepare_images, read_manifest, split_dataset
from cxrlearn.data.splits import SplitRow
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import Preprocess
from cxrlearn.training import predict
from cxrlearn.transforms import eval_transform

__all__ = ["Run", "open_run", "logits_of"]


@dataclass
class Run:
    """A trained run: its folder, checkpoint, model (in eval mode), classes and split."""

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

    @property
    def history(self) -> list[dict[str, float]]:
        """`fit`'s history up to the checkpoint's epoch: one row of numbers per epoch."""
        return list(self.ckpt.get("history", []))

    @property
    def epoch(self) -> int:
        """The epoch the checkpoint holds (1-based): for `best.pt`, the one validation chose."""
        return int(self.ckpt["epoch"])

    def dataset(self, split: str, cache_dir: Path | None = None) -> XrayDataset:
        """The evaluation-mode dataset of one part of the split (no augmentation).

        Raises:
            CxrlearnError: The manifest has no image in that part.
        """
        rows = [r for r in self.rows if r.split == split]
        if not rows:
            raise CxrlearnError(f"the manifest has no {split!r} images", path=self.folder)
        p = self.preprocess
        prepared = prepare_images([r.path for r in rows], p["image_size"], p["low"], p["high"],
                                  cache_dir=cache_dir)
        return split_dataset(rows, split, p["image_size"], eval_transform(p["channels"]),
                             images=prepared.images, low=p["low"], high=p["high"])

    def save_temperature(self, temperature: float) -> None:
        """Store a fitted temperature in the checkpoint (atomically)."""
        self.ckpt["temperature"] = float(temperature)
        save_checkpoint(self.checkpoint_path, {k: v for k, v in self.ckpt.items()
                                               if k != "format"})


def open_run(folder: Path, checkpoint: str = "best.pt", data_root: Path | None = None) -> Run:
    """Load `folder/checkpoint` and `folder/manifest.csv`.

    Args:
        folder: The run folder.
        checkpoint: Which checkpoint in it.
        data_root: The data folder, if it is not where the checkpoint says it was.

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


def logits_of(model: nn.Module, data: XrayDataset, device: torch.device,
              batch_size: int = 64, on_batch=None,
              flip_average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(N, K)` and labels `(N,)` of a dataset, in order (see `training.predict`)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return predict(model.to(device), loader, device, on_batch=on_batch,
                   flip_average=flip_average)
