"""`scan_folder`: both layouts, class subsets, what is ignored, and errors that name paths."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlearn.data import CLASS_NAMES, DISPLAY_NAMES, scan_folder
from cxrlearn.errors import CxrlearnError

PIXEL = np.zeros((4, 4), dtype=np.uint8)


def test_class_names():
    assert CLASS_NAMES == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert set(DISPLAY_NAMES) == set(CLASS_NAMES)


def test_kaggle_layout_ignores_masks(tiny_dataset):
    scan = scan_folder(tiny_dataset)
    assert scan.root == tiny_dataset
    assert scan.class_names == CLASS_NAMES
    assert scan.counts() == {name: 5 for name in CLASS_NAMES}
    assert scan.unknown == []
    expected = [
        (tiny_dataset / name / "images" / f"{name}-{i}.png", label)
        for label, name in enumerate(CLASS_NAMES)
        for i in range(5)
    ]
    assert scan.items == expected
    assert all("masks" not in p.parts for p, _ in scan.items)


def test_flat_layout_is_the_bundled_sample(sample_root):
    scan = scan_folder(sample_root)
    assert scan.counts() == {name: 100 for name in CLASS_NAMES}
    for path, label in scan.items:
        assert path.parent == sample_root / CLASS_NAMES[label]
    # Sorted by class, then file name.
    assert scan.items == sorted(scan.items, key=lambda item: (item[1], item[0].name))


def test_class_subset_keeps_sorted_order(tiny_dataset):
    scan = scan_folder(tiny_dataset, classes=["Normal", "COVID"])
    assert scan.class_names == ("COVID", "Normal")
    assert scan.counts() == {"COVID": 5, "Normal": 5}
    assert {p.parent.parent.name for p, y in scan.items if y == 1} == {"Normal"}


def test_extensions_case_insensitive_and_other_files_ignored(tmp_path, write_png):
    root = tmp_path / "data"
    for name in ("a.png", "b.PNG", "c.JPG", "d.jpeg", "e.Jpeg"):
        write_png(root / "COVID" / name, PIXEL)
    (root / "COVID" / "notes.txt").write_text("hello")
    (root / "COVID" / "meta.csv").write_text("a,b\n")
    (root / "COVID" / "sub").mkdir()
    write_png(root / "COVID" / "sub" / "deeper.png", PIXEL)  # not in the class folder itself
    scan = scan_folder(root)
    assert [p.name for p, _ in scan.items] == ["a.png", "b.PNG", "c.JPG", "d.jpeg", "e.Jpeg"]
    assert scan.class_names == ("COVID",)


def test_any_folder_of_images_is_a_class_sorted_by_name(tmp_path, write_png):
    root = tmp_path / "data"
    for name in ("Pneumothorax", "Healthy", "normal"):
        write_png(root / name / f"{name}-1.png", PIXEL)
    (root / "README.md").write_text("about")
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    scan = scan_folder(root)
    assert scan.class_names == ("Healthy", "Pneumothorax", "normal")  # ImageFolder's order
    assert [(p.name, y) for p, y in scan.items] == [
        ("Healthy-1.png", 0), ("Pneumothorax-1.png", 1), ("normal-1.png", 2)]
    assert scan.unknown == sorted([root / "README.md", root / "empty"])
    subset = scan_folder(root, classes=["normal", "Healthy"])
    assert subset.class_names == ("Healthy", "normal")
    assert root / "Pneumothorax" in subset.unknown


def test_broken_links_and_undecodable_names_are_reported(tmp_path, write_png):
    import os

    root = tmp_path / "data"
    write_png(root / "COVID" / "a.png", PIXEL)
    write_png(root / "Normal" / "b.png", PIXEL)
    (root / "Normal" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    bad_name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    write_png(root / "COVID" / bad_name, PIXEL)
    scan = scan_folder(root)
    assert [p.name for p, _ in scan.items] == ["a.png", "b.png"]
    problems = {p.name: problem for p, problem in scan.problems}
    assert "does not exist" in problems["gone.png"]
    assert "not valid UTF-8" in problems[bad_name]


def _error(root, **kwargs) -> str:
    with pytest.raises(CxrlearnError) as info:
        scan_folder(root, **kwargs)
    return str(info.value)


def test_missing_root(tmp_path):
    msg = _error(tmp_path / "absent")
    assert str(tmp_path / "absent") in msg and "not found" in msg


def test_root_is_a_file(tmp_path):
    (tmp_path / "file.zip").write_bytes(b"PK")
    msg = _error(tmp_path / "file.zip")
    assert str(tmp_path / "file.zip") in msg and "not a folder" in msg


def test_empty_class_folder_asked_for(tmp_path, write_png):
    write_png(tmp_path / "COVID" / "c.png", PIXEL)
    (tmp_path / "Normal").mkdir()
    (tmp_path / "Normal" / "readme.txt").write_text("no images here")
    assert scan_folder(tmp_path).unknown == [tmp_path / "Normal"]  # not asked for: not a class
    msg = _error(tmp_path, classes=["COVID", "Normal"])
    assert str(tmp_path / "Normal") in msg and "no .png" in msg


def test_no_class_folders(tmp_path, write_png):
    write_png(tmp_path / "loose.png", PIXEL)
    (tmp_path / "empty").mkdir()
    msg = _error(tmp_path)
    assert str(tmp_path) in msg and "no class folders" in msg and "folder name is the class" in msg


def test_unknown_class_requested(tiny_dataset):
    msg = _error(tiny_dataset, classes=["COVID", "Cats"])
    assert str(tiny_dataset) in msg and "'Cats'" in msg and "'Normal'" in msg  # what there is


def test_requested_class_without_folder(tmp_path, write_png):
    write_png(tmp_path / "COVID" / "c.png", PIXEL)
    msg = _error(tmp_path, classes=["COVID", "Normal"])
    assert str(tmp_path) in msg and "'Normal'" in msg


def test_hidden_resource_fork_files_are_not_images(tmp_path, write_png):
    import numpy as np

    from cxrlearn.data import scan_folder

    write_png(tmp_path / "COVID" / "COVID-1.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "COVID" / "._COVID-1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert [p.name for p, _ in scan_folder(tmp_path).items] == ["COVID-1.png"]
