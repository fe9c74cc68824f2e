"""`cxrlearn gradcam`: overlays and table against the eager model, bad files, bad arguments.

The oracle is the checkpoint's model run eagerly on an image prepared step by step as in
training (load_image -> prepare -> / 255 -> eval_transform), with the temperature applied
by hand, and `GradCAM` plus `gradcam_figure` called directly for the picture.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrlearn.checkpoint import save_checkpoint
from cxrlearn.cli import main
from cxrlearn.cli.gradcam import write_overlays
from cxrlearn.data import CLASS_NAMES, load_image, sample_root
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import gradcam_figure
from cxrlearn.resnet import resnet18
from cxrlearn.trained import open_model
from cxrlearn.transforms import eval_transform, prepare

SIZE = 64
TEMPERATURE = 2.0
PREPROCESS = {"image_size": SIZE, "low": 2.0, "high": 98.0, "channels": 3,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Sample X-rays on which the seeded model below predicts more than one class, so that a
# table with the same class on every row could not pass.
IMAGES = (("COVID", 0), ("COVID", 1), ("Normal", 0))


@pytest.fixture(autouse=True)
def wide_terminal_and_one_thread(monkeypatch):
    # rich wraps at the terminal width (80 when captured); keep each table row on one line.
    monkeypatch.setenv("COLUMNS", "200")
    # One thread: these tiny forward passes gain nothing from more, and on a busy shared
    # CPU several threads spend their time waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(temperature: float | None = TEMPERATURE) -> dict:
    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    with torch.no_grad():
        model.fc.weight.mul_(5)  # spread the probabilities so that the temperature shows
    state = {"model": model.state_dict(), "class_names": list(CLASS_NAMES),
             "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                      "preprocess": dict(PREPROCESS)},
             "epoch": 1}
    if temperature is not None:
        state["temperature"] = temperature
    return state


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "run" / "best.pt", _state())


@pytest.fixture
def images() -> list[Path]:
    return [sorted((sample_root() / name).glob("*.png"))[i] for name, i in IMAGES]


def oracle_input(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared uint8 image (1, S, S) and the network input (1, C, S, S), step by step."""
    prepared = prepare(load_image(path), SIZE, 2.0, 98.0)
    return prepared, eval_transform(3)(prepared.float() / 255.0)[None]


@functools.cache
def oracle_logits(checkpoint: Path, path: Path) -> torch.Tensor:
    model = open_model(checkpoint).network
    with torch.no_grad():
        return model(oracle_input(path)[1])[0]  # (K,)


def oracle_probs(checkpoint: Path, path: Path, temperature: float) -> torch.Tensor:
    return torch.softmax(oracle_logits(checkpoint, path) / temperature, dim=0)


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by their first cell (the file name)."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 5 and cells[0] and cells[0] != "file":
            found[cells[0]] = cells
    return found


def test_table_and_pngs_match_the_eager_model(tmp_path, checkpoint, images, capsys):
    out_dir = tmp_path / "maps"
    rc = main(["gradcam", *map(str, images), "--model", str(checkpoint), "--out", str(out_dir)])
    assert rc == 0
    table = rows(capsys.readouterr().out)
    predicted = set()
    for path in images:
        probs = oracle_probs(checkpoint, path, TEMPERATURE)
        k = int(probs.argmax())
        predicted.add(k)
        name, cls, prob, target, output = table[path.name]
        assert cls == target == CLASS_NAMES[k]
        assert float(prob) == pytest.approx(float(probs[k]), abs=1e-3)
        # The printed number is the calibrated one, not the raw softmax.
        raw = oracle_probs(checkpoint, path, 1.0)
        assert abs(float(raw[k]) - float(probs[k])) > 0.01
        assert output == f"{path.stem}_gradcam.png"
    assert len(predicted) > 1  # the images were chosen so that this holds
    written = sorted(out_dir.iterdir())
    assert [p.name for p in written] == sorted(f"{p.stem}_gradcam.png" for p in images)
    for png in written:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (600, 224)  # 7.5 x 2.8 in at 80 dpi


def test_png_is_the_library_figure_of_the_target_class(tmp_path, checkpoint, images):
    trained = open_model(checkpoint)
    model = trained.network
    path = images[0]
    probs = oracle_probs(checkpoint, path, TEMPERATURE)
    target = next(k for k in range(4) if k != int(probs.argmax()))
    [result] = write_overlays(trained, [path], tmp_path / "cli", target=CLASS_NAMES[target])
    assert result["predicted"] == CLASS_NAMES[int(probs.argmax())]
    assert result["target"] == CLASS_NAMES[target]
    assert result["target_probability"] == pytest.approx(float(probs[target]), abs=1e-6)

    prepared, x = oracle_input(path)
    with GradCAM(model) as cam:
        cams = cam(x, target).cams
    p = float(probs.max())
    title = f"{path.name}: {result['predicted']} (p = {p:.2f}), map for {CLASS_NAMES[target]}"
    oracle = tmp_path / "oracle.png"
    gradcam_figure(prepared[0].numpy(), cams[0], title).savefig(oracle)
    with Image.open(result["output"]) as a, Image.open(oracle) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_target_option_sets_the_explained_class(tmp_path, checkpoint, images, capsys):
    bracketed = tmp_path / "scan[v2].png"  # rich markup if not escaped: "[v2]" would vanish
    shutil.copy(images[0], bracketed)
    rc = main(["gradcam", *map(str, images[1:]), str(bracketed), "--model", str(checkpoint),
               "--out", str(tmp_path / "maps"), "--target", "Viral Pneumonia"])
    assert rc == 0
    table = rows(capsys.readouterr().out)
    assert table[bracketed.name][4] == "scan[v2]_gradcam.png"
    for path, name in [*((p, p.name) for p in images[1:]), (images[0], bracketed.name)]:
        probs = oracle_probs(checkpoint, path, TEMPERATURE)
        assert table[name][1] == CLASS_NAMES[int(probs.argmax())]
        assert table[name][3] == "Viral Pneumonia"


def test_a_corrupt_file_is_named_and_the_others_are_written(tmp_path, checkpoint, images,
                                                            capsys):
    bad = tmp_path / "in" / "broken[1].png"  # brackets are not rich markup here
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot the rest of a PNG")
    missing = tmp_path / "in" / "gone.png"
    out_dir = tmp_path / "maps"
    argv = [str(images[0]), str(bad), str(images[1]), str(missing)]
    rc = main(["gradcam", *argv, "--model", str(checkpoint), "--out", str(out_dir)])
    captured = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{p.stem}_gradcam.png" for p in images[:2])
    assert f"bad file: {bad}: not a PNG, JPEG or DICOM image" in captured.out
    assert f"bad file: {missing}: no such file" in captured.out
    assert set(rows(captured.out)) == {images[0].name, images[1].name}
    assert "Traceback" not in captured.out + captured.err


def test_write_overlays_keeps_order_and_same_names_apart(tmp_path, checkpoint, images):
    model = open_model(tmp_path / "run")  # a run folder means its best.pt
    a = tmp_path / "a" / "scan[v2].png"
    b = tmp_path / "b" / "scan[v2].png"
    for dest, src in ((a, images[0]), (b, images[2])):
        dest.parent.mkdir()
        shutil.copy(src, dest)
    results = write_overlays(model, [a, tmp_path / "none.png", b], tmp_path / "maps")
    assert [r["path"] for r in results] == [a, tmp_path / "none.png", b]
    assert results[1] == {"path": tmp_path / "none.png", "error": "no such file"}
    assert results[0]["output"].name == "scan[v2]_gradcam.png"
    assert results[2]["output"].name == "scan[v2]_gradcam-2.png"
    for r, src in ((results[0], images[0]), (results[2], images[2])):
        k = int(oracle_probs(checkpoint, src, TEMPERATURE).argmax())
        assert r["predicted"] == CLASS_NAMES[k]


def test_without_temperature_the_raw_softmax_is_shown(tmp_path, images, capsys):
    checkpoint = save_checkpoint(tmp_path / "best.pt", _state(temperature=None))
    assert main(["gradcam", str(images[0]), "--model", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    probs = oracle_probs(checkpoint, images[0], 1.0)
    assert float(rows(out)[images[0].name][2]) == pytest.approx(float(probs.max()), abs=1e-3)
    assert "without calibration" in out
    assert (tmp_path / "gradcam" / f"{images[0].stem}_gradcam.png").is_file()  # default --out


def test_unknown_target_is_a_one_line_error(tmp_path, checkpoint, images, capsys):
    out_dir = tmp_path / "maps"
    rc = main(["gradcam", str(images[0]), "--model", str(checkpoint), "--out", str(out_dir),
               "--target", "Pneumonia"])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.strip() == (
        "error: unknown class 'Pneumonia' for --target; this model knows 'COVID', "
        "'Lung_Opacity', 'Normal', 'Viral Pneumonia'")
    assert not out_dir.exists()


@pytest.mark.parametrize("kind", ["missing", "not a checkpoint", "no preprocessing"])
def test_bad_model_is_a_one_line_error(tmp_path, images, capsys, kind):
    model = tmp_path / "best.pt"
    if kind == "not a checkpoint":
        model.write_text("weights, honestly\n")
    elif kind == "no preprocessing":
        state = _state()
        del state["meta"]["preprocess"]
        save_checkpoint(model, state)
    rc = main(["gradcam", str(images[0]), "--model", str(model)])
    captured = capsys.readouterr()
    assert rc == 1
    expected = {"missing": "no such file or folder",
                "not a checkpoint": "not a checkpoint: not a PyTorch file at all",
                "no preprocessing": "the checkpoint does not say how its images"}[kind]
    assert captured.err.startswith(f"error: {model}: {expected}")
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


def test_missing_model_in_a_real_process_has_no_traceback(tmp_path, images):
    missing = tmp_path / "runs" / "nope" / "best.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlearn", "gradcam", str(images[0]), "--model", str(missing)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {missing}: no such file or folder"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_overlays_are_not_written_over_existing_files(tmp_path, checkpoint, images, capsys):
    out_dir = tmp_path / "maps"
    out_dir.mkdir()
    mine = out_dir / f"{images[0].stem}_gradcam.png"
    mine.write_bytes(b"my own picture")
    assert main(["gradcam", str(images[0]), "--model", str(checkpoint),
                 "--out", str(out_dir)]) == 1
    assert "already holds" in capsys.readouterr().err and mine.read_bytes() == b"my own picture"
    assert main(["gradcam", str(images[0]), "--model", str(checkpoint), "--out", str(out_dir),
                 "--overwrite"]) == 0
    assert mine.read_bytes().startswith(b"\x89PNG")


def test_a_file_name_that_is_not_utf8_gets_an_overlay(tmp_path, checkpoint, images, capsys):
    import os

    odd = tmp_path / os.fsdecode(b"scan-\xe9.png")
    shutil.copy(images[0], odd)
    assert main(["gradcam", str(odd), "--model", str(checkpoint),
                 "--out", str(tmp_path / "maps")]) == 0
    [written] = (tmp_path / "maps").iterdir()
    assert written.name == "scan-\\xe9_gradcam.png"
    assert "Traceback" not in capsys.readouterr().err
