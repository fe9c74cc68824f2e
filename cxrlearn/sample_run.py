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
it); deleting it is always safe. The cache heals itself: a run whose `best.pt` or
`manifest.csv` is missing or damaged is trained again and replaces it, and the half-trained
folders of lessons that were killed (their process is gone) are removed on the next call.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cxrlearn
from cxrlearn.atomic import remove_stale_in, replace_folder, temporary_folder
from cxrlearn.data import default_cache_dir
from cxrlearn.data.cache import cache_dir_problem
from cxrlearn.errors import CxrlearnError
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

    Raises:
        CxrlearnError: The cache folder cannot be used (a file, not writable); the message
            says to set `CXRLEARN_CACHE_DIR`.
    """
    folder = sample_run_folder(settings, cache_dir)
    data_root = settings.data_folder()
    remove_stale_in(folder.parent)  # what killed lessons left, for any settings
    damaged = False
    if _is_whole(folder):
        try:  # The sample is inside the installed package: point at it wherever that is now.
            return open_model(folder, data_root=data_root)
        except CxrlearnError:
            damaged = True  # a truncated best.pt, say: trained again below, and replaced
    problem = cache_dir_problem(folder.parent.parent) or cache_dir_problem(folder.parent)
    if problem is not None:  # no fallback: a network trained elsewhere would be lost
        raise CxrlearnError(f"the cache folder {problem}; set CXRLEARN_CACHE_DIR to a "
                            "writable folder", path=folder.parent.parent)
    _train_into(folder, settings, _EpochEvents(on_epoch, events), damaged)
    return open_model(folder, data_root=data_root)


def _is_whole(folder: Path) -> bool:
    """Has the folder what using the run needs? (`open_model` then checks `best.pt`.)"""
    return (folder / "best.pt").is_file() and (folder / "manifest.csv").is_file()


def _train_into(folder: Path, settings: RunSettings, events: RunEvents,
                damaged: bool) -> None:
    """Train into a private folder beside `folder`, then rename it into place.

    The rename is atomic: a lesson that is interrupted, or two that train at once, never
    leave a half-written run where `sample_run` would load it. The private folder is named
    after this process (`cxrlearn.atomic.temporary_folder`), so the next call removes it if
    this process is killed; a damaged run already at `folder` is replaced.
    """
    with temporary_folder(folder, "the sample run") as tmp:
        built = tmp / folder.name
        train_run(settings, built, torch.device("cpu"),
                  cache_dir=folder.parent.parent, events=events)
        # Keep what using the network needs; last.pt (for resuming) is two thirds optimiser.
        (built / "last.pt").unlink()
        if _is_whole(folder) and not damaged:  # another process finished first: as good
            return
        replace_folder(built, folder)
