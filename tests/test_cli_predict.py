"""`cxrlearn export` and `cxrlearn predict`, end to end on sample X-rays.

The oracle for every probability is `eager_probs` on the image as `load_image` (or
`load_dicom`) reads it: what the Python pipeline says, the command line must print.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxrlearn.cli as cli
from cxrlearn.checkpoint import save_checkpoint
from cxrlearn.data import load_image, sample_root
from cxrlearn.data.dicom import load_dicom
from cxrlearn.export import eager_probs
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import gradcam_figure
from cxrlearn.resnet import resnet18
from cxrlearn.trained import open_model
from cxrlearn.transforms import Preprocess, prepare

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PREPROCESS = Preprocess(32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return resnet18(num_classes=4).eval()


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory) -> Path:
    """A run folder with best.pt and its model.pt, model.ptl and model.pt2 (via the CLI)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_checkpoint(run / "best.pt", {
        "model": model.state_dict(), "class_names": CLASSES, "epoch": 1,
        "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                 "preprocess": PREPROCESS.to_dict()},
    })
    assert cli.main(["export", "--model", str(run), "--format", "torchscript,lite,export"]) == 0
    return run


@pytest.fixture(scope="module")
def xrays() -> list[Path]:
    return [sorted((sample_root() / c).glob("*.png"))[0] for c in CLASSES[:3]]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _oracle(model, paths, read=load_image) -> torch.Tensor:
    return eager_probs(model, [read(p) for p in paths], PREPROCESS)


def test_export_writes_the_three_files(run_dir, model):
    for name, fmt in (("model.pt", "torchscript"), ("model.ptl", "lite"),
                      ("model.pt2", "export")):
        loaded = open_model(run_dir / name)
        assert loaded.kind == fmt and loaded.class_names == tuple(CLASSES)
        image = load_image(sorted((sample_root() / "Normal").glob("*.png"))[3])
        image = image if fmt != "export" else image[:32, :32]  # the program's fixed size
        # Rebuilt from the file's data (its code never runs); the same numbers.
        torch.testing.assert_close(loaded.probs([image]),
                                   eager_probs(model, [image], PREPROCESS), rtol=0, atol=1e-6)


def test_export_out_and_format_errors(run_dir, tmp_path, capsys):
    # --out is a path: the format's suffix is added to a path without one, and a suffix
    # that is no format's is refused (cxrlearn 0.3 replaced it silently).
    assert cli.main(["export", "--model", str(run_dir), "--out", str(tmp_path / "x.bin")]) == 1
    assert ".bin is not the suffix of an export format" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert cli.main(["export", "--model", str(run_dir), "--out", str(tmp_path / "x")]) == 0
    assert "x.pt (torchscript" in capsys.readouterr().out
    assert (tmp_path / "x.pt").is_file()
    with pytest.raises(SystemExit):
        cli.main(["export", "--model", str(run_dir), "--format", "tflite"])
    assert "unknown format tflite" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not a run folder: it holds no best.pt" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:  # the old spelling: one line naming the new one
        cli.main(["export", "--run", str(run_dir), "--out", str(tmp_path / "y.pt")])
    assert exit_.value.code == 2 and "use --model" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()


@pytest.mark.parametrize("name", ["model.pt", "model.ptl", "best.pt", "."])
def test_predict_json_matches_the_python_pipeline(run_dir, model, xrays, name, capsys):
    model_path = run_dir / name if name != "." else run_dir  # a run folder means its best.pt
    assert cli.main(["predict", *map(str, xrays), "--model", str(model_path), "--json"]) == 0
    doc = _json(capsys)
    assert doc["class_names"] == CLASSES
    assert doc["kind"] == {"model.pt": "torchscript", "model.ptl": "lite",
                           "best.pt": "checkpoint", ".": "checkpoint"}[name]
    want = _oracle(model, xrays)
    got = torch.tensor([[r["probabilities"][c] for c in CLASSES] for r in doc["results"]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [r["prediction"] for r in doc["results"]] == [CLASSES[int(i)]
                                                         for i in want.argmax(dim=1)]
    assert [r["file"] for r in doc["results"]] == list(map(str, xrays))


def test_predict_with_the_program_resizes_first(run_dir, model, xrays, capsys):
    assert cli.main(["predict", str(xrays[0]), "--model", str(run_dir / "model.pt2"),
                     "--json"]) == 0
    doc = _json(capsys)
    assert "resized" in doc["notes"][0]
    small = torch.nn.functional.interpolate(
        torch.from_numpy(load_image(xrays[0]))[None, None], size=(32, 32), mode="bilinear",
        antialias=True)[0, 0]
    want = eager_probs(model, [small], PREPROCESS)[0]
    got = torch.tensor([doc["results"][0]["probabilities"][c] for c in CLASSES])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_corrupt_file_among_good_ones(run_dir, model, xrays, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(xrays[0].read_bytes()[:200])  # a truncated PNG
    missing = tmp_path / "missing.png"
    files = [str(xrays[0]), str(bad), str(xrays[1]), str(missing)]
    assert cli.main(["predict", *files, "--model", str(run_dir / "model.pt"), "--json"]) == 1
    results = _json(capsys)["results"]
    assert [("error" in r) for r in results] == [False, True, False, True]
    assert "corrupt or truncated" in results[1]["error"]
    assert results[3]["error"] == "no such file"
    got = torch.tensor([[results[i]["probabilities"][c] for c in CLASSES] for i in (0, 2)])
    torch.testing.assert_close(got, _oracle(model, xrays[:2]), rtol=0, atol=1e-6)


def test_table_output(run_dir, model, xrays, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads it: no header wraps
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert cli.main(["predict", str(xrays[2]), str(bad), "--model",
                     str(run_dir / "model.pt")]) == 1
    out = capsys.readouterr().out
    probs = _oracle(model, xrays[2:3])[0]
    for c, p in zip(CLASSES, probs.tolist(), strict=True):
        assert c in out and f"{p:.3f}" in out
    assert str(xrays[2]) in out
    assert f"bad file: {bad}: not a PNG, JPEG or DICOM image" in out
    assert "not a diagnostic device" in out


def test_gradcam_with_a_checkpoint(run_dir, model, xrays, tmp_path, capsys, monkeypatch):
    import cxrlearn.data

    out_dir = tmp_path / "cams"
    # Two files with the same name must not overwrite each other.
    twin = tmp_path / "twin" / xrays[0].name
    twin.parent.mkdir()
    shutil.copy(xrays[1], twin)
    decoded, stretched = [], []  # once per file, for its probabilities and its overlay
    monkeypatch.setattr(cxrlearn.data, "load_image",
                        lambda path, **k: decoded.append(path) or load_image(path, **k))
    prepare_once = Preprocess.prepare
    monkeypatch.setattr(Preprocess, "prepare",
                        lambda self, image: stretched.append(1) or prepare_once(self, image))
    assert cli.main(["predict", str(xrays[0]), str(twin), "--model", str(run_dir / "best.pt"),
                     "--gradcam", str(out_dir), "--json"]) == 0
    assert decoded == [xrays[0], twin] and len(stretched) == 2
    results = _json(capsys)["results"]
    # The probabilities are the Python pipeline's, as without --gradcam.
    got = torch.tensor([[r["probabilities"][c] for c in CLASSES] for r in results])
    torch.testing.assert_close(got, _oracle(model, xrays[:2]), rtol=0, atol=1e-6)
    stem = xrays[0].stem
    assert [Path(r["gradcam"]).name for r in results] == [f"{stem}_gradcam.png",
                                                          f"{stem}_gradcam-2.png"]
    # The same figure `cxrlearn gradcam` writes: image, map, overlay of the predicted class.
    for r, src, given in zip(results, (xrays[0], xrays[1]), (xrays[0], twin), strict=True):
        image = load_image(src)
        with GradCAM(model) as cam:
            result = cam(PREPROCESS.network_input(image)[None])
        k = int(result.targets[0])
        title = f"{given.name}: {CLASSES[k]} (p = {float(result.probs[0, k]):.2f})"
        oracle = tmp_path / "oracle.png"
        gradcam_figure(prepare(image, 32)[0].numpy(), result.cams[0], title).savefig(oracle)
        with Image.open(r["gradcam"]) as got, Image.open(oracle) as want:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_gradcam_with_an_export_is_a_note(run_dir, xrays, tmp_path, capsys):
    out_dir = tmp_path / "cams"
    assert cli.main(["predict", str(xrays[0]), "--model", str(run_dir / "model.pt"),
                     "--gradcam", str(out_dir)]) == 0
    assert "Grad-CAM needs a checkpoint" in capsys.readouterr().out
    assert not out_dir.exists()


def test_model_that_is_not_a_model(xrays, tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_text("hello")
    assert cli.main(["predict", str(xrays[0]), "--model", str(fake)]) == 1
    err = capsys.readouterr().err
    assert f"{fake}: " in err.replace("\n", "") and "checkpoint" in err
    assert "Traceback" not in err and "weights_only" not in err


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_predict_dicom(run_dir, model, xrays, tmp_path, capsys, photometric):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    u8 = np.round(load_image(xrays[0]) * 255).astype(np.uint16)
    stored = u8 * 16 if photometric == "MONOCHROME2" else 4095 - u8 * 16  # 12-bit
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(stored, photometric, 12)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.RescaleSlope, ds.RescaleIntercept = 0.25, -512
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert cli.main(["predict", str(path), str(xrays[0]), "--model",
                     str(run_dir / "model.pt"), "--json"]) == 0
    results = _json(capsys)["results"]
    dicom_probs = torch.tensor([results[0]["probabilities"][c] for c in CLASSES])
    read = load_dicom  # the oracle's own reader
    torch.testing.assert_close(dicom_probs, _oracle(model, [path], read)[0],
                               rtol=0, atol=1e-6)
    # Stretching ignores any increasing linear rescaling, so the DICOM reads like its PNG.
    png_probs = torch.tensor([results[1]["probabilities"][c] for c in CLASSES])
    torch.testing.assert_close(dicom_probs, png_probs, rtol=0, atol=1e-4)


def test_table_keeps_file_names_whole_at_80_columns(run_dir, xrays, tmp_path, capsys,
                                                   monkeypatch):
    """Piped output is 80 columns wide: the probability headers wrap, the names do not."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    for src in xrays:
        shutil.copy(src, tmp_path / src.name)
    names = [src.name for src in xrays]
    assert cli.main(["predict", *names, "--model", str(run_dir / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    for name in names:
        assert any(name in line for line in out.splitlines()), name
