"""Stochastic depth: while training, skip whole residual branches at random.

A residual block computes y = ReLU(F(x) + shortcut). Stochastic depth (Huang et al. 2016,
arXiv:1603.09382) drops F(x) for a random share of the images in each training batch, so
that those images pass the block through its shortcut alone: every step trains a shallower
network drawn at random, and no block can rely on one particular block before it. The
l-th of L blocks keeps its branch with probability

    keep_l = 1 - rate * l / L            ("linear decay", the paper's rule)

so the first blocks, on which every later one builds, are nearly always kept, and the last
is dropped with probability `rate`. A kept branch is divided by keep_l, so that F(x) has the
same expected value as without dropping and the network needs no change at test time (the
paper scales at test time instead; the two are equivalent).

Here the drop is a forward hook on each block's `bn2`, the last layer of F, registered for as
long as a `with StochasticDepth(model, rate):` lasts: the network's code and weights stay
plain ResNet18, so checkpoints, exports and Grad-CAM never see it. The masks are drawn from
torch's global generator, which checkpoints save (`cxrlearn.seeding.rng_state`), so an
interrupted run resumes with the same draws.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from cxrlearn.resnet import BasicBlock

__all__ = ["StochasticDepth", "drop_branch", "keep_probabilities"]


def keep_probabilities(num_blocks: int, rate: float) -> list[float]:
    """The chance that each block keeps its branch: `1 - rate * l / L` for l = 1..L.

    Raises:
        ValueError: `rate` is not in [0, 1), or `num_blocks` is negative.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"the drop rate must be at least 0 and below 1, got {rate}")
    if num_blocks < 0:
        raise ValueError(f"need a number of blocks of at least 0, got {num_blocks}")
    return [1 - rate * layer / num_blocks for layer in range(1, num_blocks + 1)]


def drop_branch(branch: Tensor, keep: float) -> Tensor:
    """Zero each image's branch with probability `1 - keep`; divide the kept ones by `keep`.

    Shape:
        (B, C, h, w) -> (B, C, h, w)
    """
    shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)  # one draw per image: (B, 1, 1, 1)
    mask = torch.bernoulli(torch.full(shape, keep, dtype=branch.dtype, device=branch.device))
    return branch * mask / keep


class StochasticDepth:
    """Drop the residual branches of `model`'s `BasicBlock`s while it is in training mode.

    Use it around the training steps only: in evaluation mode, and for BatchNorm statistics
    recomputed in training mode outside the `with`, the network is whole.

        with StochasticDepth(model, rate=0.1):
            train_one_epoch(model, ...)

    Args:
        model: A network with `BasicBlock`s (a ResNet); a wrapper such as DDP is unwrapped
            by looking through its modules.
        rate: The drop probability of the last block (`keep_probabilities`); 0 adds no hook.
    """

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        if rate > 0 and not self.blocks:
            raise ValueError(f"stochastic depth needs residual blocks (BasicBlock), and "
                             f"{type(model).__name__} has none; use a rate of 0")
        self.keep = keep_probabilities(len(self.blocks), rate)
        self.rate = rate
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> StochasticDepth:
        if self.rate > 0:
            for block, keep in zip(self.blocks, self.keep, strict=True):
                hook = self._hook(block, keep)
                self._handles.append(block.bn2.register_forward_hook(hook))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _hook(block: BasicBlock, keep: float) -> Callable[[nn.Module, Any, Tensor],
                                                          Tensor | None]:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
            # A forward hook that returns a tensor replaces the module's output. The block's
            # mode, not bn2's: a frozen BatchNorm stays in eval mode while its block trains.
            return drop_branch(output, keep) if block.training else None
        return hook
