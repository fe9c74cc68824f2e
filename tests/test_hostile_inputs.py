"""Hostile and clumsy input, one row per case: no code runs, no file is lost, no traceback.

Each `Case` is what a careful attacker or a clumsy student tried (its name), what it does
(`run`, which builds its input in a temporary folder and returns the command line to run),
and what must happen: the exit status, a piece of the one-line message, and, where it
matters, a check that nothing else happened (`check`: a marker file a crafted model would
have written is absent, the user's file is untouched). To add a case, write a function that
returns the arguments of `cxrlearn`, and decorate it with `@case(...)`.

The web app's cases (uploads, headers, hosts) are in tests/test_app.py, next to its client.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlearn.checkpoint import load_checkpoint, save_checkpoint
from cxrlearn.cli import main
from cxrlearn.data import CLASS_NAMES, sample_root

FAST = ["--image-size", "32", "--batch-size", "8", "--test-per-class", "3",
        "--val-fraction", "0.3", "--epochs", "1"]


@dataclass
class Case:
    name: str
    run: Callable[[Path, dict], list[str]]
    status: int
    message: str
    check: Callable[[Path, dict], None] | None = None


CASES: list[Case] = []


def case(name: str, status: int, message: str,
         check: Callable[[Path, dict], None] | None = None) -> Callable:
    """Register the decorated function as a case of the table."""
    def register(run: Callable[[Path, dict], list[str]]) -> Callable:
        CASES.append(Case(name, run, status, message, check))
        return run
    return register


# --- what the cases share: a small data folder and one trained run ------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A data folder of 8 X-rays per class, a run trained on it, and its export."""
    base = tmp_path_factory.mktemp("hostile")
    data = base / "data"
    for name in CLASS_NAMES:
        (data / name).mkdir(parents=True)
        for src in sorted((sample_root() / name).glob("*.png"))[:8]:
            shutil.copy(src, data / name / src.name)
    run = base / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data", str(data), "--out", str(run),
                     "--cache-dir", str(base / "cache"), *FAST]) == 0
        assert main(["export", "--model", str(run), "--format", "torchscript,export"]) == 0
    return {"base": base, "data": data, "run": run,
            "xray": sorted((sample_root() / "COVID").glob("*.png"))[0]}


def _copy_run(world: dict, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(world["run"], run)
    return run


MARKER = "pwned.txt"


def _no_marker(tmp: Path, world: dict) -> None:
    assert not (tmp / MARKER).exists(), "the model file ran code"


class _WritesAMarker:
    """Unpickled, it creates a file: what a hostile pickle inside a model file would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _SetstateWritesAFile(torch.nn.Module):
    """A TorchScript module whose `__setstate__` writes a file when `torch.jit.load` runs it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.w = state[1]
        self.training = state[2]
        torch.save(self.w, self.path)


def _crafted_program(world: dict, tmp: Path) -> Path:
    """A real .pt2 export whose `data/sample_inputs/model.pt` is a hostile pickle.

    `torch.export.load` retries a refused `weights_only=True` load of it with
    `weights_only=False`, which runs the pickle.
    """
    crafted = tmp / "model.pt2"
    buffer = io.BytesIO()
    torch.save(_WritesAMarker(tmp / MARKER), buffer)
    with zipfile.ZipFile(world["run"] / "model.pt2") as zin, \
            zipfile.ZipFile(crafted, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data/sample_inputs/model.pt"):
                data = buffer.getvalue()
            zout.writestr(info, data)
    return crafted


def _crafted_torchscript(world: dict, tmp: Path) -> Path:
    """A TorchScript file that claims to be a cxrlearn export (its cxrlearn.json is a real
    one) and writes a file from `__setstate__` when loaded."""
    with zipfile.ZipFile(world["run"] / "model.pt") as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith("extra/cxrlearn.json")))
    module = torch.jit.script(_SetstateWritesAFile(str(tmp / MARKER)))
    crafted = tmp / "model.pt"
    torch.jit.save(module, str(crafted), _extra_files={"cxrlearn.json": metadata})
    return crafted


def test_the_crafted_files_are_live(world, tmp_path):
    """The two crafted model files do run code when loaded the usual way; the cases below
    show that cxrlearn does not load them that way."""
    program = _crafted_program(world, tmp_path)
    with contextlib.suppress(Exception):
        torch.export.load(str(program))
    assert (tmp_path / MARKER).exists()
    (tmp_path / MARKER).unlink()
    script = _crafted_torchscript(world, tmp_path)
    assert not (tmp_path / MARKER).exists()
    torch.jit.load(str(script))
    assert (tmp_path / MARKER).exists()


# --- code runs when a model file is loaded ----------------------------------------------

@case("a crafted .pt2 (pickle in sample_inputs) given to predict", 0, "Predictions of",
      _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    return ["predict", str(world["xray"]), "--model", str(_crafted_program(world, tmp))]


@case("the crafted .pt2 renamed best.pt in a run folder", 0, "Predictions of", _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    _crafted_program(world, tmp).rename(run / "best.pt")
    return ["predict", str(world["xray"]), "--model", str(run)]


@case("the crafted .pt2 given to gradcam", 1, "Grad-CAM needs a checkpoint", _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    return ["gradcam", str(world["xray"]), "--model", str(_crafted_program(world, tmp))]


@case("a crafted TorchScript file whose __setstate__ writes a file", 1,
      "weights do not fit resnet18", _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    script = _crafted_torchscript(world, tmp)
    return ["predict", str(world["xray"]), "--model", str(script)]


@case("a checkpoint holding a pickle that runs code", 1,
      "holds objects other than plain data", _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    evil = tmp / "best.pt"
    torch.save({"format": "cxrlearn-checkpoint-v1", "x": _WritesAMarker(tmp / MARKER)}, evil)
    return ["predict", str(world["xray"]), "--model", str(evil)]


# --- resume and defaults that cannot surprise --------------------------------------------

@case("--resume without naming the run folder", 1, "--resume needs the run folder")
def _(tmp: Path, world: dict) -> list[str]:
    os.chdir(tmp)
    return ["train", "--resume"]


def _config_unchanged(tmp: Path, world: dict) -> None:
    assert (tmp / "run" / "config.json").read_text() == \
        (world["run"] / "config.json").read_text()


@case("--resume of a finished run, asking for nothing more", 1,
      "the run is finished (1 of 1 epochs)", _config_unchanged)
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--out", str(_copy_run(world, tmp)), "--resume"]


@pytest.mark.parametrize("flag", [["--image-size", "64"], ["--lr", "1e-8"],
                                  ["--batch-size", "4"], ["--seed", "2"], ["--channels", "1"]])
def test_a_resume_with_other_settings_is_refused_before_writing(world, tmp_path, capsys, flag):
    run = _copy_run(world, tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", *flag]) == 1
    assert f"({flag[0]}) is" in capsys.readouterr().err  # the one wording, with the flag
    _config_unchanged(tmp_path, world)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


@case("train without --data says so in its first line", 1, "no --data given: training on "
      "the bundled sample")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--out", str(tmp / "run"), "--classes", "Cats", "Dogs"]  # then refused


# --- a user's files are lost ---------------------------------------------------------------

def _mine_untouched(tmp: Path, world: dict) -> None:
    for name in ("best.pt", "config.json", "history.csv", "learning_curves.png"):
        assert (tmp / "mine" / name).read_text() == f"mine: {name}"


@case("train --out into a folder of the user's files (no last.pt)", 1, "is not empty",
      _mine_untouched)
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "mine").mkdir()
    for name in ("best.pt", "config.json", "history.csv", "learning_curves.png"):
        (tmp / "mine" / name).write_text(f"mine: {name}")
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "mine"), *FAST]


@case("a second train into a run folder another process is writing", 1,
      "another cxrlearn process")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / ".cxrlearn.lock").write_text(str(os.getppid()))  # a live process
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), *FAST]


def _overlay_untouched(tmp: Path, world: dict) -> None:
    assert (tmp / "out" / f"{world['xray'].stem}_gradcam.png").read_text() == "mine"


@case("gradcam --out over a same-named file", 1, "already holds", _overlay_untouched)
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / f"{world['xray'].stem}_gradcam.png").write_text("mine")
    return ["gradcam", str(world["xray"]), "--model", str(world["run"]), "--out",
            str(tmp / "out")]


@case("evaluate --out over a same-named file", 1, "already holds report.json",
      lambda tmp, world: (tmp / "out" / "report.json").read_text() == "mine")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "report.json").write_text("mine")
    return ["evaluate", "--model", str(world["run"]), "--out", str(tmp / "out")]


@case("a manifest row that climbs out of the data folder", 1, "not inside the data folder")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    with (run / "manifest.csv").open("a") as f:
        f.write("../../../../../../etc/passwd,COVID,test\n")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


# --- tracebacks instead of one-line errors ----------------------------------------------

def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk_at(monkeypatch):
    """`full_disk_at(module, name)`: that function now fails as a full disk does."""
    def patch(target: object, name: str) -> None:
        monkeypatch.setattr(target, name, _full_disk)
    return patch


def test_train_on_a_full_disk_is_one_line_and_keeps_nothing_half(world, tmp_path, capsys,
                                                                  full_disk_at):
    full_disk_at(torch, "save")
    assert main(["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"),
                 *FAST]) == 1
    err = capsys.readouterr().err
    assert "could not write the checkpoint (No space left on device)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_export_on_a_full_disk_is_refused_before_writing(world, tmp_path, capsys, monkeypatch):
    run = _copy_run(world, tmp_path)
    (run / "model.pt").write_bytes(b"the previous export")
    usage = shutil.disk_usage(run)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1 << 20))
    # --overwrite: without it the previous export is refused before the disk is looked at
    assert main(["export", "--model", str(run), "--overwrite"]) == 1
    assert "not enough free disk space" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == b"the previous export"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_an_exports_and_a_checkpoints_leftovers_are_cleaned(world, tmp_path):
    run = _copy_run(world, tmp_path)
    dead = 999_999_999  # no such process
    (run / f".model.pt.{dead}.abcd.tmp").mkdir()
    (run / f".last.pt.{dead}.tmp").write_bytes(b"half a checkpoint")
    save_checkpoint(run / "last.pt", {k: v for k, v in load_checkpoint(run / "last.pt").items()
                                      if k != "format"})
    from cxrlearn.trained import open_model

    open_model(run).export(run / "model.pt")
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_evaluate_on_a_full_disk_leaves_no_empty_plot(world, tmp_path, capsys, full_disk_at):
    from matplotlib.figure import Figure

    full_disk_at(Figure, "savefig")
    assert main(["evaluate", "--model", str(world["run"]), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "could not write the file (No space left on device)" in err and "Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.suffix == ".png" or
                p.name.startswith(".")]


def _dicom_with(write_dicom, path: Path, **tags) -> Path:
    """A DICOM file whose tags hold what pydicom would refuse to write: each value is written
    as a valid placeholder, then the bytes are replaced in the file."""
    import pydicom

    write_dicom(path, np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    replace = {}
    for n, (tag, value) in enumerate(tags.items()):
        if isinstance(value, list):
            setattr(ds, tag, value)
        else:
            placeholder = f"{7 + n}" * len(value)  # as long as the text that replaces it
            setattr(ds, tag, placeholder)
            replace[placeholder.encode()] = value.encode()
    ds.save_as(path)
    raw = path.read_bytes()
    for old, new in replace.items():
        assert raw.count(old) == 1
        raw = raw.replace(old, new)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("tags, message", [
    ({"RescaleSlope": "abcd"}, "RescaleSlope"),
    ({"NumberOfFrames": "abcd"}, "NumberOfFrames"),
    ({"RescaleIntercept": ["1", "2"]}, "RescaleIntercept"),
])
def test_a_dicom_with_bad_tags_is_a_named_bad_file(world, tmp_path, capsys, write_dicom, tags,
                                                  message):
    path = _dicom_with(write_dicom, tmp_path / "scan.dcm", **tags)
    assert main(["predict", str(path), "--model", str(world["run"]), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert message in out["results"][0]["error"] and "not one number" in out["results"][0][
        "error"]


@case("a file name that is not valid UTF-8 in the data folder", 1, "not valid UTF-8",
      lambda tmp, world: not list((tmp / "run").glob("manifest.csv*")))
def _(tmp: Path, world: dict) -> list[str]:
    data = tmp / "data"
    shutil.copytree(world["data"], data)
    shutil.copy(world["xray"], data / "COVID" / os.fsdecode(b"caf\xe9.png"))
    return ["train", "--data", str(data), "--out", str(tmp / "run"), *FAST]


def _checkpoint_with(world: dict, tmp: Path, change: Callable[[dict], None]) -> Path:
    ckpt = {k: v for k, v in load_checkpoint(world["run"] / "best.pt").items() if k != "format"}
    change(ckpt)
    return save_checkpoint(tmp / "best.pt", ckpt)


@case("a checkpoint without meta.arch.num_classes", 1, "damaged checkpoint: the network has "
      "None outputs")
def _(tmp: Path, world: dict) -> list[str]:
    path = _checkpoint_with(world, tmp, lambda c: c["meta"]["arch"].pop("num_classes"))
    return ["predict", str(world["xray"]), "--model", str(path)]


@case("class_names shorter than the outputs", 1, "the network has 4 outputs for 3 class names")
def _(tmp: Path, world: dict) -> list[str]:
    path = _checkpoint_with(world, tmp, lambda c: c.update(class_names=c["class_names"][:3]))
    return ["predict", str(world["xray"]), "--model", str(path)]


@case("num_classes of 1e9", 1, "the network has 1000000000 outputs for 4 class names")
def _(tmp: Path, world: dict) -> list[str]:
    path = _checkpoint_with(world, tmp, lambda c: c["meta"]["arch"].update(num_classes=10**9))
    return ["predict", str(world["xray"]), "--model", str(path)]


@case("image_size of 100000", 1, "image_size must be between 16 and 2048")
def _(tmp: Path, world: dict) -> list[str]:
    path = _checkpoint_with(world, tmp,
                            lambda c: c["meta"]["preprocess"].update(image_size=100_000))
    return ["predict", str(world["xray"]), "--model", str(path)]


@case("a temperature that is not a number", 1, "temperature 'hot' is not a number")
def _(tmp: Path, world: dict) -> list[str]:
    path = _checkpoint_with(world, tmp, lambda c: c.update(temperature="hot"))
    return ["predict", str(world["xray"]), "--model", str(path)]


@pytest.mark.parametrize("argv, message", [
    (["train", "--image-size", "0"], "must be between 16 and 2048"),
    (["train", "--image-size", "-5"], "must be between 16 and 2048"),
    (["train", "--lr", "nan"], "not a finite number"),
    (["train", "--val-fraction", "0"], "must be between 0 and 1"),
    (["train", "--val-fraction", "1.5"], "must be between 0 and 1"),
    (["train", "--num-workers", "-1"], "must be 0 or more"),
    (["train", "--test-per-class", "-1"], "must be at least 1"),
    (["evaluate", "--model", "runs/x", "--batch-size", "0"], "must be at least 1"),
    (["app", "--model", "best.pt", "--port", "99999"], "must be a port between 1 and 65535"),
])
def test_impossible_numbers_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@case("train --out that is a file", 1, "exists and is not a folder",
      lambda tmp, world: (tmp / "out").read_text() == "mine")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "out").write_text("mine")
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "out"), *FAST]


@case("train --cache-dir that is a file", 1, "--cache-dir is a file")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "cache").write_text("mine")
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--cache-dir",
            str(tmp / "cache"), *FAST]


@case("a damaged prepared-image cache is made again", 0, "best validation macro-F1",
      lambda tmp, world: all(np.load(p)["images"].size for p in (tmp / "cache").glob("*.npz")))
def _(tmp: Path, world: dict) -> list[str]:
    shutil.copytree(world["base"] / "cache", tmp / "cache")
    for cached in (tmp / "cache").glob("*.npz"):
        cached.write_bytes(cached.read_bytes()[:100])  # cut short
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--cache-dir",
            str(tmp / "cache"), *FAST]


# --- silently wrong or unclear ------------------------------------------------------------

@case("one class only", 1, "only one class (COVID): a classifier needs at least two")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--classes",
            "COVID", *FAST]


@case("a 3-class checkpoint evaluated on a 4-class run", 1, "belongs to another run")
def _(tmp: Path, world: dict) -> list[str]:
    from cxrlearn.resnet import resnet18

    run = _copy_run(world, tmp)
    best = {k: v for k, v in load_checkpoint(run / "best.pt").items() if k != "format"}
    best.update(model=resnet18(num_classes=3).state_dict(), class_names=list(CLASS_NAMES[:3]))
    best["meta"]["arch"]["num_classes"] = 3
    save_checkpoint(run / "three.pt", best)
    return ["evaluate", "--model", str(run / "three.pt"), "--out", str(tmp / "out")]


@case("an exported file where evaluate expects a checkpoint", 1,
      "evaluation needs a checkpoint (best.pt, or its run folder)")
def _(tmp: Path, world: dict) -> list[str]:
    return ["evaluate", "--model", str(world["run"] / "model.pt"), "--out", str(tmp / "out")]


@case("random bytes where a checkpoint is expected", 1, "not a checkpoint: not a PyTorch file")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "best.pt").write_bytes(os.urandom(4096))
    return ["predict", str(world["xray"]), "--model", str(tmp / "best.pt")]


@case("a pickled object where a checkpoint is expected", 1, "never unpickles")
def _(tmp: Path, world: dict) -> list[str]:
    torch.save(torch.nn.Linear(2, 2), tmp / "best.pt")  # a whole module: not plain data
    return ["predict", str(world["xray"]), "--model", str(tmp / "best.pt")]


@case("a link to nothing in a data folder", 1, "does not exist")
def _(tmp: Path, world: dict) -> list[str]:
    shutil.copytree(world["data"], tmp / "data")
    (tmp / "data" / "Normal" / "gone.png").symlink_to(tmp / "nowhere.png")
    return ["data", "check", str(tmp / "data")]


# --- nothing of the user's replaced (issue 26: files overwritten) -------------------------

def _same_bytes(path: Path, expected: bytes) -> bool:
    return path.read_bytes() == expected


@case("export --out onto the checkpoint it reads", 1, "is the model being read",
      lambda tmp, world: _same_bytes(tmp / "run" / "best.pt",
                                     (world["run"] / "best.pt").read_bytes()))
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    return ["export", "--model", str(run), "--out", str(run / "best.pt")]


@case("export --out onto the checkpoint it reads, even with --overwrite", 1,
      "never replaced, even with --overwrite",
      lambda tmp, world: _same_bytes(tmp / "run" / "best.pt",
                                     (world["run"] / "best.pt").read_bytes()))
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    return ["export", "--model", str(run), "--out", str(run / "best"), "--overwrite"]


@case("export --out DIR/thesis beside the user's thesis.pt", 1,
      "thesis.pt: already exists; choose another path, or replace it with --overwrite",
      lambda tmp, world: (tmp / "thesis.pt").read_text() == "my thesis")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "thesis.pt").write_text("my thesis")
    return ["export", "--model", str(world["run"]), "--out", str(tmp / "thesis")]


@case("predict --gradcam DIR beside the user's IMG_gradcam.png", 1,
      "already holds IMG_gradcam.png",
      lambda tmp, world: (tmp / "figs" / "IMG_gradcam.png").read_text() == "mine")
def _(tmp: Path, world: dict) -> list[str]:
    shutil.copy(world["xray"], tmp / "IMG.png")
    (tmp / "figs").mkdir()
    (tmp / "figs" / "IMG_gradcam.png").write_text("mine")
    return ["predict", str(tmp / "IMG.png"), "--model", str(world["run"]), "--gradcam",
            str(tmp / "figs")]


@case("evaluate again into the run folder", 1, "already holds report.json",
      lambda tmp, world: (tmp / "run" / "report.json").read_text() == "mine")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    (run / "report.json").write_text("mine")
    return ["evaluate", "--model", str(run)]


@case("gradcam again into the run folder's gradcam/", 1, "already holds",
      lambda tmp, world: (tmp / "run" / "gradcam" / "IMG_gradcam.png").read_text() == "mine")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    shutil.copy(world["xray"], tmp / "IMG.png")
    (run / "gradcam").mkdir()
    (run / "gradcam" / "IMG_gradcam.png").write_text("mine")
    return ["gradcam", str(tmp / "IMG.png"), "--model", str(run)]


@pytest.mark.parametrize("entry", CASES, ids=[c.name for c in CASES])
def test_case(entry: Case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = entry.run(tmp_path, world)
    status = main(argv)
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert status == entry.status, said[-2000:]
    assert entry.message in said.replace("\n", " ") or entry.message in said, said[-2000:]
    assert "Traceback" not in said
    assert "weights_only=False" not in said  # never advise turning the guard off
    if entry.status == 1 and captured.err:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    if entry.check is not None:
        assert entry.check(tmp_path, world) is not False


def test_the_table_is_not_empty():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)  # one row per case


def test_a_pickle_in_the_table_really_is_hostile(tmp_path):
    """The marker object does what the cases say it would: unpickled, it creates the file."""
    blob = pickle.dumps(_WritesAMarker(tmp_path / MARKER))
    pickle.loads(blob)  # noqa: S301 - the point of this test
    assert (tmp_path / MARKER).exists()
