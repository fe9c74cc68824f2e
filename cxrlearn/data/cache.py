"""A cache of prepared images, so that epochs after the first read no PNGs.

On a CPU, decoding a PNG, stretching it and resizing it costs far more than a training
step's share of it. Every prepared image (stage 1 in `cxrlearn.transforms`) is the same
every epoch, so we compute them once into one uint8 array `(N, S, S)` and keep it in a
`.npz` file. The file name carries a hash of everything that decides its content: the
files (path, size, modification time), the image size, the stretch percentiles and the
cache format version. Change any of them and a new file is made; nothing stale is reused,
and a damaged file (cut short by a full disk, say) is made again.

Bad files: with `skip_bad=True`, an unreadable image is left out, reported in the result,
and the run goes on; otherwise the first one stops everything with its name.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrlearn.atomic import write_atomic
from cxrlearn.data.images import load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.transforms import Preprocess

__all__ = ["PreparedImages", "cache_key", "default_cache_dir", "prepare_images"]

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Where cxrlearn keeps what it computes once: prepared images, the sample run.

    `$CXRLEARN_CACHE_DIR` if set, else `$XDG_CACHE_HOME/cxrlearn`, else
    `~/.cache/cxrlearn`. Everything in it can be deleted; it is made again when needed.
    """
    if os.environ.get("CXRLEARN_CACHE_DIR"):
        return Path(os.environ["CXRLEARN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxrlearn"


@dataclass
class PreparedImages:
    """Result of `prepare_images`.

    Attributes:
        images: uint8 `(N_kept, S, S)`, one per kept path.
        kept: Index into the input paths of each row of `images`.
        bad: `(path, problem)` for each skipped file.
        cache_file: The `.npz` file used, or None without a cache folder.
        from_cache: True when the images were read from an existing cache file.
    """

    images: np.ndarray
    kept: list[int]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    cache_file: Path | None = None
    from_cache: bool = False


def cache_key(paths: Sequence[str | Path], preprocess: Preprocess) -> str:
    """Hex digest naming the cache of these files prepared with these settings (the side
    and the stretch percentiles: channels and normalisation come after the cache)."""
    h = hashlib.sha256()
    p = preprocess
    h.update(json.dumps([_FORMAT_VERSION, p.image_size, p.low, p.high]).encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # missing or unreadable: `load_image` reports it, with its name
            stamp = "unreadable"
        h.update(f"{Path(p).resolve()}\0{stamp}\n".encode())
    return h.hexdigest()[:20]


def _read_cache(cache_file: Path, paths: Sequence[str | Path],
                image_size: int) -> PreparedImages | None:
    """The cached images, or None when the file is damaged (it is then made again).

    A cache file can be cut short by a full disk or a killed process on another machine
    that shares the folder; it is only ever a copy, so a damaged one is rebuilt, not an error.
    """
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            images, kept = z["images"], z["kept"].tolist()
            bad = [(Path(paths[i]), str(m)) for i, m in zip(z["bad_index"], z["bad_msg"],
                                                              strict=True)]
        if images.shape != (len(kept), image_size, image_size) or images.dtype != np.uint8:
            raise ValueError(f"images of shape {images.shape}")
        if any(not 0 <= i < len(paths) for i in kept):
            raise ValueError("an index out of range")
        return PreparedImages(images, kept, bad, cache_file, from_cache=True)
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile):
        cache_file.unlink(missing_ok=True)
        return None


def prepare_images(
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PreparedImages:
    """Prepare every image once, reading and writing a cache file when `cache_dir` is set.

    Args:
        paths: Image files.
        preprocess: How to prepare them: its side S and stretch percentiles
            (`Preprocess.prepare`).
        cache_dir: Folder for `.npz` caches; None keeps everything in memory only.
        skip_bad: Leave out unreadable files instead of stopping at the first.
        progress: Called with 1 after each image is prepared (for a progress bar).

    Returns:
        The prepared images and what was kept and skipped.

    Raises:
        CxrlearnError: A file cannot be read and `skip_bad` is False.

    Shape:
        -> images (N_kept, S, S)
    """
    cache_file, image_size = None, preprocess.image_size
    if cache_dir is not None:
        key = cache_key(paths, preprocess)
        cache_file = Path(cache_dir) / f"prepared-{image_size}px-{key}.npz"
        if cache_file.is_file():
            cached = _read_cache(cache_file, paths, image_size)
            if cached is not None:
                return cached

    images = np.zeros((len(paths), image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    bad_index: list[int] = []
    bad: list[tuple[Path, str]] = []
    for i, p in enumerate(paths):
        try:
            images[len(kept)] = preprocess.prepare(load_image(p))[0].numpy()
            kept.append(i)
        except CxrlearnError as e:
            if not skip_bad:
                raise
            bad_index.append(i)
            bad.append((Path(p), e.message))
        if progress is not None:
            progress(1)
    images = images[: len(kept)]

    if cache_file is not None:
        # Atomic: a crash never leaves half a cache. Its temporary carries the process id,
        # so under torchrun every rank may build the same cache at once.
        try:
            write_atomic(cache_file, lambda f: np.savez(
                f,
                images=images,
                kept=np.array(kept, dtype=np.int64),
                bad_index=np.array(bad_index, dtype=np.int64),
                bad_msg=np.array([m for _, m in bad], dtype=str),
            ), "the cache")
        except CxrlearnError:  # a full disk: the cache is only a copy, go on without it
            cache_file = None
    return PreparedImages(images, kept, bad, cache_file, from_cache=False)
