"""Reading a DICOM radiograph into the same float grey image `load_image` gives.

DICOM is how X-rays leave the scanner. Three things in the file matter for the pixels:

- **Rescale**: stored values are mapped to output units by
  `value = stored * RescaleSlope + RescaleIntercept` (DICOM PS3.3, C.11.1.1.2, the
  modality LUT); missing tags mean slope 1, intercept 0.
- **Photometric interpretation**: MONOCHROME2 shows high values as white, the convention of
  every PNG in the training data; MONOCHROME1 shows high values as *black*, so it is
  inverted here. Forgetting this gives negatives that a network classifies confidently and
  wrongly.
- **Bit depth**: 12- or 16-bit values, often with a negative intercept.

The result is min-max scaled to [0, 1]: `(value - min) / (max - min)` (zeros for a
constant image). The window tags (WindowCenter/WindowWidth) are not applied: the pipeline's
contrast stretching chooses its own window, and because it is computed from percentiles it
gives the same result for any increasing linear scaling of the values.

pydicom is an optional dependency (`pip install "cxrlearn[dicom]"`); it is imported when a
DICOM file is read, not before.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlearn.data.images import MAX_PIXELS
from cxrlearn.errors import CxrlearnError

__all__ = ["DICOM_EXTENSIONS", "is_dicom_file", "load_dicom", "rescale_dicom_pixels"]

DICOM_EXTENSIONS = (".dcm", ".dicom")
"""File extensions read as DICOM (compared case-insensitively)."""


def is_dicom_file(path: str | Path) -> bool:
    """True for a `.dcm`/`.dicom` name, or a file with the DICOM magic "DICM" at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def rescale_dicom_pixels(
    stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0, monochrome1: bool = False
) -> np.ndarray:
    """Stored DICOM values to a grey image in [0, 1] with white = dense, as in a PNG X-ray.

    `value = stored * slope + intercept`, min-max scaled to [0, 1], then `1 - x` for
    MONOCHROME1. A constant image gives zeros (ones for MONOCHROME1: inverted zeros).

    Args:
        stored: The pixel values as stored in the file.
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        monochrome1: True when the photometric interpretation is MONOCHROME1.

    Returns:
        float32 array in [0, 1]; the input is not changed.

    Shape:
        stored: (H, W) -> (H, W)
    """
    value = np.asarray(stored, dtype=np.float64) * slope + intercept
    low, high = float(value.min()), float(value.max())
    x = (value - low) / (high - low) if high > low else np.zeros_like(value)
    if monochrome1:
        x = 1.0 - x
    return x.astype(np.float32)


def load_dicom(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a single-frame grey DICOM file as float32 in [0, 1].

    Args:
        path: A DICOM file (Part 10, with or without the 128-byte preamble).
        max_pixels: Refuse images with more pixels than this.

    Returns:
        The image after rescale slope/intercept, scaled to [0, 1], MONOCHROME1 inverted.

    Raises:
        CxrlearnError: pydicom is not installed, the file is missing, not DICOM, has no
            pixel data, uses a compression pydicom cannot decode here, is multi-frame,
            colour, or too large. The message names the file.

    Shape:
        -> (H, W)
    """
    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise CxrlearnError("reading DICOM needs pydicom: pip install 'cxrlearn[dicom]'",
                            path=path) from None
    if not path.is_file():
        raise CxrlearnError("no such file", path=path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise CxrlearnError("not a DICOM file (no DICM marker); expected a DICOM "
                            "Part 10 file", path=path) from None
    except Exception as e:  # truncated headers fail with many error types
        raise CxrlearnError(f"unreadable DICOM header ({e})", path=path) from None
    if "PixelData" not in ds:
        raise CxrlearnError("the DICOM file holds no image (no PixelData)", path=path)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise CxrlearnError(f"image is {cols}x{rows} = {rows * cols:,} pixels, more than the "
                            f"limit of {max_pixels:,}", path=path)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise CxrlearnError("multi-frame DICOM; save the frame to classify as its own file",
                            path=path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CxrlearnError(f"photometric interpretation {photometric}; only grey "
                            "(MONOCHROME1/2) radiographs are supported", path=path)
    try:
        stored = ds.pixel_array
    except Exception as e:  # missing decoder plugins, truncated pixel data, ...
        raise CxrlearnError(f"cannot decode the pixel data ({e})", path=path) from None
    if stored.ndim != 2:
        raise CxrlearnError(f"expected one grey frame, got pixel data of shape {stored.shape}",
                            path=path)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return rescale_dicom_pixels(stored, slope, intercept, photometric == "MONOCHROME1")
