"""A small network trained on the bundled sample: trained once, then kept on disk.

Lessons after the training lesson need a trained network: to evaluate it (04), to explain
its answers (05). Training one costs about a minute of a laptop's CPU, too long to repeat in
every lesson. `sample_run()` trains ResNet18 on the 400 X-rays of the bundled sample the way
`cxrlearn train` does (a seeded, stratified split that keeps near-duplicates on one side,
contrast stretching, random flips), writes an ordinary run folder (`manifest.csv`,
`best.pt`) into the cache, and opens it as a `cxrlearn.runs.Run`. The folder's name is a
hash of every setting and of the cxrlearn version: change either and a new network is
trained; call it again with the same settings, from any lesson, and it loads in seconds.

    run = sample_run()                   # trains on the first call, loads afterwards
    run.model, run.dataset("test")       # the network and its held-out test images

On one machine the network is the same every time (seeded, on the CPU). On another CPU, or
with another number of threads, the floating-point sums of training come out a little
different, and after ten epochs a few predictions differ: the lessons assert what holds for
any such network and never promise exact scores.

The cache folder is `cxrlearn.data.default_cache_dir()` (set `CXRLEARN_CACHE_DIR` to move
it); deleting it is always safe.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import cxrlearn
from cxrlearn.checkpoint import load_checkpoint, save_checkpoint
from cxrlearn.data import (
    default_cache_dir,
    dhash,
    duplicate_groups,
    load_image,
    near_duplicate_pairs,
    prepare_images,
    sample_root,
    scan_folder,
    split_dataset,
    split_items,
    write_manifest,
)
from cxrlearn.export import Preprocess
from cxrlearn.resnet import resnet18
from cxrlearn.runs import Run, open_run
from cxrlearn.seeding import seed_everything
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transforms import GREY_MEAN, GREY_STD, eval_transform, train_transform

__all__ = ["SampleRunSettings", "sample_run", "sample_run_folder"]

_FORMAT_VERSION = 1  # bump when the folder's layout or the recipe below changes


@dataclass(frozen=True)
class SampleRunSettings:
    """What decides the sample network; every field is part of its cache key.

    Attributes:
        image_size: Side S of the square images.
        num_epochs: Training epochs.
        channels: 3 (grey repeated, the ImageNet layout) or 1.
        test_per_class: Images per class held out for the test split.
        val_fraction: Share of the rest used for validation.
        seed: Seed of the split, the initial weights and the augmentations.
        lr: Peak learning rate (AdamW, one-cycle schedule, label smoothing 0.1).
        batch_size: Images per step.
        warmup_epochs: Length of the warm-up.
    """

    image_size: int = 64
    num_epochs: int = 10
    channels: int = 3
    test_per_class: int = 30
    val_fraction: float = 0.15
    seed: int = 0
    lr: float = 2e-3
    batch_size: int = 32
    warmup_epochs: float = 1.0

    def train_config(self) -> TrainConfig:
        """The `TrainConfig` these settings train with."""
        return TrainConfig(num_epochs=self.num_epochs, lr=self.lr, batch_size=self.batch_size,
                           warmup_epochs=self.warmup_epochs, seed=self.seed)

    def key(self) -> str:
        """Hex digest of the settings, the cxrlearn version and the recipe's version."""
        doc = {"settings": dataclasses.asdict(self), "cxrlearn": cxrlearn.__version__,
               "format": _FORMAT_VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def sample_run_folder(settings: SampleRunSettings = SampleRunSettings(),
                      cache_dir: str | Path | None = None) -> Path:
    """Where the run of these settings lives (whether or not it was trained yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "sample-runs" / f"resnet18-{settings.image_size}px-{settings.key()}"


def sample_run(
    settings: SampleRunSettings = SampleRunSettings(),
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> Run:
    """The sample network's run: loaded from the cache, or trained there first.

    Training runs on the CPU, so that the network is the same on every call on one machine.

    Args:
        settings: What to train; see `SampleRunSettings`.
        cache_dir: Cache folder; default `cxrlearn.data.default_cache_dir()`.
        on_epoch: Called with each epoch's history row, when training (not when loading).

    Returns:
        The run: model (eval mode), split, `dataset(part)`, history, the best epoch.
    """
    folder = sample_run_folder(settings, cache_dir)
    if not (folder / "best.pt").is_file():
        _train_into(folder, settings, on_epoch)
    return open_run(folder, data_root=sample_root())


def _train_into(folder: Path, settings: SampleRunSettings,
                on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """Train into a private folder beside `folder`, then rename it into place.

    The rename is atomic: a lesson that is interrupted, or two that train at once, never
    leave a half-written run where `sample_run` would load it.
    """
    root = sample_root()
    scan = scan_folder(root)
    # Near-duplicates stay on one side of the split, as in `cxrlearn train`.
    hashes = np.stack([dhash(load_image(path)) for path, _ in scan.items])
    groups = duplicate_groups(len(scan.items), near_duplicate_pairs(hashes))
    rows = split_items(scan.items, settings.test_per_class, settings.val_fraction,
                       settings.seed, groups)
    size, channels = settings.image_size, settings.channels
    images = prepare_images([r.path for r in rows], size).images  # (N, S, S) uint8
    train_data = split_dataset(rows, "train", size, train_transform(channels, affine=False),
                               images=images, seed=settings.seed)
    val_data = split_dataset(rows, "val", size, eval_transform(channels), images=images,
                             seed=settings.seed)
    preprocess = (Preprocess(size) if channels == 3
                  else Preprocess(size, channels=1, mean=GREY_MEAN, std=GREY_STD))
    meta = {"arch": {"name": "resnet18", "num_classes": len(scan.class_names),
                     "in_channels": channels},
            "preprocess": preprocess.to_dict(), "data_root": str(root),
            "sample_run": dataclasses.asdict(settings)}

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        seed_everything(settings.seed)  # the initial weights depend on the seed alone
        model = resnet18(num_classes=len(scan.class_names), in_channels=channels)
        fit(model, train_data, val_data, settings.train_config(), torch.device("cpu"),
            scan.class_names, out_dir=tmp, meta=meta, on_epoch=on_epoch)
        write_manifest(tmp / "manifest.csv", rows, root, scan.class_names)
        # Keep what inference needs: the optimiser's state would triple the file's size.
        best = load_checkpoint(tmp / "best.pt")
        save_checkpoint(tmp / "best.pt", {k: v for k, v in best.items()
                                          if k not in ("format", "optimizer", "scheduler",
                                                       "rng")})
        (tmp / "last.pt").unlink()
        (tmp / "settings.json").write_text(json.dumps(
            {"settings": dataclasses.asdict(settings), "cxrlearn": cxrlearn.__version__},
            indent=2) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: its run is as good as ours
            if not (folder / "best.pt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
