"""A trained model, whichever file it comes from: one object to predict, explain, evaluate.

`open_model(path)` is the one way from a file to a model. It accepts

- a **run folder** (what `cxrlearn train --out` wrote): its `best.pt`, and its split
  (`manifest.csv`) with the data folder it points into;
- a **checkpoint** (`best.pt`, or `last.pt`): read as plain data with
  `torch.load(weights_only=True)` and checked before anything is built
  (`cxrlearn.checkpoint`); a `manifest.csv` beside it brings the split along;
- an **exported file** (`model.pt`, `.ptl`, `.pt2`): read as data, never run
  (`cxrlearn.export.load`).

and returns a `TrainedModel`: the class names, the preprocessing, the temperature, and a
way to get calibrated probabilities for a raw X-ray. From a checkpoint it also holds the
eager network, which is what Grad-CAM (`explain`), evaluation (`logits`) and export need;
an exported file gives probabilities only. `cxrlearn predict`, `gradcam`, `evaluate`,
`export`, the app, the benchmarks and the lessons all start here.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxrlearn.data import XrayDataset, prepare_images, read_manifest, split_dataset
from cxrlearn.data.splits import SplitRow, manifest_classes
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.calibration import plausible_temperature
from cxrlearn.export.load import ExportedModel, load_exported, read_metadata
from cxrlearn.export.pipeline import eager_probs, weights_sha256
from cxrlearn.gradcam import GradCAM
from cxrlearn.training import predict
from cxrlearn.transforms import Preprocess

__all__ = ["TrainedModel", "Explanation", "open_model"]


@dataclass(frozen=True)
class Explanation:
    """A model's answer for one X-ray, and where its evidence for one class lies.

    Attributes:
        probs: Calibrated class probabilities. Shape (K,).
        predicted: The class with the highest probability.
        target: The class the map explains (the predicted one unless asked otherwise).
        seen: The image the network saw: stretched, resized, 8 bits. Shape (S, S), uint8.
        cam: The Grad-CAM map of `target` at the network's input size, in [0, 1].
            Shape (S, S).
    """

    probs: Tensor
    predicted: int
    target: int
    seen: np.ndarray
    cam: Tensor


@dataclass
class TrainedModel:
    """A trained classifier and what using it needs; see the module docstring.

    Attributes:
        path: The file opened (a run folder stands for its `best.pt`).
        kind: `"checkpoint"`, or an export's format (`"torchscript"`, `"lite"`, `"export"`).
        class_names: Column order of the probabilities.
        preprocess: How a raw X-ray becomes the network's input.
        temperature: T the logits are divided by (1.0 until calibrated).
        network: The eager network in eval mode (checkpoints only), else None.
        exported: The export rebuilt from its data (exported files only), else None.
        checkpoint: The checkpoint's plain data without the weights: `epoch`, `history`,
            `scores`, `config`, `meta`, ... (checkpoints only), else None.
        manifest: The run's `manifest.csv`, when the checkpoint sits in a run folder.
        data_root: The data folder the split's paths point into.
        notes: Things worth telling the user about this model.
    """

    path: Path
    kind: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    temperature: float
    network: nn.Module | None = None
    exported: ExportedModel | None = None
    checkpoint: dict[str, Any] | None = None
    manifest: Path | None = None
    data_root: Path | None = None
    notes: tuple[str, ...] = ()
    _cam: tuple[nn.Module, threading.Lock] | None = field(default=None, repr=False)
    _split: list[SplitRow] | None = field(default=None, repr=False)

    @property
    def split(self) -> list[SplitRow]:
        """The run's split, one row per image (read from `manifest.csv` when first asked).

        Raises:
            CxrlearnError: No manifest beside the checkpoint, the data folder is gone, or
                the manifest is damaged or points outside the data folder.
        """
        if self._split is None:
            if self.manifest is None or self.data_root is None:
                raise CxrlearnError("no split: this model is not in a run folder with a "
                                    "manifest.csv", path=self.path)
            if not self.data_root.is_dir():
                raise CxrlearnError("the run's data folder is gone; if it moved, give its "
                                    "new place (cxrlearn evaluate --data DIR)",
                                    path=self.data_root)
            listed = manifest_classes(self.manifest)
            if set(listed) != set(self.class_names):
                raise CxrlearnError(
                    f"{self.path.name} is for the classes {list(self.class_names)}, but the "
                    f"run's manifest.csv lists {listed}: the checkpoint belongs to another "
                    "run", path=self.path)
            self._split = read_manifest(self.manifest, self.data_root, self.class_names)
        return self._split

    @property
    def folder(self) -> Path:
        """The folder the model file is in (the run folder, for a checkpoint)."""
        return self.path.parent

    @property
    def epoch(self) -> int | None:
        """The epoch a checkpoint holds (for `best.pt`, the one validation chose)."""
        return None if self.checkpoint is None else int(self.checkpoint.get("epoch", 0))

    @property
    def history(self) -> list[dict[str, float]]:
        """`fit`'s history up to the checkpoint's epoch (empty for an export)."""
        return [] if self.checkpoint is None else list(self.checkpoint.get("history", []))

    @property
    def scores(self) -> dict[str, float]:
        """What is known of the model's quality: the chosen epoch's validation scores, and
        `test_*` scores once `cxrlearn evaluate` has run on the test split."""
        if self.checkpoint is None:
            return {}
        scores = dict(self.checkpoint.get("scores") or {})
        if not scores and self.history and self.epoch:
            row = self.history[self.epoch - 1]
            scores = {k: v for k, v in row.items() if k.startswith("val_")}
        return {**scores, **(self.checkpoint.get("test_scores") or {})}

    @property
    def sha256(self) -> str:
        """The fingerprint of the weights (`cxrlearn.export.weights_sha256`)."""
        if self.exported is not None:
            return self.exported.metadata.weights_sha256
        assert self.network is not None
        return weights_sha256(self.network.state_dict())

    def probs(self, images: Sequence[np.ndarray | Tensor]) -> Tensor:
        """Calibrated class probabilities for raw grey images (as `load_image` gives them).

        Shape:
            images: N x (H, W) -> (N, K)
        """
        if self.exported is not None:  # a torch.export program resizes to its input first
            return torch.cat([self.exported(im, fit_size=True) for im in images])
        assert self.network is not None
        return eager_probs(self.network, list(images), self.preprocess, self.temperature)

    def explain(self, image: np.ndarray | Tensor, target: int | None = None) -> Explanation:
        """Predict one raw X-ray and draw the Grad-CAM map of `target` (default: predicted).

        Safe to call from several threads: Grad-CAM's hook would catch any pass through the
        hooked layer, so it runs on a private copy of the network, one call at a time.

        Raises:
            CxrlearnError: The model is an exported file (a graph has no layer to hook).
        """
        if self.network is None:
            raise CxrlearnError(f"{self.path.name} is an exported {self.kind} file: it gives "
                                "probabilities only. Grad-CAM hooks a layer of the eager "
                                "network, which an exported graph does not have; use the "
                                "checkpoint (best.pt)")
        device = next(self.network.parameters()).device
        if self._cam is None or next(self._cam[0].parameters()).device != device:
            # (again when the network was moved to another device since the last call)
            self._cam = (copy.deepcopy(self.network).eval(), threading.Lock())
        network, lock = self._cam
        seen = self.preprocess.prepare(image)  # stretched once: the costly step on big images
        x = self.preprocess.from_prepared(seen)[None].to(device)  # (1, C, S, S)
        with lock, GradCAM(network) as cam:
            result = cam(x, target)
        probs = torch.softmax(result.logits[0].float().cpu() / self.temperature, dim=0)  # (K,)
        return Explanation(probs=probs, predicted=int(probs.argmax()),
                           target=int(result.targets[0]), seen=seen[0].numpy(),
                           cam=result.cams[0].cpu())

    def dataset(self, part: str, cache_dir: Path | None = None) -> XrayDataset:
        """The evaluation-mode dataset of one part of the run's split.

        Raises:
            CxrlearnError: The model has no split (no `manifest.csv` beside it), or the split
                has no image in that part.
        """
        rows = [r for r in self.split if r.split == part]
        if not rows:
            raise CxrlearnError(f"the manifest has no {part!r} images", path=self.folder)
        p = self.preprocess
        prepared = prepare_images([r.path for r in rows], p, cache_dir=cache_dir)
        return split_dataset(rows, part, p, p.eval_transform(), images=prepared.images)

    def logits(self, data: XrayDataset, device: torch.device, batch_size: int = 64,
               on_batch: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
        """Logits `(N, K)` and labels `(N,)` of a dataset, in order (`training.predict`).

        Raises:
            CxrlearnError: The model is an exported file (no eager network).
        """
        if self.network is None:
            raise CxrlearnError("evaluation needs the checkpoint (best.pt), not an exported "
                                "file", path=self.path)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return predict(self.network.to(device), loader, device, on_batch=on_batch)

    def update_checkpoint(self, **values: Any) -> None:
        """Store plain values (a fitted `temperature`, `test_scores`) in the checkpoint file,
        atomically, keeping everything else in it; and in this object."""
        if self.checkpoint is None:
            raise CxrlearnError("only a checkpoint can be updated", path=self.path)
        stored = load_checkpoint(self.path)
        stored.update(values)
        save_checkpoint(self.path, {k: v for k, v in stored.items() if k != "format"})
        self.checkpoint.update(values)
        if "temperature" in values:
            self.temperature = float(values["temperature"])


def open_model(path: str | Path, data_root: str | Path | None = None) -> TrainedModel:
    """Open a run folder, a checkpoint or an exported file; see the module docstring.

    Args:
        path: The file or run folder.
        data_root: Where the run's data folder is now, if it moved since training.

    Raises:
        CxrlearnError: Missing, unreadable, damaged or foreign files, with what to do.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise CxrlearnError("not a run folder: it holds no best.pt (train into it with "
                                "cxrlearn train --out, or name a model file)", path=path)
        path = path / "best.pt"
    if not path.exists():
        raise CxrlearnError("no such file or folder", path=path)
    metadata = read_metadata(path)
    if metadata is not None:
        exported = load_exported(path)
        notes = ()
        if metadata.input_size is not None:
            h, w = metadata.input_size
            notes = (f"{path.name} is a torch.export program for {h}x{w} inputs: images of "
                     "other sizes are resized to that first",)
        return TrainedModel(path, metadata.file_format, metadata.class_names,
                            metadata.preprocess, metadata.temperature, exported=exported,
                            notes=notes)
    ckpt = load_checkpoint(path)
    network = model_from_checkpoint(ckpt, path)  # checks the metadata before building
    if "preprocess" not in ckpt["meta"]:
        raise CxrlearnError("the checkpoint has no meta.preprocess (how images were "
                            "prepared): it was not written by cxrlearn train", path=path)
    notes: tuple[str, ...] = ()
    if ckpt["meta"]["preprocess"].get("flip_average"):
        notes = ("this checkpoint was trained with --tta flip (cxrlearn 0.1): predictions now "
                 "use the image as it is, without averaging its mirror image",)
    temperature = ckpt.get("temperature", 1.0)
    if not plausible_temperature(temperature):
        raise CxrlearnError(f"damaged checkpoint: temperature {temperature!r:.30} is not a "
                            "number between 0.01 and 100", path=path)
    manifest = path.parent / "manifest.csv"
    recorded = ckpt["meta"].get("data_root")
    root = Path(data_root) if data_root is not None else (
        Path(recorded) if isinstance(recorded, str) else None)
    info = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    return TrainedModel(path, "checkpoint", tuple(ckpt["class_names"]),
                        Preprocess.from_dict(ckpt["meta"]["preprocess"]),
                        float(temperature), network=network, checkpoint=info,
                        manifest=manifest if manifest.is_file() else None, data_root=root,
                        notes=notes)
