"""The training loop, written out by hand, with the care a real run needs.

One step of gradient descent, the way every textbook writes it:

    logits = model(x)                  # forward
    loss = loss_fn(logits, y)          # how wrong, on average
    optimizer.zero_grad()              # forget the last step's gradients
    loss.backward()                    # d loss / d weight, for every weight
    optimizer.step()                   # w <- w - lr * (the optimiser's version of) grad

`train_one_epoch` does that for every batch and returns numbers; `evaluate` measures loss,
accuracy and macro-F1 without changing anything; `fit` runs epochs, keeps the best model by
a validation score (never the test split: choosing by test accuracy makes the test score
optimistic, the mistake the reference project made), stops early when validation stops
improving, and writes atomic checkpoints from which a run resumes exactly.

Extras a careful run needs, each small: warm-up and a schedule (`cxrlearn.schedule`),
label smoothing, optional class weights for imbalanced data, automatic mixed precision on
CUDA (off on the CPU, where it does not help), `channels_last`, a clear stop on a NaN loss.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cxrlearn.checkpoint import load_checkpoint, save_checkpoint
from cxrlearn.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    is_distributed,
)
from cxrlearn.errors import CxrlearnError
from cxrlearn.schedule import SCHEDULES, lr_factor, scaled_side, size_fraction
from cxrlearn.seeding import rng_state, seed_everything, set_rng_state
from cxrlearn.tta import model_logits

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "make_optimizer",
    "make_scheduler",
    "make_loss_fn",
    "class_weights",
    "macro_f1_from_confusion",
    "resize_batch",
    "train_one_epoch",
    "evaluate",
    "predict",
    "fit",
]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run. Defaults give a good model on the bundled sample on a CPU.

    Attributes:
        num_epochs: Passes over the training split.
        lr: Peak learning rate.
        batch_size: Images per optimizer step.
        weight_decay: Decoupled weight decay (AdamW) or L2 (SGD).
        optimizer: `"adamw"` or `"sgd"` (with Nesterov momentum).
        momentum: SGD momentum.
        schedule: `"onecycle"`, `"cosine"` or `"constant"` (see `cxrlearn.schedule`).
        warmup_epochs: Length of the warm-up, in epochs (may be fractional).
        label_smoothing: Share of the target moved to the other classes (Szegedy et al. 2016).
        class_weighted: Weight the loss by inverse class frequency (for imbalanced data).
        amp: Mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU/MPS.
        channels_last: Store activations as NHWC, faster on recent GPUs and some CPUs.
        progressive_resize: Progressive resizing: the first `resize_hold` of the run trains on
            images scaled to this share of their side, then the size grows to full by
            `resize_full_from` of the run (`cxrlearn.schedule.size_fraction`). 1.0 switches
            it off. Validation runs at the size just trained at; only full-size epochs
            compete for `best.pt` and count towards `patience`.
        resize_hold: With progressive resizing, the share of the run at the smallest size.
        resize_full_from: ... and the share of the run after which it trains at full size.
        patience: Stop after this many epochs without a better validation score (None: never).
        select_by: `"macro_f1"` (higher is better) or `"val_loss"` (lower is better).
        seed: Seed of initialisation-independent randomness: shuffling and augmentation.
        num_workers: DataLoader worker processes.
    """

    num_epochs: int = 12
    lr: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "onecycle"
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    class_weighted: bool = False
    amp: bool = True
    channels_last: bool = False
    progressive_resize: float = 1.0
    resize_hold: float = 0.5
    resize_full_from: float = 0.75
    patience: int | None = None
    select_by: str = "macro_f1"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.select_by not in ("macro_f1", "val_loss"):
            raise ValueError(f"select_by must be macro_f1 or val_loss, got {self.select_by!r}")
        if self.num_epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("num_epochs, batch_size and lr must be positive")
        if not 0 < self.progressive_resize <= 1:
            raise ValueError(f"progressive_resize must be in (0, 1], got {self.progressive_resize}")
        if not 0 <= self.resize_hold <= self.resize_full_from <= 1:
            raise ValueError("need 0 <= resize_hold <= resize_full_from <= 1, got "
                             f"{self.resize_hold}, {self.resize_full_from}")

    def image_scale(self, epoch: int) -> float:
        """Share of the full image side to train at in `epoch` (0-based): `size_fraction`."""
        return size_fraction(epoch, self.num_epochs, self.progressive_resize, self.resize_hold,
                             self.resize_full_from)


class TrainingDiverged(CxrlearnError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class TrainingInterrupted(CxrlearnError):
    """Ctrl-C stopped the run; checkpoints of finished epochs were kept."""


def class_weights(labels: Sequence[int], num_classes: int) -> Tensor:
    """Inverse-frequency weights `N / (K * n_k)`: 1 for every class when balanced.

    Shape:
        -> (K,)
    """
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))


def make_loss_fn(config: TrainConfig, train_labels: Sequence[int], num_classes: int) -> nn.Module:
    """Cross-entropy with label smoothing and, if asked, class weights."""
    weight = class_weights(train_labels, num_classes) if config.class_weighted else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; no weight decay on biases and BN weights.

    Decaying a BatchNorm scale or a bias only fights the normalisation (they have no
    overfitting role), a common fine-tuning detail (Goyal et al. 2017, arXiv 1706.02677).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (warm-up, then the configured shape) over the whole run."""
    total = config.num_epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, config.schedule)
    )


def macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN); 0 for a class never seen or predicted.

    Lesson 04 derives it; `cxrlearn.metrics.classification_report` gives the same number.
    """
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (TP + FP) + (TP + FN)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def _autocast_dtype(device: torch.device, config: TrainConfig) -> torch.dtype | None:
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resize_batch(x: Tensor, fraction: float) -> Tensor:
    """Scale a batch's images to `fraction` of their side (see `cxrlearn.schedule.scaled_side`).

    Bilinear with antialiasing, so shrinking averages pixels instead of skipping them. The
    images are already normalised; resizing is linear, so it commutes with normalisation.

    Shape:
        (B, C, H, W) -> (B, C, h, w)
    """
    h, w = scaled_side(x.shape[-2], fraction), scaled_side(x.shape[-1], fraction)
    if (h, w) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_batch: Callable[[dict[str, float]], None] | None = None,
    image_scale: float = 1.0,
) -> dict[str, float]:
    """One pass over `loader`, updating the weights after every batch.

    `image_scale` below 1 trains on smaller copies of the images (progressive resizing).

    Returns:
        `loss` (mean over images), `accuracy`, `images`, `seconds`, `images_per_s`,
        `image_size` (the side trained at, 0 for an empty loader).

    Raises:
        TrainingDiverged: The loss of a batch is NaN or infinite (no step is taken with it).
    """
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total_loss, correct, seen, side = 0.0, 0, 0, 0
    start = time.perf_counter()
    for batch, (x, y) in enumerate(loader):
        # 1. move the batch to where the model is (smaller, early in progressive resizing)
        x = resize_batch(x.to(device, non_blocking=True), image_scale)
        x = x.contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        side = x.shape[-1]
        # 2. forward: scores for every class, then the loss
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)  # (B, K)
            loss = loss_fn(logits, y)
        bad = not torch.isfinite(loss).item()
        if is_distributed():  # every rank must stop together, or the others wait forever
            bad = all_reduce_sum([float(bad)], device)[0] > 0
        if bad:
            raise TrainingDiverged(f"loss became {loss.item()} in batch {batch}; "
                                   "lower the learning rate")
        # 3. zero the gradients left over from the previous step
        optimizer.zero_grad(set_to_none=True)
        # 4. backward: gradients of the loss for every trainable weight
        if scaler is not None:
            scaler.scale(loss).backward()  # fp16 only: scale up so small gradients survive
            # 5. step: update the weights (the scaler skips steps with inf gradients)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            # 5. step: update the weights
            optimizer.step()
        if scheduler is not None:
            scheduler.step()  # the learning rate changes every step, not every epoch

        n = y.shape[0]
        total_loss += loss.item() * n
        correct += (logits.argmax(dim=1) == y).sum().item()
        seen += n
        if on_batch is not None:
            elapsed = time.perf_counter() - start
            on_batch({"batch": batch + 1, "batches": len(loader), "loss": total_loss / seen,
                      "accuracy": correct / seen, "images_per_s": seen / max(elapsed, 1e-9)})
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
            "image_size": side}


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None, image_scale: float = 1.0,
    flip_average: bool = False,
) -> tuple[Tensor, Tensor]:
    """Logits and targets for every image of `loader`, in order, with the model in eval mode.

    `image_scale` below 1 shrinks the images first (`resize_batch`), as in training.
    `flip_average` averages the logits of each image and its mirror image
    (`cxrlearn.tta.flip_averaged_logits`).

    Shape:
        -> logits (N, K) float32 on the CPU, y (N,)
    """
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    all_logits, all_y = [], []
    for x, y in loader:
        x = resize_batch(x.to(device), image_scale).contiguous(memory_format=memory_format)
        all_logits.append(model_logits(model, x, flip_average).float().cpu())
        all_y.append(torch.as_tensor(y))
        if on_batch is not None:
            on_batch(len(y))
    return torch.cat(all_logits), torch.cat(all_y)


def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
    num_classes: int, channels_last: bool = False, image_scale: float = 1.0,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 on `loader`; changes nothing.

    `image_scale` below 1 evaluates on shrunk images (`resize_batch`).

    Returns:
        `loss`, `accuracy`, `macro_f1`.
    """
    logits, y = predict(model, loader, device, channels_last, image_scale=image_scale)
    # A CPU copy: Module.cpu() moves in place, and fit goes on training with loss_fn.
    loss = copy.deepcopy(loss_fn).cpu()(logits, y).item()
    pred = logits.argmax(dim=1)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y.numpy(), pred.numpy()), 1)  # rows: true class, columns: predicted
    return {"loss": loss, "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "macro_f1": macro_f1_from_confusion(cm)}


def _loader(dataset: Dataset, config: TrainConfig, epoch: int | None,
            env: DistEnv | None = None) -> DataLoader:
    """A DataLoader; for training (`epoch` given) its shuffle is seeded by (seed, epoch).

    Seeding each epoch's order from the seed and the epoch, rather than from a generator that
    runs on, is what lets a resumed run see the same batches as an uninterrupted one.
    Training always goes through a `DistributedSampler` (one replica when not distributed):
    rank r of N takes every N-th index of one shared permutation, so the N slices of a batch
    together are exactly the batch a single process would take.
    """
    if epoch is None:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                          num_workers=config.num_workers)
    world, rank = (env.world_size, env.rank) if env is not None else (1, 0)
    if config.batch_size % world:
        raise CxrlearnError(f"batch size {config.batch_size} does not split evenly over "
                            f"{world} processes")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed)
    sampler.set_epoch(epoch)  # a new permutation every epoch, the same on every rank
    local_batch = config.batch_size // world
    return DataLoader(dataset, batch_size=local_batch, sampler=sampler,
                      num_workers=config.num_workers,
                      drop_last=len(sampler) > local_batch)  # BN needs batches > 1


def _is_better(score: float, best: float | None, select_by: str) -> bool:
    if best is None:
        return True
    return score > best if select_by == "macro_f1" else score < best


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainConfig,
    device: torch.device,
    class_names: Sequence[str],
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    dist_env: DistEnv | None = None,
) -> list[dict[str, float]]:
    """Train `model` for `config.num_epochs`, choosing the best epoch on the validation split.

    Args:
        model: The network, on any device; it is moved to `device`.
        train_data: Training `Dataset` yielding `(x, y)`; if it has `set_epoch`, it is called.
        val_data: Validation `Dataset`: model selection and early stopping look only here.
        config: Settings.
        device: Where to train (see `cxrlearn.device.select_device`).
        class_names: Names of the classes, stored in checkpoints.
        out_dir: Folder for `last.pt` (every epoch) and `best.pt` (best validation score).
        resume: A `last.pt` to continue from; the run then ends exactly as if uninterrupted.
        meta: Extra plain data stored in every checkpoint (architecture, preprocessing).
        on_batch: Called as `on_batch(epoch, stats)` after every training batch.
        on_epoch: Called with each epoch's history row.
        dist_env: Set under `torchrun` (see `cxrlearn.distributed`): the model is wrapped in
            DistributedDataParallel, each rank trains on its slice of every batch
            (`config.batch_size` stays the global batch), training numbers are summed over
            ranks, and only rank 0 writes checkpoints. The process group must be initialised.

    Returns:
        The history: per epoch `epoch`, `train_loss`, `train_accuracy`, `val_loss`,
        `val_accuracy`, `val_macro_f1`, `lr`, `image_size` (the side trained at),
        `images_per_s`, `seconds`.

    Raises:
        TrainingDiverged: The loss became NaN/inf; `last.pt` still holds the last good epoch.
        TrainingInterrupted: Ctrl-C; `last.pt` holds the last finished epoch.
        CxrlearnError: `resume` is unreadable or belongs to another model or class list.
    """
    meta = dict(meta or {})
    num_classes = len(class_names)
    out = Path(out_dir) if out_dir is not None else None
    seed_everything(config.seed)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    labels = getattr(train_data, "labels", None) or [int(train_data[i][1])
                                                     for i in range(len(train_data))]
    loss_fn = make_loss_fn(config, labels, num_classes).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(_loader(train_data, config, 0, dist_env))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    amp_dtype = _autocast_dtype(device, config)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    history: list[dict[str, float]] = []
    best: float | None = None
    since_best = 0
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume, class_names)
        if ckpt.get("meta", {}).get("arch") != meta.get("arch"):
            raise CxrlearnError(f"checkpoint is for {ckpt.get('meta', {}).get('arch')}, "
                                f"not {meta.get('arch')}", path=resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        best, since_best, start_epoch = ckpt["best"], ckpt["since_best"], ckpt["epoch"]

    writes = out is not None and (dist_env is None or dist_env.is_main)
    # DDP all-reduces gradients in backward; `model` stays the plain module for saving.
    train_model = model if dist_env is None else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    def state(epoch: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                "since_best": since_best, "rng": rng_state(),
                "config": dataclasses.asdict(config), "class_names": list(class_names),
                "history": history, "meta": meta}

    val_loader = _loader(val_data, config, epoch=None)
    for epoch in range(start_epoch, config.num_epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        scale = config.image_scale(epoch)
        try:
            tr = train_one_epoch(
                train_model, _loader(train_data, config, epoch, dist_env), loss_fn, optimizer,
                device,
                scheduler, scaler, amp_dtype, config.channels_last,
                on_batch=None if on_batch is None else (lambda s, e=epoch: on_batch(e, s)),
                image_scale=scale,
            )
            if dist_env is not None:
                # Per-replica BN statistics differ; take rank 0's so every rank validates,
                # decides and saves the same model.
                broadcast_buffers(model)
            # Validate at the size just trained at: a network trained on small images scores
            # badly on large ones until its last epochs at full size.
            va = evaluate(model, val_loader, loss_fn, device, num_classes, config.channels_last,
                          image_scale=scale)
        except TrainingDiverged as e:
            kept = f"; {out / 'last.pt'} holds epoch {epoch}" if out and epoch > 0 else ""
            raise TrainingDiverged(f"epoch {epoch + 1}: {e.message}{kept}") from None
        except KeyboardInterrupt:
            kept = (f"{out / 'last.pt'} holds epoch {epoch}; continue with resume"
                    if out and epoch > 0 else "no epoch was finished")
            raise TrainingInterrupted(f"interrupted in epoch {epoch + 1}: {kept}") from None
        loss_sum, correct, seen = all_reduce_sum(
            [tr["loss"] * tr["images"], tr["accuracy"] * tr["images"], tr["images"]], device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "val_loss": va["loss"], "val_accuracy": va["accuracy"],
               "val_macro_f1": va["macro_f1"], "lr": lr, "image_size": tr["image_size"],
               "images_per_s": seen / max(tr["seconds"], 1e-9), "seconds": tr["seconds"]}
        history.append(row)
        score = va["macro_f1"] if config.select_by == "macro_f1" else va["loss"]
        # Only full-size epochs compete for best.pt and count for patience: the best model is
        # used at full size, and scores at different sizes do not compare.
        full_size = scale >= 1.0
        improved = (full_size and _is_better(score, best, config.select_by)
                    and math.isfinite(score))
        if improved:
            best, since_best = score, 0
        elif full_size:
            since_best += 1
        if writes:
            save_checkpoint(out / "last.pt", state(epoch + 1))
            if improved:
                save_checkpoint(out / "best.pt", state(epoch + 1))
        barrier()  # no rank runs ahead of the checkpoint
        if on_epoch is not None:
            on_epoch(row)
        if config.patience is not None and since_best >= config.patience:
            break
    return history
