"""Lesson 08 (data-parallel training): a rank's shard, an epoch's order, the averaged gradient.

Lesson: lessons/08_distributed_training.ipynb
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from cxrlearn.exercises.core import Exercise, Mismatch, _call, compare_arrays
from cxrlearn.exercises.lesson01 import _compare_lists

__all__ = ["EXERCISES"]


def _shard_cases(world_size: int) -> st.SearchStrategy:
    return st.tuples(st.integers(1, 20), st.integers(0, world_size - 1), st.just(world_size))


SHARD_INDICES = Exercise(
    id="08.shard_indices",
    signature="shard_indices(n, rank, world_size) -> list[int]",
    summary="The indices of n examples that rank `rank` of `world_size` gets, as "
            "DistributedSampler(shuffle=False) gives them: padded by repeating from the "
            "start to a multiple of world_size, then every world_size-th index from rank.",
    reference_path="cxrlearn.distributed:shard_indices",
    cases=st.integers(1, 5).flatmap(_shard_cases),
    edge_cases=[
        ("rank 0 of 1", (5, 0, 1)),
        ("padding", (5, 1, 2)),
        ("more ranks than examples", (2, 2, 3)),
        ("padding more than once", (1, 3, 4)),
    ],
    compare=lambda got, want, case: _compare_lists(got, want),
    hint_text="Every rank gets the same count, ceil(n / world_size), so that no rank waits "
              "for another at the end of an epoch: total = that count * world_size. Pad "
              "list(range(n)) by repeating it from the start up to total. Then rank r takes "
              "order[r:total:world_size], strided, not a contiguous block.",
)

EPOCH_PERMUTATION = Exercise(
    id="08.epoch_permutation",
    signature="epoch_permutation(n, seed, epoch) -> list[int]",
    summary="The order of the n examples in one epoch, the same on every rank: what "
            "DistributedSampler(shuffle=True, seed=seed) draws after set_epoch(epoch).",
    reference_path="cxrlearn.distributed:epoch_permutation",
    cases=st.tuples(st.integers(1, 20), st.integers(0, 5), st.integers(0, 3)),
    edge_cases=[
        ("one example", (1, 0, 0)),
        ("epoch 1", (5, 0, 1)),
        ("seed 3, epoch 2", (8, 3, 2)),
    ],
    compare=lambda got, want, case: _compare_lists(got, want),
    hint_text="A torch.Generator seeded with seed + epoch (the same on every rank, a new "
              "order every epoch), then torch.randperm(n, generator=g).tolist(). Forgetting "
              "the epoch gives every epoch the same order.",
)


def _ddp_setup(case: tuple) -> tuple:
    n_in, classes, per_rank, world_size, seed = case
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(n_in, classes).double()
        x = torch.randn(per_rank * world_size, n_in, dtype=torch.float64)
        y = torch.randint(0, classes, (per_rank * world_size,))
    return model, nn.CrossEntropyLoss(), x, y, world_size


def _gradients(fn, args: tuple) -> list:
    out = _call(fn, *args)
    return list(out) if isinstance(out, (list, tuple)) else out


def _compare_gradients(got: object, want: list, case: tuple) -> Mismatch | None:
    if not isinstance(got, list):
        return Mismatch("type", f"returned {type(got).__name__}, expected a list of tensors, "
                                "one per parameter")
    if len(got) != len(want):
        return Mismatch("shape", f"returned {len(got)} gradients, expected {len(want)} "
                                 "(one per parameter: weight, bias)")
    for name, g, w in zip(("weight", "bias"), got, want, strict=True):
        bad = compare_arrays(g, w, atol=1e-9, kind="tensor")
        if bad is not None:
            return Mismatch(bad.kind, f"the gradient of {name}: {bad.text}", g, w)
    return None


def _describe_ddp(case: tuple) -> list[str]:
    n_in, classes, per_rank, world_size, seed = case
    return [f"model = nn.Linear({n_in}, {classes}) (float64, seed {seed})",
            "loss_fn = nn.CrossEntropyLoss()",
            f"x, y = a global batch of {per_rank * world_size}",
            f"world_size = {world_size}"]


AVERAGED_GRADIENT = Exercise(
    id="08.averaged_gradient",
    signature="averaged_gradient(model, loss_fn, x, y, world_size) -> list[tensor]",
    summary="Simulate DDP in one process: each rank r takes the slice x[r::N], y[r::N], "
            "computes the gradient of its mean loss; return the mean over ranks of each "
            "parameter's gradient (the all-reduce).",
    reference_path="cxrlearn.distributed:averaged_gradient",
    cases=st.tuples(st.integers(1, 3), st.integers(2, 3), st.integers(1, 3),
                    st.integers(1, 4), st.integers(0, 3)),
    build=_ddp_setup,
    run=_gradients,
    describe=_describe_ddp,
    edge_cases=[
        ("two ranks", (2, 3, 2, 2, 0)),
        ("one rank is the whole batch", (2, 2, 3, 1, 1)),
        ("one example per rank", (1, 2, 1, 4, 2)),
    ],
    compare=_compare_gradients,
    tolerance="1e-09 (float64)",
    max_examples=30,
    hint_text="For each rank: loss = loss_fn(model(x[r::world_size]), y[r::world_size]); "
              "grads = torch.autograd.grad(loss, list(model.parameters())) (or backward(), "
              "zeroing .grad between ranks). Add them up per parameter and divide by "
              "world_size: the all-reduce averages, it does not sum. The result equals the "
              "gradient of the whole batch's mean loss.",
)

EXERCISES = [SHARD_INDICES, EPOCH_PERMUTATION, AVERAGED_GRADIENT]
