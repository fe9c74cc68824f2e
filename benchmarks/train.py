"""How fast does ResNet18 train here, and how long does each epoch wait for data?

Run: .venv/bin/python benchmarks/train.py [--sizes 64 128 224] [--batch-sizes 16 32 64]
     [--steps 2] [--device auto] [--compile auto|on|off] [--num-workers 0]

Two tables, on the device `cxrlearn.device.select_device` picks (or `--device`):

1. Training images per second (batch size / median step time) for each image size and batch
   size, measured with the library's own loop (`cxrlearn.training.train_one_epoch`) on a
   synthetic batch, so that only the network and the optimizer are timed: eager,
   `channels_last`, and `torch.compile` (shown as "n/a" where it fails, e.g. without a C++
   compiler). On CUDA, mixed precision is on, as in `fit`'s default. `--compile auto`
   compiles on GPUs only: on a CPU, inductor builds C++ kernels for every configuration,
   minutes each on two cores (`--compile on` to do it anyway).
2. The share of an epoch spent waiting for the next batch, for real X-rays from the bundled
   sample: served from prepared images in memory (`XrayDataset(..., images=...)`, what
   `cxrlearn train` does) and read from PNG files for every item (no cache).

Every measurement drops a warm-up step first: memory allocation, kernel selection and, for
`torch.compile`, the compilation itself (two warm-up steps there, as the second call may
recompile). Few steps per configuration keep the default run short; raise `--steps` for
steadier numbers. On a shared machine numbers move from run to run: compare the columns of
one run, not separate runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Iterator

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrlearn.data import XrayDataset, prepare_images, sample_root, scan_folder
from cxrlearn.device import describe_device, select_device
from cxrlearn.resnet import resnet18
from cxrlearn.training import Amp, TrainConfig, make_optimizer, train_one_epoch
from cxrlearn.transforms import Preprocess, train_transform

NUM_CLASSES = 4
MODES = ("eager", "channels_last", "compile")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work; GPU calls return before the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Trainer:
    """A fresh ResNet18 with `fit`'s optimizer and loss, stepped by `train_one_epoch`."""

    def __init__(self, device: torch.device, mode: str) -> None:
        torch.manual_seed(0)
        self.device = device
        self.channels_last = mode == "channels_last"
        model = resnet18(num_classes=NUM_CLASSES).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, TrainConfig())
        self.model = torch.compile(model) if mode == "compile" else model
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1).to(device)
        self.amp = Amp.choose(device, wanted=True)

    def run(self, batches) -> list[float]:
        """Train on `batches` (any iterable of `(x, y)` with a length); seconds of each step.

        A step is timed from the end of the previous one, so waiting for its batch counts.
        `train_one_epoch` calls `on_batch` after `loss.item()`, which waits for the GPU.
        """
        synchronize(self.device)
        marks = [time.perf_counter()]
        train_one_epoch(self.model, batches, self.loss_fn, self.optimizer, self.device,
                        amp=self.amp, on_batch=lambda stats: marks.append(time.perf_counter()))
        return [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]


def synthetic_batches(batch_size: int, size: int, steps: int, device: torch.device) -> list:
    """The same random batch `steps` times, already on the device: no data loading at all."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g).to(device)
    return [(x, y)] * steps


def _compile_failed(e: Exception, size: int, batch_size: int) -> None:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    warnings.warn(f"torch.compile failed at {size}px, batch {batch_size}: {first[:200]}",
                  stacklevel=2)


def throughput_row(
    device: torch.device, modes: list[str], size: int, batch_size: int, steps: int
) -> list[str]:
    """Training images per second for each mode (batch size / median step), or "n/a".

    The modes take turns, one step each, so that a burst of load from other programs slows
    all of them alike; and the median, not the mean, so that one step that waited for the
    CPU does not count. Only `torch.compile` may fail; any other error is a bug and is raised.
    """
    batch = synthetic_batches(batch_size, size, 1, device)
    trainers: dict[str, Trainer] = {}
    for mode in modes:
        try:
            if mode == "compile":
                torch._dynamo.reset()  # each configuration compiles afresh, within cache limits
            trainer = Trainer(device, mode)
            # Warm-up: one step, or two when compiling (the second call may still recompile).
            for _ in range(2 if mode == "compile" else 1):
                trainer.run(batch)
            trainers[mode] = trainer
        except Exception as e:  # noqa: BLE001 - any failure of torch.compile is shown as n/a
            if mode != "compile":
                raise
            _compile_failed(e, size, batch_size)
    times: dict[str, list[float]] = {mode: [] for mode in trainers}
    for _ in range(steps):
        for mode, trainer in list(trainers.items()):
            try:
                times[mode] += trainer.run(batch)
            except Exception as e:  # noqa: BLE001 - as above
                if mode != "compile":
                    raise
                _compile_failed(e, size, batch_size)
                del trainers[mode]
    return [f"{batch_size / statistics.median(times[m]):,.1f}" if m in trainers else "n/a"
            for m in modes]


class TimedBatches:
    """Wraps a DataLoader and adds up the time spent waiting for each next batch."""

    def __init__(self, loader: DataLoader, steps: int) -> None:
        self.loader, self.steps, self.wait = loader, steps, 0.0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        for _ in range(self.steps):
            start = time.perf_counter()
            batch = next(batches)
            self.wait += time.perf_counter() - start
            yield batch


def data_wait(device: torch.device, dataset: Dataset, batch_size: int, steps: int,
              num_workers: int) -> tuple[float, float]:
    """(share of the time spent waiting for data, images per second) over `steps` batches."""
    trainer = Trainer(device, "eager")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    trainer.run(TimedBatches(loader, 1))  # warm-up
    timed = TimedBatches(loader, steps)
    seconds = sum(trainer.run(timed))
    return timed.wait / seconds, batch_size * steps / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration (2)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile column: auto = on GPUs only (auto)")
    ap.add_argument("--data-batch-size", type=int, default=32,
                    help="batch size of the data-waiting table (32)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0)")
    args = ap.parse_args()

    device = select_device(args.device)
    console = Console(width=120)
    amp = Amp.choose(device, wanted=True).dtype  # what fit uses with its default amp=True
    console.print(f"device: {describe_device(device)}; torch {torch.__version__}; "
                  f"mixed precision: {'off' if amp is None else str(amp).replace('torch.', '')}")
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type != "cpu")
    modes = [m for m in MODES if compile_on or m != "compile"]
    if not compile_on:
        console.print("torch.compile skipped (--compile on to include it)")

    console.print(f"\n[bold]Training images per second[/]: ResNet18, 4 classes, synthetic "
                  f"batches, median of {args.steps} timed steps after a warm-up; the modes "
                  "take turns")
    table = Table()
    table.add_column("size", justify="right")
    table.add_column("batch", justify="right")
    for mode in modes:
        table.add_column(mode, justify="right")
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            table.add_row(str(size), str(batch_size),
                          *throughput_row(device, modes, size, batch_size, args.steps))
    console.print(table)

    scan = scan_folder(sample_root())
    paths = [p for p, _ in scan.items]
    labels = [y for _, y in scan.items]
    steps = max(1, min(args.steps, len(paths) // args.data_batch_size - 1))
    console.print(f"\n[bold]Waiting for data[/]: share of the epoch spent waiting for the next "
                  f"batch; eager, batch {args.data_batch_size}, {steps} timed steps, "
                  f"{args.num_workers} workers, training transform, {len(paths)} sample X-rays")
    table = Table()
    for col in ("size", "cached: wait", "cached img/s", "PNG each item: wait", "PNG img/s"):
        table.add_column(col, justify="right")
    for size in args.sizes:
        preprocess = Preprocess(size)
        images = prepare_images(paths, preprocess).images  # the cache, built before the epoch
        cached = XrayDataset(paths, labels, preprocess, train_transform(), images=images)
        uncached = XrayDataset(paths, labels, preprocess, train_transform())
        share_c, rate_c = data_wait(device, cached, args.data_batch_size, steps,
                                    args.num_workers)
        share_u, rate_u = data_wait(device, uncached, args.data_batch_size, steps,
                                    args.num_workers)
        table.add_row(str(size), f"{share_c:.0%}", f"{rate_c:,.1f}", f"{share_u:.0%}",
                      f"{rate_u:,.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
