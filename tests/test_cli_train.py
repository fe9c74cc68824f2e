"""`cxrlearn train` end to end, on a few real sample X-rays at 32 px.

What a run folder holds, the flags and their defaults, and the rules that keep a user's work:
a new run needs a new or empty folder, a resume keeps the run's own settings, a finished run
is extended only when asked, and two processes never train into one folder.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.cli import main
from cxrlearn.data import read_manifest
from cxrlearn.trained import open_model

FAST = ["--image-size", "32", "--batch-size", "8", "--test-per-class", "3",
        "--val-fraction", "0.3"]
CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@pytest.fixture
def data(tmp_path, copy_sample):
    return copy_sample(tmp_path / "data", per_class=8)


def _train(tmp_path, data, out, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), *FAST, *extra])


def test_train_writes_a_complete_run_folder(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "2") == 0
    assert {p.name for p in out.iterdir()} == {"manifest.csv", "config.json", "history.csv",
                                                "best.pt", "last.pt", "learning_curves.png"}
    rows = read_manifest(out / "manifest.csv", data, CLASSES)
    assert len(rows) == 32
    assert sum(r.split == "test" for r in rows) == 12
    with (out / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    # the defaults: progressive resizing from 3/4 of the side (24 px, rounded to a multiple
    # of 16: 32), so at 32 px both epochs are at full size
    assert [int(r["image_size"]) for r in history] == [32, 32]
    config = json.loads((out / "config.json").read_text())
    settings = config["settings"]
    assert config["preprocess"]["image_size"] == 32 and config["class_names"] == list(CLASSES)
    assert settings["train"]["num_epochs"] == 2 and settings["augment"] == "flip+shift"
    assert settings["train"]["sizes"] == {"start": 0.75, "hold": 0.7, "full_from": 0.8}
    last = load_checkpoint(out / "last.pt", CLASSES)
    assert last["epoch"] == 2
    model = open_model(out / "last.pt").network
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    best = load_checkpoint(out / "best.pt", CLASSES)
    assert "optimizer" not in best and 0.01 < best["temperature"] < 100
    # The file a user shares holds what inference needs; resuming needs the optimiser, whose
    # AdamW keeps two running averages per weight: best.pt is a third of last.pt.
    assert (out / "best.pt").stat().st_size < 0.4 * (out / "last.pt").stat().st_size
    printed = capsys.readouterr().out
    assert "epoch   2:" in printed and "best validation macro-F1" in printed


def test_train_options_for_size_and_augmentation(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "2", "--progressive-resize", "1",
                  "--augment", "flip+affine") == 0
    with (out / "history.csv").open() as f:
        assert [int(r["image_size"]) for r in csv.DictReader(f)] == [32, 32]
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["train"]["sizes"] is None and settings["augment"] == "flip+affine"
    out = tmp_path / "schedule"
    assert _train(tmp_path, data, out, "--epochs", "3", "--progressive-resize", "0.5") == 0
    with (out / "history.csv").open() as f:  # 70% of 3 at 16 px, full size from 80%
        assert [int(r["image_size"]) for r in csv.DictReader(f)] == [16, 16, 32]


@pytest.mark.parametrize("flips", ["random", "alternate"])
def test_alternating_flips_replace_the_random_flip(tmp_path, data, monkeypatch, flips):
    import cxrlearn.runs
    from cxrlearn.data import split_dataset

    made = {}

    def spy(rows, part, *args, **kwargs):
        made[part] = split_dataset(rows, part, *args, **kwargs)
        return made[part]

    monkeypatch.setattr(cxrlearn.runs, "split_dataset", spy)
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "1", "--flips", flips) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["flips"] == flips
    train = made["train"]
    # One flip or the other, never both: a random flip on top would undo half the alternation.
    assert train.alternate_flips == (flips == "alternate")
    assert ("RandomHorizontalFlip" in repr(train.transform)) == (flips == "random")
    assert "RandomShift" in repr(train.transform) and not made["val"].alternate_flips


def test_alternating_flips_need_a_flip(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--flips", "alternate", "--augment", "none") == 1
    err = capsys.readouterr().err
    assert "flips alternate needs an augmentation with a flip" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("flag, value, message", [
    # each flag checked as its setting is (cxrlearn.settings), before any work
    ("--image-size", "0", "image_size must be between 16 and 2048"),
    ("--image-size", "8", "image_size must be between 16 and 2048"),
    ("--progressive-resize", "1.5", "start must be in (0, 1]"),
    ("--channels", "2", "channels must be one of 1, 3"),
    ("--augment", "mirror", "augment must be one of flip, flip+shift, flip+affine, none"),
    ("--flips", "sometimes", "flips must be one of random, alternate"),
    ("--lr", "nan", "not a finite number"),
    ("--lr", "0", "must be above 0"),
    ("--val-fraction", "0", "must be between 0 and 1"),
    ("--val-fraction", "1.5", "must be between 0 and 1"),
    ("--num-workers", "-1", "must be 0 or more"),
    ("--test-per-class", "-1", "must be at least 1"),
    ("--epochs", "ten", "not a int"),
])
def test_bad_numbers_are_argparse_errors_before_any_work(tmp_path, data, capsys, flag, value,
                                                          message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(data), "--out", str(out), flag, value])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--classes", "COVID"], "only one class (COVID): a classifier needs at least two"),
    (["--classes", "COVID", "Cats"], "no folder for class 'Cats'"),
    (["--test-per-class", "30"], "too few"),
])
def test_impossible_settings_are_one_line_errors(tmp_path, data, capsys, extra, message):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, *extra) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists() and not (out / "config.json").exists()


def test_train_refuses_to_overwrite_and_resumes(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "1") == 0
    before = (out / "manifest.csv").read_text()
    capsys.readouterr()
    assert _train(tmp_path, data, out, "--epochs", "1") == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    # A finished run is not extended by a bare --resume...
    assert main(["train", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "the run is finished (1 of 1 epochs)" in err and "--epochs N" in err
    # ...but is when more epochs are asked for; the split is reused, not redrawn.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert (out / "manifest.csv").read_text() == before
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["train"]["num_epochs"] == 2 and settings["preprocess"]["image_size"] == 32


def test_resume_keeps_the_runs_own_settings(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "1") == 0
    config = (out / "config.json").read_text()
    capsys.readouterr()
    for flag, value in (("--image-size", "64"), ("--lr", "0.01"), ("--batch-size", "4"),
                        ("--seed", "3"), ("--channels", "1"), ("--classes", "COVID")):
        assert main(["train", "--out", str(out), "--resume", "--epochs", "3",
                     flag, value]) == 1
        err = capsys.readouterr().err
        assert f"({flag}) is {value}" in err and "resuming keeps the run's own" in err, flag
        assert (out / "config.json").read_text() == config  # nothing was rewritten
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_resume_needs_the_run_folder_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume"]) == 1
    assert "--resume needs the run folder" in capsys.readouterr().err


def test_a_folder_with_someone_elses_files_is_refused(tmp_path, data, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("best.pt", "config.json", "history.csv", "learning_curves.png"):
        (out / name).write_text(f"my own {name}")
    assert _train(tmp_path, data, out, "--epochs", "1") == 1
    assert "is not empty (it holds best.pt, config.json" in capsys.readouterr().err
    assert all((out / n).read_text() == f"my own {n}" for n in ("best.pt", "config.json"))
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    assert _train(tmp_path, data, file_out, "--epochs", "1") == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert _train(tmp_path, data, tmp_path / "run", "--cache-dir", str(file_out)) == 1
    assert "--cache-dir is a file" in capsys.readouterr().err


def test_a_locked_run_folder_is_refused(tmp_path, data, capsys):
    import os

    out = tmp_path / "run"
    out.mkdir()
    (out / ".cxrlearn.lock").write_text(str(os.getpid()))  # a live process holds it
    assert _train(tmp_path, data, out, "--epochs", "1") == 1
    assert "another cxrlearn process" in capsys.readouterr().err
    (out / ".cxrlearn.lock").write_text("999999999")  # its process is gone: taken over
    assert _train(tmp_path, data, out, "--epochs", "1") == 0
    assert not (out / ".cxrlearn.lock").exists()


def test_without_data_the_first_line_says_the_bundled_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["train", "--classes", "Cats", "Dogs"])  # refused, but after saying what it uses
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first.startswith("no --data given: training on the bundled sample")


def test_any_class_folders_train_and_export(tmp_path, sample_root, capsys):
    """Two classes of other names; the run's own class list travels to every file."""
    data = tmp_path / "data"
    for new, old in (("Healthy", "Normal"), ("Pneumonia", "Viral Pneumonia")):
        (data / new).mkdir(parents=True)
        for path in sorted((sample_root / old).glob("*.png"))[:8]:
            shutil.copy(path, data / new / path.name)
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "1") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["Healthy", "Pneumonia"]
    assert load_checkpoint(out / "best.pt")["class_names"] == ["Healthy", "Pneumonia"]
    assert main(["export", "--model", str(out)]) == 0
    from cxrlearn.export import read_metadata

    assert read_metadata(out / "model.pt").class_names == ("Healthy", "Pneumonia")


def test_ctrl_c_in_training_exits_130_and_keeps_finished_epochs(tmp_path, data, capsys,
                                                                ctrl_c_in_epoch):
    ctrl_c_in_epoch(2)
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--epochs", "3") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "last.pt holds epoch 1" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not (out / ".cxrlearn.lock").exists()


# --- a signal in the middle of an epoch: the epoch so far is saved, and resumes exactly -----

# Run in a child process: a training step's forward pass sends the process a signal, so that
# it arrives mid-step, at a chosen step (not a race against a timer), as `kill` would send it.
SIGNAL_IN_STEP = """
import os, sys, torch
import cxrlearn.resnet as resnet
from cxrlearn.cli import main
signum, step, calls, real = int(sys.argv[1]), int(sys.argv[2]), [0], resnet.ResNet.forward
def forward(self, x):
    if self.training and torch.is_grad_enabled():  # a training step, not precise BN
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signum)  # between this forward pass and the update
    return real(self, x)
resnet.ResNet.forward = forward
sys.exit(main(sys.argv[3:]))
"""
STEPS = [*FAST[:2], "--batch-size", "4", *FAST[4:], "--epochs", "2"]  # 3 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A data folder, and a run of two epochs of three steps trained on it without a stop."""
    from cxrlearn.data import CLASS_NAMES, sample_root

    base = tmp_path_factory.mktemp("uninterrupted")
    for name in CLASS_NAMES:
        (base / "data" / name).mkdir(parents=True)
        for src in sorted((sample_root() / name).glob("*.png"))[:8]:
            shutil.copy(src, base / "data" / name / src.name)
    assert main(["train", "--data", str(base / "data"), "--out", str(base / "run"),
                 "--cache-dir", str(base / "cache"), *STEPS]) == 0
    return base


def _assert_same_run(run, whole, same_state) -> None:
    """Weights, optimiser, schedule, random states and history (but its timings) equal."""
    for name in ("last.pt", "best.pt"):
        same_state(load_checkpoint(run / name), load_checkpoint(whole / name), name)
    assert not (run / "interrupted.pt").exists()


def test_sigterm_mid_step_exits_143_saves_the_epoch_and_resumes_bit_for_bit(
        tmp_path, uninterrupted, capsys, same_state):
    import signal

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_STEP, str(int(signal.SIGTERM)), "5", "train", "--data",
         str(uninterrupted / "data"), "--out", str(run), "--cache-dir",
         str(uninterrupted / "cache"), *STEPS], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})  # same sums
    assert proc.returncode == 143, proc.stderr
    said = proc.stderr.strip().splitlines()
    assert said == [f"interrupted: terminated (SIGTERM) in epoch 2: {run / 'interrupted.pt'} "
                    "holds epoch 2 up to batch 2 of 3; continue with --resume"], said
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert main(["train", "--out", str(run), "--resume"]) == 0, capsys.readouterr().err
    _assert_same_run(run, uninterrupted / "run", same_state)


def test_ctrl_c_mid_step_exits_130_saves_the_epoch_and_resumes_bit_for_bit(
        tmp_path, uninterrupted, capsys, monkeypatch, same_state):
    """In this process (the exit status is `main`'s): Ctrl-C in the first epoch, before any
    last.pt exists; the folder is kept, and nothing else opens the half-trained weights."""
    import signal

    import cxrlearn.resnet as resnet

    run, real, calls = tmp_path / "run", resnet.ResNet.forward, {"n": 0}

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, x)

    argv = ["train", "--data", str(uninterrupted / "data"), "--out", str(run), "--cache-dir",
            str(uninterrupted / "cache"), *STEPS]
    with monkeypatch.context() as m:
        m.setattr(resnet.ResNet, "forward", forward)
        assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: interrupted in epoch 1: {run / 'interrupted.pt'} holds epoch "
                   "1 up to batch 2 of 3; continue with --resume"], err
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    # What reads a model says what the folder holds, and what to do.
    for command in (["evaluate", "--model", str(run)],
                    ["predict", "--model", str(run / "interrupted.pt"),
                     str(next((uninterrupted / "data" / "COVID").glob("*.png")))],
                    ["export", "--model", str(run / "interrupted.pt")]):
        assert main(command) == 1
        said = capsys.readouterr().err.strip()
        assert "stopped midway" in said and f"train --resume --out {run}" in said, said
    assert main(argv) == 1  # a new run into it: refused, the state is kept
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume"]) == 0, capsys.readouterr().err
    _assert_same_run(run, uninterrupted / "run", same_state)


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
    assert _train(tmp_path, data, out, "--epochs", "1", "--pretrained", str(weights),
                  "--freeze-backbone") == 0
    trained = load_checkpoint(out / "last.pt")["model"]
    # A frozen backbone keeps the loaded weights and BN statistics; only fc changed.
    torch.testing.assert_close(trained["layer3.1.conv2.weight"],
                               reference.state_dict()["layer3.1.conv2.weight"])
    torch.testing.assert_close(trained["bn1.running_mean"],
                               reference.state_dict()["bn1.running_mean"])
    assert trained["fc.weight"].shape == (4, 512)


def test_epoch_lines_fit_the_terminal():
    from cxrlearn.cli.train import epoch_line

    row = {"epoch": 12, "train_loss": 0.912, "train_accuracy": 0.658, "val_loss": 1.234,
           "val_accuracy": 0.55, "val_macro_f1": 0.531, "image_size": 96, "images_per_s": 61.2}
    for width in (120, 100, 80, 60, 40, 20):
        line = epoch_line(row, width)
        assert len(line) <= width and line.startswith("epoch  12:"[:width])
    assert "61 img/s" in epoch_line(row, 120)
    assert "F1 0.531" in epoch_line(row, 80)  # the score stays when the width shrinks


def test_find_lr_writes_the_range_test_on_the_runs_own_split(tmp_path, data, capsys):
    from cxrlearn.runs import LR_RANGE_FILES
    from cxrlearn.training import suggest_lr

    out = tmp_path / "lr"
    assert _train(tmp_path, data, out, "--find-lr", "--lr", "0.003") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(LR_RANGE_FILES)
    found = json.loads((out / "lr_range.json").read_text())
    lrs, losses = found["lrs"], found["losses"]
    assert lrs[0] == pytest.approx(1e-6) and 2 <= len(lrs) <= 100
    ratios = [b / a for a, b in zip(lrs[:-1], lrs[1:], strict=True)]
    assert ratios == pytest.approx([1e6 ** (1 / 99)] * len(ratios))  # 1e-6 to 1 in 100 steps
    assert found["suggested_lr"] == suggest_lr(lrs, losses)
    assert found["settings_lr"] == 0.003
    said = capsys.readouterr().out
    assert f"--lr {found['suggested_lr']:.1e}" in said and "lr_range.png" in said
    # The split is the one `train` with the same seed draws, so the test describes that run.
    assert _train(tmp_path, data, tmp_path / "run", "--epochs", "1") == 0
    assert (out / "manifest.csv").read_text() == (tmp_path / "run" / "manifest.csv").read_text()


def test_find_lr_refuses_resume_and_a_used_folder(tmp_path, data, capsys):
    assert _train(tmp_path, data, tmp_path / "run", "--find-lr", "--resume") == 1
    assert "--find-lr trains nothing to resume" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "thesis.txt").write_text("mine")
    assert _train(tmp_path, data, used, "--find-lr") == 1
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in used.iterdir()) == ["thesis.txt"]
