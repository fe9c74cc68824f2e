"""`cxrlearn train`: a data folder in, a run folder out (`cxrlearn.runs.train_run`).

The flags are grouped as a student meets them: the data, the run folder, the model, the
training. Every default is shown in `--help`. A resumed run keeps the settings in its
`config.json`: a flag that contradicts them is refused, and a finished run trains further
only with an explicit, larger `--epochs`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from cxrlearn.cli import (
    fraction,
    nonnegative_int,
    positive_float,
    positive_int,
    progress_bar,
)
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser", "add_training_arguments", "RichEvents",
           "settings_from_args", "epoch_line"]

HELP = "train ResNet18 on a data folder and write a run folder"


def add_training_arguments(p: argparse.ArgumentParser, epochs: int) -> None:
    """The model and training flags, shared by `train` and `demo`. Defaults are None, so that
    a resume can tell a flag that was given from one that was not; `--help` shows the value
    a new run takes."""
    from cxrlearn.runs import AUGMENTS, RunSettings
    from cxrlearn.schedule import SizeSchedule
    from cxrlearn.training import TrainConfig

    run, train, sizes = RunSettings(data_root=Path(".")), TrainConfig(), SizeSchedule()
    model = p.add_argument_group("model")
    model.add_argument("--image-size", type=positive_int, metavar="S",
                       help=f"side of the square network input, 16 to 2048 "
                            f"(default {run.image_size})")
    model.add_argument("--channels", type=int, choices=(1, 3),
                       help=f"3: the grey image repeated (the ImageNet layout); 1: one "
                            f"channel, conv1 summed over RGB (default {run.channels})")
    model.add_argument("--pretrained", metavar="none|imagenet|FILE",
                       help="start from random weights (none), torchvision's ImageNet "
                            "weights (imagenet, downloaded once) or a .pth file in "
                            f"torchvision's format (default {run.pretrained})")
    model.add_argument("--freeze-backbone", action="store_true", default=None,
                       help="train only the fc head")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, metavar="N",
                   help=f"passes over the training split (default {epochs})")
    t.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"images per step; under torchrun the global batch "
                        f"(default {train.batch_size})")
    t.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {train.lr})")
    t.add_argument("--augment", choices=AUGMENTS,
                   help="random left-right flip; plus small rotation, zoom and shift; or "
                        f"nothing (default {run.augment})")
    t.add_argument("--progressive-resize", type=positive_float, metavar="START",
                   # "%%": argparse formats help strings with %
                   help=f"train the first {sizes.hold * 100:.0f}%% of the epochs at this "
                        f"share of the side, growing to full size by "
                        f"{sizes.full_from * 100:.0f}%%; 1 turns it off (default {sizes.start})")
    t.add_argument("--class-weighted", action="store_true", default=None,
                   help="weight the loss by inverse class frequency, for imbalanced data")
    t.add_argument("--patience", type=positive_int, metavar="N",
                   help="stop after N epochs without a better validation macro-F1 "
                        "(default: never)")
    t.add_argument("--seed", type=nonnegative_int,
                   help=f"seed of the split, the weights and the augmentation "
                        f"(default {train.seed})")
    h = p.add_argument_group("hardware")
    h.add_argument("--device", default="auto",
                   help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps "
                        "(default auto)")
    h.add_argument("--num-workers", type=nonnegative_int, metavar="N",
                   help=f"data-loading processes (default {train.num_workers})")
    h.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="prepared-image cache (default: $CXRLEARN_CACHE_DIR, else "
                        "~/.cache/cxrlearn)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrlearn.training import TrainConfig

    p = sub.add_parser("train", help=HELP, description=HELP + ". " + __doc__.splitlines()[2])
    d = p.add_argument_group("data")
    d.add_argument("--data", type=Path, metavar="DIR",
                   help="one sub-folder of images per class, any names (default: the "
                        "bundled sample of 400 X-rays)")
    d.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="use only these class folders (default: every folder with images)")
    d.add_argument("--test-per-class", type=positive_int, metavar="N",
                   help="images per class held out for the test split (default 30)")
    d.add_argument("--val-fraction", type=fraction, metavar="F",
                   help="share of the rest used for validation (default 0.15)")
    r = p.add_argument_group("run folder")
    r.add_argument("--out", type=Path, metavar="DIR",
                   help="the run folder, new or empty (default: runs/train-DATE-TIME)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where it stopped, with its own "
                        "settings")
    r.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun on GPUs: BatchNorm statistics over the global batch")
    add_training_arguments(p, epochs=TrainConfig().num_epochs)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace, data_root: Path, epochs: int) -> Any:
    """The `RunSettings` of a new run: the flags given, defaults for the rest."""
    import dataclasses

    from cxrlearn.runs import RunSettings
    from cxrlearn.schedule import SizeSchedule
    from cxrlearn.training import TrainConfig

    def given(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    run, train = RunSettings(data_root=data_root), TrainConfig()
    start = given("progressive_resize", SizeSchedule().start)
    try:
        sizes = SizeSchedule(start=start)  # checks that start is in (0, 1]
        config = dataclasses.replace(
            train, num_epochs=given("epochs", epochs), lr=given("lr", train.lr),
            batch_size=given("batch_size", train.batch_size),
            class_weighted=given("class_weighted", False), patience=args.patience,
            sizes=None if sizes.start == 1 else sizes,
            seed=given("seed", train.seed), num_workers=given("num_workers", train.num_workers))
        return RunSettings(
            data_root=data_root, classes=None if getattr(args, "classes", None) is None
            else tuple(args.classes), image_size=given("image_size", run.image_size),
            channels=given("channels", run.channels),
            test_per_class=given("test_per_class", run.test_per_class),
            val_fraction=given("val_fraction", run.val_fraction),
            augment=given("augment", run.augment), pretrained=given("pretrained", "none"),
            freeze_backbone=given("freeze_backbone", False),
            sync_bn=given("sync_bn", False), train=config)
    except ValueError as e:  # e.g. --image-size 8
        raise CxrlearnError(f"bad training settings: {e}") from None


def _resumed_settings(args: argparse.Namespace, out: Path) -> Any:
    """The run's own settings; a flag that says otherwise is refused (`--epochs` may grow)."""
    import dataclasses

    from cxrlearn.runs import stored_settings

    if not (out / "last.pt").is_file():
        raise CxrlearnError("nothing to resume: no last.pt in the run folder", path=out)
    stored = stored_settings(out)
    sizes = stored.train.sizes
    own = {"data": stored.data_root, "classes": stored.classes,
           "test_per_class": stored.test_per_class, "val_fraction": stored.val_fraction,
           "image_size": stored.image_size, "channels": stored.channels,
           "pretrained": stored.pretrained, "freeze_backbone": stored.freeze_backbone,
           "sync_bn": stored.sync_bn, "batch_size": stored.train.batch_size,
           "lr": stored.train.lr, "augment": stored.augment,
           "progressive_resize": 1.0 if sizes is None else sizes.start,
           "class_weighted": stored.train.class_weighted, "patience": stored.train.patience,
           "seed": stored.train.seed, "num_workers": stored.train.num_workers}
    for name, value in own.items():
        wanted = getattr(args, name, None)
        if name == "data" and wanted is not None:
            wanted = Path(wanted).resolve()
        if name == "classes" and wanted is not None:
            wanted = tuple(wanted)
        if wanted is not None and wanted != value:
            flag = "--" + name.replace("_", "-")
            raise CxrlearnError(f"{flag} {wanted} differs from the run's own {value} "
                                "(config.json); a resumed run keeps its settings: drop the "
                                "flag, or train a new run", path=out)
    if args.epochs is None:
        return stored
    return dataclasses.replace(stored, train=dataclasses.replace(stored.train,
                                                                 num_epochs=args.epochs))


class RichEvents:
    """`cxrlearn.runs.RunEvents` for a terminal: messages, progress bars, one line per epoch."""

    def __init__(self, console: Console, num_epochs: int) -> None:
        self.console = console
        self.num_epochs = num_epochs
        self._bar: Any = None

    def message(self, text: str) -> None:
        if text.startswith("warning:"):
            self.console.print(f"[yellow]warning:[/]{escape(text[len('warning:'):])}",
                               highlight=False, soft_wrap=True)
        else:
            self.console.print(escape(text), highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        with progress_bar(self.console) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def batch(self, epoch: int, stats: dict[str, float]) -> None:
        if self._bar is None:
            self._bar = progress_bar(self.console, TextColumn("{task.fields[stats]}"))
            self._bar.start()
            self._task = self._bar.add_task("epoch", total=None, stats="")
        self._bar.update(self._task, description=f"epoch {epoch + 1}/{self.num_epochs}",
                         total=stats["batches"], completed=stats["batch"],
                         stats=f"loss {stats['loss']:.3f} {stats['images_per_s']:.0f} img/s")

    def epoch(self, row: dict[str, float]) -> None:
        if self._bar is not None and row["epoch"] >= self.num_epochs:
            self._bar.stop()
            self._bar = None
        printer = self._bar.console if self._bar is not None else self.console
        printer.print(epoch_line(row, self.console.width), highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def epoch_line(row: dict[str, float], width: int) -> str:
    """One epoch's summary, as long as fits in `width` columns (never wrapped)."""
    e = f"epoch {row['epoch']:>3}: "
    full = (f"{e}train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} | val "
            f"loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f} macro-F1 "
            f"{row['val_macro_f1']:.3f} | {row['image_size']} px "
            f"{row['images_per_s']:.0f} img/s")
    short = (f"{e}loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} | val "
             f"{row['val_loss']:.3f} acc {row['val_accuracy']:.3f} F1 "
             f"{row['val_macro_f1']:.3f} | {row['image_size']}px")
    shortest = (f"{e}loss {row['train_loss']:.2f} val {row['val_loss']:.2f} "
                f"F1 {row['val_macro_f1']:.2f}")
    return next(line for line in (full, short, shortest) if len(line) <= width) \
        if len(shortest) <= width else shortest[:width]


def run(args: argparse.Namespace, console: Console) -> int:
    import torch

    from cxrlearn import distributed
    from cxrlearn.data import sample_root
    from cxrlearn.device import describe_device, select_device
    from cxrlearn.runs import train_run
    from cxrlearn.training import TrainConfig

    if args.resume and args.out is None:
        raise CxrlearnError("--resume needs the run folder: cxrlearn train --resume --out "
                            "runs/NAME")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise CxrlearnError("--cache-dir is a file, not a folder", path=args.cache_dir)
    if args.resume:
        settings = _resumed_settings(args, args.out)
    else:
        if args.data is None:
            console.print("no --data given: training on the bundled sample (400 X-rays, 4 "
                          f"classes) in {sample_root()}", highlight=False, soft_wrap=True)
        data = args.data if args.data is not None else sample_root()
        settings = settings_from_args(args, data, TrainConfig().num_epochs)
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    device = select_device(args.device)
    env = distributed.detect()  # set when started by torchrun
    try:
        if env is not None:
            device = distributed.init_process_group(env, device)
            if not env.is_main:
                console = Console(quiet=True)  # rank 0 alone prints and writes files
            console.print(f"distributed: {env.world_size} processes "
                          f"({'nccl' if device.type == 'cuda' else 'gloo'}); global batch "
                          f"{settings.train.batch_size} = {env.world_size} x "
                          f"{settings.train.batch_size // env.world_size} per process")
        console.print(f"device: [bold]{describe_device(device)}[/]")
        events = RichEvents(console, settings.train.num_epochs)
        try:
            trained = train_run(settings, out, device, resume=args.resume,
                                cache_dir=args.cache_dir, events=events)
        finally:
            events.close()
        best = trained.scores
        console.print(f"best validation macro-F1 {best.get('val_macro_f1', float('nan')):.3f} "
                      f"at epoch {trained.epoch}; run folder: [bold]{escape(str(out))}[/]",
                      highlight=False)
    finally:
        if distributed.is_distributed():
            torch.distributed.destroy_process_group()
    return 0
