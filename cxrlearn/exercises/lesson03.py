"""Lesson 03 (training loop and devices): one step, a schedule, class weights.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from cxrlearn.exercises.core import Exercise, Mismatch, _call, compare_arrays, compare_numbers

__all__ = ["EXERCISES"]


def _step_setup(case: tuple) -> tuple:
    """(in, classes, batch, optimizer, seed) -> a Linear model whose .grad still holds an
    earlier step's gradients, a batch, the loss and the optimizer."""
    n_in, classes, batch, kind, seed = case
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(n_in, classes).double()
        for p in model.parameters():
            p.grad = torch.randn_like(p)  # left over from the step before
        x = torch.randn(batch, n_in, dtype=torch.float64)
        y = torch.randint(0, classes, (batch,))
    if kind == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, x, y, nn.CrossEntropyLoss(), optimizer


def _two_steps(fn, args: tuple) -> tuple:
    model, x, y, loss_fn, optimizer = args
    losses = tuple(_call(fn, model, x, y, loss_fn, optimizer) for _ in range(2))
    return losses, [p.detach().clone() for p in model.parameters()]


def _compare_steps(got: tuple, want: tuple, case: tuple) -> Mismatch | None:
    (got_losses, got_params), (want_losses, want_params) = got, want
    bad = compare_numbers(got_losses, want_losses, atol=1e-9,
                          names=("the first step's loss", "the second step's loss"))
    if bad is not None:
        if bad.kind != "value":
            return bad
        return Mismatch("value", bad.text, got_losses, want_losses)
    for name, g, w in zip(("weight", "bias"), got_params, want_params, strict=True):
        bad = compare_arrays(g, w, atol=1e-9, kind="tensor")
        if bad is not None:
            return Mismatch("value", f"after the two steps, model.{name}: {bad.text}", g, w)
    return None


def _describe_step(case: tuple) -> list[str]:
    n_in, classes, batch, kind, seed = case
    opt = "SGD(lr=0.1, momentum=0.9)" if kind == "sgd" else "AdamW(lr=0.01)"
    return [f"model = nn.Linear({n_in}, {classes}) (float64, seed {seed}) whose .grad still "
            "holds the previous step's gradients",
            f"x = a batch of {batch}, y = {batch} labels",
            f"loss_fn = nn.CrossEntropyLoss(), optimizer = {opt}",
            "your function called twice in a row"]


TRAIN_STEP = Exercise(
    id="03.train_step",
    signature="train_step(model, x, y, loss_fn, optimizer) -> float",
    summary="One optimisation step on one batch: forward, loss, zero the gradients, "
            "backward, step; returns the loss (before the step) as a float.",
    reference_path="cxrlearn.training:train_step",
    see_also=("cxrlearn.training:train_one_epoch",),
    cases=st.tuples(st.integers(1, 3), st.integers(2, 3), st.integers(1, 4),
                    st.sampled_from(["sgd", "adamw"]), st.integers(0, 3)),
    build=_step_setup,
    run=_two_steps,
    describe=_describe_step,
    edge_cases=[
        ("SGD with momentum", (2, 3, 4, "sgd", 0)),
        ("AdamW", (2, 2, 3, "adamw", 1)),
        ("one example", (1, 2, 1, "sgd", 2)),
    ],
    compare=_compare_steps,
    tolerance="1e-09 on the losses and the weights (float64)",
    max_examples=25,
    hint_text="logits = model(x); loss = loss_fn(logits, y); optimizer.zero_grad(); "
              "loss.backward(); optimizer.step(); return loss.item(). The order matters: "
              "backward() adds to .grad, so without zero_grad() the previous step's "
              "gradients are added to this one's; and step() before backward() uses the old "
              "gradients.",
)


def _schedule_cases(total: int) -> st.SearchStrategy:
    return st.tuples(st.integers(0, total - 1), st.just(total), st.integers(0, total - 1))


COSINE_LR = Exercise(
    id="03.cosine_lr",
    signature="cosine_lr(step, total_steps, warmup_steps) -> float",
    summary="The learning-rate factor of a warm-up + cosine schedule at a 0-based step: "
            "(step + 1) / (warmup_steps + 1) during the warm-up, then (1 + cos(pi t)) / 2 "
            "with t = (step - warmup_steps) / (total_steps - warmup_steps).",
    reference_path="cxrlearn.schedule:lr_factor",
    reference_kwargs={"kind": "cosine"},
    cases=st.integers(1, 40).flatmap(_schedule_cases),
    edge_cases=[
        ("the first step", (0, 10, 3)),
        ("no warm-up", (0, 10, 0)),
        ("the last warm-up step", (2, 10, 3)),
        ("the first step after the warm-up", (3, 10, 3)),
        ("the last step", (9, 10, 2)),
        ("a run of one step", (0, 1, 0)),
    ],
    compare=lambda got, want, case: compare_numbers(got, want, atol=1e-9),
    tolerance="1e-09",
    hint_text="Two phases. While step < warmup_steps, rise linearly and never start at 0: "
              "(step + 1) / (warmup_steps + 1). After it, t = (step - warmup_steps) / "
              "(total_steps - warmup_steps) runs from 0 towards 1 (use max(1, ...) for the "
              "denominator and min(1, t)), and the factor is (1 + math.cos(math.pi * t)) / 2.",
)


def _labels_k(k: int) -> st.SearchStrategy:
    return st.tuples(st.lists(st.integers(0, k - 1), min_size=1, max_size=10), st.just(k))


CLASS_WEIGHTS = Exercise(
    id="03.class_weights",
    signature="class_weights(labels, num_classes) -> tensor",
    summary="Inverse-frequency class weights N / (K n_k) for a weighted loss (1 for every "
            "class when balanced); a class with no example counts as if it had one.",
    reference_path="cxrlearn.training:class_weights",
    cases=st.integers(1, 4).flatmap(_labels_k),
    edge_cases=[
        ("balanced", ([0, 1, 0, 1], 2)),
        ("a class that never occurs", ([0, 0, 1], 3)),
        ("one label", ([0], 1)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-6, rtol=1e-6,
                                                    kind="tensor"),
    tolerance="1e-06 + 1e-06 x |expected|",
    hint_text="counts = torch.bincount(torch.tensor(labels), minlength=num_classes) gives "
              "n_k, also 0 for a class that never occurs. Divide N = len(labels) by "
              "num_classes * n_k, with n_k clamped to at least 1 (no division by zero), as "
              "floats.",
)

EXERCISES = [TRAIN_STEP, COSINE_LR, CLASS_WEIGHTS]
