"""Contrast stretching: spread the useful grey levels over the whole range.

    out = clip((x - p_low) / (p_high - p_low), 0, 1)

with `p_low`, `p_high` the 2nd and 98th percentiles of the image (linear interpolation
between order statistics, numpy's default). Radiographs often use a narrow band of grey
levels; stretching makes edges and opacities easier to see, for people and networks alike.
The reference project stretched every X-ray this way before training. Using percentiles
rather than the minimum and maximum means a few burnt-in labels or dead pixels do not
decide the window.

When the window is empty (`p_low == p_high`, e.g. a constant image) the formula divides by
zero. We take its limit as the window shrinks: a step, 0 for `x <= p_low` and 1 above. A
constant image therefore maps to zeros, never NaN. (scikit-image's `rescale_intensity`
returns the clipped input unchanged in that case; everywhere else the two agree.)

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOW", "HIGH", "stretch_contrast", "stretch_contrast_tensor", "percentile_tensor"]

LOW = 2.0
"""The lower stretch percentile every default in cxrlearn uses (the reference project's)."""
HIGH = 98.0
"""The upper stretch percentile every default in cxrlearn uses."""


def _stretch_numpy(image: np.ndarray, low: float, high: float) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    p_low, p_high = np.percentile(x, (low, high))
    if p_high > p_low:
        out = (x - p_low) / (p_high - p_low)
    else:  # empty window: the step function that the formula tends to
        out = (x > p_low).astype(np.float64)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def percentile_tensor(x: Tensor, q: float) -> Tensor:
    """The q-th percentile of each row of `x`, as `numpy.percentile` computes it.

    Written out (sort, then interpolate between the two nearest order statistics) instead of
    `torch.quantile`, which refuses inputs of more than 2**24 elements (a 4096x4096 X-ray).

    Args:
        x: Values, one row per image.
        q: Percentile in [0, 100].

    Returns:
        One percentile per row.

    Shape:
        x: (B, N) -> (B,)
    """
    n = x.shape[1]
    values, _ = torch.sort(x, dim=1)
    pos = (q / 100.0) * (n - 1)  # fractional index into the sorted values
    lo = int(pos)  # floor, since pos >= 0
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return values[:, lo] + (values[:, hi] - values[:, lo]) * frac


def stretch_contrast_tensor(x: Tensor, low: float = LOW, high: float = HIGH) -> Tensor:
    """Contrast-stretch each image of a batch; scriptable with `torch.jit.script`.

    Percentiles are taken per image, over all its channels and pixels.

    Args:
        x: A batch of images, any real dtype (uint8, uint16 as int32, float).
        low: Lower percentile, in [0, 100].
        high: Upper percentile, in [0, 100], at least `low`.

    Returns:
        float32 images in [0, 1].

    Shape:
        x: (B, C, H, W) -> (B, C, H, W)
    """
    b = x.shape[0]
    flat = x.reshape(b, -1).to(torch.float64)  # (B, C*H*W); float64 to match numpy
    p_low = percentile_tensor(flat, low).unsqueeze(1)  # (B, 1)
    p_high = percentile_tensor(flat, high).unsqueeze(1)  # (B, 1)
    width = p_high - p_low
    has_window = width > 0
    # Divide only where the window is not empty; elsewhere use the step function.
    scaled = (flat - p_low) / torch.where(has_window, width, torch.ones_like(width))
    step = (flat > p_low).to(torch.float64)
    out = torch.where(has_window, scaled, step).clamp(0.0, 1.0)
    return out.reshape(x.shape).to(torch.float32)


@overload
def stretch_contrast(image: np.ndarray, low: float = ..., high: float = ...) -> np.ndarray: ...
@overload
def stretch_contrast(image: Tensor, low: float = ..., high: float = ...) -> Tensor: ...


def stretch_contrast(
    image: np.ndarray | Tensor, low: float = LOW, high: float = HIGH
) -> np.ndarray | Tensor:
    """Map the [low, high] percentile window of an image linearly onto [0, 1], clipping.

    The input is never modified.

    Args:
        image: A numpy array (one image, any shape and real dtype: 8-bit, 16-bit, float),
            or a torch tensor: `(H, W)` or `(C, H, W)` is one image, `(B, C, H, W)` a batch
            stretched image by image.
        low: Lower percentile, in [0, 100]. Default `LOW` (2).
        high: Upper percentile, in [0, 100], at least `low`. Default `HIGH` (98).

    Returns:
        float32 values in [0, 1], same shape and same kind (numpy or torch) as the input.

    Raises:
        ValueError: If the percentiles are out of order or out of range, or the image is empty.

    Shape:
        image: (H, W) | (C, H, W) | (B, C, H, W) -> same shape

    Example:
        >>> stretch_contrast(np.array([[0, 50], [100, 200]], dtype=np.uint8)).round(3)
        array([[0.   , 0.246],
               [0.508, 1.   ]], dtype=float32)
    """
    if not 0.0 <= low <= high <= 100.0:
        raise ValueError(f"need 0 <= low <= high <= 100, got low={low}, high={high}")
    if image.size == 0 if isinstance(image, np.ndarray) else image.numel() == 0:
        raise ValueError("cannot stretch an empty image")
    if isinstance(image, Tensor):
        if image.dim() == 4:
            return stretch_contrast_tensor(image, low, high)
        return stretch_contrast_tensor(image.unsqueeze(0), low, high).squeeze(0)
    return _stretch_numpy(image, low, high)
