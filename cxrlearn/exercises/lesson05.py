"""Lesson 05 (Grad-CAM with hooks): the map, the rescaling, a hook that records.

Lesson: lessons/05_grad_cam_with_hooks.ipynb
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, Mismatch, _call, compare_arrays, show

__all__ = ["EXERCISES"]


def _tensors(case: tuple) -> tuple:
    return tuple(torch.from_numpy(np.array(a, dtype=np.float64)) for a in case)


def _describe(names: tuple[str, ...]):
    return lambda case: [f"{n} = {show(t)}" for n, t in zip(names, _tensors(case),
                                                            strict=True)]


GRADCAM_MAP = Exercise(
    id="05.gradcam_map",
    signature="gradcam_map(activations, gradients) -> map",
    summary="Grad-CAM for one image: alpha_c = mean of the gradients over the (h, w) map, "
            "then ReLU(sum_c alpha_c A_c); both inputs (C, h, w), the map (h, w), before "
            "upsampling and rescaling.",
    reference_path="cxrlearn.gradcam:gradcam_map",
    see_also=("cxrlearn.gradcam:gradcam_from",),
    cases=gen.array_pairs(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1,
                                               max_side=4)),
    build=_tensors,
    describe=_describe(("activations", "gradients")),
    edge_cases=[
        ("one channel, one pixel", ([[[2.0]]], [[[0.5]]])),
        ("evidence against the class everywhere", (np.ones((2, 2, 2)), -np.ones((2, 2, 2)))),
        ("two channels pulling apart", ([[[1.0, 0.0]], [[0.0, 1.0]]],
                                        [[[1.0, 1.0]], [[-2.0, 0.0]]])),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-9, rtol=1e-9,
                                                    kind="tensor"),
    tolerance="1e-09 + 1e-09 x |expected|",
    hint_text="alpha = gradients.mean(dim=(1, 2), keepdim=True) is one weight per channel, "
              "shape (C, 1, 1). Weigh the activations and sum over the channels: "
              "(alpha * activations).sum(dim=0), shape (h, w). Then torch.relu: Grad-CAM "
              "keeps only the places that push the class score up.",
)

MINMAX_NORMALISE = Exercise(
    id="05.minmax_normalise",
    signature="minmax_normalise(cam) -> tensor",
    summary="Rescale each map of a batch (B, H, W) on its own to [0, 1]: (cam - min) / "
            "(max - min) per map; a constant map becomes all zeros, never NaN.",
    reference_path="cxrlearn.gradcam:minmax_normalise",
    cases=gen.float_arrays(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=4))
    .map(lambda a: (a,)),
    build=_tensors,
    describe=_describe(("cam",)),
    edge_cases=[
        ("a constant map", (np.zeros((1, 2, 2)),)),
        ("one pixel", ([[[3.0]]],)),
        ("two maps of different scales", ([[[0.0, 1.0]], [[10.0, 30.0]]],)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-6, kind="tensor"),
    tolerance="1e-06",
    hint_text="Per map, not over the whole batch: flat = cam.flatten(1); low = "
              "flat.min(dim=1).values and span = flat.max(dim=1).values - low, each reshaped "
              "to (B, 1, 1). Divide (cam - low) by span, but by 1 where span == 0 "
              "(torch.where), so that a constant map gives zeros instead of 0/0 = NaN.",
)


def _hooked(case: tuple) -> tuple:
    """(which, channels, h, w, seed) -> a conv net with in-place ReLUs, one of its convs, x."""
    which, c, h, w, seed = case
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(inplace=True),
                              nn.Conv2d(c, 2, 3, padding=1), nn.ReLU(inplace=True))
        x = torch.randn(1, 1, h, w)
    return model, model[which], x


def _record(fn, args: tuple) -> tuple:
    model, layer, x = args
    out = _call(fn, model, layer, x)
    return out, len(layer._forward_hooks)


def _compare_record(got: tuple, want: tuple, case: tuple) -> Mismatch | None:
    (out, hooks), (expected, _) = got, want
    bad = compare_arrays(out, expected, atol=1e-6, kind="tensor")
    if bad is not None:
        return Mismatch(bad.kind, bad.text, out, expected)
    if hooks:
        return Mismatch("hooks", f"left {hooks} hook(s) on the layer: call the handle's "
                                 ".remove() (in a finally block) before returning")
    return None


def _describe_record(case: tuple) -> list[str]:
    which, c, h, w, seed = case
    return [f"model = Sequential(Conv2d(1, {c}, 3, padding=1), ReLU(inplace=True), "
            f"Conv2d({c}, 2, 3, padding=1), ReLU(inplace=True)) (seed {seed})",
            f"layer = model[{which}]", f"x = torch.randn(1, 1, {h}, {w}) drawn after it"]


RECORD_ACTIVATIONS = Exercise(
    id="05.record_activations",
    signature="record_activations(model, layer, x) -> tensor",
    summary="Run model(x) and return the output of one of its layers, caught with a "
            "forward hook that is removed afterwards.",
    reference_path="cxrlearn.gradcam:record_activations",
    cases=st.tuples(st.sampled_from([0, 2]), st.integers(1, 3), st.integers(1, 4),
                    st.integers(1, 4), st.integers(0, 3)),
    build=_hooked,
    run=_record,
    describe=_describe_record,
    edge_cases=[
        ("the first convolution", (0, 2, 3, 3, 0)),
        ("the second convolution", (2, 2, 3, 3, 1)),
        ("one pixel", (0, 1, 1, 1, 2)),
    ],
    compare=_compare_record,
    tolerance="1e-06",
    max_examples=30,
    hint_text="Keep what the hook sees in a list: def hook(module, inputs, output): "
              "caught.append(output.detach().clone()). Register it with handle = "
              "layer.register_forward_hook(hook), run model(x), and always handle.remove() "
              "(try/finally). clone(), because the in-place ReLU after the layer overwrites "
              "the very tensor the hook was given.",
)

EXERCISES = [GRADCAM_MAP, MINMAX_NORMALISE, RECORD_ACTIVATIONS]
