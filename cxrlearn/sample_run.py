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

import torch

import cxrlearn
from cxrlearn.data import default_cache_dir, sample_root
from cxrlearn.runs import RunEvents, RunSettings, train_run
from cxrlearn.trained import TrainedModel, open_model
from cxrlearn.training import TrainConfig

__all__ = ["SampleRunSettings", "sample_run", "sample_run_folder"]

_FORMAT_VERSION = 2  # bump when the folder's layout or the recipe below changes


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
        """The `TrainConfig` these settings train with (full size throughout)."""
        return TrainConfig(num_epochs=self.num_epochs, lr=self.lr, batch_size=self.batch_size,
                           warmup_epochs=self.warmup_epochs, seed=self.seed)

    def run_settings(self) -> RunSettings:
        """The `cxrlearn train` settings of the run: the bundled sample, flips only."""
        return RunSettings(data_root=sample_root(), image_size=self.image_size,
                           channels=self.channels, test_per_class=self.test_per_class,
                           val_fraction=self.val_fraction, augment="flip",
                           train=self.train_config())

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


class _EpochEvents(RunEvents):
    def __init__(self, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
        self.on_epoch = on_epoch

    def epoch(self, row: dict[str, float]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(row)


def sample_run(
    settings: SampleRunSettings = SampleRunSettings(),
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedModel:
    """The sample network's run: loaded from the cache, or trained there first.

    Training runs on the CPU, so that the network is the same on every call on one machine.

    Args:
        settings: What to train; see `SampleRunSettings`.
        cache_dir: Cache folder; default `cxrlearn.data.default_cache_dir()`.
        on_epoch: Called with each epoch's history row, when training (not when loading).

    Returns:
        The trained model (`cxrlearn.trained.TrainedModel`): its network, split
        (`dataset(part)`), history and chosen epoch.
    """
    folder = sample_run_folder(settings, cache_dir)
    if not (folder / "best.pt").is_file():
        _train_into(folder, settings, on_epoch)
    # The sample is inside the installed package: point at it wherever that is now.
    return open_model(folder, data_root=sample_root())


def _train_into(folder: Path, settings: SampleRunSettings,
                on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """Train into a private folder beside `folder`, then rename it into place.

    The rename is atomic: a lesson that is interrupted, or two that train at once, never
    leave a half-written run where `sample_run` would load it.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        train_run(settings.run_settings(), tmp, torch.device("cpu"),
                  cache_dir=folder.parent.parent, events=_EpochEvents(on_epoch))
        # Keep what using the network needs; last.pt (for resuming) is two thirds optimiser.
        (tmp / "last.pt").unlink()
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: its run is as good as ours
            if not (folder / "best.pt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
