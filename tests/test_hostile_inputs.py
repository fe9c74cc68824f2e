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


def test_a_pickle_in_the_table_really_is_hostile(tmp_path):
    """The marker object does what the cases say it would: unpickled, it creates the file."""
    blob = pickle.dumps(_WritesAMarker(tmp_path / MARKER))
    pickle.loads(blob)  # noqa: S301 - the point of this test
    assert (tmp_path / MARKER).exists()


# --- round 2 (issue 26): metadata trusted too far ------------------------------------------

def _rewrite_zip(src: Path, dst: Path, change: Callable[[str, bytes], bytes]) -> Path:
    """A copy of the archive `src` with each entry's bytes passed through `change`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))
    return dst


def _export_with_json(world: dict, tmp: Path, name: str, edit: Callable[[dict], object]) -> Path:
    """The run's export `name` with its cxrlearn.json replaced by `edit(document)` (a dict,
    or the raw text when `edit` returns a str)."""
    def change(entry: str, data: bytes) -> bytes:
        if entry.endswith("extra/cxrlearn.json"):
            new = edit(json.loads(data))
            return (new if isinstance(new, str) else json.dumps(new)).encode()
        return data
    return _rewrite_zip(world["run"] / name, tmp / name, change)


def _input_shape(side: int) -> Callable[[dict], dict]:
    def edit(doc: dict) -> dict:
        doc["input"]["shape"] = ["B", 1, side, side]
        return doc
    return edit


for _side in (200_000, 0, -5):
    @case(f"an export whose input shape is {_side} x {_side}", 1,
          f"input shape {_side} x {_side}: image_size must be between 16 and 2048")
    def _(tmp: Path, world: dict, side: int = _side) -> list[str]:
        crafted = _export_with_json(world, tmp, "model.pt2", _input_shape(side))
        return ["predict", str(world["xray"]), "--model", str(crafted)]


@case("an export whose cxrlearn.json is nested 100,000 deep", 1,
      "damaged cxrlearn.json inside: nested more than 32 levels deep")
def _(tmp: Path, world: dict) -> list[str]:
    deep = '{"format": "cxrlearn-export-v1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return ["predict", str(world["xray"]), "--model",
            str(_export_with_json(world, tmp, "model.pt", lambda doc: deep))]


@case("an export whose cxrlearn.json is nested 50 deep", 1,
      "damaged cxrlearn.json: nested more than 32 levels deep")
def _(tmp: Path, world: dict) -> list[str]:
    def edit(doc: dict) -> dict:
        doc["x"] = json.loads("[" * 50 + "]" * 50)
        return doc
    return ["predict", str(world["xray"]), "--model",
            str(_export_with_json(world, tmp, "model.pt", edit))]


def _deep_data_pkl(levels: int) -> bytes:
    """A TorchScript data.pkl of `levels` modules each holding the next: pickled by hand
    (pickle.dumps itself recurses), GLOBAL, NEWOBJ, {"a": ...}, BUILD."""
    head = b"c__torch__.m\nM\n)\x81}X\x01\x00\x00\x00a"
    return b"\x80\x02" + head * levels + b"N" + b"sb" * levels + b"."


@case("a TorchScript file whose data.pkl nests 100,000 modules", 1, "nested more than 32 levels")
def _(tmp: Path, world: dict) -> list[str]:
    crafted = _rewrite_zip(world["run"] / "model.pt", tmp / "model.pt", lambda entry, data:
                           _deep_data_pkl(100_000) if entry.endswith("/data.pkl") else data)
    return ["predict", str(world["xray"]), "--model", str(crafted)]


@case("a .pt2 whose weights entry is a number", 1, "is described by int, not a mapping")
def _(tmp: Path, world: dict) -> list[str]:
    def change(entry: str, data: bytes) -> bytes:
        if entry.endswith("model_weights_config.json"):
            doc = json.loads(data)
            doc["config"][next(iter(doc["config"]))] = 5
            return json.dumps(doc).encode()
        return data
    crafted = _rewrite_zip(world["run"] / "model.pt2", tmp / "model.pt2", change)
    return ["predict", str(world["xray"]), "--model", str(crafted)]


@case("a checkpoint from a newer cxrlearn (format v7)", 1,
      "made by a newer cxrlearn (format v7); upgrade")
def _(tmp: Path, world: dict) -> list[str]:
    ckpt = dict(load_checkpoint(world["run"] / "best.pt"), format="cxrlearn-checkpoint-v7")
    torch.save(ckpt, tmp / "best.pt")
    return ["predict", str(world["xray"]), "--model", str(tmp / "best.pt")]


for _name, _change, _message in [
    ("scores of 10**400", lambda c: c.update(scores={"val_macro_f1": 10**400}),
     "scores must be {name: number}"),
    ("scores as a list", lambda c: c.update(scores=[0.5]), "scores must be {name: number}"),
    ("a score that is True", lambda c: c.update(scores={"val_macro_f1": True}),
     "scores must be {name: number}"),
    ("history of integers", lambda c: c.update(history=[1, 2]), "history must be a list of"),
    ("an epoch past the history", lambda c: c.update(epoch=7),
     "epoch 7 is past the history's 1 epochs"),
    ("test_scores as text", lambda c: c.update(test_scores="very good"),
     "test_scores must be {name: number}"),
    ("metadata nested 100 deep", lambda c: c["meta"].update(x=json.loads("[" * 100 + "]" * 100)),
     "damaged checkpoint: nested more than 32 levels deep"),
]:
    @case(f"a checkpoint with {_name}", 1, _message)
    def _(tmp: Path, world: dict, change=_change) -> list[str]:
        return ["predict", str(world["xray"]), "--model",
                str(_checkpoint_with(world, tmp, change))]


# --- round 2: the order of checks ------------------------------------------------------------

@case("1,001 class folders are refused before training", 1,
      "1001 class folders, more than the 1000",
      lambda tmp, world: not (tmp / "run").exists())
def _(tmp: Path, world: dict) -> list[str]:
    for n in range(1001):
        (tmp / "data" / f"patient{n:04d}").mkdir(parents=True)
        (tmp / "data" / f"patient{n:04d}" / "x.png").symlink_to(world["xray"])
    return ["train", "--data", str(tmp / "data"), "--out", str(tmp / "run"), *FAST]


def _manifest_with_repeat(world: dict, tmp: Path, from_split: str, to_split: str) -> Path:
    run = _copy_run(world, tmp)
    rows = (run / "manifest.csv").read_text().splitlines()
    row = next(r for r in rows[1:] if r.endswith(f",{from_split}"))
    with (run / "manifest.csv").open("a") as f:
        f.write(row.rsplit(",", 1)[0] + f",{to_split}\n")
    return run


@case("a manifest listing a training image as a test image", 1, "(test) is already listed")
def _(tmp: Path, world: dict) -> list[str]:
    run = _manifest_with_repeat(world, tmp, "train", "test")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


@case("a manifest listing a validation image as a test image", 1, "(val); each image")
def _(tmp: Path, world: dict) -> list[str]:
    run = _manifest_with_repeat(world, tmp, "val", "test")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


@case("--resume of a run stopped before its first epoch", 1,
      "no epoch of it was finished); start the run again without --resume")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "run").mkdir()
    shutil.copy(world["run"] / "config.json", tmp / "run")
    return ["train", "--out", str(tmp / "run"), "--resume"]


def _interrupted_state(world: dict, tmp: Path, **change) -> Path:
    """A copy of the run whose interrupted.pt (last.pt, stopped in epoch 2) says `change`."""
    run = _copy_run(world, tmp)
    state = load_checkpoint(run / "last.pt")
    state["in_progress"] = {"batches": 1, "batches_in_epoch": 1, "loss_sum": 2.0,
                            "correct": 1, "seen": 8, "seconds": 1.0, "image_size": 32,
                            "lr": 1e-3, "mix_rng": None, **change}
    save_checkpoint(run / "interrupted.pt", {k: v for k, v in state.items() if k != "format"})
    return run


@case("--resume from an interrupted.pt whose batches done are past the epoch's end", 1,
      "interrupted.pt: damaged checkpoint: in_progress.batches must be a whole number from 1 "
      "to 1, got 7; delete it to resume from the last finished epoch (last.pt)")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--out", str(_interrupted_state(world, tmp, batches=7)), "--resume",
            "--epochs", "2"]


@case("--resume from an interrupted.pt whose batches done are negative", 1,
      "in_progress.batches must be a whole number from 1 to 1, got -3")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--out", str(_interrupted_state(world, tmp, batches=-3)), "--resume",
            "--epochs", "2"]


@case("--resume from an interrupted.pt of an epoch longer than the data makes", 1,
      "the interrupted epoch had 5 batches, this data and batch size make 1")
def _(tmp: Path, world: dict) -> list[str]:
    run = _interrupted_state(world, tmp, batches=2, batches_in_epoch=5)
    return ["train", "--out", str(run), "--resume", "--epochs", "2"]


@case("evaluate --model an interrupted.pt (half an epoch's weights)", 1,
      "holds an epoch stopped midway (Ctrl-C or SIGTERM), to resume from, not a model to use")
def _(tmp: Path, world: dict) -> list[str]:
    return ["evaluate", "--model", str(_interrupted_state(world, tmp) / "interrupted.pt")]


def test_ctrl_c_before_the_first_epoch_leaves_a_folder_a_new_run_can_use(world, tmp_path,
                                                                         capsys, monkeypatch):
    import cxrlearn.training as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    argv = ["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"), *FAST]
    with monkeypatch.context() as m:
        m.setattr(training, "train_one_epoch", interrupted)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert "no epoch was finished, nothing was kept; run the same command again" in err
    assert not (tmp_path / "run").exists()
    assert main(argv) == 0, capsys.readouterr().err  # the same command, again


# --- round 2: signals and the environment --------------------------------------------------

def test_ctrl_c_while_a_checkpoint_is_written_exits_130(world, tmp_path, capsys, monkeypatch):
    import signal

    real_save = torch.save

    def save_interrupted(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_interrupted)
    status = main(["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"),
                   *FAST])
    err = capsys.readouterr().err
    assert status == 130 and "interrupted" in err, err
    assert "could not write" not in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob(".*.tmp")) if (tmp_path / "run").exists() else True


def _sigterm_in_epoch(epoch_index: int) -> Callable:
    import signal

    def batch(self, epoch: int, stats: dict) -> None:
        if epoch == epoch_index:
            os.kill(os.getpid(), signal.SIGTERM)
    return batch


def test_sigterm_mid_epoch_exits_143_and_resumes_bit_for_bit(world, tmp_path, capsys,
                                                             monkeypatch):
    import cxrlearn.cli.train as cli_train

    two = [*FAST[:-1], "2"]  # FAST, for 2 epochs
    run, whole = tmp_path / "run", tmp_path / "whole"
    with monkeypatch.context() as m:
        m.setattr(cli_train.RichEvents, "batch", _sigterm_in_epoch(1))
        assert main(["train", "--data", str(world["data"]), "--out", str(run), *two]) == 143
    err = capsys.readouterr().err
    # The epoch's one step was done when the signal came: the epoch so far is kept.
    assert (f"terminated (SIGTERM) in epoch 2: {run / 'interrupted.pt'} holds epoch 2 up to "
            "batch 1 of 1; continue with --resume") in err, err
    assert len(err.strip().splitlines()) == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert load_checkpoint(run / "interrupted.pt")["in_progress"]["batches"] == 1
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert not (run / "interrupted.pt").exists()
    assert main(["train", "--data", str(world["data"]), "--out", str(whole), *two]) == 0
    resumed, uninterrupted = (load_checkpoint(p / "best.pt") for p in (run, whole))
    assert resumed["epoch"] == uninterrupted["epoch"]
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_sigterm_outside_training_exits_143(world, tmp_path, capsys, monkeypatch):
    import signal

    import cxrlearn.cli.data as cli_data

    def terminated(args, console):
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli_data, "run_check", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "check", str(world["data"])]) == 143
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


class _FullDiskFile:
    """An open file on a disk that is full: every write fails."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_that_fills_during_export_is_one_line(world, tmp_path, capsys, monkeypatch):
    import cxrlearn.export.files as files

    saved_to: list[object] = []
    real_save = torch.jit.save
    monkeypatch.setattr(torch.jit, "save", lambda m, f, **kw: (saved_to.append(f),
                                                                 real_save(m, f, **kw)))
    monkeypatch.setattr(files, "open", _FullDiskFile, raising=False)
    run = _copy_run(world, tmp_path)
    (run / "model.pt").unlink()
    assert main(["export", "--model", str(run), "--format", "torchscript"]) == 1
    said = capsys.readouterr()
    text = said.out + said.err
    assert "could not write the file (No space left on device)" in text, text
    assert "Traceback" not in text
    # PyTorch's C++ writer never writes to the disk (a full disk there aborts the process)
    assert saved_to and all(isinstance(f, io.BytesIO) for f in saved_to)
    assert not (run / "model.pt").exists() and not list(run.glob(".*.tmp"))


@case("train --out with a name too long for the file system", 1, "File name too long")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--data", str(world["data"]), "--out", str(tmp / ("r" * 300)), *FAST]


@case("export --out with a name too long for the file system", 1, "File name too long")
def _(tmp: Path, world: dict) -> list[str]:
    return ["export", "--model", str(world["run"]), "--out", str(tmp / ("m" * 300))]


@case("gradcam --out in a folder whose name is too long", 1, "File name too long")
def _(tmp: Path, world: dict) -> list[str]:
    return ["gradcam", str(world["xray"]), "--model", str(world["run"]), "--out",
            str(tmp / ("g" * 300))]


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_a_latin1_or_ascii_terminal_prints_without_unicode_errors(world, tmp_path, monkeypatch,
                                                                  encoding):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    shutil.copy(world["xray"], data / "COVID" / "snow\u2603 \u2192 x.png")
    shutil.copy(world["xray"], tmp_path / "caf\u00e9\u2603.png")
    monkeypatch.setenv("COLUMNS", "300")  # the whole file name in the table
    shown = {"latin-1": "caf\u00e9?.png", "ascii": "caf??.png"}[encoding]
    for argv, expected in ((["data", "check", str(data)], "Images per class"),
                           (["predict", str(tmp_path / "caf\u00e9\u2603.png"), "--model",
                             str(world["run"])], shown)):
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="\n")
        monkeypatch.setattr("sys.stdout", stream)
        assert main(argv) == 0
        stream.flush()
        text = raw.getvalue().decode(encoding)
        assert expected in text, text


@case("--pretrained with a pickled module (no code runs)", 1,
      "holds pickled Python objects, not only tensors", _no_marker)
def _(tmp: Path, world: dict) -> list[str]:
    torch.save({"fc.weight": torch.zeros(2), "x": _WritesAMarker(tmp / MARKER)},
               tmp / "weights.pth")
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--pretrained",
            str(tmp / "weights.pth"), *FAST]


def test_training_pins_the_thread_count(world, tmp_path, monkeypatch):
    """What the determinism promise rests on: `fit` sets the thread count explicitly
    (turning off MKL's dynamic threads), to the count it was, before the first step."""
    import cxrlearn.training as training

    calls: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with contextlib.redirect_stdout(io.StringIO()):
        main(["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"), *FAST])
    assert calls == [torch.get_num_threads()]


def test_two_seeded_runs_are_identical(world, tmp_path, capsys):
    """The promise itself, on this machine and thread count (docs/api/training.md)."""
    for name in ("a", "b"):
        assert main(["train", "--data", str(world["data"]), "--out", str(tmp_path / name),
                     "--cache-dir", str(tmp_path / f"cache-{name}"), *FAST]) == 0
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("a", "b"))
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# --- round 2: one cache that heals -------------------------------------------------------

@pytest.fixture
def fake_sample_training(world, monkeypatch) -> list[Path]:
    """`sample_run` trains by copying the world's run (trained on part of the sample):
    returns the list of folders it "trained" into."""
    import cxrlearn.sample_run as sample_run_module

    trained: list[Path] = []

    def train_run(settings, out, device, **kwargs):
        trained.append(Path(out))
        shutil.copytree(world["run"], out)

    monkeypatch.setattr(sample_run_module, "train_run", train_run)
    return trained


def _sample_folder(cache: Path) -> Path:
    from cxrlearn.sample_run import SAMPLE_SETTINGS, sample_run_folder

    return sample_run_folder(SAMPLE_SETTINGS, cache)


def test_a_killed_lessons_temporary_sample_run_is_removed(tmp_path, fake_sample_training):
    from cxrlearn.sample_run import sample_run

    runs = _sample_folder(tmp_path).parent
    dead = runs / f".{_sample_folder(tmp_path).name}.999999999.k1ll.tmp"
    other = runs / ".resnet18-32px-0123456789abcdef.999999998.x2yz.tmp"  # other settings
    live = runs / f".resnet18-32px-0123456789abcdef.{os.getpid()}.abcd.tmp"
    for folder in (dead, other, live):
        folder.mkdir(parents=True)
        (folder / "best.pt").write_bytes(b"half a run")
    sample_run(cache_dir=tmp_path)
    assert not dead.exists() and not other.exists()
    assert live.exists()  # a write in progress (this process) is left alone
    sample_run(cache_dir=tmp_path)
    assert len(fake_sample_training) == 1  # the second call loads


@pytest.mark.parametrize("damage", ["truncated best.pt", "no manifest", "no best.pt"])
def test_a_damaged_cached_sample_run_is_rebuilt(tmp_path, fake_sample_training, damage):
    from cxrlearn.sample_run import sample_run

    sample_run(cache_dir=tmp_path)
    folder = _sample_folder(tmp_path)
    if damage == "truncated best.pt":
        (folder / "best.pt").write_bytes((folder / "best.pt").read_bytes()[:1000])
    else:
        (folder / ("manifest.csv" if damage == "no manifest" else "best.pt")).unlink()
    model = sample_run(cache_dir=tmp_path)  # no error: made again
    assert len(fake_sample_training) == 2 and model.network is not None
    assert (folder / "manifest.csv").is_file()
    assert load_checkpoint(folder / "best.pt")["epoch"] == 1
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_a_cache_dir_that_is_a_file_is_one_line_for_the_sample_run(tmp_path, monkeypatch,
                                                                   fake_sample_training):
    from cxrlearn.errors import CxrlearnError
    from cxrlearn.sample_run import sample_run

    (tmp_path / "cache").write_text("mine")
    monkeypatch.setenv("CXRLEARN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CxrlearnError, match="is a file, not a folder; set CXRLEARN_CACHE_DIR"):
        sample_run()
    assert (tmp_path / "cache").read_text() == "mine"


def _read_only_folders(monkeypatch, under: Path) -> None:
    """Every folder under `under` refuses new files, as a read-only mount does (root, who
    runs these tests in containers, ignores permission bits)."""
    import tempfile as tempfile_module

    real_file, real_mkdtemp = tempfile_module.TemporaryFile, tempfile_module.mkdtemp

    def refuse(real):
        def call(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(under.resolve()):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real(*args, dir=dir, **kwargs)
        return call

    monkeypatch.setattr(tempfile_module, "TemporaryFile", refuse(real_file))
    monkeypatch.setattr(tempfile_module, "mkdtemp", refuse(real_mkdtemp))


def test_a_read_only_cache_is_one_line_for_the_sample_run(tmp_path, monkeypatch,
                                                          fake_sample_training):
    from cxrlearn.errors import CxrlearnError
    from cxrlearn.sample_run import sample_run

    (tmp_path / "cache").mkdir()
    _read_only_folders(monkeypatch, tmp_path / "cache")
    with pytest.raises(CxrlearnError) as error:
        sample_run(cache_dir=tmp_path / "cache")
    assert "is not writable (Read-only file system); set CXRLEARN_CACHE_DIR" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("where", ["CXRLEARN_CACHE_DIR is a file", "read-only cache folder",
                                   "read-only HOME"])
def test_training_without_a_usable_cache_warns_and_goes_on(world, tmp_path, capsys,
                                                           monkeypatch, where):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("CXRLEARN_CACHE_DIR", raising=False)
    if where == "CXRLEARN_CACHE_DIR is a file":
        (tmp_path / "cache").write_text("mine")
        monkeypatch.setenv("CXRLEARN_CACHE_DIR", str(tmp_path / "cache"))
    elif where == "read-only cache folder":
        (tmp_path / "cache").mkdir()
        monkeypatch.setenv("CXRLEARN_CACHE_DIR", str(tmp_path / "cache"))
        _read_only_folders(monkeypatch, tmp_path / "cache")
    else:
        (tmp_path / "home").mkdir()
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        _read_only_folders(monkeypatch, tmp_path / "home")
        monkeypatch.setattr(Path, "mkdir", _mkdir_refused_under(tmp_path / "home"))
    assert main(["train", "--data", str(world["data"]), "--out", str(tmp_path / "run"),
                 *FAST]) == 0
    out = capsys.readouterr().out
    assert "warning: no prepared-image cache kept:" in out.replace("\n", " "), out


def _mkdir_refused_under(under: Path) -> Callable:
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.resolve().is_relative_to(under.resolve()) and self.resolve() != under.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)
    return mkdir


def _npz_bomb(path: Path, declared_images: int, side: int) -> None:
    """An .npz whose images.npy declares `declared_images` zero images: small on disk."""
    header = io.BytesIO()
    shape = (declared_images, side, side)
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(declared_images * side * side // len(chunk)):
                f.write(chunk)
        for name in ("kept", "bad_index"):
            buffer = io.BytesIO()
            np.save(buffer, np.arange(3, dtype=np.int64))
            z.writestr(f"{name}.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, np.array([], dtype=str))
        z.writestr("bad_msg.npy", buffer.getvalue())


def test_a_prepared_image_bomb_is_refused_before_loading(tmp_path, monkeypatch):
    import cxrlearn.data.cache as cache

    bomb = tmp_path / "prepared.npz"
    _npz_bomb(bomb, declared_images=256 * 1024, side=32)  # 256 MiB inflated
    assert bomb.stat().st_size < 2 << 20
    monkeypatch.setattr(cache.np, "load", lambda *a, **k: pytest.fail("the bomb was opened"))
    assert cache._read_cache(bomb, ["x.png"] * 3, 32) is None
    assert not bomb.exists()  # removed, to be made again


@case("a prepared-image .npz that inflates to 256 MiB is made again", 0,
      "best validation macro-F1",
      lambda tmp, world: all(p.stat().st_size < 200_000 for p in (tmp / "cache").glob("*.npz")))
def _(tmp: Path, world: dict) -> list[str]:
    shutil.copytree(world["base"] / "cache", tmp / "cache")
    for cached in (tmp / "cache").glob("*.npz"):
        _npz_bomb(cached, declared_images=256 * 1024, side=32)
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--cache-dir",
            str(tmp / "cache"), *FAST]



# --- round 2: twenty more, of our own -------------------------------------------------------

@case("predict on an empty .png", 1, "not a PNG, JPEG or DICOM image")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "empty.png").write_bytes(b"")
    return ["predict", str(tmp / "empty.png"), "--model", str(world["run"])]


@case("predict on a folder named like an image", 1, "scan.png")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "scan.png").mkdir()
    return ["predict", str(tmp / "scan.png"), "--model", str(world["run"])]


@case("--model an empty folder", 1, "empty")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "run").mkdir()
    return ["predict", str(world["xray"]), "--model", str(tmp / "run")]


@case("--model a 0-byte best.pt", 1, "not a checkpoint")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "best.pt").write_bytes(b"")
    return ["predict", str(world["xray"]), "--model", str(tmp / "best.pt")]


@case("train --data that is a file", 1, "not a folder")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "data.zip").write_bytes(b"PK")
    return ["train", "--data", str(tmp / "data.zip"), "--out", str(tmp / "run"), *FAST]


@case("train --classes naming a class with no folder", 1, "no folder for class 'Cats'")
def _(tmp: Path, world: dict) -> list[str]:
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), "--classes",
            "COVID", "Cats", *FAST]


@case("data check on an empty folder", 1, "no class folders found")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "data").mkdir()
    return ["data", "check", str(tmp / "data")]


@case("evaluate a run whose manifest.csv is binary", 1, "not a manifest")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    (run / "manifest.csv").write_bytes(b"path,class,split\n\xff\xfe\x00garbage,COVID,test\n")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


@case("--resume with a damaged config.json", 1, "cannot read the run's settings")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    (run / "config.json").write_text("{not json")
    return ["train", "--out", str(run), "--resume", "--epochs", "2"]


@case("--resume with a config.json nested 100,000 deep", 1, "cannot read the run's settings")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["train", "--out", str(run), "--resume", "--epochs", "2"]


@case("--resume with a truncated last.pt", 1, "last.pt: not a checkpoint")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:5000])
    return ["train", "--out", str(run), "--resume", "--epochs", "2"]


@case("an export whose temperature is infinite", 1, "temperature inf out of range")
def _(tmp: Path, world: dict) -> list[str]:
    def edit(doc: dict) -> str:
        return json.dumps(doc).replace(f'"temperature": {json.dumps(doc["temperature"])}',
                                       '"temperature": Infinity')
    return ["predict", str(world["xray"]), "--model",
            str(_export_with_json(world, tmp, "model.pt", edit))]


@case("an export whose cxrlearn.json is not UTF-8", 1, "cannot read the file")
def _(tmp: Path, world: dict) -> list[str]:
    crafted = _rewrite_zip(world["run"] / "model.pt", tmp / "model.pt", lambda entry, data:
                           b"\xff\xfe" + data if entry.endswith("cxrlearn.json") else data)
    return ["predict", str(world["xray"]), "--model", str(crafted)]


@case("an export naming 1,001 classes", 1, "class_names must be 2 to 1000 names")
def _(tmp: Path, world: dict) -> list[str]:
    def edit(doc: dict) -> dict:
        doc["class_names"] = [f"c{n}" for n in range(1001)]
        return doc
    return ["predict", str(world["xray"]), "--model",
            str(_export_with_json(world, tmp, "model.pt", edit))]


@case("an export whose input shape has three numbers", 1, "is not [B, C, H, W]")
def _(tmp: Path, world: dict) -> list[str]:
    def edit(doc: dict) -> dict:
        doc["input"]["shape"] = [1, 64, 64]
        return doc
    return ["predict", str(world["xray"]), "--model",
            str(_export_with_json(world, tmp, "model.pt2", edit))]


@case("a .pt2 whose weights config is a list", 1, "not a mapping")
def _(tmp: Path, world: dict) -> list[str]:
    crafted = _rewrite_zip(world["run"] / "model.pt2", tmp / "model.pt2", lambda entry, data:
                           b'{"config": [1, 2]}' if entry.endswith("model_weights_config.json")
                           else data)
    return ["predict", str(world["xray"]), "--model", str(crafted)]


@case("a checkpoint whose history row holds text", 1, "history must be a list of")
def _(tmp: Path, world: dict) -> list[str]:
    return ["predict", str(world["xray"]), "--model", str(_checkpoint_with(
        world, tmp, lambda c: c["history"][0].update(val_loss="low")))]


@case("a checkpoint whose epoch is negative", 1, "epoch must be a whole number")
def _(tmp: Path, world: dict) -> list[str]:
    return ["predict", str(world["xray"]), "--model",
            str(_checkpoint_with(world, tmp, lambda c: c.update(epoch=-3)))]


@case("a checkpoint whose format marker is a number", 1, "made by another program")
def _(tmp: Path, world: dict) -> list[str]:
    torch.save(dict(load_checkpoint(world["run"] / "best.pt"), format=7), tmp / "best.pt")
    return ["predict", str(world["xray"]), "--model", str(tmp / "best.pt")]


@case("a manifest listing one image twice in train", 1, "(train) is already listed")
def _(tmp: Path, world: dict) -> list[str]:
    run = _manifest_with_repeat(world, tmp, "train", "train")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


@case("a manifest naming an image by two spellings", 1, "is already listed")
def _(tmp: Path, world: dict) -> list[str]:
    run = _copy_run(world, tmp)
    rows = (run / "manifest.csv").read_text().splitlines()
    path, cls, _ = next(r for r in rows[1:] if r.endswith(",train")).split(",")
    with (run / "manifest.csv").open("a") as f:
        f.write(f"./{path.replace('/', '//')},{cls},test\n")
    return ["evaluate", "--model", str(run), "--out", str(tmp / "out")]


@case("a kill-leftover lock from a huge PID", 0, "best validation macro-F1")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / ".cxrlearn.lock").write_text("99999999999999999999")  # no such process
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "run"), *FAST]


@case("predict with an image name that holds a line break", 0, "Predictions of")
def _(tmp: Path, world: dict) -> list[str]:
    shutil.copy(world["xray"], tmp / "two\nlines.png")
    return ["predict", str(tmp / "two\nlines.png"), "--model", str(world["run"])]


@case("train --out whose parent is a file", 1, "Not a directory")
def _(tmp: Path, world: dict) -> list[str]:
    (tmp / "afile").write_text("mine")
    return ["train", "--data", str(world["data"]), "--out", str(tmp / "afile" / "run"), *FAST]


# --- the table, run (last: every case above is registered by now) -------------------------



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
