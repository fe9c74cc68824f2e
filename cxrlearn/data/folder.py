"""Finding the X-rays of each class in a folder with one sub-folder per class.

The class of an image is the name of the folder it sits in, as in torchvision's
`ImageFolder`: `<root>/<Class>/*.png`. The COVID-19 Radiography Database (Chowdhury et al.
2020; Rahman et al. 2021) ships this way; its current release puts the images one level
down, `<root>/<Class>/images/*.png`, with lung masks in `<root>/<Class>/masks/` (ignored
here). Both layouts are read.

Any folder names work (`Healthy/`, `Pneumothorax/`, ...). The classes are the sub-folders
that hold images, sorted by name: label i is the i-th name. For the database's four
folders that is its usual order, `CLASS_NAMES`. A sub-folder without images and a loose
file are reported in `FolderScan.unknown`, never turned into a class; a link that points
nowhere, or a file name that is not valid UTF-8, is reported in `FolderScan.problems`.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cxrlearn.data.images import is_image_file
from cxrlearn.errors import CxrlearnError

__all__ = ["CLASS_NAMES", "DISPLAY_NAMES", "MAX_CLASSES", "FolderScan", "scan_folder"]

MAX_CLASSES = 1000
"""Most classes a data folder, a checkpoint or an export may have (ImageNet's count): more is
a mistake (a folder of patients, one sub-folder each) or a damaged file. Checked when the
folder is scanned, before any training, and again when a checkpoint is read."""

CLASS_NAMES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
"""The COVID-19 Radiography Database's four classes, in their order (label 0..3)."""

DISPLAY_NAMES: dict[str, str] = {
    "COVID": "COVID-19",
    "Lung_Opacity": "Lung opacity",
    "Normal": "Normal",
    "Viral Pneumonia": "Viral pneumonia",
}
"""Prettier names of the database's classes for plots and reports (others show as they are)."""


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found.

    Attributes:
        root: The folder that was read.
        class_names: The classes used, sorted; label i is `class_names[i]`.
        items: `(path, label)` for every image, sorted by class then file name.
        unknown: Sub-folders without images, and loose files, of `root`: not classes.
        problems: `(path, problem)` for image entries that cannot be used as they are: a
            link to nothing, a name that is not valid UTF-8.
    """

    root: Path
    class_names: tuple[str, ...]
    items: list[tuple[Path, int]] = field(repr=False)
    unknown: list[Path]
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of images per class, in class order."""
        c = Counter(label for _, label in self.items)
        return {name: c[i] for i, name in enumerate(self.class_names)}


def _images_of_class(class_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of one class folder, and the entries that look like images but are
    unusable (a link to nothing, a name that cannot be written to a UTF-8 manifest)."""
    # The current Kaggle release keeps images in <Class>/images/ next to <Class>/masks/.
    images_dir = class_dir / "images"
    source = images_dir if images_dir.is_dir() else class_dir
    files, problems = [], []
    for p in sorted(source.iterdir()):
        if not is_image_file(p):
            continue
        if p.is_symlink() and not p.exists():
            problems.append((p, f"a link to {os.readlink(p)}, which does not exist"))
        elif not _utf8(p.name):
            problems.append((p, "the file name is not valid UTF-8; rename the file"))
        elif p.is_file():
            files.append(p)
    return files, problems


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # undecodable bytes arrive as lone surrogates, which fail here
    except UnicodeEncodeError:
        return False
    return True


def scan_folder(root: str | Path, classes: list[str] | tuple[str, ...] | None = None) -> FolderScan:
    """List the images of each class under `root`.

    Args:
        root: Folder with one sub-folder per class.
        classes: Classes to use, by folder name (at least one). Default: every sub-folder
            that holds images. Either way the labels follow the sorted names.

    Returns:
        The images with their labels, and whatever else was found.

    Raises:
        CxrlearnError: `root` is missing or not a folder, a requested class has no folder
            or no images, no sub-folder holds an image, or more than `MAX_CLASSES` do.
    """
    root = Path(root)
    if not root.exists():
        raise CxrlearnError("folder not found", path=root)
    if not root.is_dir():
        raise CxrlearnError("not a folder; expected one sub-folder per class", path=root)

    found: dict[str, list[Path]] = {}
    problems: list[tuple[Path, str]] = []
    unknown: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            unknown.append(entry)
            continue
        files, bad = _images_of_class(entry)
        problems += bad
        if files:
            found[entry.name] = files
        elif not bad:
            unknown.append(entry)

    if classes is not None:
        if not classes:
            raise CxrlearnError("name at least one class", path=root)
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise CxrlearnError(f"no folder for class {missing[0]!r}; the class folders here "
                                f"are {', '.join(map(repr, found)) or 'none'}", path=root)
        empty = [c for c in classes if c not in found]
        if empty:
            raise CxrlearnError("class folder holds no .png/.jpg/.jpeg images",
                                path=root / empty[0])
        unknown += [root / name for name in found if name not in classes]
        found = {name: files for name, files in found.items() if name in classes}
    if not found:
        raise CxrlearnError("no class folders found: expected one sub-folder of images per "
                            "class, such as COVID/, Normal/ (the folder name is the class)",
                            path=root)
    if len(found) > MAX_CLASSES:
        raise CxrlearnError(f"{len(found)} class folders, more than the {MAX_CLASSES} a "
                            "classifier here may have; is this a folder of patients or of "
                            "studies? Arrange it as one sub-folder per class", path=root)
    names = tuple(sorted(found))
    items = [(p, label) for label, name in enumerate(names) for p in found[name]]
    return FolderScan(root=root, class_names=names, items=items, unknown=sorted(unknown),
                      problems=problems)
