"""Contrast stretching against scikit-image's `rescale_intensity`, plus the documented edges."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.exposure import rescale_intensity

import cxrlearn.contrast
from cxrlearn.contrast import percentile_tensor, stretch_contrast, stretch_contrast_tensor

DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
EPS32 = float(np.finfo(np.float32).eps)


def skimage_stretch(img: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """The oracle: scikit-image's linear rescaling of the percentile window onto [0, 1]."""
    return rescale_intensity(
        img, in_range=tuple(np.percentile(img, (low, high))), out_range=(0, 1)
    )


def tolerance(img: np.ndarray, atol: float) -> float:
    """How far we may be from scikit-image, which works in float32 when given float32.

    Its rounding error is a few float32 ulps of |x| divided by the window width.
    """
    p_low, p_high = np.percentile(img.astype(np.float64), (2, 98))
    if img.dtype != np.float32:
        return atol
    scale = float(np.abs(img.astype(np.float64)).max()) + abs(p_low)
    return atol + 8 * EPS32 * scale / (p_high - p_low)


def _elements(dtype):
    if dtype == np.uint8:
        return st.integers(0, 255)
    if dtype == np.uint16:
        return st.integers(0, 65535)
    if dtype == np.float32:
        return st.floats(-1.0, 1.0, width=32)
    return st.floats(-1e3, 1e3)


@st.composite
def images(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.tuples(st.integers(1, 9), st.integers(1, 9)))
    return draw(arrays(dtype, shape, elements=_elements(dtype)))


def _has_window(img: np.ndarray) -> bool:
    # Both in float64 (ours) and in the input's precision (scikit-image's).
    lo64, hi64 = np.percentile(img.astype(np.float64), (2, 98))
    lo, hi = np.percentile(img, (2, 98))
    return hi64 > lo64 and hi > lo


@settings(max_examples=100, deadline=None)
@given(images())
@example(np.array([[3, 7]], dtype=np.uint8))
@example(np.arange(9, dtype=np.uint16).reshape(3, 3) * 7000)
@example(np.array([[0.1, 0.5, 0.2], [0.9, 0.3, 0.3], [0.0, 0.7, 0.4]], dtype=np.float32))
def test_numpy_matches_skimage(img):
    assume(_has_window(img))
    out = stretch_contrast(img)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, skimage_stretch(img), rtol=0, atol=tolerance(img, 1e-6))


def _to_torch(img: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(img.copy())
    except TypeError:  # torch versions without uint16 support: int32 holds it exactly
        return torch.from_numpy(img.astype(np.int32))


@settings(max_examples=100, deadline=None)
@given(images())
@example(np.array([[3, 7]], dtype=np.uint8))
@example(np.arange(9, dtype=np.uint16).reshape(3, 3) * 7000)
def test_torch_matches_skimage(img):
    assume(_has_window(img))
    x = _to_torch(img)
    out = stretch_contrast(x)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32 and tuple(out.shape) == img.shape
    np.testing.assert_allclose(out.numpy(), skimage_stretch(img), rtol=0,
                               atol=tolerance(img, 1e-5))


def test_tiny_two_pixel_image_by_hand():
    # Sorted [3, 7]: p2 = 3 + 0.02 * 4 = 3.08, p98 = 3 + 0.98 * 4 = 6.92.
    img = np.array([[3, 7]], dtype=np.uint8)
    np.testing.assert_allclose(stretch_contrast(img), [[0.0, 1.0]])
    # A narrower window leaves interior values: 5 sits halfway between 3 and 7.
    img3 = np.array([[3, 5, 7]], dtype=np.uint8)
    np.testing.assert_allclose(stretch_contrast(img3, 0, 100), [[0.0, 0.5, 1.0]], atol=1e-7)


def test_docstring_example_by_hand():
    # Sorted [0, 50, 100, 200], n - 1 = 3: p2 at index 0.06 -> 3, p98 at index 2.94 -> 194.
    img = np.array([[0, 50], [100, 200]], dtype=np.uint8)
    expected = np.array([[0.0, 47 / 191], [97 / 191, 1.0]])
    np.testing.assert_allclose(stretch_contrast(img), expected, atol=1e-7)
    failures, tried = doctest.testmod(cxrlearn.contrast, verbose=False)
    assert tried >= 1 and failures == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_constant_image_gives_zeros_not_nan(dtype, kind):
    img = np.full((4, 5), 7, dtype=dtype)
    x = img if kind == "numpy" else _to_torch(img)
    out = np.asarray(stretch_contrast(x))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, np.zeros((4, 5), dtype=np.float32))
    assert np.asarray(stretch_contrast(np.array([[5.0]]))).tolist() == [[0.0]]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_empty_window_is_the_documented_step(kind):
    # 99 zeros and one 1: p2 = p98 = 0 (both order statistics around index 97.02 are 0), so
    # the window is empty and the documented limit is a step: 0 where x <= 0, 1 above.
    # (scikit-image would return the clipped input, all zeros.)
    img = np.zeros((10, 10), dtype=np.uint8)
    img[3, 4] = 1
    x = img if kind == "numpy" else torch.from_numpy(img)
    out = np.asarray(stretch_contrast(x))
    np.testing.assert_array_equal(out, img.astype(np.float32))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_two_valued_image_by_hand(kind):
    # Half 10s, half 250s: p2 = 10 and p98 = 250, so the two values map to 0 and 1.
    img = np.array([[10, 250], [250, 10]] * 5, dtype=np.uint8)  # (10, 2)
    x = img if kind == "numpy" else torch.from_numpy(img)
    np.testing.assert_allclose(np.asarray(stretch_contrast(x)), (img == 250).astype(np.float32))


def test_uint16_uses_the_full_range():
    # A 16-bit image whose values exceed 255: only a window computed on the 16-bit values
    # (not on values squashed to 8 bits) makes 30000 land at (30000 - p2) / (p98 - p2).
    img = np.array([[0, 1000, 30000, 60000]], dtype=np.uint16)
    p2 = 0 + 0.06 * 1000  # index 0.06 between 0 and 1000
    p98 = 30000 + 0.94 * 30000  # index 2.94 between 30000 and 60000
    expected = np.clip((img - p2) / (p98 - p2), 0, 1)
    np.testing.assert_allclose(stretch_contrast(img), expected, atol=1e-6)
    np.testing.assert_allclose(stretch_contrast(_to_torch(img)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_input_is_not_mutated(kind):
    rng = np.random.default_rng(0)
    img = rng.random((3, 8, 8))
    x = img.copy() if kind == "numpy" else torch.from_numpy(img.copy())
    stretch_contrast(x)
    np.testing.assert_array_equal(np.asarray(x), img)


def test_batch_is_stretched_image_by_image():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 7, 9) * torch.tensor([1.0, 10.0, 0.1, 255.0]).view(4, 1, 1, 1)
    x[2] = 0.3  # a constant image in the batch must not disturb the others
    batch = stretch_contrast(x)
    for i in range(4):
        torch.testing.assert_close(batch[i], stretch_contrast(x[i]))
        torch.testing.assert_close(batch[i], stretch_contrast_tensor(x[i : i + 1])[0])
        np.testing.assert_allclose(batch[i].numpy(), stretch_contrast(x[i].numpy()), atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
           elements=st.floats(-1e6, 1e6)),
    st.floats(0, 100),
)
@example(np.arange(10.0).reshape(1, 10), 100.0)
@example(np.arange(10.0).reshape(1, 10), 0.0)
def test_percentile_tensor_matches_numpy(x, q):
    ours = percentile_tensor(torch.from_numpy(x), q).numpy()
    np.testing.assert_allclose(ours, np.percentile(x, q, axis=1), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("low, high", [(-1, 98), (2, 101), (60, 40), (float("nan"), 98)])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bad_percentiles_raise(low, high, kind):
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    x = img if kind == "numpy" else torch.from_numpy(img)
    with pytest.raises(ValueError, match="low"):
        stretch_contrast(x, low, high)


def test_empty_image_raises():
    with pytest.raises(ValueError, match="empty"):
        stretch_contrast(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty"):
        stretch_contrast(torch.zeros(0, 3))


def test_tensor_version_is_scriptable():
    import warnings

    with warnings.catch_warnings():  # torch.jit is deprecated in this torch; still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(stretch_contrast_tensor)
    x = torch.rand(2, 1, 5, 5)
    torch.testing.assert_close(scripted(x, 2.0, 98.0), stretch_contrast_tensor(x))
