"""Lesson 09 (on the phone): a percentile whose rank comes from the run-time pixel count, and
the class activation map a phone draws without a gradient.

Lesson: lessons/09_on_the_phone.ipynb
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, compare_arrays, show

__all__ = ["EXERCISES"]


def _sorted_rows(case: tuple) -> tuple:
    values, q = case
    rows = np.sort(np.array(values, dtype=np.float64), axis=1)  # the input is sorted already
    return torch.from_numpy(rows), float(q)


def _describe_sorted(case: tuple) -> list[str]:
    values, q = _sorted_rows(case)
    return [f"values = {show(values)} (each row sorted)", f"q = {q:g}"]


PERCENTILE_BY_SHAPE = Exercise(
    id="09.percentile_by_shape",
    signature="percentile_by_shape(values, q) -> tensor",
    summary="The q-th percentile of each row of sorted values (B, N) -> (B, 1), with numpy's "
            "linear interpolation, its rank computed from the pixel count N as a tensor "
            "(floor, gather), so that an exported graph takes the right rank at any size.",
    reference_path="cxrlearn.export.onnx:percentile_by_shape",
    see_also=("cxrlearn.contrast:percentile_tensor",),
    cases=st.tuples(
        gen.float_arrays(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8)),
        st.one_of(st.sampled_from([0.0, 2.0, 50.0, 98.0, 100.0]),
                  st.floats(0.0, 100.0, allow_nan=False))),
    build=_sorted_rows,
    describe=_describe_sorted,
    edge_cases=[
        ("one pixel", ([[0.5]], 2.0)),
        ("the 2nd percentile of five pixels", ([[0.0, 0.1, 0.2, 0.3, 1.0]], 2.0)),
        ("the 98th percentile of two images", ([[0.0, 0.25, 0.5, 0.75, 1.0],
                                                [0.0, 0.0, 0.0, 1.0, 1.0]], 98.0)),
        ("q = 100, the largest value", ([[0.0, 1.0, 2.0]], 100.0)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-9, rtol=1e-9,
                                                    kind="tensor"),
    tolerance="1e-09 + 1e-09 x |expected|",
    hint_text="The pixel count as a tensor: n = torch.ones_like(values[0]).sum(). The "
              "fractional rank pos = (q / 100) * (n - 1) (n - 1, as numpy: q = 100 is the "
              "last value); lo = torch.floor(pos), hi = torch.minimum(lo + 1, n - 1). Turn "
              "them into int64 index tensors of shape (B, 1) (.reshape(1, 1).expand(B, 1)), "
              "take values.gather(1, index) for each, and interpolate: v_lo + (v_hi - v_lo) "
              "* (pos - lo). No int(...) and no Python number made from a shape: an exporter "
              "would freeze it.",
)


def _cams_case(draw_k: int) -> st.SearchStrategy:
    shape = st.tuples(st.just(draw_k), st.integers(1, 4), st.integers(1, 4))
    return st.tuples(gen.float_arrays(shape, dtype=np.float32), st.integers(0, draw_k - 1),
                     st.integers(1, 8))


def _cams(case: tuple) -> tuple:
    cams, target, size = case
    return np.array(cams, dtype=np.float32), int(target), int(size)


def _describe_cams(case: tuple) -> list[str]:
    cams, target, size = _cams(case)
    return [f"cams = {show(cams)}", f"target = {target}", f"size = {size}"]


CAM_FOR_CLASS = Exercise(
    id="09.cam_for_class",
    signature="cam_for_class(cams, target, size) -> array",
    summary="The map a phone draws from the ONNX file's `cams` output (K, h, w): the target "
            "class's map, ReLU, bilinear upsampling to size x size (align_corners=False), "
            "then min-max to [0, 1] (a constant map becomes zeros); a float32 numpy array.",
    reference_path="cxrlearn.export.onnx:cam_for_class",
    see_also=("cxrlearn.gradcam:minmax_normalise",),
    cases=st.integers(1, 3).flatmap(_cams_case),
    build=_cams,
    describe=_describe_cams,
    edge_cases=[
        ("one class, one place", ([[[2.0]]], 0, 2)),
        ("evidence for and against", ([[[1.0, -2.0], [0.5, -1.0]]], 0, 4)),
        ("the second class", ([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]], 1, 3)),
        ("nothing for the class", ([[[-1.0, -2.0], [-0.5, -1.0]]], 0, 4)),
        ("a 4 x 4 map drawn at 2 x 2", (np.arange(16, dtype=np.float32).reshape(1, 4, 4),
                                        0, 2)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-5),
    tolerance="1e-05 per pixel",
    hint_text="raw = torch.relu(torch.from_numpy(cams[target])) keeps the places that raise "
              "the class score. torch.nn.functional.interpolate wants (B, C, h, w): "
              "raw[None, None], size=(size, size), mode='bilinear', align_corners=False, "
              "then [0, 0]. Min-max after upsampling: (up - up.min()) / span, dividing by 1 "
              "where span == 0, so that a map with nothing for the class is zeros, not NaN. "
              "Return .numpy().",
)

EXERCISES = [PERCENTILE_BY_SHAPE, CAM_FOR_CLASS]
