"""Heat maps over X-rays: show where a saliency map (Grad-CAM) points.

A map in [0, 1] is coloured with a colour map and mixed with the grey image:

    out = (1 - alpha) * grey + alpha * colour(cam)

so alpha = 0 gives the X-ray alone and alpha = 1 the coloured map alone. The map is
usually smaller than the image (Grad-CAM on ResNet18's layer4 is H/32 x W/32) and is
resized bilinearly first. Values outside [0, 1] are refused, not clipped: they mean the
image was passed after normalisation, or the raw map before min-max scaling, and a
clipped picture would look plausible and be wrong.

The default colour map is `cividis` (Nuñez, Anderton and Renslow, PLoS ONE 13:e0199239,
2018): dark blue for low, yellow for high, perceptually uniform (equal steps in the map
look like equal steps in colour) and readable with red-green colour blindness. The once
usual rainbow map, jet, is neither: its bright cyan and yellow bands invent edges that
are not in the map, and its red and green look alike to about 1 man in 12.

`gradcam_figure` puts image, map and overlay side by side for a report or a notebook, with a
colour bar that says which colour is high.

Lesson: lessons/05_grad_cam_with_hooks.ipynb
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw, when they draw
    from matplotlib.figure import Figure

__all__ = ["DEFAULT_CMAP", "gradcam_figure", "overlay"]

DEFAULT_CMAP = "cividis"
"""Perceptually uniform and colour-blind safe; low is dark blue, high is yellow."""


def _as_numpy_2d(array: Tensor | np.ndarray, name: str) -> np.ndarray:
    array = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    if array.ndim != 2:
        raise CxrlearnError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    return array


def overlay(
    image: Tensor | np.ndarray,
    cam: Tensor | np.ndarray,
    alpha: float = 0.4,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Lay a coloured heat map over a grey image.

    out = (1 - alpha) * grey + alpha * colour(cam), in RGB. With alpha = 0 the result is
    the grey image repeated in three channels; with alpha = 1 it is the coloured map alone.

    Args:
        image: A grey image, either floats in [0, 1] or uint8.
        cam: A heat map in [0, 1]. If its size differs from the image's, it is resized
            (bilinear) to the image size.
        alpha: Weight of the heat map, in [0, 1].
        cmap: A matplotlib colormap name.

    Returns:
        An RGB image, dtype uint8.

    Raises:
        CxrlearnError: For arrays that are not 2-D, values or alpha outside [0, 1].

    Shape:
        image: (H, W), cam: (h, w) -> (H, W, 3)
    """
    import matplotlib  # here, not at the top: importing cxrlearn.heatmap draws nothing

    if not 0.0 <= alpha <= 1.0:
        raise CxrlearnError(f"alpha must be in [0, 1], got {alpha}")
    grey = _as_numpy_2d(image, "image")
    grey = grey / 255.0 if grey.dtype == np.uint8 else grey.astype(np.float64)  # (H, W)
    heat = _as_numpy_2d(cam, "cam").astype(np.float64)
    # Out-of-range values are a mix-up, not noise: clipping them would draw a wrong picture.
    if grey.min() < 0 or grey.max() > 1:
        raise CxrlearnError(
            "image values must lie in [0, 1] (or be uint8); pass the image as it was "
            "before normalisation"
        )
    if heat.min() < 0 or heat.max() > 1:
        raise CxrlearnError("cam values must lie in [0, 1]; use CamResult.cams, not .raw")
    if heat.shape != grey.shape:
        resized = F.interpolate(
            torch.from_numpy(heat)[None, None],  # (1, 1, h, w)
            size=grey.shape,
            mode="bilinear",
            align_corners=False,
        )
        heat = resized[0, 0].numpy()  # (H, W)
    colour = matplotlib.colormaps[cmap](heat)[..., :3]  # (H, W, 3), RGBA without the A
    mixed = (1.0 - alpha) * grey[..., None] + alpha * colour  # (H, W, 3)
    return np.round(mixed * 255.0).astype(np.uint8)


def gradcam_figure(
    image: Tensor | np.ndarray,
    cam: Tensor | np.ndarray,
    title: str,
    prob: float | None = None,
    alpha: float = 0.4,
    cmap: str = DEFAULT_CMAP,
) -> Figure:
    """Image, heat map and overlay side by side, titled with the class and probability.

    The figure is built without pyplot, so pyplot does not keep it open and nothing is
    shown: save it with `savefig`, or, in a notebook, make it a cell's last value after
    `%matplotlib inline` has run once.

    Args:
        image: A grey image, floats in [0, 1] or uint8.
        cam: A heat map in [0, 1], at image size or smaller.
        title: What is explained, usually the class name.
        prob: The model's probability for that class, shown next to the title.
        alpha: Weight of the heat map in the overlay.
        cmap: A matplotlib colormap name.

    Returns:
        A matplotlib figure with three panels and a colour bar.

    Shape:
        image: (H, W), cam: (h, w)
    """
    from matplotlib.figure import Figure

    grey = _as_numpy_2d(image, "image")
    heat = _as_numpy_2d(cam, "cam")
    fig = Figure(figsize=(7.5, 2.8), dpi=80, layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=255 if grey.dtype == np.uint8 else 1)
    axes[0].set_title("image")
    shown = axes[1].imshow(heat, cmap=cmap, vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM")
    # Which colour is high? Without a bar a reader has to guess; the map is rescaled to [0, 1]
    # per image, so the bar says "relative evidence", not a probability.
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="relative evidence")
    axes[2].imshow(overlay(grey, heat, alpha=alpha, cmap=cmap))
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title if prob is None else f"{title} (p = {prob:.2f})")
    return fig
