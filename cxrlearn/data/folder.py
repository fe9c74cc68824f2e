"""Finding the X-rays of each class in a folder laid out like the Kaggle database.

The COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021) ships one
folder per class. The current release puts the images one level down,
`<root>/<Class>/images/*.png`, with lung masks in `<root>/<Class>/masks/` (ignored here);
older copies and our bundled sample are flat, `<root>/<Class>/*.png`. Both are read.

Class folders must be named exactly as in the database. Any subset of the four classes
works; a folder with another name is reported in `FolderScan.unknown`, never silently
turned into a fifth class.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cxrlearn.data.images import is_image_file
from cxrlearn.errors import CxrlearnError

__all__ = ["CLASS_NAMES", "DISPLAY_NAMES", "FolderScan", "scan_folder"]

CLASS_NAMES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
"""The four classes in canonical order (label 0..3), spelled like the database's folders."""

DISPLAY_NAMES: dict[str, str] = {
    "COVID": "COVID-19",
    "Lung_Opacity": "Lung opacity",
    "Normal": "Normal",
    "Viral Pneumonia": "Viral pneumonia",
}
"""Prettier names for plots and reports."""


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found.

    Attributes:
        root: The folder that was read.
        class_names: The classes used, in canonical order; label i is `class_names[i]`.
        items: `(path, label)` for every image, sorted by class then file name.
        unknown: Sub-folders (and loose files) of `root` that are not class folders.
    """

    root: Path
    class_names: tuple[str, ...]
    items: list[tuple[Path, int]] = field(repr=False)
    unknown: list[Path]

    def counts(self) -> dict[str, int]:
        """Number of images per class, in class order."""
        c = Counter(label for _, label in self.items)
        return {name: c[i] for i, name in enumerate(self.class_names)}


def _images_of_class(class_dir: Path) -> list[Path]:
    # The current Kaggle release keeps images in <Class>/images/ next to <Class>/masks/.
    images_dir = class_dir / "images"
    source = images_dir if images_dir.is_dir() else class_dir
    return sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))


def scan_folder(root: str | Path, classes: list[str] | tuple[str, ...] | None = None) -> FolderScan:
    """List the images of each class under `root`.

    Args:
        root: Folder with one sub-folder per class.
        classes: Classes to use, from `CLASS_NAMES`. Default: every class found.

    Returns:
        The images with their labels, and whatever else was found.

    Raises:
        CxrlearnError: `root` is missing or not a folder, a requested class folder is
            missing, a class name is unknown, or no class folder holds an image.
    """
    root = Path(root)
    if not root.exists():
        raise CxrlearnError("folder not found", path=root)
    if not root.is_dir():
        raise CxrlearnError("not a folder; expected one sub-folder per class", path=root)

    if classes is not None:
        bad = [c for c in classes if c not in CLASS_NAMES]
        if bad:
            raise CxrlearnError(
                f"unknown class {bad[0]!r}; choose from {', '.join(CLASS_NAMES)}", path=root
            )
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise CxrlearnError(f"no folder for class {missing[0]!r}", path=root)
    present = [c for c in CLASS_NAMES if (root / c).is_dir()]
    wanted = present if classes is None else [c for c in CLASS_NAMES if c in classes]
    unknown = sorted(
        p
        for p in root.iterdir()
        if p.name not in CLASS_NAMES and not p.name.startswith(".")
    )
    if not wanted:
        raise CxrlearnError(
            "no class folders found; expected sub-folders named "
            + ", ".join(repr(c) for c in CLASS_NAMES),
            path=root,
        )

    items: list[tuple[Path, int]] = []
    for label, name in enumerate(wanted):
        files = _images_of_class(root / name)
        if not files:
            raise CxrlearnError("class folder holds no .png/.jpg/.jpeg images", path=root / name)
        items.extend((p, label) for p in files)
    return FolderScan(root=root, class_names=tuple(wanted), items=items, unknown=unknown)
