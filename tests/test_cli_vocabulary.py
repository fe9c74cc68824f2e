"""What users trip on, round 2 (issue 24): one vocabulary, honest progress, helpful errors.

Each test meets the fix where a user does: the command as a real process where the words
on the screen matter, `main` in-process where a trained run is needed.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from rich.console import Console

from cxrlearn.cli import COMMANDS, build_parser, main

FAST = ["--image-size", "32", "--batch-size", "8", "--test-per-class", "3",
        "--val-fraction", "0.3"]


def cxrlearn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrlearn", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "COLUMNS": "80"})


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


# --- one vocabulary -------------------------------------------------------------------------

class Does(NamedTuple):
    """What a command does, as far as the vocabulary goes."""

    model: bool  # uses a trained model: --model PATH
    network: bool  # runs the network: --device
    replaces: bool  # may write over an existing file: --overwrite


# The one list of what each command does; the test below holds every parser to it, and a
# command missing from it fails the test. train, demo and data sample write only into a new
# or empty folder and refuse any other, so they never replace a file and --overwrite would
# have nothing to allow. grade runs notebooks, which choose their own device.
VOCABULARY = {
    "demo": Does(model=False, network=True, replaces=False),
    "train": Does(model=False, network=True, replaces=False),
    "evaluate": Does(model=True, network=True, replaces=True),
    "gradcam": Does(model=True, network=True, replaces=True),
    "export": Does(model=True, network=True, replaces=True),
    "predict": Does(model=True, network=True, replaces=True),
    "app": Does(model=True, network=True, replaces=False),
    "data check": Does(model=False, network=False, replaces=False),
    "data sample": Does(model=False, network=False, replaces=False),
    "grade": Does(model=False, network=False, replaces=True),
}


def _commands(parser: argparse.ArgumentParser,
              path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command that runs something ("train", "data check"), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def _vocabulary_faults(name: str, parser: argparse.ArgumentParser, does: Does) -> list[str]:
    """How `parser` departs from the one vocabulary, given what its command does."""
    from cxrlearn.cli import DEVICE_HELP, MODEL_HELP

    model, device, overwrite = (_option(parser, f) for f in ("--model", "--device",
                                                              "--overwrite"))
    faults = [f"{name}: {flag} is {'missing' if wanted else 'there, but unused'}"
              for flag, action, wanted in (("--model", model, does.model),
                                           ("--device", device, does.network),
                                           ("--overwrite", overwrite, does.replaces))
              if (action is not None) != wanted]
    if model is not None:
        # the one metavar and help, from add_model_argument; required wherever the command
        # cannot work without it (the app explains itself); the old spellings' one line
        if model.metavar != "PATH" or not model.help.startswith(MODEL_HELP):
            faults.append(f"{name}: --model is not add_model_argument's")
        if model.required != (name != "app"):
            faults.append(f"{name}: --model required={model.required}")
        if not (_option(parser, "--run") and _option(parser, "--checkpoint")):
            faults.append(f"{name}: --run/--checkpoint get no one-line error")
    if device is not None and (device.help, device.metavar, device.default) != (
            DEVICE_HELP, "DEVICE", "auto"):
        faults.append(f"{name}: --device is not add_device_argument's")
    if overwrite is not None and (overwrite.default is not False or overwrite.nargs != 0
                                  or not overwrite.help.startswith("Replace ")):
        faults.append(f"{name}: --overwrite is not add_overwrite_argument's")
    return faults


def test_every_command_speaks_the_one_vocabulary():
    """--model PATH where a command uses a model, --device where it runs the network,
    --overwrite where it may replace a file: each from its helper in cxrlearn.cli."""
    commands = dict(_commands(build_parser()))
    assert set(commands) == set(VOCABULARY), "add the new command to VOCABULARY"
    faults = [f for name, does in VOCABULARY.items()
              for f in _vocabulary_faults(name, commands[name], does)]
    assert not faults, faults


@pytest.mark.parametrize("flag", ["--run", "--checkpoint"])
@pytest.mark.parametrize("command", ["evaluate", "export", "predict", "gradcam"])
def test_old_spellings_are_one_line_that_names_model(command, flag):
    done = cxrlearn(command, flag, "runs/x", "--model", "runs/x", "image.png")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{flag} is gone; use --model PATH" in lines[0], done.stderr


# --- typos, a bare command, help texts ------------------------------------------------------

@pytest.mark.parametrize(("typo", "meant"), [("--epocs", "--epochs"),
                                             ("--image_size", "--image-size"),
                                             ("--batchsize", "--batch-size")])
def test_an_option_typo_gets_a_suggestion(typo, meant):
    done = cxrlearn("train", typo, "3")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"cxrlearn train: error: unknown option {typo}; did you "
                                   f"mean {meant}? (cxrlearn train --help lists them)")


def test_a_typo_before_a_missing_required_option_is_still_named():
    done = cxrlearn("predict", "x.png", "--modle", "m.pt")
    assert done.returncode == 2 and "did you mean --model?" in done.stderr


def test_bare_cxrlearn_lists_the_commands():
    done = cxrlearn()
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert f"    {name} " in done.stdout
    assert "cxrlearn COMMAND --help" in done.stdout


def _helps(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice.help
            for name, sub in action.choices.items():
                yield f"{path} {name} (description)", sub.description
                yield from _helps(sub, f"{path} {name}")
        elif action.help not in (None, argparse.SUPPRESS) and \
                not isinstance(action, argparse._HelpAction):  # argparse's own -h
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_help_text_is_whole_sentences():
    """`train --help` ended mid-sentence once; every help is now capitalised and ends with
    a full stop (or a question mark). grade's texts belong to the exercises."""
    parser = build_parser([c for c in COMMANDS if c != "grade"])
    bad = [(where, text) for where, text in _helps(parser, "cxrlearn")
           if text and "grade" not in where
           and not (text[0].isupper() or text[0].isdigit() or text[0] in "`.")
           or text and "grade" not in where and not text.rstrip().endswith((".", "?"))]
    assert not bad, bad


def test_train_help_ends_with_a_whole_sentence():
    done = cxrlearn("train", "--help")
    assert done.returncode == 0
    description = done.stdout.split("\n\n")[1]
    assert description.rstrip().endswith(".")


# --- speed on a busy machine ----------------------------------------------------------------

def test_the_command_starts_with_passive_waiting_unless_the_user_chose(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["data", "check", "/no/such/folder"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["data", "check", "/no/such/folder"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    capsys.readouterr()


def test_torch_is_not_imported_before_the_policy_is_set():
    code = "import sys, cxrlearn.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


# --- progress that tells the truth ----------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _row(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0,
            "val_accuracy": 0.5, "val_macro_f1": 0.5, "image_size": 32, "images_per_s": 10.0}


def _stats(batch: int) -> dict[str, float]:
    return {"batch": batch, "batches": 10, "loss": 1.0, "images_per_s": 10.0}


def test_the_epoch_clock_restarts_and_a_12_epoch_run_has_an_eta():
    """10 batches of 3 s and 10 s of validation per epoch: 40 s an epoch, 480 s a run."""
    from cxrlearn.cli.train import RichEvents

    clock, out = FakeClock(), io.StringIO()
    events = RichEvents(Console(file=out, width=200), num_epochs=12, clock=clock)
    with events.progress("preparing images", 4) as advance:
        advance(4)
    seen = []
    for epoch in range(3):
        for batch in range(1, 11):
            clock.now += 3
            events.batch(epoch, _stats(batch))
            seen.append(events._bar.tasks[0].fields["timing"])
        clock.now += 10  # validation
        events.epoch(_row(epoch + 1))
    events.close()
    # epoch 1, batch 5: 15 s in, extrapolated to 30 s an epoch -> 15 + 11 x 30 s left
    assert seen[4] == "0:00:15 run eta 0:05:45"
    # epoch 2 starts its own clock (not the first epoch's time), and knows 40 s an epoch
    assert seen[10] == "0:00:03 run eta 0:07:16"  # 36 s of this epoch + 10 x 40 s
    assert seen[14] == "0:00:15 run eta 0:07:00"  # 20 s of this epoch + 10 x 40 s
    assert seen[24] == "0:00:15 run eta 0:06:20"
    printed = out.getvalue()
    assert "epoch   2:" in printed and "| 0:00:40, run eta 0:06:40" in printed


def test_a_run_that_fails_mid_epoch_gives_the_terminal_back():
    from cxrlearn.cli.train import RichEvents

    with pytest.raises(RuntimeError, match="disk full"):
        with RichEvents(Console(file=io.StringIO(), width=80), num_epochs=2) as events:
            events.batch(0, _stats(1))
            bar = events._bar
            assert bar.live.is_started
            raise RuntimeError("disk full")
    assert events._bar is None and not bar.live.is_started


def test_notebook_progress_prints_a_line_per_step_and_epoch():
    from cxrlearn.runs import NotebookProgress

    clock, lines = FakeClock(), []
    events = NotebookProgress(clock=clock, write=lines.append)
    events.start(3)
    with events.progress("preparing images", 400) as advance:
        clock.now += 5
        advance(400)
    for epoch in range(2):
        clock.now += 60
        events.batch(epoch, _stats(1))
        events.epoch(_row(epoch + 1))
    assert lines == ["preparing images: 400 ...", "preparing images: done in 0:00:05",
                     "epoch 1/3: train loss 1.000, val macro-F1 0.500 | 0:01:00, run eta "
                     "0:02:00",
                     "epoch 2/3: train loss 1.000, val macro-F1 0.500 | 0:01:00, run eta "
                     "0:01:00"]


def test_sample_run_hands_its_progress_to_the_events(monkeypatch, tmp_path):
    """`sample_run(events=NotebookProgress())` is what a lesson passes; training reaches it."""
    import cxrlearn.sample_run as sample_run_module
    from cxrlearn.runs import RunEvents

    got = {}

    def spy(settings, out, device, cache_dir=None, events=None):
        got["events"] = events
        raise RuntimeError("stop here")

    monkeypatch.setattr(sample_run_module, "train_run", spy)
    mine, rows = RunEvents(), []
    mine.epoch = rows.append
    with pytest.raises(RuntimeError):
        sample_run_module.sample_run(cache_dir=tmp_path, events=mine)
    got["events"].epoch(_row(1))
    assert rows == [_row(1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A real run, trained by the command: 8 X-rays per class, 2 epochs at 32 px."""
    from cxrlearn.data import CLASS_NAMES, sample_root

    base = tmp_path_factory.mktemp("vocabulary")
    for name in CLASS_NAMES:
        (base / "data" / name).mkdir(parents=True)
        for src in sorted((sample_root() / name).glob("*.png"))[:8]:
            shutil.copy(src, base / "data" / name / src.name)
    done = cxrlearn("train", "--data", str(base / "data"), "--out", str(base / "run"),
                    "--cache-dir", str(base / "cache"), "--epochs", "2", *FAST)
    assert done.returncode == 0, done.stderr
    return {"base": base, "run": base / "run", "data": base / "data", "stdout": done.stdout}


def test_train_prints_epoch_times_in_a_real_run(trained):
    epoch_lines = [line for line in trained["stdout"].splitlines()
                   if re.match(r"epoch +\d+:", line)]
    assert len(epoch_lines) == 2
    assert ", run eta 0:" in epoch_lines[0]  # the first of two epochs says what is left
    assert all("| 0:" in line for line in epoch_lines)


# --- predict: last.pt, folders, paths with spaces -------------------------------------------

def test_predict_with_last_pt_says_it_is_uncalibrated(trained):
    run = trained["run"]
    image = next((trained["data"] / "Normal").iterdir())
    done = cxrlearn("predict", str(image), "--model", str(run / "last.pt"), "--json")
    assert done.returncode == 0, done.stderr
    import json

    notes = json.loads(done.stdout)["notes"]
    assert any("last.pt carries no calibrated temperature" in n and
               str(run / "best.pt") in n for n in notes), notes
    table = cxrlearn("predict", str(image), "--model", str(run / "last.pt"))
    assert "last.pt carries no calibrated temperature" in " ".join(table.stdout.split())
    best = cxrlearn("predict", str(image), "--model", str(run / "best.pt"), "--json")
    assert json.loads(best.stdout)["notes"] == []


def test_predict_a_folder_predicts_its_images(trained):
    import json

    folder = trained["data"] / "COVID"
    done = cxrlearn("predict", str(folder), "--model", str(trained["run"]), "--json")
    assert done.returncode == 0, done.stderr
    files = [r["file"] for r in json.loads(done.stdout)["results"]]
    assert files == [str(p) for p in sorted(folder.glob("*.png"))]


def test_an_unquoted_path_with_spaces_says_quote_it(trained, tmp_path):
    folder = tmp_path / "my scans"
    folder.mkdir()
    shutil.copy(next((trained["data"] / "Normal").iterdir()), folder / "chest x ray.png")
    done = cxrlearn("predict", *str(folder / "chest x ray.png").split(" "), "--model",
                    str(trained["run"]))
    assert done.returncode == 1
    said = " ".join(done.stdout.split())
    assert f'quote the path, as in "{folder / "chest x ray.png"}"' in said, said


def test_gradcam_and_predict_gradcam_keep_a_users_figure(trained, tmp_path):
    image = tmp_path / "IMG.png"
    shutil.copy(next((trained["data"] / "Normal").iterdir()), image)
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "IMG_gradcam.png").write_text("mine")
    done = cxrlearn("predict", str(image), "--model", str(trained["run"]), "--gradcam",
                    str(figs))
    assert done.returncode == 1 and "already holds IMG_gradcam.png" in done.stderr
    assert (figs / "IMG_gradcam.png").read_text() == "mine"
    done = cxrlearn("predict", str(image), "--model", str(trained["run"]), "--gradcam",
                    str(figs), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (figs / "IMG_gradcam.png").read_bytes()[:4] == b"\x89PNG"


def test_export_out_is_a_path_and_never_the_model(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    best = (run / "best.pt").read_bytes()
    for extra in ([], ["--overwrite"]):
        done = cxrlearn("export", "--model", str(run), "--out", str(run / "best.pt"), *extra)
        assert done.returncode == 1 and "is the model being read" in done.stderr
        assert (run / "best.pt").read_bytes() == best
    (tmp_path / "thesis.pt").write_text("my thesis")
    done = cxrlearn("export", "--model", str(run), "--out", str(tmp_path / "thesis"))
    assert done.returncode == 1 and "thesis.pt: already exists" in done.stderr
    assert (tmp_path / "thesis.pt").read_text() == "my thesis"
    done = cxrlearn("export", "--model", str(run))  # the default path is checked too
    assert done.returncode == 0, done.stderr
    done = cxrlearn("export", "--model", str(run))
    assert done.returncode == 1 and "model.pt: already exists" in done.stderr


def test_export_runs_the_network_on_device(trained, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    # a device this machine lacks is refused before anything is written
    assert main(["export", "--model", str(run), "--device", "cuda:99"]) == 1
    assert "CUDA" in capsys.readouterr().err
    assert not (run / "model.pt").exists()
    # the device chosen is where the Python pipeline runs that the file is checked against
    import cxrlearn.device
    import cxrlearn.export.files

    asked, ran_on = [], []
    select, reference = cxrlearn.device.select_device, cxrlearn.export.files.eager_probs

    def select_spy(prefer=None):
        asked.append(prefer)
        return select(prefer)

    def reference_spy(model, *args, **kwargs):
        ran_on.append(next(model.parameters()).device)
        return reference(model, *args, **kwargs)

    monkeypatch.setattr(cxrlearn.device, "select_device", select_spy)
    monkeypatch.setattr(cxrlearn.export.files, "eager_probs", reference_spy)
    assert main(["export", "--model", str(run), "--device", "cpu"]) == 0
    assert asked == ["cpu"] and ran_on and set(ran_on) == {select("cpu")}
    assert "wrote" in capsys.readouterr().out and (run / "model.pt").is_file()


# --- small data fails early, and leaves nothing --------------------------------------------

def test_data_check_warns_about_classes_train_would_refuse(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=20, classes=("COVID", "Normal"))
    done = cxrlearn("data", "check", str(data))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    for name in ("COVID", "Normal"):
        assert f"warning: class '{name}' has 20 images: too few for 30 test images" in said
    assert "cxrlearn train would refuse it; hold out fewer with --test-per-class" in said


def test_data_check_is_quiet_about_a_big_enough_folder(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=40, classes=("COVID", "Normal"))
    done = cxrlearn("data", "check", str(data))
    assert done.returncode == 0 and "warning" not in done.stdout


def test_a_refused_run_leaves_no_folder_behind(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=20, classes=("COVID", "Normal"))
    out = tmp_path / "run"
    for _ in range(2):  # the second try is refused for the same reason, not "not empty"
        done = cxrlearn("train", "--data", str(data), "--out", str(out),
                        "--cache-dir", str(tmp_path / "cache"))
        assert done.returncode == 1
        assert "too few for 30 test images" in done.stderr, done.stderr
        assert not out.exists()


def test_a_refused_run_in_an_empty_folder_leaves_it_empty(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=20, classes=("COVID", "Normal"))
    out = tmp_path / "run"
    out.mkdir()
    done = cxrlearn("train", "--data", str(data), "--out", str(out),
                    "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 1
    assert list(out.iterdir()) == []


# --- the offline message names the flag -----------------------------------------------------

def test_pretrained_imagenet_offline_names_the_flag(tmp_path, copy_sample, monkeypatch,
                                                    capsys):
    import urllib.error

    import torch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = copy_sample(tmp_path / "data", per_class=8)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--cache-dir",
                 str(tmp_path / "cache"), "--pretrained", "imagenet", *FAST]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "cxrlearn train --pretrained FILE" in err
    assert "as source" not in err


# --- tables at 80 columns -------------------------------------------------------------------

NAMES = ("Healthy", "Pneumothorax with spaces")


@pytest.mark.parametrize("names", [NAMES, tuple(f"Class number {i} long name"
                                                for i in range(6))])
def test_the_predict_table_never_cuts_a_class_name_at_80_columns(names):
    from cxrlearn.cli.predict import _print_table

    out = io.StringIO()
    results = [{"file": "/data/some/long/folder/IMG_20240101_0001.png",
                "prediction": names[-1], "probabilities": dict.fromkeys(names, 0.5)}]
    _print_table(Console(file=out, width=80), Path("best.pt"), "checkpoint", names,
                 results, [])
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "…" not in text and "..." not in text, text
    # every word of every name whole, in a header (wrapped between words) or the legend
    for word in {w for name in names for w in name.split()}:
        assert any(word in line.replace("│", " ").replace("┃", " ").split()
                   for line in text.splitlines()), (word, text)


def test_the_report_table_never_cuts_a_class_name_at_80_columns():
    import numpy as np

    from cxrlearn.cli.evaluate import report_table
    from cxrlearn.evaluation.metrics import classification_report
    from cxrlearn.evaluation.uncertainty import report_intervals

    y_true, y_pred = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    table = report_table(classification_report(y_true, y_pred, list(NAMES)),
                         report_intervals(y_true, y_pred, list(NAMES), seed=0))
    out = io.StringIO()
    Console(file=out, width=80).print(table)
    text = out.getvalue()
    assert "…" not in text, text
    for word in ("Healthy", "Pneumothorax", "with", "spaces"):
        assert any(word in line.split() for line in text.splitlines()), (word, text)


# --- the demo names every file it wrote -----------------------------------------------------

def test_the_demos_closing_list_names_every_file_it_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    listed = printed.split("everything is in")[1].splitlines()[1:]
    names = {Path(line.strip()).name for line in listed if line.strip()}
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert written == names, (written ^ names)
    for name in ("roc_curves.png", "reliability.png", "confident_mistakes.png"):
        assert name in names
    shutil.rmtree(out)
