"""`cxrlearn.trained`: one face for a model, whatever file it came from.

Oracles: `eager_probs` (the Python pipeline every export is checked against) on the
network the checkpoint was saved from; the network's own weights; and counts of the calls
that must happen once (monkeypatch) next to the numbers they must not change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_resnet

import cxrlearn.trained as trained
from cxrlearn.checkpoint import load_checkpoint, model_state, save_checkpoint
from cxrlearn.data import (
    load_image,
    prepare_images,
    read_manifest,
    scan_folder,
    split_dataset,
    split_items,
    write_manifest,
)
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import eager_probs, weights_sha256
from cxrlearn.resnet import resnet18
from cxrlearn.trained import TrainedModel, open_model
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transforms import Preprocess, eval_transform, train_transform

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
SIZE = 32
ARCH = {"name": "resnet18", "num_classes": 4, "in_channels": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(path: Path, network: torch.nn.Module, **meta) -> Path:
    return save_checkpoint(path, {
        "model": network.state_dict(), "class_names": list(CLASSES), "epoch": 1,
        "meta": {"arch": ARCH, "preprocess": Preprocess(SIZE).to_dict(), **meta}})


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return random_resnet()


@pytest.fixture(scope="module")
def files(network, tmp_path_factory) -> dict[str, Path]:
    """A checkpoint and its three exports."""
    from cxrlearn.export import sample_check_images

    root = tmp_path_factory.mktemp("trained")
    ckpt = _checkpoint(root / "best.pt", network)
    model = open_model(ckpt)
    check = sample_check_images()[:1]  # one image keeps each export's parity check short
    return {"checkpoint": ckpt,
            **{kind: model.export(root / f"model{suffix}", kind, check_images=check).path
               for kind, suffix in (("torchscript", ".pt"), ("lite", ".ptl"),
                                    ("export", ".pt2"))}}


@pytest.fixture(scope="module")
def xray() -> torch.Tensor:
    from cxrlearn.data import sample_root

    image = load_image(sorted((sample_root() / "Normal").glob("*.png"))[0])  # 128 x 128
    return torch.from_numpy(image[:SIZE, :SIZE].copy())  # the .pt2 program's own size


# --- one face ------------------------------------------------------------------------------


def test_every_kind_of_file_gives_the_same_face(files, network, xray):
    want = eager_probs(network, [xray], Preprocess(SIZE))  # (1, K)
    for kind, path in files.items():
        model = open_model(path)
        assert isinstance(model, TrainedModel) and model.kind == kind
        assert model.class_names == CLASSES and model.preprocess == Preprocess(SIZE)
        assert model.temperature == 1.0
        assert model.sha256 == weights_sha256(network.state_dict())
        torch.testing.assert_close(model.probs([xray]), want, rtol=0, atol=1e-6)


def test_a_checkpoints_probs_are_the_eager_pipelines_digit_for_digit(files, network, xray):
    model = open_model(files["checkpoint"])
    images = [xray, xray.T.contiguous(), (xray * 255).round().to(torch.uint8)]
    want = eager_probs(network, images, Preprocess(SIZE))
    assert torch.equal(model.probs(images), want)
    assert torch.equal(model.probs_prepared([model.prepare(im) for im in images]), want)


def test_a_missing_capability_is_refused_in_one_place_and_one_wording(files, tmp_path, xray):
    exported = open_model(files["torchscript"])
    asks = {"Grad-CAM": lambda: exported.explain(xray),
            "evaluation": lambda: exported.logits(None, torch.device("cpu")),
            "export": lambda: exported.export(tmp_path / "again.pt"),
            "updating the checkpoint": lambda: exported.update_checkpoint(temperature=2.0)}
    for purpose, ask in asks.items():
        with pytest.raises(CxrlearnError) as refused:
            ask()
        assert refused.value.message == exported.missing_network(purpose)
        assert refused.value.message == (
            f"{purpose} needs a checkpoint (best.pt, or its run folder): model.pt is an "
            "exported torchscript file, which holds no eager network and gives "
            "probabilities only")
    assert list(tmp_path.iterdir()) == []  # the refused export wrote nothing
    checkpoint = open_model(files["checkpoint"])
    assert checkpoint.missing_network("Grad-CAM") is None
    assert checkpoint.require_network("Grad-CAM") is checkpoint.network


def test_only_open_model_opens_files():
    """The side doors are gone: one loader, and readers of plain data."""
    import cxrlearn.checkpoint
    import cxrlearn.export

    for module, name in ((cxrlearn.export, "load_exported"), (cxrlearn.export, "load_graph"),
                         (cxrlearn.export, "ExportedModel"),
                         (cxrlearn.checkpoint, "model_from_checkpoint")):
        assert not hasattr(module, name), name
    assert trained._READERS[-1] is trained._read_checkpoint  # it reports unknown files


# --- a checkpoint written the way lesson 03 writes it -------------------------------------


def test_a_checkpoint_written_the_lesson_03_way_opens(tiny_dataset, tmp_path):
    """Lesson 03 trains with `fit(..., meta=meta)` on its own datasets; the same steps here,
    smaller. `open_model` gives back the network `fit` validated and kept (by default the
    average of the weights, `ema_epochs`), predicting raw X-rays."""
    scan = scan_folder(tiny_dataset)
    split_rows = split_items(scan.items, test_per_class=1, val_fraction=0.25, seed=0)
    preprocess = Preprocess(SIZE)
    prepared = prepare_images([r.path for r in split_rows], preprocess).images
    train = split_dataset(split_rows, "train", preprocess, train_transform(), images=prepared)
    val = split_dataset(split_rows, "val", preprocess, eval_transform(), images=prepared)
    meta = {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
            "preprocess": Preprocess(SIZE).to_dict()}
    torch.manual_seed(0)
    run_model = resnet18(num_classes=4)
    config = TrainConfig(num_epochs=1, batch_size=8, lr=2e-3, warmup_epochs=0)
    history = fit(run_model, train, val, config, torch.device("cpu"), scan.class_names,
                  out_dir=tmp_path / "run", meta=meta)

    assert config.ema_epochs > 0  # the default: fit validates and keeps the average
    kept = resnet18(num_classes=4)
    kept.load_state_dict(load_checkpoint(tmp_path / "run" / "last.pt")["average"]["network"])
    assert not torch.equal(kept.conv1.weight, run_model.conv1.weight.detach())
    image = load_image(split_rows[0].path)  # a raw file, as a user has it
    for opened in (open_model(tmp_path / "run" / "best.pt"), open_model(tmp_path / "run")):
        assert opened.class_names == tuple(scan.class_names) and opened.epoch == 1
        for name, tensor in kept.state_dict().items():
            assert torch.equal(opened.network.state_dict()[name], tensor), name
        assert torch.equal(opened.probs([image]), eager_probs(kept, [image], Preprocess(SIZE)))

    # The lesson's other way: save_checkpoint(model_state(...)).
    path = save_checkpoint(tmp_path / "state.pt", model_state(
        run_model, scan.class_names, meta, 1, history, config))
    assert torch.equal(open_model(path).probs([image]),
                       eager_probs(run_model, [image], Preprocess(SIZE)))


def test_a_checkpoint_that_does_not_say_how_images_were_prepared_says_what_to_add(
        network, tmp_path):
    path = save_checkpoint(tmp_path / "bare.pt", {
        "model": network.state_dict(), "class_names": list(CLASSES), "meta": {"arch": ARCH}})
    with pytest.raises(CxrlearnError, match=r"bare\.pt: the checkpoint does not say how its "
                                            r"images were prepared.*'preprocess': "
                                            r"Preprocess\(image_size\)\.to_dict\(\)"):
        open_model(path)


# --- done once -----------------------------------------------------------------------------


def test_the_checkpoints_preprocessing_is_parsed_once(files, monkeypatch):
    calls = []
    parse = Preprocess.from_dict.__func__

    def counted(cls, d):
        calls.append(d)
        return parse(cls, d)

    monkeypatch.setattr(Preprocess, "from_dict", classmethod(counted))
    model = open_model(files["checkpoint"])
    assert len(calls) == 1 and model.preprocess == Preprocess(SIZE)


def test_the_manifest_is_read_once(network, tiny_dataset, tmp_path, monkeypatch):
    scan = scan_folder(tiny_dataset)
    rows = split_items(scan.items, test_per_class=1, val_fraction=0.25, seed=0)
    (tmp_path / "run").mkdir()
    write_manifest(tmp_path / "run" / "manifest.csv", rows, scan.root, scan.class_names)
    path = _checkpoint(tmp_path / "run" / "best.pt", network, data_root=str(scan.root))
    want = read_manifest(tmp_path / "run" / "manifest.csv", scan.root, scan.class_names)

    reads = []
    monkeypatch.setattr(trained, "read_manifest",
                        lambda *a: reads.append("rows") or read_manifest(*a))
    monkeypatch.setattr(trained, "manifest_classes", lambda *a: reads.append("classes"))
    model = open_model(path)
    assert model.split == want and model.split is model.split
    assert reads == ["rows"]


def test_a_checkpoint_is_checked_before_its_network_is_built(network, tmp_path):
    path = _checkpoint(tmp_path / "m.pt", network)
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(open_model(path).network(x), network(x), rtol=0, atol=0)
    stored = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "format"}
    three = {"name": "resnet18", "num_classes": 3, "in_channels": 3}
    save_checkpoint(tmp_path / "wrong.pt", {**stored, "class_names": list(CLASSES[:3]),
                                            "meta": {**stored["meta"], "arch": three}})
    with pytest.raises(CxrlearnError, match=r"wrong\.pt: weights do not fit resnet18"):
        open_model(tmp_path / "wrong.pt")
    save_checkpoint(tmp_path / "odd.pt", {**stored, "meta": {**stored["meta"], "arch": three}})
    with pytest.raises(CxrlearnError, match=r"odd\.pt: damaged checkpoint: the network has 3 "
                                            "outputs for 4 class names"):
        open_model(tmp_path / "odd.pt")
