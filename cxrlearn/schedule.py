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

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_factor"]

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
