"""Lesson 02 (ResNet18, block by block): a block's forward, a parameter count, grey weights.

Lesson: lessons/02_resnet18_blocks.ipynb
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, Mismatch, compare_arrays, show

__all__ = ["EXERCISES"]


def _block(case: tuple) -> tuple:
    """(in, out, stride, h, w, seed) -> a BasicBlock in eval mode with non-trivial batch
    norms, and an input batch of 2."""
    from cxrlearn.resnet import BasicBlock

    c_in, c_out, stride, h, w, seed = case
    with torch.random.fork_rng(devices=[]):  # the student's global RNG is left alone
        torch.manual_seed(seed)
        block = BasicBlock(c_in, c_out, stride)
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):  # fresh BN is the identity: make it matter
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)
        x = torch.randn(2, c_in, h, w)
    return block.eval(), x


def _describe_block(case: tuple) -> list[str]:
    c_in, c_out, stride, h, w, seed = case
    return [f"block = BasicBlock({c_in}, {c_out}, stride={stride}) in eval mode, weights "
            f"drawn with torch.manual_seed({seed})"
            f"{'' if stride == 1 and c_in == c_out else ' (it has a downsample)'}",
            f"x = torch.randn(2, {c_in}, {h}, {w}) drawn after it"]


BLOCK_FORWARD = Exercise(
    id="02.block_forward",
    signature="block_forward(block, x) -> tensor",
    summary="The forward pass of a ResNet BasicBlock, from its parts (conv1, bn1, relu, "
            "conv2, bn2, downsample): y = ReLU(F(x) + shortcut(x)).",
    reference_path="cxrlearn.resnet:BasicBlock.forward",
    cases=st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2]),
                    st.integers(1, 5), st.integers(1, 5), st.integers(0, 3)),
    build=_block,
    describe=_describe_block,
    edge_cases=[
        ("identity shortcut", (2, 2, 1, 3, 3, 0)),
        ("stride 2 and a wider output", (2, 4, 2, 4, 4, 1)),
        ("one pixel", (1, 1, 1, 1, 1, 2)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-5, rtol=1e-5,
                                                    kind="tensor"),
    tolerance="1e-05 + 1e-05 x |expected|",
    max_examples=30,
    hint_text="out = block.relu(block.bn1(block.conv1(x))); out = block.bn2(block.conv2(out)) "
              "is F(x), with no ReLU yet. The shortcut is x itself, or block.downsample(x) when "
              "block.downsample is not None (stride 2 or a new width). Add, then ReLU: "
              "block.relu(out + shortcut).",
)


def _model(case: tuple) -> tuple:
    """(kind, c_in, c_mid, k, bias, classes, frozen) -> a small network, maybe frozen."""
    from cxrlearn.resnet import resnet18

    kind, c_in, c_mid, k, bias, classes, frozen = case
    with torch.random.fork_rng(devices=[]):
        if kind == "resnet18":
            model = resnet18(num_classes=classes, in_channels=c_in)
            if frozen:
                for name, p in model.named_parameters():
                    p.requires_grad_(name.startswith("fc."))
            return (model,)
        model = nn.Sequential(nn.Conv2d(c_in, c_mid, k, bias=bias), nn.BatchNorm2d(c_mid),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(c_mid, classes))
    if frozen:
        for p in model[0].parameters():
            p.requires_grad_(False)
    return (model,)


def _describe_model(case: tuple) -> list[str]:
    kind, c_in, c_mid, k, bias, classes, frozen = case
    if kind == "resnet18":
        return [f"model = resnet18(num_classes={classes}, in_channels={c_in})"
                f"{', everything but fc frozen' if frozen else ''}"]
    return [f"model = Sequential(Conv2d({c_in}, {c_mid}, {k}, bias={bias})"
            f"{' (frozen: requires_grad=False)' if frozen else ''}, BatchNorm2d({c_mid}), "
            f"ReLU(), AdaptiveAvgPool2d(1), Flatten(), Linear({c_mid}, {classes}))"]


def _compare_int(got: object, want: int) -> Mismatch | None:
    if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
        return Mismatch("type", f"returned {type(got).__name__}, expected an int "
                                "(a tensor's .numel() is an int already)")
    if got != want:
        return Mismatch("value", f"yours counts {int(got)}, expected {want}: "
                                 f"{'more' if got > want else 'fewer'} by {abs(int(got) - want)}")
    return None


COUNT_PARAMETERS = Exercise(
    id="02.count_parameters",
    signature="count_parameters(model) -> int",
    summary="The number of learnable numbers in a model, frozen ones included; buffers "
            "such as batch norm's running statistics are not parameters.",
    reference_path="cxrlearn.resnet:count_parameters",
    cases=st.tuples(st.just("small"), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3),
                    st.booleans(), st.integers(1, 4), st.booleans()),
    build=_model,
    describe=_describe_model,
    edge_cases=[
        ("a small network", ("small", 1, 2, 3, True, 2, False)),
        ("a frozen first layer", ("small", 3, 4, 3, False, 2, True)),
        ("ResNet18 for 4 grey classes", ("resnet18", 1, 0, 0, False, 4, False)),
        ("ResNet18 with a frozen backbone", ("resnet18", 3, 0, 0, False, 4, True)),
    ],
    compare=lambda got, want, case: _compare_int(got, want),
    max_examples=30,
    hint_text="model.parameters() yields every parameter tensor, trainable or not; each "
              "tensor's .numel() is how many numbers it holds. Not model.state_dict(): it "
              "also holds buffers (running_mean, running_var, num_batches_tracked). And not "
              "only those with requires_grad: a frozen weight is still a parameter.",
)


SUM_RGB_WEIGHTS = Exercise(
    id="02.sum_rgb_weights",
    signature="sum_rgb_weights(weight) -> tensor",
    summary="Turn a first convolution's RGB kernel (C_out, 3, k, k) into a grey one "
            "(C_out, 1, k, k) that gives the same output on a grey image repeated 3 times.",
    reference_path="cxrlearn.transfer:sum_rgb_weights",
    cases=gen.float_arrays(st.tuples(st.integers(1, 3), st.just(3), st.integers(1, 3))
                     .map(lambda s: (s[0], 3, s[2], s[2])), dtype=np.float32).map(lambda a: (a,)),
    build=lambda case: (torch.from_numpy(case[0].copy()),),
    describe=lambda case: [f"weight = {show(torch.from_numpy(case[0]))}"],
    edge_cases=[
        ("one output channel, 1x1", (np.array([[[[1.0]], [[2.0]], [[4.0]]]], np.float32),)),
        ("a 7x7 stem of 8 channels",
         (np.random.default_rng(0).normal(size=(8, 3, 7, 7)).astype(np.float32),)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-6, kind="tensor"),
    tolerance="1e-06",
    hint_text="For a grey image g repeated as (g, g, g), sum_c W_c * g = (sum_c W_c) * g. "
              "So sum the weight over the input-channel dimension (dim=1), keeping that "
              "dimension (keepdim=True) so the shape stays (C_out, 1, k, k). The sum, not the "
              "mean: the mean would divide every output by 3.",
)

EXERCISES = [BLOCK_FORWARD, COUNT_PARAMETERS, SUM_RGB_WEIGHTS]
