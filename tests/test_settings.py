"""One definition per setting: the stored form, the nested replace, the comparison, the checks.

Oracles: values written out by hand (what a cxrlearn 0.2.0 `config.json` held, what a
setting's help must be), and round trips through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cxrlearn.runs import RunSettings
from cxrlearn.schedule import SizeSchedule
from cxrlearn.settings import (
    differences,
    flag_settings,
    replace_settings,
    to_plain,
)
from cxrlearn.training import TrainConfig
from cxrlearn.transforms import Preprocess


def _every_setting(cls: type) -> list[dataclasses.Field]:
    found = []
    for f in dataclasses.fields(cls):
        found.append(f)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        if dataclasses.is_dataclass(default):
            found += _every_setting(type(default))
    return found


@pytest.mark.parametrize("cls", [RunSettings, Preprocess, TrainConfig, SizeSchedule])
def test_every_setting_has_whole_sentences_of_help(cls):
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help", "")
        assert (text[:1].isupper() or text[:1].isdigit()) and text.endswith("."), f.name


def test_field_names_are_unique_across_the_nest():
    """`replace_settings` and the flags name a setting by its field alone."""
    names = [f.name for f in _every_setting(RunSettings)] + \
        [f.name for f in dataclasses.fields(SizeSchedule)]
    assert len(names) == len(set(names))


def test_stored_settings_round_trip_through_json(tmp_path):
    settings = replace_settings(RunSettings(data_root=tmp_path), classes=("A", "B"),
                                image_size=64, channels=1, lr=0.01, patience=3, sizes=None)
    stored = json.loads(json.dumps(to_plain(settings)))
    assert stored["preprocess"]["channels"] == 1 and stored["classes"] == ["A", "B"]
    assert RunSettings.from_dict(stored) == settings


def test_a_cxrlearn_0_2_0_config_still_reads(tmp_path):
    old = {"data_root": str(tmp_path), "classes": None, "image_size": 32, "channels": 3,
           "test_per_class": 3, "val_fraction": 0.3, "augment": "flip", "pretrained": "none",
           "freeze_backbone": False, "sync_bn": False,
           "train": {**dataclasses.asdict(TrainConfig(num_epochs=2)),
                     "sizes": {"start": 0.75, "hold": 0.7, "full_from": 0.8}}}
    assert RunSettings.from_dict(old) == RunSettings(
        data_root=tmp_path, preprocess=Preprocess(image_size=32), test_per_class=3,
        val_fraction=0.3, augment="flip", train=TrainConfig(num_epochs=2, sizes=SizeSchedule()))


@pytest.mark.parametrize("data, message", [
    ({"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
    ({"train": {"num_epochs": 2.5}}, "train.num_epochs must be a whole number"),
    ({"preprocess": {"image_size": True}}, "preprocess.image_size must be a number"),
    ({"classes": "COVID"}, "classes must be a list"),
    ({"sync_bn": 1}, "sync_bn must be true or false"),
    ({"preprocess": {"image_size": 8}}, "image_size must be between 16 and 2048, got 8"),
    ({"augment": "mirror"}, "augment must be one of flip, flip+shift, flip+affine, none"),
    ({"flips": "alternate", "augment": "none"}, "flips alternate needs an augmentation with"),
    ({"train": None}, "train must not be empty"),
])
def test_bad_stored_values_are_named(data, message):
    with pytest.raises(ValueError) as e:
        RunSettings.from_dict(data)
    assert message in str(e.value)


def test_replace_finds_each_name_where_it_lives():
    base = RunSettings()
    changed = replace_settings(base, image_size=48, seed=7, augment="none")
    assert changed.preprocess == Preprocess(image_size=48)
    assert changed.train == dataclasses.replace(base.train, seed=7)
    assert changed.augment == "none" and base.augment == "flip+shift"  # a copy
    with pytest.raises(ValueError, match="no setting named colour"):
        replace_settings(base, colour="red")


def test_differences_name_each_changed_setting_and_its_flag():
    a = RunSettings(data_root=Path("."))
    b = replace_settings(a, image_size=64, lr=0.01, weight_decay=0.0)
    assert [(d.name, d.flag, d.ours, d.theirs) for d in differences(b, a)] == [
        ("image_size", "--image-size", 64, 128), ("lr", "--lr", 0.01, 2e-3),
        ("weight_decay", None, 0.0, 0.05)]
    assert differences(a, a) == []


def test_the_flags_are_the_settings_that_name_one():
    flags = {f.metadata["flag"] for f, _ in flag_settings(RunSettings())}
    assert flags == {"--data", "--classes", "--test-per-class", "--val-fraction",
                     "--image-size", "--channels", "--augment", "--flips", "--pretrained",
                     "--freeze-backbone", "--sync-bn", "--epochs", "--lr", "--batch-size",
                     "--class-weighted", "--progressive-resize", "--patience", "--seed",
                     "--num-workers", "--precise-bn", "--ema-epochs", "--mixup", "--cutmix",
                     "--stochastic-depth"}
