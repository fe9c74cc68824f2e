"""Lesson 01 (data and contrast): the stretch, a percentile, groups of duplicates.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

import cxrlearn.exercises.strategies as gen
from cxrlearn.exercises.core import Exercise, Mismatch, compare_arrays, show

__all__ = ["EXERCISES"]


def _compare_lists(got: object, want: list[int]) -> Mismatch | None:
    if not isinstance(got, (list, tuple)):
        return Mismatch("type", f"returned {type(got).__name__}, expected a list of ints")
    got = list(got)
    if len(got) != len(want):
        return Mismatch("shape", f"returned {len(got)} items, expected {len(want)}")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
            return Mismatch("type", f"item {i} is {type(g).__name__}, expected an int")
        if g != w:
            return Mismatch("value", f"item {i}: yours {g}, expected {w}")
    return None


_ramp = np.linspace(0.2, 0.6, 16).reshape(4, 4)
_ramp[0, 0] = 1.0  # one burnt-in bright pixel: min/max and percentiles disagree

STRETCH = Exercise(
    id="01.stretch",
    signature="stretch(image, low=2.0, high=98.0) -> image",
    summary="Percentile contrast stretch of a float (H, W) image in [0, 1]: map the "
            "[low, high] percentile window linearly onto [0, 1] and clip; an empty window "
            "(p_low == p_high) gives 0 where x <= p_low and 1 above.",
    reference_path="cxrlearn.contrast:stretch_contrast",
    see_also=("cxrlearn.contrast:_stretch_numpy",),
    cases=st.tuples(gen.grey_images(), st.sampled_from([2.0, 0.0, 10.0, 25.0]),
                    st.sampled_from([98.0, 100.0, 90.0, 75.0])),
    edge_cases=[
        ("constant image", (np.full((3, 3), 0.5), 2.0, 98.0)),
        ("one pixel", (np.array([[0.7]]), 2.0, 98.0)),
        ("one bright outlier", (_ramp, 2.0, 98.0)),
        ("black and white", (np.array([[0.0, 1.0], [1.0, 0.0]]), 2.0, 98.0)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-5),
    tolerance="1e-05 per pixel",
    hint_text="p_low, p_high = np.percentile(image, (low, high)); then "
              "(image - p_low) / (p_high - p_low), clipped to [0, 1] with np.clip. "
              "Percentiles, not image.min() and image.max(): a single bright pixel must not "
              "decide the window. When p_high == p_low the division is 0/0: return "
              "(image > p_low) as floats instead.",
)


PERCENTILE = Exercise(
    id="01.percentile",
    signature="percentile(x, q) -> tensor",
    summary="The q-th percentile of each row of a (B, N) tensor, as numpy.percentile "
            "computes it (sort, then interpolate linearly between the two nearest values).",
    reference_path="cxrlearn.contrast:percentile_tensor",
    cases=st.tuples(
        gen.float_arrays(st.tuples(st.integers(1, 3), st.integers(1, 7)), -10.0, 10.0),
        st.integers(0, 100).map(float)),
    build=lambda case: (torch.from_numpy(case[0].copy()), case[1]),
    describe=lambda case: [f"x = {show(torch.from_numpy(case[0]))}", f"q = {show(case[1])}"],
    edge_cases=[
        ("one value", (np.array([[3.0]]), 50.0)),
        ("q = 0 is the minimum", (np.array([[4.0, -1.0, 2.0]]), 0.0)),
        ("q = 100 is the maximum", (np.array([[4.0, -1.0, 2.0]]), 100.0)),
        ("between two values", (np.array([[0.0, 10.0]]), 25.0)),
        ("two rows", (np.array([[1.0, 2.0, 3.0], [30.0, 10.0, 20.0]]), 50.0)),
    ],
    compare=lambda got, want, case: compare_arrays(got, want, atol=1e-9, rtol=1e-9,
                                                    kind="tensor"),
    tolerance="1e-09 + 1e-09 x |expected|",
    hint_text="values, _ = torch.sort(x, dim=1). The percentile sits at the fractional "
              "position pos = q / 100 * (N - 1) (N - 1, not N: q = 100 is the last value). "
              "Take lo = floor(pos), hi = min(lo + 1, N - 1) and interpolate: "
              "values[:, lo] + (values[:, hi] - values[:, lo]) * (pos - lo).",
)


def _pairs(n: int) -> st.SearchStrategy:
    pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda t: t[0] != t[1])
    return st.lists(pair.map(lambda t: (min(t), max(t), 3)), max_size=6)


DUPLICATE_GROUPS = Exercise(
    id="01.duplicate_groups",
    signature="duplicate_groups(n, pairs) -> list[int]",
    summary="Group id of each of n items, given duplicate pairs (i, j, distance): items "
            "linked by a chain of pairs share a group, named by its smallest index.",
    reference_path="cxrlearn.data.dedup:duplicate_groups",
    cases=st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), _pairs(n))),
    edge_cases=[
        ("one item, no pairs", (1, [])),
        ("a chain of copies", (3, [(0, 1, 3), (1, 2, 4)])),
        ("pairs met out of order", (4, [(2, 3, 1), (0, 3, 2)])),
        ("no pairs", (3, [])),
    ],
    compare=lambda got, want, case: _compare_lists(got, want),
    hint_text="Union-find: parent = list(range(n)); find(i) follows parent until "
              "parent[i] == i. For each pair, join the two roots, keeping the smaller index "
              "as the root. Then every item's group is find(i). A copy of a copy (0-1, 1-2) "
              "puts 0, 1 and 2 in one group even though 0 and 2 were never compared.",
)

EXERCISES = [STRETCH, PERCENTILE, DUPLICATE_GROUPS]
