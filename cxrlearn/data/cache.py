"""A cache of prepared images, so that epochs after the first read no PNGs.

On a CPU, decoding a PNG, stretching it and resizing it costs far more than a training
step's share of it. Every prepared image (stage 1 in `cxrlearn.transforms`) is the same
every epoch, so we compute them once into one uint8 array `(N, S, S)` and keep it in a
`.npz` file. The file name carries a hash of everything that decides its content: the
files (path, size, modification time), the image size, the stretch percentiles and the
cache format version. Change any of them and a new file is made; nothing stale is reused,
and a damaged file (cut short by a full disk, say) is made again. A cache file is read only
after its declared sizes were checked against what it should hold: a small crafted file
that would inflate to gigabytes is made again too, never loaded.

A cache folder that cannot be used (a file, read-only, on a read-only home) is not an error
for training: the images are prepared in memory and `PreparedImages.cache_problem` says why
no cache was kept, so that the caller can warn.

Bad files: with `skip_bad=True`, an unreadable image is left out, reported in the result,
and the run goes on; otherwise the first one stops everything with its name.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrlearn.atomic import write_atomic
from cxrlearn.data.images import load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.transforms import Preprocess

__all__ = ["PreparedImages", "cache_key", "cache_dir_problem", "default_cache_dir",
           "prepare_images"]

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Where cxrlearn keeps what it computes once: prepared images, the sample run.

    `$CXRLEARN_CACHE_DIR` if set, else `$XDG_CACHE_HOME/cxrlearn`, else
    `~/.cache/cxrlearn`. Everything in it can be deleted; it is made again when needed.

    Raises:
        CxrlearnError: None of them is set and the home folder cannot be found.
    """
    if os.environ.get("CXRLEARN_CACHE_DIR"):
        return Path(os.environ["CXRLEARN_CACHE_DIR"])
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no $HOME and no password entry (a bare container)
        raise CxrlearnError("no home folder to keep a cache in; set CXRLEARN_CACHE_DIR to a "
                            "writable folder") from None
    return Path(base) / "cxrlearn"


def cache_dir_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot hold a cache ("is a file, not a folder"), or None when it can.

    The folder is created if needed, and a probe file is written and removed: permissions
    alone do not tell (a read-only file system, or a user such as root who ignores them).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"is not writable ({e.strerror or e})"
    return None


@dataclass
class PreparedImages:
    """Result of `prepare_images`.

    Attributes:
        images: uint8 `(N_kept, S, S)`, one per kept path.
        kept: Index into the input paths of each row of `images`.
        bad: `(path, problem)` for each skipped file.
        cache_file: The `.npz` file used, or None without a cache folder.
        from_cache: True when the images were read from an existing cache file.
        cache_problem: Why no cache file was kept although a cache folder was given (it
            cannot be written), or None.
    """

    images: np.ndarray
    kept: list[int]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    cache_file: Path | None = None
    from_cache: bool = False
    cache_problem: str | None = None


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
    The sizes its arrays declare are checked before any is read (`_check_declared`).
    """
    try:
        _check_declared(cache_file, len(paths), image_size)
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


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
_MAX_MESSAGE = 4096  # characters of one bad file's message, more than any of ours


def _check_declared(cache_file: Path, count: int, image_size: int) -> None:
    """Refuse a cache file whose arrays declare more than `count` images could need.

    An `.npz` is a zip of `.npy` files, each with a header giving its dtype and shape.
    Deflate compresses zeros a thousandfold: a 1 MB file can unpack to 1 GiB. Both the zip's
    uncompressed sizes and the headers' shapes are read (a few hundred bytes) and compared
    with the most that `count` images of `image_size` pixels need.

    Raises:
        ValueError: A member is missing, unexpected, or declares too much.
    """
    per_member = {"images.npy": count * image_size * image_size, "kept.npy": count * 8,
                  "bad_index.npy": count * 8, "bad_msg.npy": count * 4 * _MAX_MESSAGE}
    with zipfile.ZipFile(cache_file) as z:
        infos = {i.filename: i for i in z.infolist()}
        if set(infos) != set(per_member):
            raise ValueError(f"members {sorted(infos)[:5]}")
        for name, most in per_member.items():
            if infos[name].file_size > most + 4096:  # + the .npy header
                raise ValueError(f"{name} declares {infos[name].file_size} bytes")
            with z.open(name) as f:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(f))
                if read_header is None:
                    raise ValueError(f"{name} has an unknown .npy version")
                shape, _, dtype = read_header(f)
            if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > most:
                raise ValueError(f"{name} declares shape {shape}")


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
    cache_file, image_size, problem = None, preprocess.image_size, None
    if cache_dir is not None and (problem := cache_dir_problem(cache_dir)) is not None:
        problem, cache_dir = f"{cache_dir} {problem}", None  # go on in memory
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
        except CxrlearnError as e:  # a full disk: the cache is only a copy, go on without it
            cache_file, problem = None, str(e)
    return PreparedImages(images, kept, bad, cache_file, from_cache=False,
                          cache_problem=problem)
