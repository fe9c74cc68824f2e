"""`cxrlearn train`: a data folder in, a run folder out (`cxrlearn.runs.train_run`).

The flags are grouped as a student meets them: the data, the run folder, the model, the
training. Each one is built from its setting's one definition (`cxrlearn.settings`): its
help, its check and its default, shown in `--help`. A resumed run keeps the settings in its
`config.json`: a flag that contradicts them is refused, and a finished run trains further
only with an explicit, larger `--epochs`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from cxrlearn.cli import _number, add_device_argument, progress_bar
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser", "add_setting_flags", "add_training_arguments", "RichEvents",
           "settings_from_args", "epoch_line"]

HELP = "Train ResNet18 on a data folder and write a run folder."


def add_setting_flags(p: argparse.ArgumentParser, defaults: Any,
                      groups: Sequence[str]) -> dict[str, argparse._ArgumentGroup]:
    """One flag per setting that names one (`cxrlearn.settings.flag_settings`), listed under
    its group in `--help` with its help text, its check and its default in `defaults`.

    A flag that is not given leaves no attribute (`argparse.SUPPRESS`), so that a resume can
    tell it from one that was, even one given a value that means None; `--help` shows the
    value a new run takes.

    Returns:
        The `--help` sections, by group name, for flags that are not settings.
    """
    from cxrlearn.settings import flag_settings

    sections = {name: p.add_argument_group(name) for name in groups}
    for f, value in flag_settings(defaults):
        meta, check = f.metadata, f.metadata["check"]
        if meta["group"] not in sections:
            continue
        help = meta["help"]
        if check is not None and check.choices is None:
            help += f" It {check.says}."
        if not isinstance(value, bool):
            help += f" Default: {meta['shown'] or (meta['to_flag'] or (lambda v: v))(value)}."
        kwargs: dict[str, Any] = {"dest": f.name, "help": help.replace("%", "%%"),
                                  "default": argparse.SUPPRESS}
        if isinstance(value, bool):  # a switch: given means True
            kwargs.update(action="store_true")
        else:
            kwargs.update(type=_flag_type(f), metavar=meta["metavar"],
                          choices=None if check is None else check.choices)
            if str(f.type).startswith("tuple"):
                kwargs.update(nargs="+")
        sections[meta["group"]].add_argument(meta["flag"], **kwargs)
    return sections


def _flag_type(f: Any) -> Callable[[str], Any]:
    """An argparse `type`: the flag's text read, converted and checked as its setting is,
    so that a bad value is argparse's one-line error (exit 2) before any work."""
    meta, annotation = f.metadata, str(f.type)  # e.g. "int", "Path | None"
    kind = next((k for k in (int, float, Path) if annotation.startswith(k.__name__)), str)
    if meta["from_flag"] is not None:  # e.g. --progressive-resize START: a SizeSchedule
        kind = float

    def read(text: str) -> Any:
        value = kind(_number(kind, text)) if kind in (int, float) else kind(text)
        try:
            if meta["from_flag"] is not None:
                return meta["from_flag"](value)  # the setting checks itself
            problem = meta["check"].problem(f.name, value) if meta["check"] else None
        except ValueError as e:
            problem = str(e)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    read.__name__ = kind.__name__  # argparse names the type in "invalid ... value"
    return read


def add_training_arguments(p: argparse.ArgumentParser, defaults: Any) -> None:
    """The model, training and hardware flags, shared by `train` and `demo`; `defaults` are
    the `RunSettings` a new run of that command takes."""
    hardware = add_setting_flags(p, defaults, ("model", "training", "hardware"))["hardware"]
    add_device_argument(hardware)
    hardware.add_argument("--cache-dir", type=Path, metavar="DIR",
                          help="The prepared-image cache. Default: $CXRLEARN_CACHE_DIR, else "
                               "~/.cache/cxrlearn.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrlearn.runs import RunSettings

    about = " ".join(__doc__.split("\n\n")[1].split())  # the docstring's second paragraph
    p = sub.add_parser("train", help=HELP, description=f"{HELP} {about}")
    defaults = RunSettings()
    add_setting_flags(p, defaults, ("data",))
    r = p.add_argument_group("run folder")
    r.add_argument("--out", type=Path, metavar="DIR",
                   help="The run folder, new or empty. Default: runs/train-DATE-TIME.")
    r.add_argument("--resume", action="store_true",
                   help="Continue the run in --out exactly where it stopped, with its own "
                        "settings.")
    r.add_argument("--find-lr", action="store_true",
                   help="Instead of training, run the learning-rate range test on the "
                        "training split this run would use: writes lr_range.png and "
                        "lr_range.json into --out and prints a suggested --lr.")
    add_training_arguments(p, defaults)
    add_setting_flags(p, defaults, ("distributed",))
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace, defaults: Any) -> Any:
    """`defaults` (a `RunSettings`) with every setting whose flag was given changed to it:
    a new run's settings, or (from the stored ones) a resumed run's.

    Raises:
        CxrlearnError: The values given do not go together with the others.
    """
    from cxrlearn.settings import flag_settings, replace_settings

    given = {f.name: getattr(args, f.name) for f, _ in flag_settings(defaults)
             if hasattr(args, f.name)}
    try:
        return replace_settings(defaults, **given)
    except ValueError as e:
        raise CxrlearnError(f"bad training settings: {e}") from None


class RichEvents:
    """`cxrlearn.runs.RunEvents` for a terminal: messages, progress bars, one line per epoch.
    Use it in a `with` block, which stops the live bar however the run ends.

    The epoch's bar shows the time since that epoch began and the time left in the whole
    run (`run_eta`), measured here rather than by rich: rich's clock stops when a task
    first completes, and one task reused for every epoch would then show the first
    epoch's time for ever. Each epoch's line ends with how long it took and the run's
    time left.
    """

    def __init__(self, console: Console, num_epochs: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.num_epochs = num_epochs
        self.clock = clock
        self._bar: Any = None
        self._epoch: int | None = None      # the epoch in progress, from 0
        self._epoch_start = 0.0
        self._finished: list[float] = []    # durations of the epochs finished here
        self._last_end: float | None = None  # when the previous epoch ended

    def start(self, num_epochs: int) -> None:
        self.num_epochs = num_epochs

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
        self._last_end = self.clock()  # the first epoch begins after the slow steps

    def timing(self, epoch: int, batch: int, batches: int) -> str:
        """The epoch's elapsed time and the run's time left, as the bar shows them."""
        from cxrlearn.runs import clock_text, run_eta  # torch: imported when training

        now = self.clock()
        if epoch != self._epoch:  # a new epoch began when the last one ended
            self._epoch = epoch
            self._epoch_start = self._last_end if self._last_end is not None else now
        elapsed = now - self._epoch_start
        if batch <= 1 and not self._finished:
            eta = "eta -:--:--"  # one batch is no measure yet
        else:
            eta = "run eta " + clock_text(run_eta(epoch, batch, batches, elapsed,
                                                  self._finished, self.num_epochs))
        return f"{clock_text(elapsed)} {eta}"

    def batch(self, epoch: int, stats: dict[str, float]) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=None if self.console.width >= 100 else 20),
                MofNCompleteColumn(), TextColumn("{task.fields[timing]}"),
                TextColumn("{task.fields[stats]}"), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("epoch", total=None, stats="", timing="")
        batches, done = int(stats["batches"]), int(stats["batch"])
        timing = self.timing(epoch, done, batches)
        self._bar.update(self._task, description=f"epoch {epoch + 1}/{self.num_epochs}",
                         total=batches, completed=done, timing=timing,
                         stats=f"loss {stats['loss']:.3f} {stats['images_per_s']:.0f} img/s")

    def epoch(self, row: dict[str, float]) -> None:
        from cxrlearn.runs import clock_text, run_eta

        now = self.clock()
        done = int(row["epoch"])  # epochs finished, counted from 1
        if self._epoch == done - 1:  # its batches were seen here
            self._finished.append(now - self._epoch_start)
            took = f" | {clock_text(self._finished[-1])}"
            left = run_eta(done - 1, 1, 1, 0.0, self._finished, self.num_epochs)
            took += f", run eta {clock_text(left)}" if done < self.num_epochs else ""
        else:
            took = ""
        self._last_end = now
        if self._bar is not None and done >= self.num_epochs:
            self._bar.stop()
            self._bar = None
        printer = self._bar.console if self._bar is not None else self.console
        width = self.console.width - len(took)
        printer.print(epoch_line(row, width) + took, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> RichEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # the live bar gives the terminal back, whatever ended the run


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
    from cxrlearn.runs import RunSettings, stored_settings, train_run

    if args.resume and args.out is None:
        raise CxrlearnError("--resume needs the run folder: cxrlearn train --resume --out "
                            "runs/NAME")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise CxrlearnError("--cache-dir is a file, not a folder", path=args.cache_dir)
    if args.find_lr and args.resume:
        raise CxrlearnError("--find-lr trains nothing to resume; leave out --resume")
    if args.resume:  # the run's own settings; train_run refuses a flag that changes them
        settings = settings_from_args(args, stored_settings(args.out))
    else:
        if not hasattr(args, "data_root"):
            console.print("no --data given: training on the bundled sample (400 X-rays, 4 "
                          f"classes) in {sample_root()}", highlight=False, soft_wrap=True)
        settings = settings_from_args(args, RunSettings())
    if args.find_lr:
        return _find_lr(args, settings, console)
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
        with RichEvents(console, settings.train.num_epochs) as events:
            trained = train_run(settings, out, device, resume=args.resume,
                                cache_dir=args.cache_dir, events=events)
        best = trained.scores
        console.print(f"best validation macro-F1 {best.get('val_macro_f1', float('nan')):.3f} "
                      f"at epoch {trained.epoch}; run folder: [bold]{escape(str(out))}[/]",
                      highlight=False)
    finally:
        if distributed.is_distributed():
            torch.distributed.destroy_process_group()
    return 0


def _find_lr(args: argparse.Namespace, settings: Any, console: Console) -> int:
    """`train --find-lr`: the range test (`cxrlearn.runs.find_lr`), its suggestion printed."""
    from cxrlearn.device import describe_device, select_device
    from cxrlearn.runs import find_lr

    out = args.out or Path("runs") / time.strftime("lr-range-%Y%m%d-%H%M%S")
    device = select_device(args.device)
    console.print(f"device: [bold]{describe_device(device)}[/]")
    with RichEvents(console, settings.train.num_epochs) as events:
        found = find_lr(settings, out, device, cache_dir=args.cache_dir, events=events)
    console.print(f"suggested peak learning rate: [bold]--lr {found.suggested:.1e}[/] (these "
                  f"settings use --lr {found.current:g}); the curve: "
                  f"{escape(str(out / 'lr_range.png'))}", highlight=False, soft_wrap=True)
    return 0
