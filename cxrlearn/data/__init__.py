"""Data: chest X-ray folders, images, splits, duplicates and the PyTorch dataset.

The sub-modules, bottom up:

- `images`: one file to one float grey image, with clear errors for bad files.
- `folder`: the Kaggle folder layout, classes and labels.
- `dedup`: difference hashes and near-duplicate pairs (leakage between splits).
- `splits`: the stratified, seeded train/val/test split and its CSV manifest.
- `cache`: prepared images computed once and kept on disk.
- `dataset`: the `torch.utils.data.Dataset` that yields `(x, y)`.

`sample_root()` is the bundled sample: 100 real X-rays per class, 128x128 grey PNGs from the
COVID-19 Radiography Database (see `SOURCES.md` beside it for sources and caveats).

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Names are imported when first used (PEP 562), so that `cxrlearn data check` reads images
# without importing torch, which only the dataset and the cache need.
_WHERE = {
    "PreparedImages": "cache", "default_cache_dir": "cache", "prepare_images": "cache",
    "XrayDataset": "dataset", "item_generator": "dataset", "split_dataset": "dataset",
    "alternate_flip": "dataset",
    "dhash": "dedup", "duplicate_groups": "dedup", "hamming": "dedup",
    "near_duplicate_pairs": "dedup",
    "CLASS_NAMES": "folder", "DISPLAY_NAMES": "folder", "FolderScan": "folder",
    "scan_folder": "folder",
    "IMAGE_EXTENSIONS": "images", "MAX_PIXELS": "images", "is_image_file": "images",
    "load_image": "images",
    "SPLITS": "splits", "SplitRow": "splits", "read_manifest": "splits",
    "split_items": "splits", "write_manifest": "splits",
}

__all__ = [
    "CLASS_NAMES", "DISPLAY_NAMES", "IMAGE_EXTENSIONS", "MAX_PIXELS", "SPLITS", "FolderScan",
    "PreparedImages", "SplitRow", "XrayDataset", "alternate_flip", "default_cache_dir", "dhash",
    "duplicate_groups", "hamming", "is_image_file", "item_generator", "load_image",
    "near_duplicate_pairs", "prepare_images", "read_manifest", "sample_root", "scan_folder",
    "split_dataset", "split_items", "write_manifest",
]

if TYPE_CHECKING:  # for type checkers and editors: the names, imported eagerly
    from cxrlearn.data.cache import PreparedImages, default_cache_dir, prepare_images
    from cxrlearn.data.dataset import XrayDataset, alternate_flip, item_generator, split_dataset
    from cxrlearn.data.dedup import dhash, duplicate_groups, hamming, near_duplicate_pairs
    from cxrlearn.data.folder import CLASS_NAMES, DISPLAY_NAMES, FolderScan, scan_folder
    from cxrlearn.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, is_image_file, load_image
    from cxrlearn.data.splits import (
        SPLITS,
        SplitRow,
        read_manifest,
        split_items,
        write_manifest,
    )


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cxrlearn.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cxrlearn.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


def sample_root() -> Path:
    """Folder of the bundled sample: `<Class>/<file>.png`, 100 images per class, 128x128."""
    return Path(__file__).resolve().parent.parent / "sample" / "radiography-sample-128"
