"""Runs as functions: a data folder to a run folder (`cxrlearn train`), a run to its report.

`train_run(settings, out)` goes the whole way, each step a function of its own module:

    scan the class folders (cxrlearn.data.folder)  ->  split, keeping near-duplicates on one
    side (cxrlearn.data.splits, .dedup)  ->  prepare every image once (cxrlearn.data.cache)
    ->  ResNet18, from scratch or ImageNet (cxrlearn.resnet, .transfer)  ->  fit, choosing
    the epoch on validation (cxrlearn.training)  ->  learning curves  ->  a temperature
    fitted on validation (cxrlearn.evaluation.calibration)

and leaves a run folder that `cxrlearn.trained.open_model` reads back:

    manifest.csv         the split: path, class, part of every image
    config.json          the settings (`RunSettings`), so that a resume keeps them
    last.pt              everything an exact resume needs, every epoch
    interrupted.pt       only after Ctrl-C or SIGTERM mid-epoch: the epoch so far, to resume
    best.pt              the chosen epoch: weights, classes, preprocessing, scores, T
    history.csv          one row per epoch
    learning_curves.png  the history, drawn

Nothing a user made is lost. A new run needs an empty or new folder; a run folder is locked
while a process trains into it; a resumed run keeps its own settings (a conflicting one is
refused before anything is written) and a finished run is extended only when asked for more
epochs. `RunEvents` is how the run reports progress: the library stays quiet, the command
line draws bars, and a notebook passes `NotebookProgress()`, which prints one line per slow
step and per epoch, with the epoch's time and the whole run's time left (`run_eta`).

`find_lr(settings, out, device)` (`cxrlearn train --find-lr`) runs the learning-rate range
test on the training split such a run would use, and writes its curve instead of a model.

`evaluate_run(model, out, device)` is the other half, what `cxrlearn evaluate` does: the
report of one part of the split, with its intervals and figures, written beside the run
(`report.json`, `predictions.csv`, four plots) and returned as an `Evaluation`. It reads the
checkpoint and never writes it: the test scores go into `test_scores.json` beside it.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cxrlearn
from cxrlearn import distributed
from cxrlearn.atomic import pid_is_running, write_atomic
from cxrlearn.checkpoint import INTERRUPTED, load_checkpoint
from cxrlearn.data import (
    FolderScan,
    XrayDataset,
    default_cache_dir,
    dhash,
    duplicate_groups,
    load_image,
    near_duplicate_pairs,
    prepare_images,
    read_manifest,
    sample_root,
    scan_folder,
    split_dataset,
    split_items,
    write_manifest,
)
from cxrlearn.data.splits import TEST_PER_CLASS, VAL_FRACTION, SplitRow
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.calibration import fit_temperature
from cxrlearn.resnet import arch_meta, resnet18
from cxrlearn.schedule import SizeSchedule
from cxrlearn.seeding import seed_everything
from cxrlearn.settings import (
    at_least,
    between,
    check_fields,
    differences,
    from_plain,
    one_of,
    setting,
    to_plain,
)
from cxrlearn.trained import TrainedModel, open_model
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transfer import freeze_backbone, load_imagenet_weights
from cxrlearn.transforms import Preprocess

__all__ = ["AUGMENTS", "FLIPS", "RunSettings", "RunEvents", "NotebookProgress", "run_eta",
           "clock_text", "train_run", "resumable", "find_lr", "LrRange", "LR_RANGE_FILES",
           "stored_settings", "run_lock", "Evaluation", "evaluate_run", "EVALUATION_FILES"]

AUGMENTS = ("flip", "flip+shift", "flip+affine", "none")
"""Training augmentations: random left-right flip; plus a shift with mirrored borders; plus
rotation, zoom and shift; nothing."""

SHIFT = 0.0625
"""`flip+shift`'s largest shift, a share of the side: 8 pixels at 128 px."""

FLIPS = ("random", "alternate")
"""How the flip of `--augment` is drawn: a fresh coin per image and epoch, or each image
flipped in every other epoch (`cxrlearn.data.alternate_flip`)."""


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run, stored in its `config.json`.

    Each field is a setting (`cxrlearn.settings`), defined once with its default, its check
    and its help text; `cxrlearn train` builds its flags from them, and a resume compares
    them. The run's preprocessing and training loop are settings of their own, held whole:
    `preprocess` (`cxrlearn.transforms.Preprocess`, stored in every checkpoint) and `train`
    (`cxrlearn.training.TrainConfig`; a run turns progressive resizing on).
    """

    data_root: Path | None = setting(
        None, help="The data folder: one sub-folder of images per class, any names.",
        flag="--data", metavar="DIR", group="data", shown="the bundled sample of 400 X-rays")
    classes: tuple[str, ...] | None = setting(
        None, help="Use only these class folders.", flag="--classes", metavar="CLASS",
        group="data", shown="every folder with images")
    test_per_class: int = setting(TEST_PER_CLASS,
                                  help="Images per class held out for the test split.",
                                  check=at_least(1), flag="--test-per-class", metavar="N",
                                  group="data")
    val_fraction: float = setting(
        VAL_FRACTION, help="The share of the rest used for validation, where every choice is made.",
        check=between(0, 1, open_ends=True), flag="--val-fraction", metavar="F", group="data")
    preprocess: Preprocess = setting(
        default_factory=Preprocess, help="How an X-ray becomes the network's input.")
    augment: str = setting(
        "flip+shift", help="Training augmentation: flip, a random left-right flip; "
                           f"flip+shift, plus a shift of up to {SHIFT:.1%} of the side with "
                           "mirrored borders; flip+affine, plus a small rotation, zoom and "
                           "shift; none, nothing.",
        check=one_of(AUGMENTS), flag="--augment", group="training")
    flips: str = setting(
        "random", help="How the augmentation's flips are drawn: random, a fresh coin for "
                       "every image in every epoch; alternate, each image flipped in every "
                       "other epoch, starting at random.",
        check=one_of(FLIPS), flag="--flips", group="training")
    pretrained: str = setting(
        "none", help="Start from random weights (none), torchvision's ImageNet weights "
                     "(imagenet, downloaded once) or a .pth file in torchvision's format.",
        flag="--pretrained", metavar="none|imagenet|FILE", group="model")
    freeze_backbone: bool = setting(False, help="Train only the fc head.",
                                    flag="--freeze-backbone", group="model")
    sync_bn: bool = setting(
        False, help="Under torchrun on GPUs, BatchNorm statistics over the global batch.",
        flag="--sync-bn", group="distributed")
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(sizes=SizeSchedule()),
        help="The training loop's settings.")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.flips == "alternate" and self.augment == "none":
            raise ValueError("flips alternate needs an augmentation with a flip, not "
                             "augment none (--augment flip, say)")
        # One spelling of the folder and the classes, so that a resume compares like with like.
        if self.data_root is not None:
            object.__setattr__(self, "data_root", Path(self.data_root).resolve())
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def data_folder(self) -> Path:
        """The data folder: `data_root`, or the bundled sample when it is None."""
        return sample_root() if self.data_root is None else self.data_root

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `config.json` (`cxrlearn.settings.to_plain`)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        """Read `to_dict()` back (`cxrlearn.settings.from_plain`), also as cxrlearn 0.2.0
        wrote it (the side and the channels beside the other settings).

        Raises:
            ValueError: A missing or wrong value, named.
        """
        if "preprocess" not in d and "image_size" in d:  # cxrlearn 0.2.0
            d = {**d, "preprocess": {k: d[k] for k in ("image_size", "channels") if k in d}}
        return from_plain(cls, d)


class RunEvents:
    """What `train_run` reports as it goes. This one says nothing; the CLI prints.

    Override any method: `start` once with the number of epochs, `message` for one line of
    news, `progress` for a slow step of known size (a context manager yielding
    `advance(n)`), `batch` and `epoch` from `fit`.
    """

    def start(self, num_epochs: int) -> None:
        """Once, before the first slow step: the run will end at epoch `num_epochs`."""

    def message(self, text: str) -> None:
        """One line of news (a warning starts with "warning:")."""

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A slow step of `total` units; call the yielded function as units finish."""
        yield lambda n: None

    def batch(self, epoch: int, stats: dict[str, float]) -> None:
        """After every training batch (see `training.fit`'s `on_batch`)."""

    def epoch(self, row: dict[str, float]) -> None:
        """After every epoch, with its history row."""


def run_eta(epoch: int, batch: int, batches: int, epoch_seconds: float,
            finished: Sequence[float], num_epochs: int) -> float:
    """Seconds left in the whole run, estimated in the middle of an epoch.

    Finished epochs (`finished`, their durations, validation included) give the time per
    epoch; before one has finished, the epoch in progress is extrapolated from its
    batches. The rest of this epoch and every epoch after it are then that long.

    Args:
        epoch: The epoch in progress, from 0.
        batch: Training batches done in it, from 1.
        batches: Training batches per epoch.
        epoch_seconds: Time since the epoch began.
        finished: Durations of the epochs finished so far, in seconds.
        num_epochs: Epochs in the whole run.

    Example:
        >>> run_eta(0, 5, 10, 50.0, [], 3)  # 100 s per epoch: 50 s left here, then 2 more
        250.0
    """
    if finished:
        per_epoch = sum(finished) / len(finished)
        this_epoch = per_epoch * (1 - batch / batches)
    else:
        per_epoch = epoch_seconds * batches / max(batch, 1)
        this_epoch = per_epoch - epoch_seconds
    return max(0.0, this_epoch) + per_epoch * max(0, num_epochs - epoch - 1)


def clock_text(seconds: float) -> str:
    """`0:01:05` for 65 seconds, as rich and `datetime.timedelta` show a duration."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class NotebookProgress(RunEvents):
    """Progress as plain printed lines, for a notebook or a log: `train_run(...,
    events=NotebookProgress())`, `sample_run(events=NotebookProgress())`.

    One line when a slow step starts and when it ends, one per epoch with its scores, how
    long it took and the time left in the whole run. No bar redraws itself, so what a cell
    printed reads the same afterwards; its times differ from run to run, so a lesson marks
    such a cell for nbval to ignore.

    Args:
        clock: Seconds, for the durations (a test passes a fake one).
        write: Where each line goes; default `print`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] = print) -> None:
        self.clock, self.write = clock, write
        self.num_epochs = 0
        self._finished: list[float] = []
        self._epoch_start: float | None = None

    def start(self, num_epochs: int) -> None:
        self.num_epochs = num_epochs

    def message(self, text: str) -> None:
        self.write(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        begun = self.clock()
        self.write(f"{description}: {total} ...")
        yield lambda n: None
        self.write(f"{description}: done in {clock_text(self.clock() - begun)}")
        self._epoch_start = self.clock()  # training begins after the slow steps

    def batch(self, epoch: int, stats: dict[str, float]) -> None:
        if self._epoch_start is None:
            self._epoch_start = self.clock()

    def epoch(self, row: dict[str, float]) -> None:
        now = self.clock()
        took = now - (self._epoch_start if self._epoch_start is not None else now)
        self._finished.append(took)
        self._epoch_start = now
        done = int(row["epoch"])
        total = max(self.num_epochs, done)
        left = run_eta(done - 1, 1, 1, 0.0, self._finished, total)
        self.write(f"epoch {done}/{total}: train loss {row['train_loss']:.3f}, val macro-F1 "
                   f"{row['val_macro_f1']:.3f} | {clock_text(took)}, run eta "
                   f"{clock_text(left)}")


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/.cxrlearn.lock` while training into `folder`: one process at a time.

    The lock file holds the owner's process id. A lock left by a process that no longer
    runs (killed) is taken over.

    Raises:
        CxrlearnError: Another running process holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".cxrlearn.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else ""
            if owner.isdigit() and pid_is_running(int(owner)):
                raise CxrlearnError(f"another cxrlearn process (pid {owner}) is training into "
                                    "this run folder; wait for it, or choose another --out",
                                    path=folder) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise CxrlearnError("cannot take the run folder's lock", path=folder)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def train_run(settings: RunSettings, out: str | Path, device: torch.device, *,
              resume: bool = False, cache_dir: Path | None = None,
              events: RunEvents | None = None) -> TrainedModel:
    """Train a run into `out` (see the module docstring) and return its best model.

    Args:
        settings: What to train. With `resume`, they must be the run's own, except that
            `settings.train.num_epochs` may be larger (to extend a finished run).
        out: The run folder: new or empty, or (with `resume`) one holding `last.pt` or
            `interrupted.pt`.
        device: Where to train.
        resume: Continue the run in `out` from where it stopped: its `interrupted.pt` (an
            epoch stopped midway) if that is newer than its `last.pt`, else `last.pt`.
        cache_dir: Prepared-image cache; default `cxrlearn.data.default_cache_dir()`.
        events: Where progress goes; default nowhere.

    Raises:
        CxrlearnError: A folder that holds something else, a conflicting or finished
            resume, bad data, or any failure of the steps, with what to do.
    """
    out, events = Path(out), events or RunEvents()
    main = distributed.is_main()
    last = _check_out(out, settings, resume)  # what to resume from, read once
    # getattr: events written before `start` existed (duck-typed, not RunEvents) still work
    getattr(events, "start", lambda n: None)(settings.train.num_epochs)
    lock = run_lock(out) if main else contextlib.nullcontext()
    with _undone_before_an_epoch(out, new=main and not resume), lock:
        scan = scan_folder(settings.data_folder(), settings.classes)
        _check_scan(scan, events)
        preprocess = settings.preprocess
        meta = {"arch": arch_meta(len(scan.class_names), preprocess.channels),
                "preprocess": preprocess.to_dict(), "data_root": str(scan.root.resolve())}
        if main:
            rows = (read_manifest(out / "manifest.csv", scan.root, scan.class_names) if resume
                    else _split(scan, settings, out, events))
            config = json.dumps(
                {"settings": settings.to_dict(), "class_names": list(scan.class_names), **meta,
                 "device": str(device), "world_size": distributed.world_size(),
                 "cxrlearn_version": cxrlearn.__version__}, indent=2) + "\n"
            write_atomic(out / "config.json", lambda f: f.write(config.encode()))
        distributed.barrier()  # the other ranks read the manifest rank 0 wrote
        if not main:
            rows = read_manifest(out / "manifest.csv", scan.root, scan.class_names)

        train_data, val_data = _datasets(rows, settings, cache_dir, events)
        model = _network(settings, len(scan.class_names), device, resume, events)
        history = fit(model, train_data, val_data, settings.train, device, scan.class_names,
                      out_dir=out, resume_from=last, meta=meta,
                      on_batch=events.batch if main else None,
                      on_epoch=events.epoch if main else None)
        distributed.barrier()
        if not main:
            return open_model(out)
        _write_history(out, history)
        trained = open_model(out)
        # The temperature is fitted on validation (already prepared, in val_data): the test
        # split stays closed.
        logits, y = trained.logits(val_data, device)
        trained.update_checkpoint(temperature=fit_temperature(logits, y))
        events.message(f"temperature fitted on the validation split: "
                       f"T = {trained.temperature:.2f}")
        return trained


def _datasets(rows: list[SplitRow], settings: RunSettings, cache_dir: Path | None,
              events: RunEvents) -> tuple[XrayDataset, XrayDataset]:
    """The training split (augmented, seeded) and the validation split, every image
    prepared once (or read from the cache); the test split stays closed."""
    preprocess = settings.preprocess
    with events.progress("preparing images", len(rows)) as advance:
        prepared = prepare_images([r.path for r in rows], preprocess,
                                  cache_dir=cache_dir or default_cache_dir(), progress=advance)
    if prepared.from_cache:
        events.message(f"prepared images read from the cache {prepared.cache_file}")
    if prepared.cache_problem:
        events.message(f"warning: no prepared-image cache kept: {prepared.cache_problem}")
    flip = settings.augment != "none"
    alternate = flip and settings.flips == "alternate"  # the dataset flips, not the transform
    train_data = split_dataset(rows, "train", preprocess, preprocess.train_transform(
        flip=flip and not alternate, affine=settings.augment == "flip+affine",
        shift=SHIFT if settings.augment == "flip+shift" else 0.0),
        prepared.images, seed=settings.train.seed, alternate_flips=alternate)
    val_data = split_dataset(rows, "val", preprocess, preprocess.eval_transform(),
                             prepared.images)
    events.message(f"split: {len(train_data)} train, {len(val_data)} val, "
                   f"{sum(r.split == 'test' for r in rows)} test (kept closed until "
                   "evaluation)")
    return train_data, val_data


@dataclass(frozen=True)
class LrRange:
    """What `find_lr` measured: each step's learning rate and loss, the peak learning rate
    `suggest_lr` reads from them, and the settings' own peak (`TrainConfig.lr`)."""

    lrs: list[float]
    losses: list[float]
    suggested: float
    current: float

    def to_dict(self) -> dict[str, Any]:
        return {"lrs": self.lrs, "losses": self.losses, "suggested_lr": self.suggested,
                "settings_lr": self.current}


LR_RANGE_FILES = ("manifest.csv", "lr_range.json", "lr_range.png")
"""What `find_lr` writes into its folder."""


def find_lr(settings: RunSettings, out: str | Path, device: torch.device, *,
            cache_dir: Path | None = None, events: RunEvents | None = None,
            steps: int = 100) -> LrRange:
    """The learning-rate range test (`cxrlearn.training.lr_range_test`) on the training
    split a run with these settings would train on: `cxrlearn train --find-lr`.

    The split, the preprocessing, the augmentation, the initial weights, the loss and the
    optimizer are the run's own; only the learning rate differs, rising exponentially from
    1e-6 to 1 over at most `steps` steps. Nothing is trained for keeps: `out` (new or empty)
    receives the split (`manifest.csv`), the curve (`lr_range.json`) and its plot
    (`lr_range.png`). Train with the suggestion as `--lr` where it differs much from the
    settings' peak.

    Raises:
        CxrlearnError: A folder that holds something, or bad data.
    """
    from cxrlearn.evaluation.plots import plot_lr_range
    from cxrlearn.training import (
        lr_range_test,
        make_loss_fn,
        make_optimizer,
        suggest_lr,
        train_loader,
    )

    out, events = Path(out), events or RunEvents()
    _check_out(out, settings, resume=False)
    with _undone_before_an_epoch(out, new=True), run_lock(out):
        scan = scan_folder(settings.data_folder(), settings.classes)
        _check_scan(scan, events)
        rows = _split(scan, settings, out, events)
        train_data, _ = _datasets(rows, settings, cache_dir, events)
        model = _network(settings, len(scan.class_names), device, False, events).to(device)
        config = settings.train
        loss_fn = make_loss_fn(config, train_data.labels, len(scan.class_names)).to(device)
        optimizer = make_optimizer(model, config)
        with events.progress("learning-rate range test", steps) as advance:
            lrs, losses = lr_range_test(model, train_loader(train_data, config, 0), loss_fn,
                                        optimizer, device, steps=steps, on_step=advance)
        if len(lrs) < steps:
            events.message(f"stopped after {len(lrs)} steps, at --lr {lrs[-1]:.1e}: the loss "
                           "exploded")
        found = LrRange(lrs, losses, suggest_lr(lrs, losses), config.lr)
        text = json.dumps(found.to_dict(), indent=2) + "\n"
        write_atomic(out / "lr_range.json", lambda f: f.write(text.encode()))
        figure = plot_lr_range(lrs, losses, found.suggested, found.current)
        write_atomic(out / "lr_range.png", lambda f: figure.savefig(f, format="png", dpi=100))
    return found


@contextlib.contextmanager
def _undone_before_an_epoch(out: Path, new: bool) -> Iterator[None]:
    """A new run refused or stopped before its first epoch is saved (Ctrl-C, bad data, too
    few images) removes what it wrote, so that the same command can simply be run again:
    there is nothing to resume yet. The folder goes if the run made it (everything in it is
    the run's); in a folder that existed (empty: `_check_out` saw to that) the files it wrote
    go. Once `last.pt` or `interrupted.pt` exists the run can be resumed, and everything
    stays."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if new and not resumable(out) and out.is_dir():
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for name in ("manifest.csv", "config.json", "best.pt"):
                    (out / name).unlink(missing_ok=True)
        raise


def _check_out(out: Path, settings: RunSettings, resume: bool) -> dict[str, Any] | None:
    """Refuse, before anything is written, a run folder that a run could damage.

    Returns:
        When resuming, the checkpoint to go on from (`interrupted.pt` or `last.pt`), read
        here once and handed on to `fit`.
    """
    if out.exists() and not out.is_dir():
        raise CxrlearnError("exists and is not a folder; choose another --out", path=out)
    if not resume:
        held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) \
            if out.is_dir() else []
        if "last.pt" in held or INTERRUPTED in held:
            raise CxrlearnError("already holds a run; continue it with --resume, or choose "
                                "another --out", path=out)
        if held:
            raise CxrlearnError(f"is not empty (it holds {', '.join(held[:4])}"
                                f"{', ...' if len(held) > 4 else ''}); a new run needs a new "
                                "or empty folder, choose another --out", path=out)
        return None
    stored = stored_settings(out)
    last = _resume_point(out)
    done = int(last["epoch"])
    if done >= settings.train.num_epochs:
        raise CxrlearnError(f"the run is finished ({done} of {stored.train.num_epochs} epochs); "
                            f"to train it further, ask for more epochs: --epochs N with N > "
                            f"{done}", path=out)
    _check_resumable(out, stored, settings)
    return last


def _check_resumable(out: Path, stored: RunSettings, settings: RunSettings) -> None:
    """Refuse `settings` for resuming the run in `out` unless they are its own `stored` ones
    (the number of epochs may grow).

    Raises:
        CxrlearnError: The first setting that differs, by its name and its flag.
    """
    def shown(value: Any) -> str:  # as the flag was written: --classes COVID Normal
        return " ".join(value) if isinstance(value, tuple) else str(value)

    for d in differences(settings, stored):
        if d.name != "num_epochs":
            name = d.name if d.flag is None else f"{d.name} ({d.flag})"
            raise CxrlearnError(f"resuming keeps the run's own settings, but {name} is "
                                f"{shown(d.ours)} here and {shown(d.theirs)} in its "
                                "config.json; drop the change, or train a new run", path=out)


def resumable(out: str | Path) -> bool:
    """Whether `out` holds a run that `train_run(..., resume=True)` can go on from: its
    `last.pt` (the last finished epoch) or its `interrupted.pt` (an epoch stopped midway)."""
    out = Path(out)
    return (out / "last.pt").is_file() or (out / INTERRUPTED).is_file()


def _resume_point(out: Path) -> dict[str, Any]:
    """The checkpoint a resume goes on from: `interrupted.pt` when it continues the epoch
    after `last.pt`'s (or there is no `last.pt` yet), else `last.pt`. An `interrupted.pt`
    of an older epoch is what a process killed between writing `last.pt` and deleting it
    left behind: it is out of date, and ignored.

    Raises:
        CxrlearnError: The file chosen is unreadable or damaged (`load_checkpoint`).
    """
    last = load_checkpoint(out / "last.pt") if (out / "last.pt").is_file() else None
    if (out / INTERRUPTED).is_file():
        interrupted = load_checkpoint(out / INTERRUPTED)
        if "in_progress" not in interrupted:
            raise CxrlearnError("damaged checkpoint: no in_progress (where the epoch "
                                "stopped); delete it to resume from the last finished epoch "
                                "(last.pt)", path=out / INTERRUPTED)
        if last is None or interrupted["epoch"] >= last["epoch"]:
            return interrupted
    if last is None:  # (stored_settings saw one of the two; it went in between)
        raise CxrlearnError("nothing to resume: no last.pt in the run folder", path=out)
    return last


def stored_settings(out: Path) -> RunSettings:
    """The settings in a run folder's `config.json`.

    Raises:
        CxrlearnError: No `last.pt` or `interrupted.pt` beside it (nothing to resume), or
            `config.json` is missing, unreadable or from cxrlearn 0.1.
    """
    if not resumable(out):
        raise CxrlearnError("nothing to resume: no last.pt in the run folder (no epoch of "
                            "it was finished); start the run again without --resume",
                            path=out)
    try:
        doc = json.loads((out / "config.json").read_text())
        if isinstance(doc, dict) and "settings" not in doc:
            raise CxrlearnError("written by cxrlearn 0.1, whose runs this version cannot "
                                "resume; train a new run (its best.pt still opens)",
                                path=out / "config.json")
        return RunSettings.from_dict(doc["settings"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise CxrlearnError(f"cannot read the run's settings ({type(e).__name__}: {e})",
                            path=out / "config.json") from None


def _check_scan(scan: FolderScan, events: RunEvents) -> None:
    if scan.problems:
        path, problem = scan.problems[0]
        more = f" (and {len(scan.problems) - 1} more: cxrlearn data check lists them)" \
            if len(scan.problems) > 1 else ""
        raise CxrlearnError(f"{problem}{more}", path=path)
    if len(scan.class_names) < 2:
        raise CxrlearnError(f"only one class ({scan.class_names[0]}): a classifier needs at "
                            "least two class folders", path=scan.root)
    for entry in scan.unknown:
        events.message(f"warning: {entry}: not a class folder (no images), ignored")


def _split(scan: FolderScan, settings: RunSettings, out: Path, events: RunEvents
           ) -> list[SplitRow]:
    """The seeded split, near-duplicates kept on one side; written as `manifest.csv`."""
    with events.progress("hashing (near-duplicates)", len(scan.items)) as advance:
        hashes = []
        for path, _ in scan.items:
            hashes.append(dhash(load_image(path)))
            advance(1)
    pairs = near_duplicate_pairs(np.stack(hashes))
    groups = duplicate_groups(len(scan.items), pairs)
    rows = split_items(scan.items, settings.test_per_class, settings.val_fraction,
                       settings.train.seed, groups)
    for part in ("train", "val"):
        counts = np.bincount([r.label for r in rows if r.split == part],
                             minlength=len(scan.class_names))
        if counts.min() == 0:
            name = scan.class_names[int(counts.argmin())]
            raise CxrlearnError(f"class {name!r} gets no {part} image; it has too few images "
                                "for this --test-per-class and --val-fraction", path=scan.root)
    write_manifest(out / "manifest.csv", rows, scan.root, scan.class_names)
    if pairs:
        events.message(f"{len(pairs)} near-duplicate pairs kept on one side of the split")
    return rows


def _network(settings: RunSettings, num_classes: int, device: torch.device, resume: bool,
             events: RunEvents) -> torch.nn.Module:
    seed_everything(settings.train.seed)  # the initial weights depend on the seed alone
    model = resnet18(num_classes=num_classes, in_channels=settings.preprocess.channels)
    if settings.pretrained != "none" and not resume:
        source = None if settings.pretrained == "imagenet" else settings.pretrained
        events.message(str(load_imagenet_weights(model, source, progress=True)))
    if settings.freeze_backbone:
        freeze_backbone(model)
    if settings.sync_bn:
        model = distributed.use_sync_batchnorm(model, device)
    return model


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    from cxrlearn.evaluation.plots import plot_history  # matplotlib: imported when drawing

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_atomic(out / "history.csv", lambda f: f.write(text.getvalue().encode()))
    figure = plot_history(history)
    write_atomic(out / "learning_curves.png", lambda f: figure.savefig(f, dpi=100, format="png"))


# The evaluation half: what `cxrlearn evaluate` does, as a function (lesson 04).

EVALUATION_FILES = ("report.json", "predictions.csv", "confusion_matrix.png", "roc_curves.png",
                    "reliability.png", "confident_mistakes.png")
"""What `evaluate_run` writes into its folder, in this order."""


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_run` measured on one part of a run's split, and where it wrote it.

    Every score is a plain Python number, keyed by class name where it is per class; a score
    that is undefined on this split (the AUC of a class absent from it) is NaN.

    Attributes:
        split: The part evaluated: `"test"`, `"val"` or `"train"`.
        n: Its number of images.
        checkpoint: The checkpoint evaluated.
        report: `cxrlearn.evaluation.metrics.classification_report`: per class precision,
            recall, F1 and support; accuracy; macro and weighted averages.
        intervals: `cxrlearn.evaluation.uncertainty.report_intervals` (95%, seed 0).
        confusion_matrix: Rows the true class, columns the predicted one. Shape (K, K).
        sensitivity: One class against the rest, per class (the recall).
        specificity: One class against the rest, per class.
        auc: Area under the one-vs-rest ROC curve, per class.
        temperature: The T the logits were divided by (fitted on validation by `train_run`).
        ece: Expected calibration error, `"before_temperature"` and `"after_temperature"`.
        notes: Why some scores are undefined or set to 0 (a class never predicted, say), once
            each; the command line prints them.
        files: The files written, in the order of `EVALUATION_FILES`.
    """

    split: str
    n: int
    checkpoint: Path
    report: dict[str, Any]
    intervals: dict[str, Any]
    confusion_matrix: list[list[int]]
    sensitivity: dict[str, float]
    specificity: dict[str, float]
    auc: dict[str, float]
    temperature: float
    ece: dict[str, float]
    notes: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain data: what `report.json` holds (NaN there becomes null)."""
        return {"split": self.split, "n": self.n, "checkpoint": str(self.checkpoint),
                "report": self.report, "intervals": self.intervals,
                "confusion_matrix": self.confusion_matrix, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "auc": self.auc,
                "temperature": self.temperature, "ece": self.ece}


def evaluate_run(model: TrainedModel, out: str | Path, device: torch.device, *,
                 split: str = "test", batch_size: int = 64,
                 events: RunEvents | None = None) -> Evaluation:
    """Evaluate a trained model on one part of its run's split; write the report's files.

    The model's logits on the split, divided by its temperature, give the probabilities and
    the predictions; from those come the classification report with 95% intervals, the
    confusion matrix, sensitivity and specificity, one-vs-rest AUCs and the calibration
    error before and after the temperature. Written into `out`, each file atomically:
    `report.json` (`Evaluation.to_dict`), `predictions.csv` (one row per image: path, true
    and predicted class, the probabilities to 6 decimals) and four figures (confusion
    matrix, ROC curves, reliability diagram, the most confident mistakes). Evaluating the
    test split also writes its accuracy and macro-F1 beside the checkpoint, in
    `test_scores.json`, for the app (`TrainedModel.save_test_scores`); the checkpoint itself
    is only read.

    Args:
        model: A checkpoint in its run folder (`open_model(run_folder)`), so that it has
            the eager network and the split.
        out: The folder to write into (created if needed; files of these names are replaced).
        device: Where the network runs.
        split: Which part of the run's split: `"test"`, `"val"` or `"train"`.
        batch_size: Images per forward pass.
        events: Where progress goes (`progress` while predicting); default nowhere.

    Raises:
        CxrlearnError: An exported model (no network), a model without its split, or a
            split whose images are gone.
    """
    from cxrlearn.evaluation.calibration import apply_temperature, expected_calibration_error
    from cxrlearn.evaluation.metrics import (
        UndefinedMetricWarning,
        classification_report,
        confusion_matrix,
        sensitivity_specificity,
    )
    from cxrlearn.evaluation.roc import one_vs_rest_auc
    from cxrlearn.evaluation.uncertainty import report_intervals

    out, events = Path(out), events or RunEvents()
    data = model.dataset(split)
    with events.progress(f"predicting {split}", len(data)) as advance:
        logits, y = model.logits(data, device, batch_size, on_batch=advance)
    probs_raw = torch.softmax(logits, dim=1).numpy()                                # (N, K)
    probs = torch.softmax(apply_temperature(logits, model.temperature), dim=1).numpy()  # (N, K)
    y_true = y.numpy()                                                              # (N,)
    y_pred = probs.argmax(axis=1)                                                   # (N,)
    names = list(model.class_names)

    # Undefined scores (a class never predicted, or absent from the split) are expected on
    # small splits: they become notes, once each, rather than Python warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        report = classification_report(y_true, y_pred, names)
        intervals = report_intervals(y_true, y_pred, names, seed=0)
        cm = confusion_matrix(y_true, y_pred, len(names))
        sensitivity, specificity = sensitivity_specificity(cm)
        aucs = one_vs_rest_auc(y_true, probs)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught
                                if issubclass(w.category, UndefinedMetricWarning)))
    for w in caught:  # anything else is unexpected: let it through unchanged
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    result = Evaluation(
        split=split, n=int(len(y_true)), checkpoint=model.path, report=report,
        intervals=intervals, confusion_matrix=cm.tolist(),
        sensitivity=dict(zip(names, map(float, sensitivity), strict=True)),
        specificity=dict(zip(names, map(float, specificity), strict=True)),
        auc=dict(zip(names, map(float, aucs), strict=True)), temperature=model.temperature,
        ece={"before_temperature": expected_calibration_error(probs_raw, y_true),
             "after_temperature": expected_calibration_error(probs, y_true)},
        notes=notes, files=tuple(out / name for name in EVALUATION_FILES))
    _write_evaluation(result, out, data, y_true, y_pred, probs, names)
    if split == "test":
        model.save_test_scores({
            "test_accuracy": float(report["accuracy"]),
            "test_macro_f1": float(report["macro avg"]["f1-score"]),
            "test_images": len(y_true)})
    return result


def _write_evaluation(result: Evaluation, out: Path, data: XrayDataset, y_true: np.ndarray,
                      y_pred: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
    """report.json, predictions.csv and the four figures of `evaluate_run`, into `out`."""
    from cxrlearn.evaluation.metrics import UndefinedMetricWarning
    from cxrlearn.evaluation.plots import (  # matplotlib: imported when drawing
        plot_confident_mistakes,
        plot_confusion_matrix,
        plot_reliability_diagram,
        plot_roc_curves,
    )

    out.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: NaN is not JSON (strict readers such as JSON.parse reject it).
    report_json = json.dumps(_json_safe(result.to_dict()), indent=2, allow_nan=False) + "\n"
    write_atomic(out / "report.json", lambda f: f.write(report_json.encode()))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "true", "predicted", *[f"p_{n}" for n in names]])
    for path, t, p, row in zip(data.paths, y_true, y_pred, probs, strict=True):
        # A name that is not valid UTF-8 is written with escapes rather than lost.
        writer.writerow([os.fsencode(path).decode("utf-8", "backslashreplace"), names[t],
                         names[p], *[f"{v:.6f}" for v in row]])
    write_atomic(out / "predictions.csv", lambda f: f.write(rows.getvalue().encode()))
    images = np.stack([data.prepared(i)[0].numpy() / 255.0 for i in range(len(data))])
    cm = np.array(result.confusion_matrix)
    with warnings.catch_warnings():
        # The ROC plot recomputes the curves: their warnings are already in the notes.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        figures = {
            "confusion_matrix.png": plot_confusion_matrix(cm, names),
            "roc_curves.png": plot_roc_curves(y_true, probs, names),
            "reliability.png": plot_reliability_diagram(probs, y_true),
            "confident_mistakes.png": plot_confident_mistakes(images, y_true, probs, names),
        }
    for name, fig in figures.items():
        write_atomic(out / name, lambda f, fig=fig: fig.savefig(f, dpi=100, format="png"))


def _json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None (JSON's null).

    An undefined score (the AUC or sensitivity of a class absent from the split) is NaN;
    `json.dumps` would write it as the bare word NaN, which is not JSON and which strict
    readers (JavaScript's JSON.parse, jq) reject.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
