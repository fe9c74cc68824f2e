"""Export: the scripted and exported pipeline against the eager Python pipeline.

The oracle is the Python path training and evaluation use: `transforms.prepare`, `/ 255`,
`transforms.eval_transform`, the model, softmax. Every exported format must give the same
probabilities, before and after saving and loading, for float and uint8 input and several
image sizes. A tiny ResNet18 (4 classes) at 32 px keeps the file fast; its batch-norm
statistics are randomised so that a graph left in training mode could not pass.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_resnet

import cxrlearn
from cxrlearn.checkpoint import save_checkpoint
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import (
    EXPORT_FORMAT,
    EndToEndModel,
    ExportMetadata,
    eager_probs,
    export_program,
    export_torchscript,
    read_metadata,
    read_weights,
    resize_hw,
    sample_check_images,
    upstream_deprecation,
    weights_sha256,
)
from cxrlearn.export.files import _load_graph as load_graph  # runs a file: ours only
from cxrlearn.trained import open_model
from cxrlearn.transforms import Preprocess, eval_transform, prepare

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
SIZE = 32
PREPROCESS = Preprocess(SIZE)
SIZES = [(SIZE, SIZE), (57, 41), (128, 128), (20, 26)]  # equal, non-square, larger, smaller


def _checkpoint(path: Path, model: torch.nn.Module, preprocess: Preprocess = PREPROCESS,
                **extra) -> Path:
    return save_checkpoint(path, {
        "model": model.state_dict(), "class_names": CLASSES, "epoch": 1,
        "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                 "preprocess": preprocess.to_dict()},
        **extra,
    })


def _images(seed: int = 0) -> list[np.ndarray]:
    """Smooth random grey images of several sizes, as load_image returns them (k / 255)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        coarse = torch.from_numpy(rng.random((1, 1, 5, 5)))
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0, 0]
        out.append(((smooth.numpy() * 200 + 20).round() / 255).astype(np.float32))
    return out


def _python_pipeline(model, image: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
    """The oracle, spelled out with the functions training uses. Shape: (H, W) -> (K,)."""
    x = prepare(image, SIZE).to(torch.float32) / 255.0  # (1, S, S)
    x = eval_transform(3)(x)  # (3, S, S)
    with torch.no_grad():
        return torch.softmax(model(x[None]) / temperature, dim=1)[0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_resnet()


@pytest.fixture(scope="module")
def scripted(model) -> torch.jit.ScriptModule:
    with upstream_deprecation("`torch.jit.script`"):
        return torch.jit.script(EndToEndModel(model, PREPROCESS))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict:
    """One checkpoint and its three exports, shared by the tests of this file."""
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root / "best.pt", model)
    trained = open_model(ckpt)
    return {
        "checkpoint": ckpt,
        "torchscript": trained.export(root / "model.pt"),
        "lite": trained.export(root / "model.ptl", "lite"),
        "export": trained.export(root / "model.pt2", "export"),
    }


# ---------------------------------------------------------------------------------------
# The wrapper's preprocessing and outputs
# ---------------------------------------------------------------------------------------


def test_wrapper_preprocessing_equals_python_pipeline(model, scripted):
    wrapper = EndToEndModel(model, PREPROCESS)
    for image in _images():
        want = eval_transform(3)(prepare(image, SIZE).to(torch.float32) / 255.0)[None]
        x = torch.from_numpy(image)
        u8 = (x * 255).round().to(torch.uint8)
        for given in (x, u8):
            assert torch.equal(wrapper.preprocess(given), want)
            assert torch.equal(scripted.preprocess(given), want)
        assert torch.equal(PREPROCESS.network_input(image), want[0])


def test_eager_probs_is_the_python_pipeline(model):
    images = _images()
    got = eager_probs(model, images, PREPROCESS, temperature=1.7)
    want = torch.stack([_python_pipeline(model, im, 1.7) for im in images])
    # One batch of 4 against 4 batches of 1: convolution kernels may sum in another order.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(images)))


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_scripted_equals_eager_for_each_size(model, scripted, dtype):
    wrapper = EndToEndModel(model, PREPROCESS)
    for image in _images(1):
        x = torch.from_numpy(image)
        if dtype == "uint8":
            x = (x * 255).round().to(torch.uint8)
        want = _python_pipeline(model, image)[None]  # the uint8 image / 255 is `image`
        torch.testing.assert_close(wrapper(x), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted(x), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted(x[None, None]), want, rtol=0, atol=1e-6)


def test_batch_is_stretched_image_by_image(model, scripted):
    a, b = _images(2)[0], _images(3)[0]  # same size
    batch = torch.from_numpy(np.stack([a, b * 0.5 + 0.1]))[:, None]  # (2, 1, S, S)
    want = torch.stack([_python_pipeline(model, a), _python_pipeline(model, b * 0.5 + 0.1)])
    torch.testing.assert_close(scripted(batch), want, rtol=0, atol=1e-6)


def test_temperature_divides_the_logits(model):
    image = _images()[1]
    x = eval_transform(3)(prepare(image, SIZE).to(torch.float32) / 255.0)[None]
    with torch.no_grad():
        logits = model(x)
    for t in (0.5, 3.0):
        got = EndToEndModel(model, PREPROCESS, temperature=t)(torch.from_numpy(image))
        torch.testing.assert_close(got, torch.softmax(logits / t, dim=1), rtol=0, atol=1e-7)


def test_constant_image_gives_probabilities_not_nan(scripted):
    probs = scripted(torch.full((40, 40), 7, dtype=torch.uint8))
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


def test_wrapper_rejects_other_shapes_and_empty_images(model, scripted):
    wrapper = EndToEndModel(model, PREPROCESS)
    for bad in (torch.zeros(3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(0, 5)):
        with pytest.raises(ValueError):
            wrapper(bad)
        with pytest.raises(torch.jit.Error, match="image"):
            scripted(bad)


def test_wrapper_leaves_the_callers_model_alone():
    model = random_resnet(1).train()
    EndToEndModel(model, PREPROCESS)
    assert model.training and all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------
# Files: TorchScript, lite interpreter, torch.export
# ---------------------------------------------------------------------------------------


def test_torchscript_file_matches_eager_after_reload(model, exported):
    result = exported["torchscript"]
    assert result.max_abs_diff <= 1e-5 and result.num_checks == 11
    loaded = open_model(result.path)
    assert loaded.class_names == tuple(CLASSES) and loaded.kind == "torchscript"
    for image in _images(4):
        want = _python_pipeline(model, image)[None]
        x = torch.from_numpy(image)
        torch.testing.assert_close(loaded.probs([x]), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.probs([(x * 255).round().to(torch.uint8)]), want,
                                   rtol=0, atol=1e-6)


def test_torchscript_file_needs_only_torch(model, exported):
    """An app uses torch.jit.load and the extra files, nothing from cxrlearn."""
    extra = {"cxrlearn.json": "", "class_names.txt": ""}
    with upstream_deprecation("`torch.jit.load`"):
        plain = torch.jit.load(str(exported["torchscript"].path), _extra_files=extra)
    doc = json.loads(extra["cxrlearn.json"])
    assert doc["format"] == EXPORT_FORMAT and doc["class_names"] == CLASSES
    assert extra["class_names.txt"].decode().splitlines() == CLASSES
    image = sample_check_images()[2]
    torch.testing.assert_close(plain(torch.from_numpy(image)),
                               _python_pipeline(model, image)[None], rtol=0, atol=1e-6)


def test_metadata_round_trip(model, exported):
    meta = exported["torchscript"].metadata
    assert read_metadata(exported["torchscript"].path) == meta
    assert ExportMetadata.from_json(meta.to_json()) == meta
    assert meta.class_names == tuple(CLASSES)
    assert meta.preprocess == PREPROCESS
    assert meta.temperature == 1.0
    assert meta.weights_sha256 == weights_sha256(model.state_dict())
    assert (meta.cxrlearn_version, meta.torch_version) == (cxrlearn.__version__,
                                                           torch.__version__)
    assert meta.input_size is None and meta.input_dtypes == ("uint8", "float32")
    doc = json.loads(meta.to_json())
    assert (doc["image_size"], doc["low"], doc["high"]) == (SIZE, 2.0, 98.0)
    assert doc["mean"] == [0.485, 0.456, 0.406] and doc["std"] == [0.229, 0.224, 0.225]


def test_lite_file_matches_eager(model, exported):
    result = exported["lite"]
    assert result.max_abs_diff <= 1e-5
    # On builds without XNNPACK (the Linux CPU wheels) the optimisation is skipped, says so.
    assert all("optimize_for_mobile skipped" in n for n in result.notes)
    loaded = open_model(result.path)
    assert loaded.class_names == tuple(CLASSES) and loaded.kind == "lite"
    # The graph, loaded as a phone loads it (safe here: this test wrote the file).
    graph = load_graph(result.path, "lite")
    assert type(graph).__name__ == "LiteScriptModule"
    x = torch.from_numpy(_images(5)[2])
    assert torch.equal(graph.run_method("preprocess", x),
                       PREPROCESS.network_input(_images(5)[2])[None])
    image = _images(5)[1]
    x = (torch.from_numpy(image) * 255).round().to(torch.uint8)
    torch.testing.assert_close(loaded.probs([x]), _python_pipeline(model, image)[None],
                               rtol=0, atol=1e-6)


def test_program_file_matches_eager_at_its_size(model, exported):
    result = exported["export"]
    assert result.max_abs_diff <= 1e-5 and result.metadata.input_size == (SIZE, SIZE)
    assert result.metadata.input_dtypes == ("float32",)
    loaded = open_model(result.path)
    assert loaded.notes == ("model.pt2 is a torch.export program for 32x32 inputs: images "
                            "of other sizes are resized to that first",)
    images = [resize_hw(im, (SIZE, SIZE)) for im in _images(6)]
    want = torch.stack([_python_pipeline(model, im) for im in images])
    torch.testing.assert_close(loaded.probs(images), want, rtol=0, atol=1e-6)
    big = _images(6)[2]  # 128 x 128: resized to the program's 32 x 32 first
    torch.testing.assert_close(loaded.probs([big]),
                               _python_pipeline(model, resize_hw(big, (SIZE, SIZE)))[None],
                               rtol=0, atol=1e-6)


def test_program_needs_pt2_suffix(model, tmp_path):
    with pytest.raises(CxrlearnError, match=r"model\.pt: .*\.pt2"):
        export_program(model, tmp_path / "model.pt", class_names=CLASSES, preprocess=PREPROCESS)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_temperature_is_exported(model, tmp_path):
    ckpt = _checkpoint(tmp_path / "calibrated.pt", model, temperature=2.5)
    image = sample_check_images()[0]
    result = open_model(ckpt).export(tmp_path / "m.pt", check_images=[image])
    assert result.metadata.temperature == 2.5
    got = open_model(result.path).probs([torch.from_numpy(image)])
    torch.testing.assert_close(got, _python_pipeline(model, image, 2.5)[None],
                               rtol=0, atol=1e-6)
    assert not torch.allclose(got, _python_pipeline(model, image, 1.0)[None], atol=1e-3)


def test_a_file_exported_with_flip_averaging_is_refused(exported, tmp_path):
    """cxrlearn 0.1 could export a graph that averaged two passes; this one rebuilds the
    model without it, so it refuses rather than answer differently from the file."""
    _rewrite_json(exported["torchscript"].path, tmp_path / "flip.pt",
                  lambda d: d.update(flip_average=True))
    with pytest.raises(CxrlearnError, match=r"flip\.pt: exported with flip averaging.*export "
                                            "the checkpoint again"):
        open_model(tmp_path / "flip.pt")


def test_weights_are_read_as_data_from_every_format(model, exported):
    want = {f"model.{k}": v for k, v in model.state_dict().items()}
    for name in ("torchscript", "lite", "export"):
        result = exported[name]
        got = read_weights(result.path, result.metadata)
        for key, value in want.items():
            assert torch.equal(got[key], value), (name, key)
    # The safe rebuild answers like the graph an app loads (to the parity tolerance).
    image = sample_check_images()[3]
    graph = load_graph(exported["torchscript"].path, "torchscript")
    torch.testing.assert_close(open_model(exported["torchscript"].path).probs([image]),
                               graph(torch.from_numpy(image)), rtol=0, atol=1e-6)


def test_failed_parity_check_writes_nothing(model, tmp_path, monkeypatch):
    import cxrlearn.export.files as files

    real = files.eager_probs
    monkeypatch.setattr(files, "eager_probs",
                        lambda *a, **k: real(*a, **k).roll(1, dims=1))  # a wrong reference
    with pytest.raises(CxrlearnError, match=r"model\.pt: .*disagrees.*nothing was written"):
        export_torchscript(model, tmp_path / "model.pt", class_names=CLASSES,
                           preprocess=PREPROCESS, check_images=sample_check_images()[:1])
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary copy


def test_class_names_must_match_the_outputs(model, tmp_path):
    with pytest.raises(CxrlearnError, match=r"m\.pt: the model has 4 outputs but there are 2"):
        export_torchscript(model, tmp_path / "m.pt", class_names=["a", "b"],
                           preprocess=PREPROCESS, check_images=sample_check_images()[:1])
    assert list(tmp_path.iterdir()) == []


def test_eager_probs_puts_the_mode_back():
    model = random_resnet(2).train()
    eager_probs(model, _images()[:1], PREPROCESS)
    assert model.training


def test_eager_probs_runs_without_tf32_and_puts_the_settings_back():
    """The reference of the parity check is full float32 on a GPU too (TF32 differs from
    the CPU by ~1e-3, the check allows 1e-5); the user's own TF32 choice comes back."""
    backends = torch.backends

    def tf32() -> tuple[bool, bool]:
        return backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32

    before = tf32()  # (monkeypatch cannot restore these properties)
    seen = []
    network = random_resnet(2)
    network.register_forward_pre_hook(lambda module, args: seen.append(tf32()))
    try:
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = True  # a user's choice
        eager_probs(network, _images()[:1], PREPROCESS)
        assert seen == [(False, False)]
        assert tf32() == (True, True)
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = before


def test_export_of_a_bare_model_needs_its_settings(model, tmp_path):
    with pytest.raises(TypeError, match="class_names"):
        export_torchscript(model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Reading an export back (open_model): clear errors
# ---------------------------------------------------------------------------------------


def test_a_checkpoint_is_not_read_as_an_export(exported):
    ckpt = exported["checkpoint"]
    assert read_metadata(ckpt) is None
    assert open_model(ckpt).kind == "checkpoint"


def test_other_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CxrlearnError, match=r"notes\.pt: not a checkpoint: not a PyTorch file"):
        open_model(text)
    with pytest.raises(CxrlearnError, match=r"missing\.pt: no such file"):
        open_model(tmp_path / "missing.pt")
    with pytest.raises(CxrlearnError, match=r"missing\.pt: no such file"):
        read_metadata(tmp_path / "missing.pt")


def _rewrite_json(src: Path, dest: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/extra/cxrlearn.json"):
                doc = json.loads(data)
                change(doc)
                data = json.dumps(doc).encode()
            zout.writestr(info, data)


def test_open_model_notices_changed_weights_and_foreign_markers(exported, tmp_path):
    src = exported["torchscript"].path
    _rewrite_json(src, tmp_path / "changed.pt", lambda d: d.update(weights_sha256="0" * 64))
    with pytest.raises(CxrlearnError, match=r"changed\.pt: the weights do not match"):
        open_model(tmp_path / "changed.pt")
    _rewrite_json(src, tmp_path / "other.pt", lambda d: d.update(format="someone-else-v3"))
    with pytest.raises(CxrlearnError, match=r"other\.pt: not a cxrlearn-export-v1 file"):
        open_model(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------


def test_weights_sha256_by_hand():
    state = {"b": torch.tensor([1], dtype=torch.uint8), "a": torch.tensor([2, 3],
                                                                          dtype=torch.uint8)}
    want = hashlib.sha256(b"a|torch.uint8|(2,)|\x02\x03b|torch.uint8|(1,)|\x01").hexdigest()
    assert weights_sha256(state) == want
    assert weights_sha256(dict(reversed(state.items()))) == want  # order does not matter
    state["a"] = torch.tensor([2, 4], dtype=torch.uint8)
    assert weights_sha256(state) != want


def test_preprocess_dict_round_trip():
    p = Preprocess(64, 1.0, 99.0, 1, (0.4,), (0.3,))
    assert Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert Preprocess(64, channels=1).mean == (0.449,)  # the grey defaults follow channels
    with pytest.raises(ValueError, match="mean and std"):
        Preprocess(64, channels=1, mean=(0.4, 0.4, 0.4))


def test_upstream_deprecation_hides_only_the_named_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with upstream_deprecation("`torch.jit.script`"):
            warnings.warn("`torch.jit.script` is deprecated. Please switch to ...",
                          DeprecationWarning, stacklevel=1)
            warnings.warn("`torch.jit.load` is deprecated.", DeprecationWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("`torch.jit.script` is deprecated. again", DeprecationWarning,
                      stacklevel=1)
    assert [str(w.message)[:16] for w in caught] == [
        "`torch.jit.load`", "something else", "`torch.jit.scrip"]


def test_sample_check_images_are_real_xrays():
    images = sample_check_images()
    assert [im.shape for im in images] == [(128, 128)] * 4 + [(117, 101)]
    assert all(im.dtype == np.float32 and 0 <= im.min() < im.max() <= 1 for im in images)
