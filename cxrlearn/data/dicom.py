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

What a file may cost is checked before it is paid: the pixel count (Rows x Columns) against
`max_pixels`, and the bytes of the pixels (x SamplesPerPixel x BitsAllocated / 8) against
`max_pixels` x 4, before the pixels are decoded. A *deflated* file (transfer syntax
1.2.840.10008.1.2.1.99) is the whole data set zlib-compressed: pydicom inflates all of it
when it opens the file, and 509 KB of zeros inflate to 1 GB. So such a file is inflated
here, in steps: its header first (at most `DEFLATED_HEADER_BYTES`), checked as above, then
at most the bytes its header declares, and refused as soon as it inflates to more.

pydicom is an optional dependency (`pip install "cxrlearn[dicom]"`); it is imported when a
DICOM file is read, not before.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import io
import math
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cxrlearn.errors import CxrlearnError

__all__ = ["DICOM_EXTENSIONS", "MAX_PIXELS", "is_dicom_file", "load_dicom",
           "rescale_dicom_pixels"]

MAX_PIXELS = 64_000_000
"""Largest image accepted, in pixels: 8000 x 8000, here and by `cxrlearn.data.load_image`.
Real radiographs are at most about 4k x 4k; anything bigger is more likely a decompression
bomb than an X-ray."""

DEFLATED_HEADER_BYTES = 1 << 20
"""How much of a deflated file is inflated to read its header (1 MiB; headers are ~2 KiB)."""

MAX_BYTES_PER_PIXEL = 4
"""32 bits of one grey sample: the most a radiograph's pixel needs."""

PIXEL_DATA = 0x7FE00010
"""The tag (7FE0,0010) of the pixels, the last and only large element of an X-ray file."""

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
        meta = pydicom.filereader.read_file_meta_info(path)
        syntax = meta.get("TransferSyntaxUID")
        if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
            ds = _read_deflated(path, meta, max_pixels)
        else:
            ds = pydicom.dcmread(path)
    except CxrlearnError:
        raise
    except InvalidDicomError:
        raise CxrlearnError("not a DICOM file (no DICM marker); expected a DICOM "
                            "Part 10 file", path=path) from None
    except Exception as e:  # truncated headers fail with many error types
        raise CxrlearnError(f"unreadable DICOM header ({_one_line(e)})", path=path) from None
    if "PixelData" not in ds:
        raise CxrlearnError("the DICOM file holds no image (no PixelData)", path=path)
    _check_size(ds, max_pixels, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CxrlearnError(f"photometric interpretation {photometric}; only grey "
                            "(MONOCHROME1/2) radiographs are supported", path=path)
    try:
        stored = ds.pixel_array
    except Exception as e:  # missing decoder plugins, truncated pixel data, ...
        syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
        if syntax is not None and syntax.is_compressed:
            raise CxrlearnError(f"cannot decode the pixel data, compressed as {syntax.name}: "
                                "this Python has no decoder for it (for JPEG 2000: pip install "
                                "pylibjpeg pylibjpeg-openjpeg), or save the image as PNG",
                                path=path) from None
        raise CxrlearnError(f"cannot decode the pixel data ({_one_line(e)})",
                            path=path) from None
    if stored.ndim != 2:
        raise CxrlearnError(f"expected one grey frame, got pixel data of shape {stored.shape}",
                            path=path)
    slope = _number(ds, "RescaleSlope", 1.0, float, path)
    intercept = _number(ds, "RescaleIntercept", 0.0, float, path)
    return rescale_dicom_pixels(stored, slope, intercept, photometric == "MONOCHROME1")


def _check_size(ds: Any, max_pixels: int, path: Path) -> None:
    """Refuse, from the header alone, an image with too many pixels or too many bytes.

    Raises:
        CxrlearnError: More than `max_pixels` pixels, more than one frame, or more bytes
            than `max_pixels` x `MAX_BYTES_PER_PIXEL`.
    """
    rows, cols = _number(ds, "Rows", 0, int, path), _number(ds, "Columns", 0, int, path)
    if rows * cols > max_pixels:
        raise CxrlearnError(f"image is {cols}x{rows} = {rows * cols:,} pixels, more than the "
                            f"limit of {max_pixels:,}", path=path)
    if _number(ds, "NumberOfFrames", 1, int, path) > 1:
        raise CxrlearnError("multi-frame DICOM; save the frame to classify as its own file",
                            path=path)
    samples = _number(ds, "SamplesPerPixel", 1, int, path)
    bits = _number(ds, "BitsAllocated", 16, int, path)
    if rows * cols * samples * bits > max_pixels * MAX_BYTES_PER_PIXEL * 8:
        raise CxrlearnError(f"image is {cols}x{rows} pixels of {samples} x {bits} bits, more "
                            f"than the limit of {max_pixels:,} grey pixels of "
                            f"{8 * MAX_BYTES_PER_PIXEL} bits", path=path)


def _read_deflated(path: Path, meta: Any, max_pixels: int) -> Any:
    """A deflated DICOM file's data set, inflated no further than its header allows.

    The data set after the file meta group is raw deflate (RFC 1951). The header is inflated
    first (at most `DEFLATED_HEADER_BYTES`) and checked by `_check_size`; then the rest, up to
    the header plus the bytes its pixels declare: a file that inflates to more is refused.

    Raises:
        CxrlearnError: The meta group has no length, the header is not within its first
            `DEFLATED_HEADER_BYTES`, the image is too large, or it inflates to more than
            it declares.
    """
    import pydicom
    from pydicom.filereader import read_dataset

    raw = path.read_bytes()  # the file itself is at most what the caller allowed on disk
    start = 132 if raw[128:132] == b"DICM" else 0
    if raw[start:start + 8] != b"\x02\x00\x00\x00UL\x04\x00":  # (0002,0000) UL, 4 bytes
        raise CxrlearnError("deflated DICOM without a file meta group length", path=path)
    body = start + 12 + int.from_bytes(raw[start + 8:start + 12], "little")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        header = inflater.decompress(raw[body:], DEFLATED_HEADER_BYTES)
        probe = read_dataset(io.BytesIO(header), is_implicit_VR=False, is_little_endian=True,
                             stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
    except Exception as e:  # zlib.error, or an element cut off by the step above
        raise CxrlearnError(f"unreadable deflated DICOM header ({_one_line(e)})",
                            path=path) from None
    if "Rows" not in probe:
        raise CxrlearnError(f"deflated DICOM whose header is not in its first "
                            f"{DEFLATED_HEADER_BYTES:,} bytes", path=path)
    _check_size(probe, max_pixels, path)  # from the declared size, before the pixels
    declared = (_number(probe, "Rows", 0, int, path) * _number(probe, "Columns", 0, int, path)
                * _number(probe, "SamplesPerPixel", 1, int, path)
                * _number(probe, "BitsAllocated", 16, int, path) + 7) // 8
    room = DEFLATED_HEADER_BYTES + declared + 1024  # header, pixels, an odd trailing tag
    try:
        rest = inflater.decompress(inflater.unconsumed_tail, room - len(header) + 1)
    except zlib.error as e:
        raise CxrlearnError(f"corrupt deflated DICOM ({_one_line(e)})", path=path) from None
    if len(header) + len(rest) > room:
        raise CxrlearnError(f"deflated DICOM that inflates to more than the {declared:,} "
                            "bytes of pixels its header declares", path=path)
    ds = read_dataset(io.BytesIO(header + rest), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = meta
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # inflated now
    return ds


def _one_line(error: Exception) -> str:
    """An exception's first line, without Python's `<... object at 0x...>` reprs."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the file", lines[0])[:300]


def _number(ds: object, tag: str, default: float, kind: type, path: Path) -> Any:
    """One numeric header value; a missing or empty tag gives `default`.

    Raises:
        CxrlearnError: The value is not one finite number (text, several values, NaN).
    """
    try:
        value = ds.get(tag, default)  # type: ignore[attr-defined]
    except Exception as e:  # pydicom converts lazily: a bad value fails on access
        raise CxrlearnError(f"the DICOM tag {tag} cannot be read ({e})", path=path) from None
    if value is None or value == "":
        return kind(default)
    try:
        number = float(value)
        if not math.isfinite(number) or (kind is int and number != int(number)):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise CxrlearnError(f"the DICOM tag {tag} is {str(value)[:40]!r}, not one number",
                            path=path) from None
    return kind(number)
