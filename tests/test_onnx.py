"""ONNX export: onnxruntime against the eager pipeline, at sizes the tracer never saw.

The oracle is `eager_probs` (the Python path training uses) and `cxrlearn.gradcam` (autograd)
for the maps. One file is exported through the CLI (`cxrlearn export --format onnx`) from a
checkpoint of a ResNet18 at 64 px (2 x 2 maps at the last block) whose batch-norm statistics
are randomised, so that a graph left in training mode, or specialised to the traced size,
could not pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnx  # noqa: E402
from helpers import random_resnet  # noqa: E402

import cxrlearn  # noqa: E402
from cxrlearn.checkpoint import save_checkpoint  # noqa: E402
from cxrlearn.cli import main  # noqa: E402
from cxrlearn.errors import CxrlearnError  # noqa: E402
from cxrlearn.export import eager_probs, weights_sha256  # noqa: E402
from cxrlearn.export import onnx as onnx_export  # noqa: E402
from cxrlearn.export.onnx import (  # noqa: E402
    ONNX_OPSET,
    WARNING,
    cam_for_class,
    export_onnx,
    read_onnx,
)
from cxrlearn.gradcam import GradCAM  # noqa: E402
from cxrlearn.trained import open_model  # noqa: E402
from cxrlearn.transforms import Preprocess  # noqa: E402

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PREPROCESS = Preprocess(64)  # a 2 x 2 feature map: maps with a "where"
TEMPERATURE = 1.7
SIZES = [(117, 101), (299, 299), (512, 512), (1024, 900)]  # none is the traced 300 x 280


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random grey image with 8-bit levels (k / 255), as load_image returns."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 1, 6, 6)))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0, 0]
    noise = rng.normal(0, 0.02, (h, w))  # distinct values: percentiles between pixels
    return ((np.clip(smooth.numpy() * 0.8 + 0.1 + noise, 0, 1) * 255).round() / 255
            ).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """model.onnx written by `cxrlearn export --format onnx` from a checkpoint."""
    folder = tmp_path_factory.mktemp("onnx")
    model = random_resnet()
    ckpt = save_checkpoint(folder / "best.pt", {
        "model": model.state_dict(), "class_names": CLASSES, "epoch": 1,
        "temperature": TEMPERATURE,
        "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                 "preprocess": PREPROCESS.to_dict()}})
    out = folder / "model.onnx"
    assert main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    return out, model


@pytest.mark.parametrize("h,w", SIZES)
def test_probabilities_match_eager_at_untraced_sizes(exported, h: int, w: int) -> None:
    path, model = exported
    session = read_onnx(path)
    image = _image(h, w, seed=h * w)
    want = eager_probs(model, [image], PREPROCESS, TEMPERATURE)  # (1, K)
    got_float = session.run(image)["probs"]
    u8 = (image * 255).round().astype(np.uint8)
    want_u8 = eager_probs(model, [torch.from_numpy(u8)], PREPROCESS, TEMPERATURE)
    got_u8 = session.run(u8)["probs"]
    assert np.abs(got_float - want.numpy()).max() <= 1e-4
    assert np.abs(got_u8 - want_u8.numpy()).max() <= 1e-4
    assert want.max() - want.min() > 0.05  # not a uniform answer that anything would match


def test_a_batch_matches_eager(exported) -> None:
    path, model = exported
    images = [_image(299, 299, seed=s) for s in range(3)]
    want = eager_probs(model, images, PREPROCESS, TEMPERATURE)  # (3, K)
    got = read_onnx(path).run(np.stack(images)[:, None])["probs"]
    assert np.abs(got - want.numpy()).max() <= 1e-4
    assert not np.allclose(got[0], got[1], atol=1e-3)  # each image its own answer


def test_the_file_is_self_contained_with_its_description(exported) -> None:
    path, model = exported
    proto = onnx.load(str(path), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= ONNX_OPSET
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.external_data_helper._get_all_tensors(proto))
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt", "model.onnx"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["class_names"] == '["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]'
    assert Preprocess.from_dict(__import__("json").loads(props["preprocessing"])) == PREPROCESS
    assert float(props["temperature"]) == TEMPERATURE
    assert props["weights_sha256"] == weights_sha256(model.state_dict())
    assert props["cxrlearn_version"] == cxrlearn.__version__
    assert props["warning"] == WARNING and "not a diagnostic device" in WARNING
    assert [o.name for o in proto.graph.output] == ["probs", "features", "cams"]


def test_the_maps_equal_grad_cam(exported) -> None:
    """CAM from the file's outputs (ReLU, upsample, min-max) against autograd's Grad-CAM."""
    path, model = exported
    session = read_onnx(path)
    for seed, (h, w) in enumerate([(117, 101), (512, 512)]):
        image = _image(h, w, seed=seed + 7)
        out = session.run(image)
        x = PREPROCESS.network_input(image)[None]  # (1, C, S, S)
        drawn = 0  # maps with a "where" (a class no place supports has an all-zero map)
        for target in range(len(CLASSES)):
            with GradCAM(model) as cam:
                want = cam(x, target).cams[0].numpy()  # (S, S)
            got = cam_for_class(out["cams"][0], target, PREPROCESS.image_size)
            assert np.abs(got - want).max() <= 1e-4
            drawn += int(want.max() == 1.0 and want.min() == 0.0)
        assert drawn >= 2


def test_open_model_reads_onnx_behind_the_same_face(exported) -> None:
    path, model = exported
    opened = open_model(path)
    assert opened.kind == "onnx" and opened.class_names == tuple(CLASSES)
    assert opened.preprocess == PREPROCESS and opened.temperature == TEMPERATURE
    assert opened.sha256 == weights_sha256(model.state_dict())
    images = [_image(200, 150, seed=3), _image(64, 80, seed=4)]
    want = eager_probs(model, images, PREPROCESS, TEMPERATURE)
    assert (opened.probs(images) - want).abs().max() <= 1e-4
    with pytest.raises(CxrlearnError, match="Grad-CAM needs a checkpoint"):
        opened.explain(images[0])


def _rewrite(src: Path, dest: Path, change) -> Path:
    proto = onnx.load(str(src))
    change(proto)
    dest.write_bytes(proto.SerializeToString())
    return dest


def test_files_that_cannot_be_verified_are_refused_in_one_line(exported, tmp_path) -> None:
    path, _ = exported

    def external(p: onnx.ModelProto) -> None:
        onnx.external_data_helper.convert_model_to_external_data(
            p, all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)

    def tampered(p: onnx.ModelProto) -> None:
        t = max(p.graph.initializer, key=lambda t: len(t.raw_data))
        t.raw_data = bytes([t.raw_data[0] ^ 1]) + t.raw_data[1:]

    def foreign(p: onnx.ModelProto) -> None:
        del p.metadata_props[:]

    cases = {"external": (external, "external data"),
             "tampered": (tampered, "does not match the sha256"),
             "foreign": (foreign, "without cxrlearn's metadata")}
    for name, (change, words) in cases.items():
        bad = _rewrite(path, tmp_path / f"{name}.onnx", change)
        with pytest.raises(CxrlearnError, match=words) as info:
            open_model(bad)
        assert "\n" not in str(info.value)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    with pytest.raises(CxrlearnError, match="not an ONNX file"):
        open_model(junk)


def test_the_percentile_pitfall_fails_the_export_and_leaves_no_file(tmp_path, monkeypatch):
    """Ranks fixed for the traced pixel count (what an exporter makes of
    `contrast.percentile_tensor`'s `int(pos)` when H and W are declared with `dynamic_axes`)
    answer wrongly at every other size; the parity check must catch it, and nothing may be
    written. (With `Dim` shapes, as `export_onnx` declares them, torch.export refuses
    `int(pos)` outright: that is checked below too.)"""
    traced = onnx_export.TRACE_SIZE[0] * onnx_export.TRACE_SIZE[1]

    def frozen_rank(values: torch.Tensor, q: float) -> torch.Tensor:
        lo = int((q / 100.0) * (traced - 1))  # the traced size's rank, a constant
        return values.gather(1, torch.full((values.shape[0], 1), lo))

    def python_rank(values: torch.Tensor, q: float) -> torch.Tensor:
        lo = int((q / 100.0) * (values.shape[1] - 1))  # contrast.percentile_tensor's way
        return values[:, lo:lo + 1]

    out = tmp_path / "model.onnx"
    for rank, words in ((frozen_rank, "(disagrees with|fails on).* never traced"),
                        (python_rank, "could not capture the model")):
        monkeypatch.setattr(onnx_export, "percentile_by_shape", rank)
        with pytest.raises(CxrlearnError, match=words):
            export_onnx(random_resnet(), out, class_names=CLASSES, preprocess=PREPROCESS)
        assert list(tmp_path.iterdir()) == []


def test_int8_is_smaller_and_close(exported, tmp_path) -> None:
    _, model = exported
    calibration = [_image(128, 128, seed=100 + s) for s in range(8)]
    result = export_onnx(model, tmp_path / "int8.onnx", class_names=CLASSES,
                         preprocess=PREPROCESS, temperature=TEMPERATURE, quantize="int8",
                         calibration_images=calibration)
    assert result.max_abs_diff <= onnx_export.INT8_ATOL
    assert (tmp_path / "int8.onnx").stat().st_size < exported[0].stat().st_size / 3
    props = read_onnx(tmp_path / "int8.onnx").props
    assert props["quantization"].startswith("int8")
    assert open_model(tmp_path / "int8.onnx").notes  # says it is quantized
