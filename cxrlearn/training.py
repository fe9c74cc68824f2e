"""The training loop, written out by hand.

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
improving, and writes checkpoints from which a run resumes exactly.

What a careful run adds lives next door, each in its own module: the learning-rate and image
size schedules (`cxrlearn.schedule`), seeds (`cxrlearn.seeding`), checkpoints and resuming
(`cxrlearn.checkpoint`), several processes (`cxrlearn.distributed`), the scores
(`cxrlearn.evaluation.metrics`). Here: label smoothing, optional class weights for
imbalanced data, mixed precision on CUDA (off on the CPU, where it does not help), and a
clear stop on a NaN loss.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cxrlearn import distributed
from cxrlearn.atomic import signals_deferred
from cxrlearn.checkpoint import (
    INTERRUPTED,
    Resumed,
    load_checkpoint,
    model_state,
    resume,
    save_checkpoint,
    training_state,
)
from cxrlearn.errors import CxrlearnError, Terminated, TrainingDiverged, TrainingInterrupted
from cxrlearn.evaluation.metrics import confusion_matrix, per_class_scores
from cxrlearn.schedule import SCHEDULES, SizeSchedule, lr_factor
from cxrlearn.seeding import rng_state, seed_everything
from cxrlearn.settings import Check, above, at_least, check_fields, one_of, setting
from cxrlearn.stochastic_depth import StochasticDepth
from cxrlearn.transforms import BatchMix, resize

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Amp",
    "make_optimizer",
    "make_scheduler",
    "make_loss_fn",
    "class_weights",
    "train_loader",
    "EpochProgress",
    "train_one_epoch",
    "recompute_bn_statistics",
    "WeightAverage",
    "lr_range_test",
    "suggest_lr",
    "evaluate",
    "predict",
    "fit",
]


_SHARE = Check(lambda v: 0 <= v < 1, "must be at least 0 and below 1")
"""A share that may be 0 but not all: label smoothing, stochastic depth's drop rate."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run. Defaults give a good model on the bundled sample on a CPU.

    Each field is a setting (`cxrlearn.settings`): its help text, its check and, for those
    `cxrlearn train` offers, its flag are written beside it, once. `sizes` (progressive
    resizing) is None here, full size throughout; validation runs at the size just trained
    at, and only full-size epochs compete for `best.pt` and count towards `patience`.
    """

    num_epochs: int = setting(12, help="The number of passes over the training split.",
                              check=at_least(1), flag="--epochs", metavar="N", group="training")
    lr: float = setting(2e-3, help="The peak learning rate.", check=above(0), flag="--lr",
                        group="training")
    batch_size: int = setting(
        32, help="Images per optimizer step; under torchrun, over all processes together.",
        check=at_least(1), flag="--batch-size", metavar="N", group="training")
    weight_decay: float = setting(0.05, help="Decoupled weight decay (AdamW) or L2 (SGD).",
                                  check=at_least(0))
    optimizer: str = setting("adamw", help="The optimizer: adamw, or sgd with Nesterov momentum.",
                             check=one_of(("adamw", "sgd")))
    momentum: float = setting(0.9, help="The momentum of SGD.", check=at_least(0))
    schedule: str = setting("onecycle", help="The learning-rate schedule (cxrlearn.schedule).",
                            check=one_of(SCHEDULES))
    warmup_epochs: float = setting(
        2.0, help="The length of the warm-up, in epochs (it may be fractional).",
        check=at_least(0))
    label_smoothing: float = setting(
        0.1, help="The share of the target moved to the other classes (Szegedy et al. 2016).",
        check=_SHARE)
    class_weighted: bool = setting(
        False, help="Weight the loss by inverse class frequency, for imbalanced data.",
        flag="--class-weighted", group="training")
    amp: bool = setting(True, help="Mixed precision on CUDA (bf16 where supported, else "
                                   "fp16); ignored on the CPU and MPS.")
    channels_last: bool = setting(
        False, help="Keep the weights, hence the activations, in NHWC: faster on recent GPUs.")
    sizes: SizeSchedule | None = setting(
        None, help=f"Progressive resizing: train the first {SizeSchedule.hold:.0%} of the "
                   "epochs at START, a share of the full side, growing to full size by "
                   f"{SizeSchedule.full_from:.0%}. 1 turns it off.",
        flag="--progressive-resize", metavar="START", group="training",
        from_flag=lambda start: None if start == 1 else SizeSchedule(start),
        to_flag=lambda sizes: 1.0 if sizes is None else sizes.start)
    patience: int | None = setting(
        None, help="Stop after N epochs without a better validation score.",
        check=at_least(1), flag="--patience", metavar="N", group="training", shown="never")
    select_by: str = setting(
        "macro_f1", help="The score that chooses the epoch: macro_f1 (higher is better) or "
                         "val_loss (lower is better).",
        check=one_of(("macro_f1", "val_loss")))
    seed: int = setting(0, help="The seed of the split, the initial weights and the "
                                "augmentation.", check=at_least(0), flag="--seed",
                        group="training")
    num_workers: int = setting(0, help="The number of data-loading processes.",
                               check=at_least(0), flag="--num-workers", metavar="N",
                               group="hardware")
    precise_bn_batches: int = setting(
        8, help="Before each validation, recompute BatchNorm's statistics over N training "
                "batches (precise BN, Wu & Johnson 2021); 0 validates with the running "
                "averages kept during training, which lag behind fast-moving weights.",
        check=at_least(0), flag="--precise-bn", metavar="N", group="training")
    ema_epochs: float = setting(
        3.0, help="Validate and keep an exponential moving average (EMA) of the weights over "
                  "about the last N epochs, its BatchNorm statistics recomputed; 0 is off.",
        check=at_least(0), flag="--ema-epochs", metavar="N", group="training")
    mixup: float = setting(
        0.0, help="MixUp (Zhang et al. 2018): blend pairs of images and their labels by a "
                  "share drawn from Beta(A, A); 0 is off.",
        check=at_least(0), flag="--mixup", metavar="A", group="training")
    cutmix: float = setting(
        0.0, help="CutMix (Yun et al. 2019): paste a box of another image, its label "
                  "weighted by the box's area drawn from Beta(A, A); 0 is off. With MixUp "
                  "too, each batch uses one of them, chosen by a coin.",
        check=at_least(0), flag="--cutmix", metavar="A", group="training")
    stochastic_depth: float = setting(
        0.0, help="Stochastic depth (Huang et al. 2016): while training, skip each residual "
                  "block's branch for a random share of the images, up to P for the last "
                  "block (cxrlearn.stochastic_depth); 0 is off.",
        check=_SHARE,
        flag="--stochastic-depth", metavar="P", group="training")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ema_epochs > 0 and self.precise_bn_batches == 0:
            # An average of weights validated with the live network's BatchNorm statistics
            # is judged with another network's statistics, and scores badly.
            raise ValueError("ema_epochs needs precise_bn_batches of at least 1 (or set "
                             "ema_epochs to 0 too, --ema-epochs 0): the averaged "
                             "network needs BatchNorm statistics of its own")


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


def _no_scaling() -> torch.amp.GradScaler:
    return torch.amp.GradScaler(enabled=False)


@dataclass(frozen=True)
class Amp:
    """Mixed precision: the dtype the forward pass runs in, and the gradient scaler.

    `Amp.choose(device, wanted)` gives bf16 on CUDA cards that have it, fp16 with a working
    `GradScaler` (so that small gradients do not round to zero) on older ones, and nothing
    elsewhere: on a CPU, autocast does not make ResNet18 faster.

    Every other precision gets a disabled scaler, whose calls pass through (`scale(loss)` is
    `loss`, `step(optimizer)` is `optimizer.step()`, `update()` does nothing), so that the
    training step is written once for all of them (PyTorch's AMP recipe does the same with
    `GradScaler(enabled=use_amp)`).
    """

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(default_factory=_no_scaling)

    @classmethod
    def choose(cls, device: torch.device, wanted: bool) -> Amp:
        if not wanted or device.type != "cuda":
            return cls()
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))


def train_loader(dataset: Dataset, config: TrainConfig, epoch: int,
                 skip: int = 0) -> DataLoader:
    """The batches of one epoch, in an order seeded by (seed, epoch).

    The order comes from `cxrlearn.distributed.epoch_sampler`: under `torchrun`, this
    process's slice of every batch; alone, the whole batch. The last, incomplete batch is
    dropped (BatchNorm needs more than one image).

    `skip` leaves out the epoch's first batches (an interrupted epoch, resumed): their images
    are neither loaded nor augmented again. Nothing else changes, because nothing depends on
    them: the order is one permutation drawn for the whole epoch, and each image's
    augmentation has a generator of its own, seeded by (seed, epoch, index)
    (`cxrlearn.data.item_generator`).
    """
    sampler = distributed.epoch_sampler(dataset, config.seed, epoch)  # type: ignore[arg-type]
    local_batch = distributed.local_batch_size(config.batch_size)
    drop_last = len(sampler) > local_batch  # decided on the whole epoch, skipped or not
    if skip == 0:
        return DataLoader(dataset, batch_size=local_batch, sampler=sampler,
                          num_workers=config.num_workers, drop_last=drop_last)
    # The loader's iterator draws a seed for its workers when it starts; an uninterrupted
    # run drew it from the global generator at the epoch's start, before the state that was
    # saved mid-epoch. A private generator keeps that global state where the save left it.
    return DataLoader(dataset, batch_size=local_batch, sampler=list(sampler)[skip * local_batch:],
                      num_workers=config.num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(config.seed))


@dataclass
class EpochProgress:
    """How far an epoch has got: its finished steps, and the running sums its history row is
    made of. `train_one_epoch` adds each step as it finishes, so that whoever interrupts it
    knows what is done; an interrupted epoch's progress is saved (`interrupted.pt`) and
    handed back to `train_one_epoch` to finish the epoch.

    Attributes:
        batches: Steps finished.
        batches_in_epoch: Steps the whole epoch has (0 before it starts).
        loss_sum: The sum over finished steps of (batch loss x batch size).
        correct: Images whose label was the top score.
        seen: Images trained on.
        seconds: Time spent on the steps (interruptions not counted).
        image_size: The side trained at (0 before the first step).
    """

    batches: int = 0
    batches_in_epoch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    image_size: int = 0


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: Amp = Amp(),
    image_size: int | None = None,
    on_batch: Callable[[dict[str, float]], None] | None = None,
    mix: BatchMix | None = None,
    average: WeightAverage | None = None,
    progress: EpochProgress | None = None,
) -> dict[str, float]:
    """One pass over `loader`, updating the weights after every batch.

    `image_size` trains on smaller copies of the images (progressive resizing). `mix`
    blends every batch with a shuffled copy of itself (MixUp or CutMix); the loss is then the
    same blend of the losses for the two labels, and accuracy counts a blend as right when
    the network names the image that makes up most of it (share at least a half).
    `average` follows the weights after every step (`WeightAverage`).

    Each step is whole or not taken: Ctrl-C or SIGTERM during one waits until it is done
    (`cxrlearn.atomic.signals_deferred`) and then stops the loop, between two steps, with
    every finished step counted in `progress`. Given the `progress` of an interrupted epoch
    and a loader of the batches still to do (`train_loader(..., skip=progress.batches)`),
    it finishes the epoch as if it had never stopped.

    Returns:
        `loss` (mean over images), `accuracy`, `images`, `seconds`, `images_per_s`,
        `image_size` (the side trained at, 0 for an empty loader).

    Raises:
        TrainingDiverged: The loss of a batch is NaN or infinite (no step is taken with it).
    """
    model.train()
    p = progress if progress is not None else EpochProgress()
    p.batches_in_epoch = p.batches + len(loader)
    tick = time.perf_counter()  # the time of a step includes loading its batch
    for batch, (x, y) in enumerate(loader, start=p.batches):
        with signals_deferred():  # a step is whole or not taken
            # 1. move the batch to where the model is (shrunk, early in progressive resizing)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if image_size is not None and image_size != x.shape[-1]:
                x = resize(x, image_size)  # (B, C, s, s)
            if mix is not None:  # each image blended with a partner: share*x + (1-share)*x'
                x, partner, share = mix(x)
            # 2. forward: scores for every class, then the loss
            with torch.autocast(device.type, dtype=amp.dtype, enabled=amp.dtype is not None):
                logits = model(x)  # (B, K)
                if mix is None:
                    loss = loss_fn(logits, y)
                else:  # cross-entropy is linear in the target: blending labels blends losses
                    loss = (share * loss_fn(logits, y)
                            + (1 - share) * loss_fn(logits, y[partner]))
            if distributed.any_rank(not torch.isfinite(loss).item(), device):  # stop together
                raise TrainingDiverged(f"loss became {loss.item()} in batch {batch}; "
                                       "lower the learning rate")
            # 3. zero the gradients left over from the previous step
            optimizer.zero_grad(set_to_none=True)
            # 4. backward: gradients of the loss for every trainable weight (in fp16 the
            #    scaler multiplies the loss first, so that small gradients survive)
            amp.scaler.scale(loss).backward()
            # 5. step: update the weights (an fp16 scaler divides the gradients back first
            #    and skips a step whose gradients overflowed; else it calls optimizer.step())
            amp.scaler.step(optimizer)
            amp.scaler.update()
            if scheduler is not None:
                scheduler.step()  # the learning rate changes every step, not every epoch
            if average is not None:
                average.update()
            # the step is done: count it (the same sums, in the same order, after a resume)
            n = y.shape[0]
            p.loss_sum += loss.item() * n
            # A blend counts as right when the network names the image that makes up most
            # of it: its own label's share is `share`, its partner's `1 - share`.
            named = y if mix is None or share >= 0.5 else y[partner]
            p.correct += (logits.argmax(dim=1) == named).sum().item()
            p.seen += n
            p.image_size = x.shape[-1]
            now = time.perf_counter()
            p.seconds, tick = p.seconds + (now - tick), now
            p.batches = batch + 1
        if on_batch is not None:
            on_batch({"batch": p.batches, "batches": p.batches_in_epoch,
                      "loss": p.loss_sum / p.seen, "accuracy": p.correct / p.seen,
                      "images_per_s": p.seen / max(p.seconds, 1e-9)})
    return {"loss": p.loss_sum / max(p.seen, 1), "accuracy": p.correct / max(p.seen, 1),
            "images": p.seen, "seconds": p.seconds,
            "images_per_s": p.seen / max(p.seconds, 1e-9), "image_size": p.image_size}


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, batches: Iterable[Tensor], device: torch.device,
    image_size: int | None = None, amp: Amp = Amp(),
) -> int:
    """Precise BN: BatchNorm's statistics measured afresh for the weights as they are now.

    In training, BatchNorm normalises with the batch's own mean and variance and keeps a
    running average of them (`x <- 0.9 x + 0.1 batch`) for evaluation. That average trails
    the weights: it still remembers batches seen by weights that no longer exist. When the
    weights move fast (a high learning rate, few steps per epoch, a new image size) the
    statistics it holds belong to another network, and validation loss jumps tenfold on
    weights that are fine. Here every BatchNorm forgets its average and takes, instead, the
    plain mean of the statistics of `batches` (momentum None: a cumulative average, each
    batch counting the same), computed by forward passes in training mode (Wu & Johnson
    2021, arXiv 2105.07576, section 5). No weight changes; the cost is one forward pass per
    batch, about a third of a training step each.

    BatchNorms kept in eval mode (a frozen backbone, `cxrlearn.transfer.freeze_backbone`)
    keep their statistics.

    Args:
        model: The network; its train/eval mode is restored afterwards.
        batches: Training images, augmented as in training, e.g. the first batches of
            `train_loader`. Shape: each (B, C, H, W).
        device: Where the model is.
        image_size: The side to shrink the batches to (the side just trained at).
        amp: The precision of the forward passes (as in training).

    Returns:
        The number of batches measured (0 leaves the statistics as they were).
    """
    was_training = model.training
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.training]
    kept = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
             m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()  # mean 0, variance 1, no batch seen
        m.momentum = None  # a cumulative average: batch n counts 1/n
    n = 0
    try:
        for x in batches:
            x = x.to(device, non_blocking=True)
            if image_size is not None and image_size != x.shape[-1]:
                x = resize(x, image_size)  # (B, C, s, s)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp.dtype,
                                                 enabled=amp.dtype is not None):
                model(x)  # in training mode: each BatchNorm adds this batch's statistics
            n += 1
    finally:
        for m, (mean, var, count, momentum) in zip(norms, kept, strict=True):
            m.momentum = momentum
            if n == 0:  # nothing measured: keep the old statistics rather than none
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return n


class WeightAverage:
    """An exponential moving average (EMA) of a network's weights, in a copy of the network.

    After every optimizer step, `update()` moves each averaged weight a little towards the
    live one: `avg <- d * avg + (1 - d) * w`, with `d = decay`, whose memory is about
    `1 / (1 - decay)` steps. Less at two times:

    - Early in the run, `d` is at most `(1 + t) / (10 + t)` after `t` updates in all, so
      that the random initial weights are soon forgotten.
    - After a `restart()`, `d` is at most `n / (n + 1)` after `n` updates since it: until
      the memory of `decay` is reached, the average is the plain mean of the weights since
      the restart. (Until 2026-12-07 the first rule counted from the restart too. After a
      change of image size, late in a run, that kept the memory near a ninth of the steps
      since the restart: about one epoch where `--ema-epochs 3` asked for three.)

    Late in a run the weights jitter around a good point; their average
    lies nearer its centre, and usually validates better than any one of them (Polyak
    averaging; Izmailov et al. 2018, arXiv 1803.05407, for the same idea as SWA).

    Only the weights are averaged. BatchNorm's running statistics are not weights: averaged,
    or copied from the live network, they describe the activations of another network, and
    the averaged network is judged with the wrong statistics. That is why an EMA of the
    weights alone lost in an earlier screen (benchmarks/README.md): it carried the live
    network's statistics, gathered at other image sizes too. `fit` therefore recomputes the
    averaged network's own statistics (`recompute_bn_statistics`) before each validation,
    and starts the average afresh when the image size changes (progressive resizing).

    Attributes:
        network: The averaged network (a copy of the model that no optimizer updates).
        decay: The weight `d` kept at each update, below 1.
        updates: How many updates it has taken since it (re)started.
        steps: How many updates it has taken in all, restarts or not.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be at least 0 and below 1, got {decay}")
        self.model, self.decay, self.updates, self.steps = model, decay, 0, 0
        # A plain copy: the optimizer never sees its weights and `update` runs without
        # autograd. Batch norms that `freeze_backbone` froze stay frozen in the copy too
        # (`ResNet.frozen_norms` is copied), so precise BN measures the others only.
        self.network = copy.deepcopy(model)

    @classmethod
    def over_epochs(cls, model: nn.Module, epochs: float, steps_per_epoch: int) -> WeightAverage:
        """An average whose memory is about `epochs` epochs: `d = 1 - 1 / steps`."""
        return cls(model, max(0.0, 1 - 1 / max(epochs * steps_per_epoch, 1)))

    @torch.no_grad()
    def update(self) -> None:
        """Move the averaged weights towards the live ones (after an optimizer step)."""
        self.updates += 1
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps),  # forget the start
                self.updates / (self.updates + 1))  # the mean since the restart
        for avg, w in zip(self.network.parameters(), self.model.parameters(), strict=True):
            avg.lerp_(w.detach(), 1 - d)  # avg + (1 - d) * (w - avg)

    @torch.no_grad()
    def restart(self) -> None:
        """Start again from the live weights (and statistics)."""
        self.network.load_state_dict(self.model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        """The averaged network and the update counts, for `last.pt`."""
        return {"network": self.network.state_dict(), "updates": self.updates,
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.updates = int(state["updates"])
        self.steps = int(state.get("steps", self.updates))  # older checkpoints: no restart


def lr_range_test(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    device: torch.device, start: float = 1e-6, end: float = 1.0, steps: int = 100,
    on_step: Callable[[int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """The learning-rate range test (Smith 2015, arXiv 1506.01186, section 3.3).

    A short run whose learning rate rises exponentially from `start` to `end`, one
    training step each, recording every step's loss; it stops early once the loss passes
    four times its lowest value (it diverged). The loss first barely moves (the rate is too
    small to matter), then falls fastest, then explodes; a good peak learning rate lies in
    the falling part (`suggest_lr`). It changes the model and the optimizer: run it on a copy.
    `on_step(1)` is called after every step (a progress bar's advance).

    Returns:
        The learning rates tried and the loss of each step's batch.
    """
    lrs, losses = [], []
    model.to(device).train()
    batches = itertools.cycle(loader)  # as many steps as asked, however small the data
    for step in range(steps):
        lr = start * (end / start) ** (step / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        loss = train_step(model, x.to(device), y.to(device), loss_fn, optimizer)
        lrs.append(lr)
        losses.append(loss)
        if on_step is not None:
            on_step(1)
        if not math.isfinite(loss) or loss > 4 * min(losses):
            break
    return lrs, losses


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], smoothing: float = 0.9) -> float:
    """A peak learning rate from `lr_range_test`: a tenth of the rate at the lowest smoothed
    loss (fast.ai's rule of thumb: at the minimum the loss is about to explode).

    The losses are smoothed by an exponential moving average with bias correction first,
    as one batch's loss is noisy.
    """
    avg, smooth = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = smoothing * avg + (1 - smoothing) * loss
        smooth.append(avg / (1 - smoothing**i))
    return lrs[min(range(len(smooth)), key=smooth.__getitem__)] / 10


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device,
    on_batch: Callable[[int], None] | None = None, image_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits and targets for every image of `loader`, in order, with the model in eval mode.

    `image_size` shrinks the images first, as in training.

    Shape:
        -> logits (N, K) float32 on the CPU, y (N,)
    """
    model.eval()
    all_logits, all_y = [], []
    for x, y in loader:
        x = x.to(device)
        if image_size is not None and image_size != x.shape[-1]:
            x = resize(x, image_size)  # (B, C, s, s)
        all_logits.append(model(x).float().cpu())
        all_y.append(torch.as_tensor(y))
        if on_batch is not None:
            on_batch(len(y))
    return torch.cat(all_logits), torch.cat(all_y)


def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
    num_classes: int, image_size: int | None = None,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 on `loader`; changes nothing.

    Returns:
        `loss`, `accuracy`, `macro_f1` (from `cxrlearn.evaluation.metrics`).
    """
    logits, y = predict(model, loader, device, image_size=image_size)
    # A CPU copy: Module.cpu() moves in place, and fit goes on training with loss_fn.
    loss = copy.deepcopy(loss_fn).cpu()(logits, y).item()
    cm = confusion_matrix(y.numpy(), logits.argmax(dim=1).numpy(), num_classes)
    return {"loss": loss, "accuracy": float(cm.trace() / max(cm.sum(), 1)),
            "macro_f1": float(per_class_scores(cm)["f1-score"].mean())}


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainConfig,
    device: torch.device,
    class_names: Sequence[str],
    out_dir: str | Path | None = None,
    resume_from: str | Path | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` for `config.num_epochs`, choosing the best epoch on the validation split.

    Args:
        model: The network, on any device; it is moved to `device`.
        train_data: Training `Dataset` of `(x, y)`; its `set_epoch`, if any, is called.
        val_data: Validation `Dataset`: model selection and early stopping look only here.
        config: Settings.
        device: Where to train (see `cxrlearn.device.select_device`).
        class_names: Names of the classes, stored in checkpoints.
        out_dir: Folder for `last.pt` (every epoch) and `best.pt` (best validation score),
            and `interrupted.pt` when Ctrl-C or SIGTERM stops an epoch midway.
        resume_from: A `last.pt` or `interrupted.pt` to continue from, or its content
            already read (see `cxrlearn.checkpoint.resume`); the run then ends as if
            uninterrupted.
        meta: Extra plain data stored in checkpoints (architecture, preprocessing).
        on_batch: Called as `on_batch(epoch, stats)` after every training batch.
        on_epoch: Called with each epoch's history row.

    Under `torchrun` (an initialised process group, `cxrlearn.distributed`) each process
    trains on its slice of every batch through DDP and only rank 0 writes files.

    Returns:
        The history: per epoch `epoch`, `train_loss`, `train_accuracy`, `val_loss`,
        `val_accuracy`, `val_macro_f1`, `lr`, `image_size`, `images_per_s`, `seconds`.

    Raises:
        TrainingDiverged: The loss became NaN/inf; `last.pt` still holds the last good epoch.
        TrainingInterrupted: Ctrl-C or SIGTERM (`cxrlearn.errors.Terminated`). The step in
            progress is finished first; `interrupted.pt` then holds the epoch so far
            (not under `torchrun`, where the epoch is abandoned), `last.pt` the last
            finished epoch.
        CxrlearnError: `resume_from` is unreadable or belongs to another model or classes.
    """
    meta, names, out = dict(meta or {}), list(class_names), Path(out_dir) if out_dir else None
    if len(train_data) < 2 or len(val_data) < 1:
        raise CxrlearnError(f"training needs at least 2 training and 1 validation images, "
                            f"got {len(train_data)} and {len(val_data)}")
    seed_everything(config.seed)
    # Set explicitly, the thread count also turns off MKL's dynamic threading, which may use
    # fewer threads on a busy machine and so sum in another order (docs: determinism).
    torch.set_num_threads(torch.get_num_threads())
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    labels = getattr(train_data, "labels", None) or [int(train_data[i][1])
                                                     for i in range(len(train_data))]
    loss_fn = make_loss_fn(config, labels, len(names)).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_loader(train_data, config, 0))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    amp = Amp.choose(device, config.amp)
    average = (WeightAverage.over_epochs(model, config.ema_epochs, steps_per_epoch)
               if config.ema_epochs > 0 else None)
    run = (resume(resume_from, model, optimizer, scheduler, names, meta) if resume_from
           else Resumed(epoch=0, best=None, since_best=0, history=[]))
    if resume_from and average is not None:
        average.load_state_dict(_read(resume_from)["average"])
    if resume_from and amp.scaler.is_enabled() and _read(resume_from).get("scaler"):
        amp.scaler.load_state_dict(_read(resume_from)["scaler"])
    if run.in_progress and run.in_progress["batches_in_epoch"] != steps_per_epoch:
        raise CxrlearnError(f"the interrupted epoch had {run.in_progress['batches_in_epoch']} "
                            f"batches, this data and batch size make {steps_per_epoch}; resume "
                            "with the run's own data, or from last.pt", path=INTERRUPTED)
    judged = model if average is None else average.network  # the network validated and kept
    best = _Best(config.select_by, config.patience, run.best, run.since_best)
    checkpoints = _Checkpoints(out, model, optimizer, scheduler, names, meta, config,
                               judged, average, amp.scaler)
    ddp_model = distributed.wrap(model, device)  # `model` itself when not distributed
    val_loader = DataLoader(val_data, batch_size=config.batch_size,
                            num_workers=config.num_workers)
    full_side = val_data.preprocess.image_size  # the side the images were prepared at
    side_of = (lambda e: config.sizes.side(full_side, e, config.num_epochs)  # noqa: E731
               if config.sizes else None)
    for epoch in range(run.epoch, config.num_epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        # An epoch interrupted midway goes on from its saved step, lr, sums and MixUp draws.
        saved = run.in_progress if epoch == run.epoch else None
        progress = EpochProgress(**{f.name: saved[f.name] for f in fields(EpochProgress)}) \
            if saved else EpochProgress()
        lr = saved["lr"] if saved else optimizer.param_groups[0]["lr"]
        side = side_of(epoch)
        if average is not None and epoch > 0 and side != side_of(epoch - 1) and not saved:
            average.restart()  # weights tuned for another scale do not average well
        mix = _batch_mix(config, epoch, saved["mix_rng"] if saved else None)
        after_steps: dict[str, Any] = {}  # the random states once the last step is taken
        save = functools.partial(checkpoints.save_interrupted, epoch, run.history, best,
                                 progress, progress.batches, lr, mix, after_steps)
        with _stop_cleanly(epoch, out, progress, save):
            with StochasticDepth(model, config.stochastic_depth):  # the steps only, not BN's
                tr = train_one_epoch(
                    ddp_model, train_loader(train_data, config, epoch, skip=progress.batches),
                    loss_fn, optimizer, device, scheduler, amp, side,
                    on_batch=None if on_batch is None else (lambda s, e=epoch: on_batch(e, s)),
                    mix=mix, average=average, progress=progress)
            after_steps["rng"] = rng_state()  # precise BN and validation draw from here on
            if config.precise_bn_batches:  # statistics of these weights, not of past ones
                recompute_bn_statistics(judged, _bn_batches(train_data, config, epoch),
                                        device, side, amp)
            distributed.broadcast_buffers(judged)  # every rank validates rank 0's statistics
            # At the size just trained at: a network trained small scores badly when large.
            va = evaluate(judged, val_loader, loss_fn, device, len(names), side)
        row = _history_row(epoch, lr, tr, va, device)
        run.history.append(row)
        improved = best.update(va, at_full_size=side in (None, full_side))
        checkpoints.save(epoch + 1, run.history, best, improved)
        distributed.barrier()  # no rank runs ahead of the checkpoint
        if on_epoch is not None:
            on_epoch(row)
        if best.should_stop():
            break
    return run.history


def _batch_mix(config: TrainConfig, epoch: int,
               state: dict[str, Any] | None = None) -> BatchMix | None:
    """The epoch's MixUp/CutMix, its draws seeded by (seed, epoch), or None when off.

    `state`: where an interrupted epoch's generator stood (`bit_generator.state`).
    """
    if config.mixup == 0 and config.cutmix == 0:
        return None
    rng = np.random.default_rng([config.seed, epoch])
    if state is not None:
        try:
            rng.bit_generator.state = state
        except (ValueError, TypeError, KeyError) as e:
            raise CxrlearnError(f"damaged checkpoint: in_progress.mix_rng is not a generator "
                                f"state ({e}); delete it to resume from the last finished "
                                "epoch (last.pt)", path=INTERRUPTED) from None
    return BatchMix(config.mixup, config.cutmix, rng)


def _bn_batches(train_data: Dataset, config: TrainConfig, epoch: int) -> Iterator[Tensor]:
    """The images of the epoch's first `precise_bn_batches` training batches (at most one
    epoch's worth: each costs a forward pass, about a third of a training step)."""
    loader = train_loader(train_data, config, epoch)
    return (x for x, _ in itertools.islice(loader, config.precise_bn_batches))


def _read(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def _history_row(epoch: int, lr: float, tr: dict[str, float], va: dict[str, float],
                 device: torch.device) -> dict[str, float]:
    """One epoch in the history: training numbers summed over all processes, validation's."""
    loss_sum, correct, seen = distributed.all_reduce_sum(
        [tr["loss"] * tr["images"], tr["accuracy"] * tr["images"], tr["images"]], device)
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "val_loss": va["loss"], "val_accuracy": va["accuracy"],
            "val_macro_f1": va["macro_f1"], "lr": lr, "image_size": tr["image_size"],
            "images_per_s": seen / max(tr["seconds"], 1e-9), "seconds": tr["seconds"]}


@dataclass
class _Best:
    """The best validation score so far, and how many epochs have passed without beating it.

    The score is macro-F1, or minus the loss with `select_by="val_loss"`, so that higher is
    better either way. Only full-size epochs compete and count for `patience`: the model is
    used at full size, and scores at different sizes do not compare.
    """

    select_by: str
    patience: int | None
    score: float | None = None
    since: int = 0

    def update(self, va: dict[str, float], at_full_size: bool) -> bool:
        """Take an epoch's validation numbers; True when they are a new best."""
        if not at_full_size:
            return False
        score = va["macro_f1"] if self.select_by == "macro_f1" else -va["loss"]
        improved = math.isfinite(score) and (self.score is None or score > self.score)
        self.score, self.since = (score, 0) if improved else (self.score, self.since + 1)
        return improved

    def should_stop(self) -> bool:
        """True after `patience` full-size epochs without a better score."""
        return self.patience is not None and self.since >= self.patience


@dataclass(frozen=True)
class _Checkpoints:
    """What `fit` writes into `out`: `last.pt` every epoch (`training_state`, to resume from,
    with the weight average when there is one) and `best.pt` when validation improved
    (`model_state` of the network validated: the model, or its average); rank 0 writes,
    nobody when `out` is None."""

    out: Path | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    class_names: list[str]
    meta: dict[str, Any]
    config: TrainConfig
    judged: nn.Module
    average: WeightAverage | None = None
    scaler: torch.amp.GradScaler | None = None

    def save(self, epoch: int, history: list[dict[str, float]], best: _Best,
             improved: bool) -> None:
        """Write after `epoch` (1-based) epochs; `history[epoch - 1]` is its row. The
        interrupted state of that epoch, if any, is done with and goes."""
        if self.out is None or not distributed.is_main():
            return
        if improved:
            save_checkpoint(self.out / "best.pt", model_state(
                self.judged, self.class_names, self.meta, epoch, history, self.config))
        save_checkpoint(self.out / "last.pt", self._state(epoch, history, best))
        (self.out / INTERRUPTED).unlink(missing_ok=True)

    def save_interrupted(self, epoch: int, history: list[dict[str, float]], best: _Best,
                         progress: EpochProgress, started_at: int, lr: float,
                         mix: BatchMix | None, after_steps: dict[str, Any]) -> Path | None:
        """Write `interrupted.pt`: epoch `epoch` (0-based) stopped after `progress.batches`
        whole steps. Returns the file holding them, or None when nothing is kept: no output
        folder, no step taken in this epoch, or several processes (under `torchrun` each
        holds its own share of the sums; the epoch is abandoned, `last.pt` stays)."""
        if self.out is None or progress.batches == 0 or distributed.is_distributed():
            return None
        path = self.out / INTERRUPTED
        if progress.batches == started_at:  # resumed and stopped again before a new step
            return path if path.is_file() else None
        state = self._state(epoch, history, best)
        # The global random states as the last step left them: taken now if the steps were
        # still going, else before precise BN and validation drew from them.
        state["rng"] = after_steps.get("rng") or state["rng"]
        state["in_progress"] = {**dataclasses.asdict(progress), "lr": lr,
                                "mix_rng": None if mix is None else mix.rng.bit_generator.state}
        save_checkpoint(path, state)
        return path

    def _state(self, epoch: int, history: list[dict[str, float]], best: _Best
               ) -> dict[str, Any]:
        """`training_state`, with the weight average and the gradient scaler if in use."""
        state = training_state(
            self.model, self.optimizer, self.scheduler, self.class_names, self.meta, epoch,
            best.score, best.since, history, self.config)
        if self.average is not None:
            state["average"] = self.average.state_dict()
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state


@contextmanager
def _stop_cleanly(epoch: int, out: Path | None, progress: EpochProgress,
                  save: Callable[[], Path | None]) -> Iterator[None]:
    """Turn a NaN loss, Ctrl-C or SIGTERM inside an epoch into an error that says what was
    kept. The one place where training meets a signal.

    Ctrl-C raises KeyboardInterrupt, and SIGTERM `Terminated` (one, when the command line
    installed its handler). Either waits for the step in progress to finish
    (`train_one_epoch`), then arrives here: `save()` writes the epoch so far into
    `interrupted.pt`, and resuming from it ends exactly where an uninterrupted run would.
    Stopped before its first step (or without a folder), the epoch is abandoned and
    `last.pt` holds the last finished one. A NaN loss keeps nothing of its epoch.
    """
    kept = f"{out / 'last.pt'} holds epoch {epoch}" if out and epoch > 0 else None
    try:
        yield
    except TrainingDiverged as e:
        raise TrainingDiverged(f"epoch {epoch + 1}: {e.message}"
                               + (f"; {kept}" if kept else "")) from None
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        saved, problem = None, ""
        try:
            with suppress(KeyboardInterrupt):  # a second Ctrl-C: the file is whole anyway
                saved = save()
        except CxrlearnError as failed:  # a full disk: say so, and what is still there
            problem = f"the epoch so far was not saved ({failed}); "
        if saved is not None:
            what = (f"{saved} holds epoch {epoch + 1} up to batch {progress.batches} of "
                    f"{progress.batches_in_epoch}")
        else:
            what = problem + (kept or "no epoch was finished, nothing was kept; run the "
                                      "same command again")
        stopped = TrainingInterrupted(
            f"{how} in epoch {epoch + 1}: {what}"
            + ("; continue with --resume" if saved is not None or kept else ""))
        stopped.signal_number = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        raise stopped from None


def train_step(model: nn.Module, x: Tensor, y: Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer) -> float:
    """One optimisation step, the body of `train_one_epoch` without the bookkeeping.

    The model's train/eval mode is the caller's choice; the batch is already on its device.

    Returns:
        The batch's loss before the step, as a float.

    Shape:
        x: (B, C, H, W), y: (B,)
    """
    logits = model(x)  # (B, K): forward
    loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)  # forget the previous step's gradients
    loss.backward()  # gradients of this batch's loss
    optimizer.step()  # update the weights
    return loss.item()
