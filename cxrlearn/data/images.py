"""Reading one X-ray file into a single-channel float image.

X-rays arrive as 8-bit or 16-bit grey PNGs, as RGB or RGBA screenshots, as palette images
and as JPEGs. Whatever the file, `load_image` returns one thing: a float32 array of shape
`(H, W)` with values in [0, 1] (the file's grey level divided by its maximum, 255 or 65535).
Everything after this point can then assume one format.

A corrupt or truncated file, a file that is not an image, or an image with more pixels than
is sane raises `CxrlearnError` naming the file: one bad file among twenty thousand should say
which one it is.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlearn.data.dicom import MAX_PIXELS, is_dicom_file, load_dicom
from cxrlearn.errors import CxrlearnError

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "load_image", "is_image_file"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""File extensions read as images (compared case-insensitively)."""



def is_image_file(path: str | Path) -> bool:
    """True when the file name ends in .png, .jpg or .jpeg (any case) and is not hidden.

    Hidden files (`.name`) are skipped: macOS leaves `._COVID-1.png` resource forks beside
    copied images, which are not images at all.
    """
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_grey_array(im: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image to float32 grey in [0, 1], keeping 16-bit precision."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode == "I":  # 32-bit integer: PIL's mode for many 16-bit PNGs
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        return np.clip(a / top, 0.0, 1.0).astype(np.float32)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels would otherwise turn black; composite onto black explicitly
        # so the result does not depend on PIL's defaults.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    # ITU-R 601-2 luma for colour images; a no-op for "L".
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as a single-channel float image.

    Args:
        path: A PNG or JPEG file (8-bit or 16-bit grey, RGB, RGBA or palette), or a DICOM
            file (needs the `dicom` extra, pydicom).
        max_pixels: Refuse images with more pixels than this.

    Returns:
        float32 array in [0, 1].

    Raises:
        CxrlearnError: The file is missing, not an image, corrupt or truncated, or too large.

    Shape:
        -> (H, W)
    """
    path = Path(path)
    if not path.is_file():
        raise CxrlearnError("no such file", path=path)
    if is_dicom_file(path):  # a .dcm/.dicom name or the "DICM" marker at byte 128
        return load_dicom(path, max_pixels)
    try:
        with warnings.catch_warnings():
            # PIL warns before its own bomb limit; we check our limit just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise CxrlearnError(
                        f"image is {width}x{height} = {width * height:,} pixels, more than the "
                        f"limit of {max_pixels:,}; resize it first",
                        path=path,
                    )
                im.load()  # decoding happens here: corrupt or truncated data fails now
                return _to_grey_array(im)
    except CxrlearnError:
        raise
    except UnidentifiedImageError:
        raise CxrlearnError(
            "not a PNG, JPEG or DICOM image", path=path
        ) from None
    except Image.DecompressionBombError as e:
        raise CxrlearnError(f"image too large: {e}", path=path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CxrlearnError(f"corrupt or truncated image ({e})", path=path) from None
