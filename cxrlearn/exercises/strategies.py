"""Hypothesis strategies shared by the exercises: small images, labels, tensors.

Small on purpose: a failing input is shrunk towards the smallest one (fewest pixels,
values towards 0), which is what a student reads.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["grey_images", "float_arrays", "label_triples", "array_pairs", "probability_rows"]


def float_arrays(shape: st.SearchStrategy | tuple, low: float = -2.0, high: float = 2.0,
           dtype: type = np.float64) -> st.SearchStrategy:
    """Float arrays of `shape` (a strategy or a tuple) with values in [low, high]."""
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, width=32))


def grey_images(max_side: int = 6) -> st.SearchStrategy:
    """A float64 grey image (H, W) in [0, 1], 1 to `max_side` pixels a side."""
    return float_arrays(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=max_side),
                  0.0, 1.0)


def label_triples(max_classes: int = 4, max_n: int = 10) -> st.SearchStrategy:
    """(y_true, y_pred, num_classes): two equal-length lists of labels in [0, K)."""
    def pair(k: int) -> st.SearchStrategy:
        label = st.integers(0, k - 1)
        return st.lists(st.tuples(label, label), min_size=1, max_size=max_n).map(
            lambda rows: ([t for t, _ in rows], [p for _, p in rows], k))
    return st.integers(1, max_classes).flatmap(pair)


def array_pairs(shape: st.SearchStrategy) -> st.SearchStrategy:
    """Two float arrays of one drawn shape."""
    return shape.flatmap(lambda s: st.tuples(float_arrays(s), float_arrays(s)))


def probability_rows(max_n: int = 6, max_k: int = 3) -> st.SearchStrategy:
    """Probabilities (N, K): positive rows that sum to 1."""
    shape = st.tuples(st.integers(1, max_n), st.integers(1, max_k))
    raw = shape.flatmap(lambda s: float_arrays(s, 0.0625, 1.0))
    return raw.map(lambda a: a / a.sum(axis=1, keepdims=True))
