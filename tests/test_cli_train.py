"""`cxrlearn train` and `cxrlearn demo` end to end, on a few real sample X-rays at 32 px."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint
from cxrlearn.cli import main
from cxrlearn.data import read_manifest

FAST = ["--image-size", "32", "--batch-size", "8", "--test-per-class", "3",
        "--val-fraction", "0.3"]


@pytest.fixture
def data(tmp_path, copy_sample):
    return copy_sample(tmp_path / "data", per_class=8)


def test_train_writes_a_complete_run_folder(tmp_path, data, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "2",
               "--cache-dir", str(tmp_path / "cache"), *FAST])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"manifest.csv", "config.json", "history.csv",
                                                "best.pt", "last.pt", "learning_curves.png"}
    classes = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    rows = read_manifest(out / "manifest.csv", data, classes)
    assert len(rows) == 32
    assert sum(r.split == "test" for r in rows) == 12
    with (out / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    # the defaults: progressive resizing from 3/4 of the side (24 px, rounded to a multiple
    # of 16: 32), so at 32 px both epochs are at full size
    assert [int(r["image_size"]) for r in history] == [32, 32]
    config = json.loads((out / "config.json").read_text())
    assert config["preprocess"]["image_size"] == 32
    assert config["train"]["num_epochs"] == 2
    assert config["train"]["progressive_resize"] == 0.75 and config["augment"] == "flip"
    assert (config["train"]["resize_hold"], config["train"]["resize_full_from"]) == (0.7, 0.8)
    assert config["preprocess"]["flip_average"] is False  # no test-time flip averaging
    last = load_checkpoint(out / "last.pt", classes)
    assert last["epoch"] == 2
    model = model_from_checkpoint(last)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    printed = capsys.readouterr().out
    assert "epoch   2:" in printed and "best validation macro-F1" in printed


def test_train_options_for_size_and_augmentation(tmp_path, data, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "2",
               "--cache-dir", str(tmp_path / "cache"), "--progressive-resize", "1",
               "--augment", "flip+affine", "--tta", "flip", *FAST])
    assert rc == 0
    with (out / "history.csv").open() as f:
        assert [int(r["image_size"]) for r in csv.DictReader(f)] == [32, 32]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["progressive_resize"] == 1.0 and config["augment"] == "flip+affine"
    assert config["preprocess"]["flip_average"] is True
    assert load_checkpoint(out / "best.pt")["meta"]["preprocess"]["flip_average"] is True
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(data), "--out", str(tmp_path / "bad"),
              "--progressive-resize", "1.5"])
    assert exit_info.value.code != 0
    assert "--progressive-resize: must be in (0, 1], got 1.5" in capsys.readouterr().err

    # hold and full-from: recorded when given, and a one-line error when they contradict
    out = tmp_path / "schedule"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "3",
               "--cache-dir", str(tmp_path / "cache"), "--progressive-resize", "0.5",
               "--resize-hold", "0.6", "--resize-full-from", "0.9", *FAST])
    assert rc == 0
    with (out / "history.csv").open() as f:  # hold until 1.8, full at 2: 16, 16, 32
        assert [int(r["image_size"]) for r in csv.DictReader(f)] == [16, 16, 32]
    capsys.readouterr()
    bad = tmp_path / "bad-schedule"
    assert main(["train", "--data", str(data), "--out", str(bad), "--resize-hold", "0.9",
                 "--resize-full-from", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "resize_hold <= resize_full_from" in err and not bad.exists()


def test_train_refuses_to_overwrite_and_resumes(tmp_path, data, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), *FAST]
    assert main([*args, "--epochs", "1"]) == 0
    before = (out / "manifest.csv").read_text()
    capsys.readouterr()
    assert main([*args, "--epochs", "1"]) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert (out / "manifest.csv").read_text() == before  # the split is reused, not redrawn
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert "reusing the split" in capsys.readouterr().out


def test_train_errors_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlearn", "train", "--data", str(missing), "--out",
         str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{missing}: folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlearn", "train", "--out", str(tmp_path / "r2"), "--resume"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr


def test_train_with_pretrained_weights_from_a_file(tmp_path, data):
    from cxrlearn.resnet import resnet18

    weights = tmp_path / "resnet18-imagenet-like.pth"
    reference = resnet18(num_classes=1000)
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1",
               "--pretrained", str(weights), "--freeze-backbone",
               "--cache-dir", str(tmp_path / "cache"), *FAST])
    assert rc == 0
    trained = load_checkpoint(out / "last.pt")["model"]
    # A frozen backbone keeps the loaded weights and BN statistics; only fc changed.
    torch.testing.assert_close(trained["layer3.1.conv2.weight"],
                               reference.state_dict()["layer3.1.conv2.weight"])
    torch.testing.assert_close(trained["bn1.running_mean"],
                               reference.state_dict()["bn1.running_mean"])
    assert trained["fc.weight"].shape == (4, 512)
