"""DICOM reading: rescale slope/intercept, MONOCHROME1 inversion, clear errors.

The DICOM files are written by the tests with pydicom; the expected images are computed by
hand from the stored values: value = stored * slope + intercept, then min-max to [0, 1],
then 1 - x for MONOCHROME1.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cxrlearn.data import load_image, sample_root
from cxrlearn.data.dicom import is_dicom_file, load_dicom, rescale_dicom_pixels
from cxrlearn.errors import CxrlearnError

pydicom = pytest.importorskip("pydicom")


def _minmax(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return (v - v.min()) / (v.max() - v.min())


def test_rescale_by_hand():
    stored = np.array([[0, 10], [20, 40]])
    # values -5, 15, 35, 75 -> (v + 5) / 80
    want = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(rescale_dicom_pixels(stored, 2.0, -5.0), want)
    np.testing.assert_array_equal(rescale_dicom_pixels(stored, 2.0, -5.0, monochrome1=True),
                                  1 - want)
    np.testing.assert_array_equal(rescale_dicom_pixels(np.full((3, 3), 7)), np.zeros((3, 3)))
    assert stored.tolist() == [[0, 10], [20, 40]]  # input untouched


def test_monochrome2_with_slope_and_intercept(tmp_path, write_dicom):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(24, 30))
    path = write_dicom(tmp_path / "a.dcm", stored, slope=0.5, intercept=-1024)
    got = load_dicom(path)
    assert got.dtype == np.float32 and got.shape == (24, 30)
    np.testing.assert_allclose(got, _minmax(stored * 0.5 - 1024), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path, write_dicom):
    rng = np.random.default_rng(1)
    v = rng.integers(0, 4096, size=(16, 16))
    mono2 = load_dicom(write_dicom(tmp_path / "m2.dcm", v, "MONOCHROME2"))
    # The same picture stored the MONOCHROME1 way: dense (white) is a low stored value.
    mono1 = load_dicom(write_dicom(tmp_path / "m1.dcm", 4095 - v, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, _minmax(v), atol=1e-6)


def test_an_8_bit_xray_reads_like_its_png(tmp_path, write_dicom):
    png = sorted((sample_root() / "Normal").glob("*.png"))[0]
    u8 = np.round(load_image(png) * 255).astype(np.uint8)
    got = load_dicom(write_dicom(tmp_path / "x.dcm", u8, bits=8))
    np.testing.assert_allclose(got, _minmax(u8), atol=1e-6)


def test_is_dicom_file(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "no_suffix", np.zeros((4, 4)))
    assert is_dicom_file(path)  # the "DICM" magic at byte 128
    assert is_dicom_file(tmp_path / "scan.DCM")  # the name is enough
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    assert not is_dicom_file(tmp_path / "x.png")


def test_errors_name_the_file(tmp_path, write_dicom):
    (tmp_path / "fake.dcm").write_text("not dicom at all")
    with pytest.raises(CxrlearnError, match=r"fake\.dcm: not a DICOM file"):
        load_dicom(tmp_path / "fake.dcm")
    with pytest.raises(CxrlearnError, match=r"gone\.dcm: no such file"):
        load_dicom(tmp_path / "gone.dcm")

    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(CxrlearnError, match=r"nopix\.dcm: .*no PixelData"):
        load_dicom(path)

    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", bits=8)
    with pytest.raises(CxrlearnError, match=r"rgb\.dcm: photometric interpretation RGB"):
        load_dicom(path)

    frames = write_dicom(tmp_path / "frames.dcm", np.zeros((3, 4, 4)), bits=8)
    with pytest.raises(CxrlearnError, match=r"frames\.dcm: multi-frame"):
        load_dicom(frames)

    with pytest.raises(CxrlearnError, match=r"big\.dcm: image is 8x8 = 64 pixels"):
        load_dicom(write_dicom(tmp_path / "big.dcm", np.zeros((8, 8))), max_pixels=63)


def test_missing_pydicom_is_a_clear_error(tmp_path, monkeypatch, write_dicom):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4)))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    with pytest.raises(CxrlearnError, match=r"a\.dcm: reading DICOM needs pydicom"):
        load_dicom(path)
