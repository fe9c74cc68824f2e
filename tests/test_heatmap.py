"""Heat maps everyone can read: a perceptually uniform default and a colour bar (issue 27).

The overlay's arithmetic is tested with Grad-CAM in tests/test_gradcam.py; here, what the
reader sees: which colours, and whether the figure says which colour is high.
"""

from __future__ import annotations

import inspect

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb

from cxrlearn.heatmap import DEFAULT_CMAP, gradcam_figure, overlay


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours (N, 3) in [0, 1]: the brightness people perceive."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


def test_the_default_colour_map_grows_steadily_brighter():
    """A uniform map's lightness rises monotonically from low to high; jet's does not (its
    cyan and yellow are brighter than its red end), which is why it invents edges."""
    ramp = np.linspace(0, 1, 64)
    default = _lightness(matplotlib.colormaps[DEFAULT_CMAP](ramp)[:, :3])
    assert np.all(np.diff(default) > 0)
    jet = _lightness(matplotlib.colormaps["jet"](ramp)[:, :3])
    assert not np.all(np.diff(jet) > 0)  # the test can tell the two apart


def test_every_drawing_function_defaults_to_it():
    for fn in (overlay, gradcam_figure):
        assert inspect.signature(fn).parameters["cmap"].default == DEFAULT_CMAP
    cam = np.zeros((4, 4))
    out = overlay(np.zeros((4, 4)), cam, alpha=1.0)
    low = np.round(np.array(matplotlib.colormaps[DEFAULT_CMAP](0.0)[:3]) * 255)
    np.testing.assert_array_equal(out[0, 0], low)
    assert not np.allclose(low / 255, to_rgb("darkblue"), atol=0.01)  # cividis, not jet's


def test_the_figure_has_a_colour_bar_from_0_to_1():
    fig = gradcam_figure(np.random.default_rng(0).random((16, 16)), np.eye(4), "COVID")
    panels, bars = fig.get_axes()[:3], fig.get_axes()[3:]
    assert len(panels) == 3 and len(bars) == 1
    assert bars[0].get_ylabel() == "relative evidence"
    assert bars[0].get_ylim() == (0.0, 1.0)
    assert panels[1].images[0].get_cmap().name == DEFAULT_CMAP
