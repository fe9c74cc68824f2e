"""`load_image`: every kind of file gives float32 grey (H, W) in [0, 1]; bad files say which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlearn.data import IMAGE_EXTENSIONS, is_image_file, load_image
from cxrlearn.errors import CxrlearnError


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in 8 bits, as PIL's "L" conversion computes it (fixed point, rounded)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float64)


def check_grey(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.dtype == np.float32 and a.shape == shape
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_8bit_grey(tmp_path, write_png):
    img = np.array([[0, 51, 255], [128, 7, 200]], dtype=np.uint8)
    a = load_image(write_png(tmp_path / "g.png", img))
    check_grey(a, (2, 3))
    np.testing.assert_allclose(a, img / 255.0, atol=1e-7)


def test_16bit_grey(tmp_path, write_png):
    img = np.array([[0, 1, 255, 256], [1000, 30000, 65534, 65535]], dtype=np.uint16)
    path = write_png(tmp_path / "g16.png", img)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    a = load_image(path)
    check_grey(a, (2, 4))
    np.testing.assert_allclose(a, img / 65535.0, rtol=0, atol=1e-7)
    # Dark 16-bit images keep their 16-bit scale: 255 is 255/65535, not 1.
    dark = np.array([[0, 100], [200, 255]], dtype=np.uint16)
    np.testing.assert_allclose(load_image(write_png(tmp_path / "d16.png", dark)), dark / 65535.0,
                               atol=1e-7)


def test_rgb_matches_the_luma_formula(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 200, 30]]], dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    a = load_image(tmp_path / "c.png")
    check_grey(a, (2, 2))
    # By hand: red 255 * 0.299 = 76.2 -> 76, green 149.7 -> 150, blue 29.07 -> 29.
    np.testing.assert_allclose(a[0, 0] * 255, 76, atol=1e-4)
    np.testing.assert_allclose(a * 255, luma(rgb), atol=1e-4)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.array(
        [[[200, 200, 200, 255], [200, 200, 200, 0]], [[100, 50, 25, 128], [0, 0, 0, 255]]],
        dtype=np.uint8,
    )
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    a = load_image(tmp_path / "t.png")
    check_grey(a, (2, 2))
    # Over black, a colour c with opacity alpha becomes c * alpha / 255.
    over_black = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
    expected = luma(np.round(over_black).astype(np.uint8))
    np.testing.assert_allclose(a * 255, expected, atol=1.5)
    assert a[0, 1] == 0.0  # fully transparent: black, whatever colour it stores


def test_grey_with_alpha(tmp_path):
    la = np.array([[[180, 255], [180, 0]]], dtype=np.uint8)  # (1, 2, 2): L, A
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(load_image(tmp_path / "la.png") * 255, [[180, 0]], atol=1)


def test_palette(tmp_path):
    palette = [0, 0, 0, 255, 255, 255, 255, 0, 0, 30, 60, 90]  # black, white, red, blue-ish
    index = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    a = load_image(tmp_path / "p.png")
    check_grey(a, (2, 2))
    colours = np.array(palette, dtype=np.uint8).reshape(-1, 3)[index]  # (2, 2, 3)
    np.testing.assert_allclose(a * 255, luma(colours), atol=1e-4)


def test_palette_with_transparency(tmp_path):
    index = np.array([[0, 1]], dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([255, 255, 255, 255, 255, 255])
    im.info["transparency"] = 0  # entry 0 is see-through: black after compositing
    im.save(tmp_path / "pt.png", transparency=0)
    np.testing.assert_allclose(load_image(tmp_path / "pt.png"), [[0.0, 1.0]], atol=1e-7)


def test_jpeg(tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    img = ((x + y) * 2).astype(np.uint8)  # a smooth ramp, which JPEG keeps well
    for name in ("r.jpg", "r.JPEG"):
        Image.fromarray(img).save(tmp_path / name, format="JPEG", quality=95)
        a = load_image(tmp_path / name)
        check_grey(a, (64, 64))
        assert np.abs(a - img / 255.0).mean() < 0.01


def test_sample_image(sample_root):
    path = next(iter(sorted((sample_root / "COVID").glob("*.png"))))
    a = load_image(path)
    check_grey(a, (128, 128))
    with Image.open(path) as im:
        np.testing.assert_allclose(a, np.asarray(im.convert("L")) / 255.0, atol=1e-7)


def _assert_error(path: Path, problem: str, **kwargs) -> None:
    with pytest.raises(CxrlearnError) as info:
        load_image(path, **kwargs)
    assert str(path) in str(info.value)
    assert problem in str(info.value)
    assert info.value.path == str(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_error(path, "not a PNG, JPEG or DICOM image")


def test_truncated_png(tmp_path, sample_root):
    raw = sorted((sample_root / "Normal").glob("*.png"))[0].read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(raw[: len(raw) // 2])
    _assert_error(path, "truncated")


def test_png_with_damaged_data(tmp_path, write_png):
    raw = bytearray(write_png(tmp_path / "ok.png", np.arange(64 * 64, dtype=np.uint16)
                              .reshape(64, 64)).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x00" * 16  # breaks the compressed stream
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(raw))
    _assert_error(path, "corrupt")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not an X-ray\n")
    _assert_error(path, "not a PNG, JPEG or DICOM image")


def test_missing_file_and_folder(tmp_path):
    _assert_error(tmp_path / "nowhere.png", "no such file")
    (tmp_path / "dir.png").mkdir()
    _assert_error(tmp_path / "dir.png", "no such file")


def test_pixel_limit(tmp_path, write_png):
    path = write_png(tmp_path / "big.png", np.zeros((20, 30), dtype=np.uint8))
    _assert_error(path, "600 pixels", max_pixels=599)
    assert load_image(path, max_pixels=600).shape == (20, 30)


def test_is_image_file():
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg")
    for name in ("a.png", "b.PNG", "c.jpg", "d.JPG", "e.jpeg", "f.JpEg", "dir/g.png"):
        assert is_image_file(name), name
    for name in ("a.txt", "png", "b.png.txt", "c.gif", ".DS_Store", "d.tif"):
        assert not is_image_file(name), name
