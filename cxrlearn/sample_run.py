"""A small network trained on the bundled sample: trained once, then kept on disk.

Lessons after the training lesson need a trained network: to evaluate it (04), to explain
its answers (05). Training one costs about a minute of a laptop's CPU, too long to repeat in
every lesson. `sample_run()` trains ResNet18 on the 400 X-rays of the bundled sample the way
`cxrlearn train` does (a seeded, stratified split that keeps near-duplicates on one side,
contrast stretching, random flips), writes an ordinary run folder (`manifest.csv`,
`best.pt`) into the cache, and opens it with `cxrlearn.trained.open_model`. Its settings
are `cxrlearn train`'s own (`RunSettings`), a few of them changed (`SAMPLE_SETTINGS`). The
folder's name is a hash of every setting and of the cxrlearn version: change either and a
new network is trained; call it again with the same settings, from any lesson, and it loads
in seconds.

    run = sample_run()                       # trains on the first call, loads afterwards
    run.network, run.dataset("test")         # the network and its held-out test images
    sample_run(sample_settings(seed=1))      # another split and other initial weights

On one machine the network is the same every time (seeded, on the CPU). On another CPU, or
with another number of threads, the floating-point sums of training come out a little
different, and after ten epochs a few predictions differ: the lessons assert what holds for
any such network and never promise exact scores.

The cache folder is `cxrlearn.data.default_cache_dir()` (set `CXRLEARN_CACHE_DIR` to move
it); deleting it is always safe.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cxrlearn
from cxrlearn.data import default_cache_dir
from cxrlearn.runs import RunEvents, RunSettings, train_run
from cxrlearn.settings import replace_settings, to_plain
from cxrlearn.trained import TrainedModel, open_model
from cxrlearn.training import TrainConfig
from cxrlearn.transforms import Preprocess

__all__ = ["SAMPLE_SETTINGS", "sample_settings", "sample_run", "sample_run_folder",
           "sample_run_key"]

_FORMAT_VERSION = 3  # bump when the folder's layout or the recipe below changes

SAMPLE_SETTINGS = RunSettings(preprocess=Preprocess(image_size=64),
                              train=TrainConfig(num_epochs=10, warmup_epochs=1.0))
"""The sample network's settings: `cxrlearn train`'s (`RunSettings`) on the bundled sample,
at 64 px, for 10 epochs with a one-epoch warm-up, at full size throughout."""


def sample_settings(**changes: Any) -> RunSettings:
    """`SAMPLE_SETTINGS` with some settings changed, named by field: `sample_settings(seed=1)`.

    Raises:
        ValueError: No setting of that name, or a bad value.
    """
    return replace_settings(SAMPLE_SETTINGS, **changes)


def sample_run_key(settings: RunSettings) -> str:
    """Hex digest of every setting, the cxrlearn version and the recipe's version."""
    doc = {"settings": to_plain(settings), "cxrlearn": cxrlearn.__version__,
           "format": _FORMAT_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def sample_run_folder(settings: RunSettings = SAMPLE_SETTINGS,
                      cache_dir: str | Path | None = None) -> Path:
    """Where the run of these settings lives (whether or not it was trained yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    side = settings.preprocess.image_size
    return root / "sample-runs" / f"resnet18-{side}px-{sample_run_key(settings)}"


class _EpochEvents(RunEvents):
    """`events`, with `on_epoch` also called after every epoch."""

    def __init__(self, on_epoch: Callable[[dict[str, float]], None] | None,
                 events: RunEvents | None) -> None:
        self.on_epoch, self.events = on_epoch, events or RunEvents()
        self.start, self.message = self.events.start, self.events.message
        self.progress, self.batch = self.events.progress, self.events.batch

    def epoch(self, row: dict[str, float]) -> None:
        self.events.epoch(row)
        if self.on_epoch is not None:
            self.on_epoch(row)


def sample_run(
    settings: RunSettings = SAMPLE_SETTINGS,
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    events: RunEvents | None = None,
) -> TrainedModel:
    """The sample network's run: loaded from the cache, or trained there first.

    Training runs on the CPU, so that the network is the same on every call on one machine.

    Args:
        settings: What to train: `SAMPLE_SETTINGS`, or a change of them made with
            `sample_settings`.
        cache_dir: Cache folder; default `cxrlearn.data.default_cache_dir()`.
        on_epoch: Called with each epoch's history row, when training (not when loading).
        events: Where training's progress goes (`cxrlearn.runs.RunEvents`); in a notebook,
            `cxrlearn.runs.NotebookProgress()` prints a line per step and per epoch, with
            the time left. Default: nowhere.

    Returns:
        The trained model (`cxrlearn.trained.TrainedModel`): its network, split
        (`dataset(part)`), history and chosen epoch.
    """
    folder = sample_run_folder(settings, cache_dir)
    if not (folder / "best.pt").is_file():
        _train_into(folder, settings, _EpochEvents(on_epoch, events))
    # The sample is inside the installed package: point at it wherever that is now.
    return open_model(folder, data_root=settings.data_folder())


def _train_into(folder: Path, settings: RunSettings, events: RunEvents) -> None:
    """Train into a private folder beside `folder`, then rename it into place.

    The rename is atomic: a lesson that is interrupted, or two that train at once, never
    leave a half-written run where `sample_run` would load it.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        train_run(settings, tmp, torch.device("cpu"),
                  cache_dir=folder.parent.parent, events=events)
        # Keep what using the network needs; last.pt (for resuming) is two thirds optimiser.
        (tmp / "last.pt").unlink()
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: its run is as good as ours
            if not (folder / "best.pt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
