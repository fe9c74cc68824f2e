"""Learning-rate schedules as one pure function of the step.

Every schedule here starts with a warm-up: the first updates of a network (or of a new head
on pretrained weights) are large and noisy, and a small learning rate keeps them from
undoing what the weights already know. Then:

- `cosine`: linear warm-up from 0 to `lr`, then half a cosine down to 0
  (Loshchilov & Hutter, SGDR, arXiv 1608.03983).
- `onecycle`: a cosine ramp from `lr / 25` up to `lr`, then a cosine down to
  `lr / 25 / 1e4`: Smith & Topin's one-cycle policy (arXiv 1708.07120) with the same
  defaults as `torch.optim.lr_scheduler.OneCycleLR`.
- `constant`: linear warm-up, then `lr` for good.

`lr_factor` returns the multiplier of the base `lr`; `torch.optim.lr_scheduler.LambdaLR`
applies it. A pure function is easy to plot, to test and to save (the scheduler's state is
just the step count).

`SizeSchedule` schedules the image size the same way: progressive resizing trains the early
epochs on smaller images, which cost about the square of the side, and the last epochs at
full size (Howard's fast.ai DAWNBench entry, 2018; FFCV's ResNet recipes, Leclerc et al.
2023, arXiv 2306.12517). On a CPU, where every epoch counts, the same budget then holds more
epochs: on the pool benchmark, 12 epochs with three quarters of the side for the first 70%
reached validation macro-F1 0.897 where 128 px throughout reached 0.875 in the same time
(`benchmarks/README.md`). Its defaults are `cxrlearn train`'s; `TrainConfig` leaves it off.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrlearn.settings import Check, between, check_fields, setting

__all__ = ["SCHEDULES", "lr_factor", "SizeSchedule", "size_fraction", "scaled_side"]

SCHEDULES = ("onecycle", "cosine", "constant")
_DIV, _FINAL_DIV = 25.0, 1e4


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "onecycle") -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Args:
        step: Steps taken so far.
        total_steps: Steps in the whole run.
        warmup_steps: Length of the warm-up (the rise of one-cycle).
        kind: One of `SCHEDULES`.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose from {SCHEDULES}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    if kind == "onecycle":
        start, end = 1.0 / _DIV, 1.0 / (_DIV * _FINAL_DIV)
        if step < warmup_steps:
            t = step / warmup_steps
            return start + (1.0 - start) * (1 - math.cos(math.pi * t)) / 2
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
        return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return (1 + math.cos(math.pi * t)) / 2


@dataclass(frozen=True)
class SizeSchedule:
    """Progressive resizing: train on smaller images first, at full size at the end.

    Between `hold` and `full_from` the side grows linearly. Each field is a setting
    (`cxrlearn.settings`), with its help text and its check.
    """

    start: float = setting(
        0.75, help="The share of the full side the run begins with.",
        check=Check(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    hold: float = setting(0.7, help="The share of the epochs spent at the starting side.",
                          check=between(0, 1))
    full_from: float = setting(
        0.8, help="The share of the epochs after which every epoch is at full size.",
        check=between(0, 1))

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.hold <= self.full_from:
            raise ValueError("need 0 <= hold <= full_from <= 1, got "
                             f"{self.hold}, {self.full_from}")

    def fraction(self, epoch: int, num_epochs: int) -> float:
        """Share of the full side in `epoch` (0-based): `size_fraction` with these settings."""
        return size_fraction(epoch, num_epochs, self.start, self.hold, self.full_from)

    def side(self, full_side: int, epoch: int, num_epochs: int) -> int:
        """The side to train at in `epoch`: `scaled_side` of `fraction`."""
        return scaled_side(full_side, self.fraction(epoch, num_epochs))


def size_fraction(epoch: int, num_epochs: int, start: float, hold: float,
                  full_from: float) -> float:
    """Share of the full image side to train at in `epoch` (0-based): progressive resizing.

    `start` for the first `hold` of the run, then growing linearly to 1 at `full_from` of
    the run; the rest, and always the last epoch, at full size. `start=1` switches it off.
    """
    if not 0 < start <= 1:
        raise ValueError(f"start must be in (0, 1], got {start}")
    full_at = min(full_from * num_epochs, num_epochs - 1)  # first epoch at full size
    hold_until = min(hold * num_epochs, full_at)
    if start == 1 or epoch >= full_at:
        return 1.0
    if epoch < hold_until:
        return start
    return start + (1.0 - start) * (epoch - hold_until) / (full_at - hold_until)


def scaled_side(side: int, fraction: float, multiple: int = 16) -> int:
    """`side * fraction` rounded to a multiple of `multiple` (at least one), never above `side`.

    Few distinct sizes keep the run simple to read; a side of at least 16 keeps ResNet18's
    five halvings above one pixel.
    """
    if fraction >= 1:
        return side
    return min(side, max(multiple, round(side * fraction / multiple) * multiple))
