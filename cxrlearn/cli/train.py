"""`cxrlearn train`: split, prepare, train, and write a run folder.

A run folder holds everything needed to audit, resume, evaluate and export a run:
`manifest.csv` (the split), `config.json`, `last.pt`, `best.pt`, `history.csv` and
`learning_curves.png`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import TextColumn
from rich.table import Table

from cxrlearn import distributed
from cxrlearn.calibration import fit_temperature
from cxrlearn.cli.progress import progress_bar
from cxrlearn.curves import plot_history
from cxrlearn.data import (
    CLASS_NAMES,
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
    split_items,
    write_manifest,
)
from cxrlearn.data.splits import SplitRow
from cxrlearn.device import describe_device, select_device
from cxrlearn.errors import CxrlearnError
from cxrlearn.resnet import resnet18
from cxrlearn.runs import Run, logits_of, open_run
from cxrlearn.seeding import seed_everything
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transfer import freeze_backbone, load_imagenet_weights
from cxrlearn.transforms import (
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)

__all__ = ["add_parser"]

DEFAULTS = TrainConfig()
AUGMENTS = ("flip+affine", "flip", "none")


def _fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_train_arguments(p: argparse.ArgumentParser, epochs: int) -> None:
    """Arguments shared by `train` and `demo`."""
    p.add_argument("--image-size", type=int, default=128, help="side of the square input (128)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs ({epochs})")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate")
    p.add_argument("--progressive-resize", type=_fraction, default=0.75,
                   metavar="FRACTION",
                   help="train the first part of the run (--resize-hold) at this share of "
                        "--image-size, growing to full size by --resize-full-from (0.75; "
                        "1: off)")
    p.add_argument("--resize-hold", type=_fraction, default=0.7, metavar="SHARE",
                   help="share of the epochs at the smallest size (0.7)")
    p.add_argument("--resize-full-from", type=_fraction, default=0.8, metavar="SHARE",
                   help="share of the epochs after which training is at full size (0.8)")
    p.add_argument("--augment", choices=AUGMENTS, default="flip",
                   help="training augmentation: random left-right flip (flip), plus small "
                        "rotation, zoom and shift (flip+affine)")
    p.add_argument("--tta", choices=("flip", "none"), default="none",
                   help="test-time augmentation stored with the model: flip averages the "
                        "logits of each image and its mirror image when evaluating, "
                        "predicting and exporting (default none: it did not help the "
                        "default recipe on validation)")
    p.add_argument("--pretrained", default="none",
                   help="'none' (from scratch), 'imagenet' (download torchvision's weights) "
                        "or a path to a .pth file in torchvision's format")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the fc head")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="3: repeat the grey image (ImageNet layout); 1: sum conv1 over RGB")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--class-weighted", action="store_true",
                   help="weight the loss by inverse class frequency (imbalanced data)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="prepared-image cache (default ~/.cache/cxrlearn)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train ResNet18 on a data folder and write a run folder")
    p.add_argument("--data", type=Path, default=None,
                   help="folder in the Kaggle layout (default: the bundled sample)")
    p.add_argument("--classes", nargs="+", default=None, choices=CLASS_NAMES, metavar="CLASS",
                   help="train on these classes only")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the global batch")
    add_train_arguments(p, epochs=DEFAULTS.num_epochs)
    p.set_defaults(func=run)


@dataclass
class TrainedRun:
    """What `train_run` leaves behind, for `demo` to continue with."""

    out: Path
    class_names: tuple[str, ...]
    rows: list[SplitRow]
    history: list[dict[str, float]]
    data_root: Path


def _split(args: argparse.Namespace, scan, out: Path, console: Console) -> list[SplitRow]:
    manifest = out / "manifest.csv"
    if manifest.is_file():
        console.print(f"reusing the split in {manifest}")
        return read_manifest(manifest, scan.root, scan.class_names)
    # Near-duplicates are grouped so that no copy of a test image is trained on.
    with progress_bar(console) as progress:
        task = progress.add_task("hashing", total=len(scan.items))
        hashes = []
        for path, _ in scan.items:
            hashes.append(dhash(load_image(path)))
            progress.advance(task)
    pairs = near_duplicate_pairs(np.stack(hashes))
    groups = duplicate_groups(len(scan.items), pairs)
    rows = split_items(scan.items, args.test_per_class, args.val_fraction, args.seed, groups)
    write_manifest(manifest, rows, scan.root, scan.class_names)
    if pairs:
        console.print(f"{len(pairs)} near-duplicate pairs kept on one side of the split")
    return rows


def train_run(args: argparse.Namespace, console: Console, out: Path, resume: bool) -> TrainedRun:
    """Everything `cxrlearn train` does; `demo` calls it too."""
    data_root = args.data if getattr(args, "data", None) is not None else sample_root()
    last = out / "last.pt"
    if resume and not last.is_file():
        raise CxrlearnError("nothing to resume: no last.pt in the run folder", path=out)
    if not resume and last.is_file():
        raise CxrlearnError("already holds a run; continue it with --resume or choose "
                            "another --out", path=out)
    device = select_device(args.device)
    env = distributed.detect()  # set when started by torchrun
    if env is not None:
        device = distributed.init_process_group(env, device)
        if not env.is_main:
            console = Console(quiet=True)  # rank 0 alone prints and writes files
        console.print(f"distributed: {env.world_size} processes "
                      f"({'nccl' if device.type == 'cuda' else 'gloo'}); global batch "
                      f"{args.batch_size} = {env.world_size} x {args.batch_size // env.world_size}"
                      " per process; the learning rate is for the global batch, so it is "
                      "not rescaled")
    console.print(f"device: [bold]{describe_device(device)}[/]")
    try:
        config = TrainConfig(num_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             class_weighted=args.class_weighted, patience=args.patience,
                             progressive_resize=args.progressive_resize,
                             resize_hold=args.resize_hold, resize_full_from=args.resize_full_from,
                             seed=args.seed, num_workers=args.num_workers)
    except ValueError as e:  # e.g. --resize-hold above --resize-full-from
        raise CxrlearnError(f"bad training settings: {e}") from None
    scan = scan_folder(data_root, getattr(args, "classes", None))
    for entry in scan.unknown:
        console.print(f"[yellow]warning:[/] {entry}: not a class folder, ignored")
    out.mkdir(parents=True, exist_ok=True)
    if env is None or env.is_main:
        rows = _split(args, scan, out, console)
    distributed.barrier()  # the others read the manifest rank 0 wrote
    if env is not None and not env.is_main:
        rows = read_manifest(out / "manifest.csv", scan.root, scan.class_names)

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if args.channels == 3 else (GREY_MEAN, GREY_STD)
    meta = {
        "arch": {"name": "resnet18", "num_classes": len(scan.class_names),
                 "in_channels": args.channels},
        "preprocess": {"image_size": args.image_size, "low": 2.0, "high": 98.0,
                       "channels": args.channels, "mean": list(mean), "std": list(std),
                       "flip_average": args.tta == "flip"},
        "data_root": str(scan.root.resolve()),
    }
    if env is None or env.is_main:
        (out / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(config), **meta, "pretrained": args.pretrained,
             "freeze_backbone": args.freeze_backbone, "augment": args.augment,
             "device": str(device),
             "world_size": 1 if env is None else env.world_size}, indent=2) + "\n")

    cache_dir = args.cache_dir or default_cache_dir()
    with progress_bar(console) as progress:
        task = progress.add_task("preparing images", total=len(rows))
        prepared = prepare_images([r.path for r in rows], args.image_size, cache_dir=cache_dir,
                                  progress=lambda n: progress.advance(task, n))
    if prepared.from_cache:
        console.print(f"prepared images read from the cache {prepared.cache_file}")

    def dataset(split: str, transform) -> XrayDataset:
        idx = [i for i, r in enumerate(rows) if r.split == split]
        return XrayDataset([rows[i].path for i in idx], [rows[i].label for i in idx],
                           args.image_size, transform, images=prepared.images[idx],
                           seed=args.seed)

    train_data = dataset("train", train_transform(args.channels, flip=args.augment != "none",
                                                  affine=args.augment == "flip+affine"))
    val_data = dataset("val", eval_transform(args.channels))
    console.print(f"split: {len(train_data)} train, {len(val_data)} val, "
                  f"{sum(r.split == 'test' for r in rows)} test (kept closed until evaluation)")

    seed_everything(args.seed)  # the initial weights depend on the seed alone
    model = resnet18(num_classes=len(scan.class_names), in_channels=args.channels)
    if args.pretrained != "none" and not resume:
        source = None if args.pretrained == "imagenet" else args.pretrained
        console.print(str(load_imagenet_weights(model, source, progress=True)))
    if args.freeze_backbone:
        freeze_backbone(model)
    if getattr(args, "sync_bn", False):
        model = distributed.use_sync_batchnorm(model, device)

    history = _fit_with_progress(model, train_data, val_data, config, device, scan, out,
                                 last if resume else None, meta, console, env)
    if env is not None:
        distributed.barrier()
        if not env.is_main:
            return TrainedRun(out, scan.class_names, rows, history, scan.root)
    _write_history(out, history)
    best_ckpt = _calibrate(out, device, console).ckpt
    best = best_ckpt["history"][best_ckpt["epoch"] - 1]  # the epoch fit chose for best.pt
    console.print(f"best validation macro-F1 {best['val_macro_f1']:.3f} at epoch "
                  f"{best['epoch']}; run folder: [bold]{out}[/]")
    return TrainedRun(out, scan.class_names, rows, history, scan.root)


def _fit_with_progress(model, train_data, val_data, config, device, scan, out, resume, meta,
                       console: Console, env=None):
    table = Table(title="training")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "val macro-F1",
                "img/s"):
        table.add_column(col, justify="right")
    with progress_bar(console, TextColumn("{task.fields[stats]}")) as progress:
        task = progress.add_task("epoch", total=None, stats="")

        def on_batch(epoch: int, s: dict) -> None:
            progress.update(task, description=f"epoch {epoch + 1}/{config.num_epochs}",
                            total=s["batches"], completed=s["batch"],
                            stats=f"loss {s['loss']:.3f} acc {s['accuracy']:.3f} "
                                  f"{s['images_per_s']:.0f} img/s")

        def on_epoch(r: dict) -> None:
            progress.console.print(
                f"epoch {r['epoch']:>3}: train loss {r['train_loss']:.3f} "
                f"acc {r['train_accuracy']:.3f} | val loss {r['val_loss']:.3f} "
                f"acc {r['val_accuracy']:.3f} macro-F1 {r['val_macro_f1']:.3f} "
                f"| {r['image_size']} px {r['images_per_s']:.0f} img/s")

        main_rank = env is None or env.is_main
        return fit(model, train_data, val_data, config, device, scan.class_names, out_dir=out,
                   resume=resume, meta=meta, on_batch=on_batch if main_rank else None,
                   on_epoch=on_epoch if main_rank else None, dist_env=env)


def _calibrate(out: Path, device, console: Console) -> Run:
    """Fit the temperature on the validation split and store it in best.pt; return that run.

    Validation, because the test split stays closed; see `cxrlearn.calibration`.
    """
    run = open_run(out)
    logits, y = logits_of(run.model, run.dataset("val"), device,
                          flip_average=run.flip_average)
    temperature = fit_temperature(logits, y)
    run.save_temperature(temperature)
    console.print(f"temperature fitted on the validation split: T = {temperature:.2f}")
    return run


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    with (out / "history.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    fig = plot_history(history)
    fig.savefig(out / "learning_curves.png", dpi=100)


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        train_run(args, console, args.out, args.resume)
    finally:
        if distributed.is_distributed():
            torch.distributed.destroy_process_group()
    return 0
