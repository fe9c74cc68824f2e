"""The sample run: trained once into the cache, loaded afterwards, keyed by its settings.

Oracles: a second training into another cache gives bit-identical weights (the run is
deterministic on one machine); re-evaluating the loaded network on validation gives exactly
the score its history recorded for the chosen epoch; the split is the one `split_items`
makes with duplicate groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import cxrlearn
import cxrlearn.sample_run as sample_run_module
from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.data import (
    default_cache_dir,
    dhash,
    duplicate_groups,
    load_image,
    near_duplicate_pairs,
    sample_root,
    scan_folder,
    split_items,
)
from cxrlearn.runs import RunSettings
from cxrlearn.sample_run import (
    SAMPLE_SETTINGS,
    sample_run,
    sample_run_folder,
    sample_run_key,
    sample_settings,
)
from cxrlearn.schedule import SizeSchedule
from cxrlearn.training import TrainConfig, evaluate, make_loss_fn
from cxrlearn.transforms import Preprocess

TINY = sample_settings(image_size=32, num_epochs=2, batch_size=64)


def test_the_sample_settings_are_train_s_with_a_few_changes() -> None:
    """The recipe the lessons' numbers come from: cxrlearn train's settings at 64 px, ten
    epochs, a one-epoch warm-up, full size throughout (each value written out: the oracle)."""
    assert SAMPLE_SETTINGS == RunSettings(
        data_root=None, classes=None, test_per_class=30, val_fraction=0.15,
        preprocess=Preprocess(image_size=64, channels=3), augment="flip+shift",
        pretrained="none", freeze_backbone=False, sync_bn=False,
        train=TrainConfig(num_epochs=10, lr=2e-3, batch_size=32, warmup_epochs=1.0, seed=0,
                          sizes=None, precise_bn_batches=8, ema_epochs=3.0))
    assert RunSettings().train.sizes == SizeSchedule()  # what the sample run turns off
    assert TINY.preprocess.image_size == 32 and TINY.train.batch_size == 64


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny run, trained once for the module."""
    cache = tmp_path_factory.mktemp("cache")
    sample_run(TINY, cache_dir=cache)
    return cache


def test_first_call_trains_a_lean_run_folder(tiny_cache: Path) -> None:
    folder = sample_run_folder(TINY, tiny_cache)
    # A run folder as cxrlearn train writes it, without last.pt (resume state).
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt", "config.json", "history.csv", "learning_curves.png", "manifest.csv"]
    ckpt = load_checkpoint(folder / "best.pt")
    assert not {"optimizer", "scheduler", "rng"} & set(ckpt)  # only what inference needs
    assert ckpt["meta"]["preprocess"]["image_size"] == 32
    assert len(ckpt["history"]) == ckpt["epoch"] <= TINY.train.num_epochs
    assert 0.01 < ckpt["temperature"] < 100  # calibrated on validation, as train does
    # Nothing is left beside it: no temporary folder of the training.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_second_call_loads_without_training(tiny_cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("the cached run was trained again")

    monkeypatch.setattr(sample_run_module, "train_run", no_training)
    first = sample_run(TINY, cache_dir=tiny_cache)
    second = sample_run(TINY, cache_dir=tiny_cache)
    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name


def test_training_is_deterministic(tiny_cache: Path, tmp_path: Path) -> None:
    """Same settings, another cache: the same weights, bit for bit, on this machine."""
    again = sample_run(TINY, cache_dir=tmp_path)
    cached = sample_run(TINY, cache_dir=tiny_cache)
    assert again.folder != cached.folder
    for name, tensor in cached.network.state_dict().items():
        assert torch.equal(tensor, again.network.state_dict()[name]), name


def test_the_run_is_what_its_history_says(tiny_cache: Path) -> None:
    run = sample_run(TINY, cache_dir=tiny_cache)
    # The split: split_items with near-duplicate groups, as cxrlearn train makes it.
    scan = scan_folder(sample_root())
    hashes = np.stack([dhash(load_image(p)) for p, _ in scan.items])
    groups = duplicate_groups(len(scan.items), near_duplicate_pairs(hashes))
    expected = split_items(scan.items, TINY.test_per_class, TINY.val_fraction, TINY.train.seed,
                           groups)
    assert [(r.path.name, r.label, r.split) for r in run.split] == \
           [(r.path.name, r.label, r.split) for r in expected]
    test = run.dataset("test")
    assert len(test) == 4 * TINY.test_per_class
    assert test[0][0].shape == (3, 32, 32)
    # best.pt is the epoch of the best validation macro-F1, and re-evaluated it scores that.
    scores = [r["val_macro_f1"] for r in run.history]
    assert scores[run.epoch - 1] == max(scores)
    val = run.dataset("val")
    loss_fn = make_loss_fn(TINY.train, [0], 4)
    again = evaluate(run.network, DataLoader(val, batch_size=64), loss_fn, torch.device("cpu"),
                     4)
    assert again["macro_f1"] == scores[run.epoch - 1]


@pytest.mark.parametrize("change", [{"image_size": 48}, {"num_epochs": 3}, {"seed": 1},
                                    {"augment": "none"}, {"low": 1.0},
                                    {"channels": 1}, {"lr": 1e-3}, {"test_per_class": 20}])
def test_every_setting_is_in_the_key(change: dict) -> None:
    assert sample_run_key(sample_settings(**change)) != sample_run_key(SAMPLE_SETTINGS)
    assert sample_run_folder(sample_settings(**change)) != sample_run_folder()


def test_the_library_version_is_in_the_key(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    before = sample_run_folder(TINY, tmp_path)
    monkeypatch.setattr(cxrlearn, "__version__", "99.0")
    assert sample_run_folder(TINY, tmp_path) != before


def test_a_failed_training_leaves_nothing(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrlearn.runs as runs

    def interrupted(*args, out_dir, **kwargs):
        (Path(out_dir) / "last.pt").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sample_run(TINY, cache_dir=tmp_path)
    assert list((tmp_path / "sample-runs").iterdir()) == []
    assert not (tmp_path / "sample-runs" / ".cxrlearn.lock").exists()


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.delenv("CXRLEARN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cxrlearn"
    monkeypatch.setenv("CXRLEARN_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert sample_run_folder(TINY).parent == tmp_path / "mine" / "sample-runs"
