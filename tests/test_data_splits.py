"""The stratified, seeded split and its CSV manifest."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrlearn.data import SPLITS, SplitRow, read_manifest, split_items, write_manifest
from cxrlearn.errors import CxrlearnError

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def make_items(sizes: list[int], root: Path = Path("/data")) -> list[tuple[Path, int]]:
    return [
        (root / CLASSES[label] / f"{CLASSES[label]}-{i}.png", label)
        for label, n in enumerate(sizes)
        for i in range(n)
    ]


def counts(rows: list[SplitRow]) -> dict[tuple[int, str], int]:
    return Counter((r.label, r.split) for r in rows)


@pytest.mark.parametrize("sizes, test_per_class, val_fraction",
                         [([40, 35, 50, 31], 30, 0.15), ([10, 12, 9, 20], 3, 0.5),
                          ([7, 7], 0, 0.0), ([40, 33], 2, 0.3)])
def test_stratified_sizes(sizes, test_per_class, val_fraction):
    items = make_items(sizes)
    rows = split_items(items, test_per_class, val_fraction, seed=0)
    c = counts(rows)
    for label, n in enumerate(sizes):
        n_val = round(val_fraction * (n - test_per_class))
        assert c[label, "test"] == test_per_class
        assert c[label, "val"] == n_val
        assert c[label, "train"] == n - test_per_class - n_val


def test_every_item_once_in_input_order():
    items = make_items([40, 35, 50, 31])
    rows = split_items(items)
    assert [(r.path, r.label) for r in rows] == items
    assert all(r.split in SPLITS for r in rows)
    assert len({r.path for r in rows}) == len(items)


def test_seed_decides_the_split():
    items = make_items([40, 35, 50, 31])
    a = split_items(items, seed=7)
    assert split_items(items, seed=7) == a
    assert [r.split for r in split_items(items, seed=8)] != [r.split for r in a]


def test_too_small_class():
    items = make_items([40, 30])
    with pytest.raises(CxrlearnError) as info:
        split_items(items, test_per_class=30)
    msg = str(info.value)
    assert "30 images" in msg and "hold out fewer (--test-per-class)" in msg
    assert str(Path("/data/Lung_Opacity")) in msg
    split_items(make_items([40, 31]), test_per_class=30)  # one image left to train on: fine


def test_bad_arguments():
    items = make_items([5, 5])
    with pytest.raises(ValueError, match="val_fraction"):
        split_items(items, 1, val_fraction=1.0)
    with pytest.raises(ValueError, match="groups"):
        split_items(items, 1, groups=[0, 1])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), min_size=1, max_size=60),
    st.integers(0, 3),
    st.sampled_from([0.0, 0.2, 0.5]),
    st.integers(0, 2**16),
)
def test_groups_are_never_split(labels_and_groups, test_per_class, val_fraction, seed):
    items = [(Path(f"/d/{i}.png"), label) for i, (label, _) in enumerate(labels_and_groups)]
    groups = [g for _, g in labels_and_groups]
    # The documented rule: a group counts, with all its members, for its first member's class.
    first_label = {}
    for (_, label), g in zip(items, groups, strict=True):
        first_label.setdefault(g, label)
    size = Counter(groups)
    per_class = Counter()
    for g, label in first_label.items():
        per_class[label] += size[g]
    if any(n < test_per_class + 1 for n in per_class.values()):
        with pytest.raises(CxrlearnError):
            split_items(items, test_per_class, val_fraction, seed, groups)
        return
    rows = split_items(items, test_per_class, val_fraction, seed, groups)
    part_of_group = defaultdict(set)
    for r, g in zip(rows, groups, strict=True):
        part_of_group[g].add(r.split)
    assert all(len(parts) == 1 for parts in part_of_group.values())
    # At least test_per_class test images per class, over by less than one group.
    test_count = Counter()
    for g, label in first_label.items():
        if part_of_group[g] == {"test"}:
            test_count[label] += size[g]
    for label in per_class:
        assert test_per_class <= test_count[label] < test_per_class + max(size.values())


def _files(root: Path, items: list[tuple[Path, int]]) -> None:
    for p, _ in items:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_manifest_round_trip(tmp_path):
    root = tmp_path / "data"
    items = make_items([6, 5, 4, 7], root)
    _files(root, items)
    rows = split_items(items, test_per_class=1, val_fraction=0.25)
    manifest = tmp_path / "runs" / "split.csv"
    write_manifest(manifest, rows, root, CLASSES)
    with manifest.open(newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["path", "class", "split"]
    assert lines[1] == ["COVID/COVID-0.png", "COVID", rows[0].split]
    assert read_manifest(manifest, root, CLASSES) == rows
    assert not list(manifest.parent.glob("*.tmp"))


def test_manifest_paths_stay_inside_the_data_folder(tmp_path):
    """A manifest names images relative to the data folder: an image outside it cannot be
    written, and a row that climbs out of it (`..`, an absolute path) cannot be read."""
    root = tmp_path / "data"
    items = make_items([3, 3, 3, 3], root)
    _files(root, items)
    outside = tmp_path / "elsewhere" / "extra.png"
    _files(tmp_path / "elsewhere", [(outside, 2)])
    rows = split_items([*items, (outside, 2)], test_per_class=1, val_fraction=0.25)
    manifest = tmp_path / "m.csv"
    with pytest.raises(CxrlearnError, match="extra.png is not inside the data folder"):
        write_manifest(manifest, rows, root, CLASSES)
    assert not manifest.exists() and not list(tmp_path.glob("*.tmp"))  # nothing half-written
    for bad in ("../elsewhere/extra.png", str(outside), "COVID/../../elsewhere/extra.png"):
        msg = _manifest_error(root, f"path,class,split\n{bad},Normal,test\n")
        assert "line 2" in msg and "not inside the data folder" in msg


def _manifest_error(tmp_path: Path, text: str | bytes) -> str:
    manifest = tmp_path / "m.csv"
    if isinstance(text, bytes):
        manifest.write_bytes(text)
    else:
        manifest.write_text(text, encoding="utf-8")
    with pytest.raises(CxrlearnError) as info:
        read_manifest(manifest, tmp_path, CLASSES)
    assert str(info.value).startswith(f"{manifest}: ")
    return str(info.value)


def test_manifest_errors_name_the_manifest(tmp_path):
    (tmp_path / "COVID").mkdir()
    (tmp_path / "COVID" / "a.png").write_bytes(b"")
    with pytest.raises(CxrlearnError, match="manifest not found") as info:
        read_manifest(tmp_path / "absent.csv", tmp_path, CLASSES)
    assert str(tmp_path / "absent.csv") in str(info.value)
    assert "columns" in _manifest_error(tmp_path, "file,label\nCOVID/a.png,COVID\n")
    assert "columns" in _manifest_error(tmp_path, "")
    msg = _manifest_error(tmp_path, "path,class,split\nCOVID/a.png,Cats,train\n")
    assert "line 2" in msg and "'Cats'" in msg
    msg = _manifest_error(tmp_path, "path,class,split\nCOVID/a.png,COVID,holdout\n")
    assert "'holdout'" in msg
    msg = _manifest_error(tmp_path, "path,class,split\nCOVID/a.png,COVID,test\nCOVID/b.png,COVID,"
                          "train\n")
    assert "line 3" in msg and str(tmp_path / "COVID" / "b.png") in msg
    msg = _manifest_error(tmp_path, "class,split,path\nCOVID,train\n")  # a short row
    assert "line 2" in msg
    assert "UTF-8" in _manifest_error(tmp_path, bytes(range(256)) * 4)


def test_manifest_saved_by_a_spreadsheet(tmp_path):
    (tmp_path / "COVID").mkdir()
    (tmp_path / "COVID" / "a.png").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\ufeffpath,class,split\r\nCOVID/a.png,COVID,val\r\n", encoding="utf-8")
    assert read_manifest(manifest, tmp_path, CLASSES) == [
        SplitRow(tmp_path / "COVID" / "a.png", 0, "val")
    ]


def test_a_large_val_fraction_still_leaves_a_training_image():
    from pathlib import Path

    from cxrlearn.data import split_items

    items = [(Path(f"img-{i}.png"), 0) for i in range(31)]
    rows = split_items(items, test_per_class=30, val_fraction=0.9, seed=0)
    assert [r.split for r in rows].count("train") == 1
    assert [r.split for r in rows].count("test") == 30
