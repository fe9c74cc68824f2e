"""A reproducible, stratified train/validation/test split, written down as a manifest.

The reference project held out 30 images per class for testing; we keep that default. The
split is stratified (each class is split on its own, so rare classes appear in every part)
and driven by a seed, so the same seed always gives the same split. What remains after the
test set is divided into training and validation by `val_fraction`. Validation is for every
decision made during training (which epoch to keep, when to stop); the test split is opened
once, at the end.

The split is saved as a CSV manifest, `path,class,split`, one row per image, with paths
relative to the data folder, so a run can be audited ("which images were tested?") and
reproduced on another machine.

When near-duplicate groups are given (see `cxrlearn.data.dedup`), each group is placed on
one side as a whole, so no copy of a test image is trained on.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cxrlearn.atomic import write_atomic
from cxrlearn.errors import CxrlearnError

__all__ = ["SPLITS", "TEST_PER_CLASS", "VAL_FRACTION", "SplitRow", "split_items",
           "split_shortfall", "write_manifest", "read_manifest", "manifest_classes"]

SPLITS = ("train", "val", "test")
TEST_PER_CLASS = 30
"""The default test images per class: `RunSettings.test_per_class`'s default. Written here,
beside the split, so that `cxrlearn data check` knows it without importing torch."""
VAL_FRACTION = 0.15
"""The default share of the rest used for validation: `RunSettings.val_fraction`'s."""


@dataclass(frozen=True)
class SplitRow:
    """One image of a split: its file, its label and which part it belongs to."""

    path: Path
    label: int
    split: str


def split_items(
    items: list[tuple[Path, int]],
    test_per_class: int = 30,
    val_fraction: float = 0.15,
    seed: int = 0,
    groups: list[int] | None = None,
) -> list[SplitRow]:
    """Split labelled images into train, val and test, stratified by class.

    Args:
        items: `(path, label)` pairs, e.g. `scan_folder(root).items`.
        test_per_class: Images per class held out for the test split.
        val_fraction: Share of each class's remaining images used for validation.
        seed: Seed of the shuffle; the same seed gives the same split.
        groups: Optional group id per item (`duplicate_groups`); a group is never split. A
            group counts for the class of its first member, so a class's test set may end up
            a few images larger than `test_per_class`.

    Returns:
        One row per item, in the order of `items`.

    Raises:
        CxrlearnError: A class has too few images for the test set plus one training image.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if groups is None:
        groups = list(range(len(items)))
    if len(groups) != len(items):
        raise ValueError("groups needs one entry per item")

    members: dict[int, list[int]] = defaultdict(list)  # group id -> item indices
    for i, g in enumerate(groups):
        members[g].append(i)
    units_of_class: dict[int, list[int]] = defaultdict(list)  # label -> group ids
    for g, idx in members.items():
        units_of_class[items[idx[0]][1]].append(g)

    rng = np.random.default_rng(seed)
    split_of = [""] * len(items)
    for label in sorted(units_of_class):
        units = sorted(units_of_class[label])
        order = rng.permutation(len(units))  # the only source of randomness
        n_items = sum(len(members[g]) for g in units)
        if n_items < test_per_class + 1:
            raise CxrlearnError(
                f"this class has {n_items} images: too few for {test_per_class} test "
                "images and a training set; hold out fewer (--test-per-class)",
                path=items[members[units[0]][0]][0].parent,
            )
        # At least one image stays for training, however large val_fraction is.
        n_val = min(round(val_fraction * (n_items - test_per_class)),
                    n_items - test_per_class - 1)
        filled = {"test": 0, "val": 0}
        for k in order:
            g = units[k]
            if filled["test"] < test_per_class:
                part = "test"
            elif filled["val"] < n_val:
                part = "val"
            else:
                part = "train"
            if part in filled:
                filled[part] += len(members[g])
            for i in members[g]:
                split_of[i] = part
    return [SplitRow(Path(p), y, s) for (p, y), s in zip(items, split_of, strict=True)]


def split_shortfall(n_items: int, test_per_class: int, val_fraction: float) -> str | None:
    """Why a class of `n_items` images cannot be split this way, or None when it can.

    The rule of `split_items` (and of `cxrlearn train`, which also wants a validation
    image in every class), for `cxrlearn data check` to warn before any training:
    `test_per_class` test images, then `round(val_fraction * rest)` validation images, and
    at least one training image. Near-duplicates kept together can shift the counts by a
    few images.

    Example:
        >>> split_shortfall(20, 30, 0.15)
        'too few for 30 test images, a validation and a training image'
        >>> split_shortfall(100, 30, 0.15) is None
        True
    """
    rest = n_items - test_per_class
    n_val = min(round(val_fraction * rest), rest - 1) if rest > 0 else 0
    if rest < 1 or n_val < 1:
        return f"too few for {test_per_class} test images, a validation and a training image"
    return None


def write_manifest(
    path: str | Path, rows: list[SplitRow], root: str | Path, class_names: tuple[str, ...]
) -> None:
    """Write the split as CSV (`path,class,split`), paths relative to `root`.

    Written atomically (`cxrlearn.atomic.write_atomic`), so a crash never leaves half a
    manifest.

    Raises:
        CxrlearnError: An image is not inside `root`, a file name is not valid UTF-8, or
            the manifest cannot be written.
    """
    path, root = Path(path), Path(root)
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["path", "class", "split"])
    for r in rows:
        w.writerow([_relative(r.path, root).as_posix(), class_names[r.label], r.split])
    try:
        data = text.getvalue().encode("utf-8")
    except UnicodeEncodeError as e:
        raise CxrlearnError(f"a file name is not valid UTF-8 ({e.object[e.start:e.end]!r}); "
                            "rename it", path=root) from None
    write_atomic(path, lambda f: f.write(data), "the manifest")


def _relative(path: Path, root: Path) -> Path:
    """`path` relative to `root`, as written (or, failing that, with both resolved)."""
    if path.is_relative_to(root):
        return path.relative_to(root)
    resolved, resolved_root = path.resolve(), root.resolve()
    if resolved.is_relative_to(resolved_root):
        return resolved.relative_to(resolved_root)
    raise CxrlearnError(f"{path} is not inside the data folder", path=root)


def read_manifest(
    path: str | Path, root: str | Path, class_names: tuple[str, ...]
) -> list[SplitRow]:
    """Read a manifest written by `write_manifest`; relative paths are joined to `root`.

    Raises:
        CxrlearnError: The file is missing, lacks the columns, names an unknown class or
            split, lists an image outside `root` (an absolute path, or one with `..`), an
            image that does not exist, or one image twice (in two splits, a test image
            would have been trained on or chosen the epoch: every score would be flattered).
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise CxrlearnError("manifest not found", path=path)
    index = {name: i for i, name in enumerate(class_names)}
    rows: list[SplitRow] = []
    seen: dict[Path, tuple[int, str]] = {}  # image (links resolved) -> its line and split
    # utf-8-sig: a spreadsheet that re-saved the CSV may have put a byte-order mark in front.
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "class", "split"} <= set(
                reader.fieldnames
            ):
                raise CxrlearnError(
                    "not a manifest: expected the columns path,class,split", path=path
                )
            for line, rec in enumerate(reader, start=2):
                if None in (rec["path"], rec["class"], rec["split"]):  # a short row
                    raise CxrlearnError(f"line {line}: expected path,class,split", path=path)
                if rec["class"] not in index:
                    raise CxrlearnError(f"line {line}: unknown class {rec['class']!r}", path=path)
                if rec["split"] not in SPLITS:
                    raise CxrlearnError(f"line {line}: unknown split {rec['split']!r}", path=path)
                relative = PurePosixPath(rec["path"])
                if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                    raise CxrlearnError(f"line {line}: path {rec['path']!r} is not inside the "
                                        "data folder; a manifest names images relative to it",
                                        path=path)
                image = root / relative
                if not image.is_file():
                    raise CxrlearnError(f"line {line}: image {image} does not exist", path=path)
                first = seen.setdefault(image.resolve(), (line, rec["split"]))
                if first[0] != line:
                    raise CxrlearnError(
                        f"line {line}: image {rec['path']!r} ({rec['split']}) is already "
                        f"listed on line {first[0]} ({first[1]}); each image belongs to one "
                        "split only, or the scores measure images the network has seen",
                        path=path)
                rows.append(SplitRow(image, index[rec["class"]], rec["split"]))
        except (UnicodeDecodeError, csv.Error) as e:
            raise CxrlearnError(f"not a manifest: not a UTF-8 CSV file ({e})", path=path) from None
    return rows


def manifest_classes(path: str | Path) -> list[str]:
    """The class names a manifest uses, in the order they first appear.

    Raises:
        CxrlearnError: The file is missing or not a manifest.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "class" not in reader.fieldnames:
                raise CxrlearnError("not a manifest: expected the columns path,class,split",
                                    path=path)
            return list(dict.fromkeys(rec["class"] for rec in reader if rec["class"]))
    except FileNotFoundError:
        raise CxrlearnError("manifest not found", path=path) from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise CxrlearnError(f"not a manifest: not a UTF-8 CSV file ({e})", path=path) from None
