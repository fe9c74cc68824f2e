"""The training loop: determinism, exact resume, NaN stop, checkpoints, schedules, devices."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import toy_data, without_timings
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from cxrlearn.checkpoint import load_checkpoint, save_checkpoint
from cxrlearn.device import describe_device, select_device
from cxrlearn.errors import CxrlearnError
from cxrlearn.schedule import SizeSchedule, lr_factor, scaled_side, size_fraction
from cxrlearn.seeding import rng_state, seed_everything, set_rng_state
from cxrlearn.training import (
    Amp,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    class_weights,
    evaluate,
    fit,
    make_loss_fn,
    make_optimizer,
    train_one_epoch,
)
from cxrlearn.transforms import eval_transform, resize, train_transform

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
META = {"arch": {"name": "tiny", "num_classes": 4, "in_channels": 3}}
S = 16


class TinyNet(nn.Module):
    """A few thousand parameters with BatchNorm, so the loop is tested in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.adaptive_avg_pool2d(x, (4, 1))  # (B, 8, 4, 1): one cell per band
        return self.fc(x.flatten(1))


def _run(tmp: Path | None, num_epochs: int = 3, resume=None, on_epoch=None, size: int = S,
         **cfg):
    torch.manual_seed(0)
    model = TinyNet()
    cfg = {"batch_size": 8, "lr": 1e-2, "warmup_epochs": 1, **cfg}
    config = TrainConfig(num_epochs=num_epochs, **cfg)
    history = fit(model, toy_data(6, 0, train_transform(), size),
                  toy_data(3, 1, eval_transform(), size), config, torch.device("cpu"), CLASSES,
                  out_dir=tmp, resume_from=resume, meta=META, on_epoch=on_epoch)
    return model, history


def test_same_seed_gives_bit_identical_weights_and_metrics():
    m1, h1 = _run(None)
    m2, h2 = _run(None)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert without_timings(h1) == without_timings(h2)


def test_different_seed_gives_different_weights():
    m1, _ = _run(None, seed=0)
    m2, _ = _run(None, seed=1)
    assert not torch.equal(m1.conv.weight, m2.conv.weight)


def test_training_learns_the_toy_task():
    _, history = _run(None, num_epochs=8)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.75


@pytest.mark.parametrize("sizes", [None, SizeSchedule(0.5, 0.5, 0.75)])
def test_resume_after_interruption_ends_with_the_same_weights(tmp_path, sizes):
    cfg = {"num_epochs": 4, "size": 64, "sizes": sizes}
    full, h_full = _run(tmp_path / "full", **cfg)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch=stop_after_two, **cfg)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    torch.manual_seed(123)  # resuming must not depend on the global state at the time
    resumed, h_res = _run(tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", **cfg)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert without_timings(h_full) == without_timings(h_res)


def test_progressive_resizing_trains_small_first_and_full_size_at_the_end(tmp_path):
    # 6 epochs from 0.5: 0.5 for epochs 0-2, 0.5 + 0.5 * (3 - 3) / 1.5, (4 - 3) / 1.5, then 1
    _, history = _run(tmp_path, num_epochs=6, size=64, sizes=SizeSchedule(0.5, 0.5, 0.75))
    assert [r["image_size"] for r in history] == [32, 32, 32, 32, 48, 64]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 6


def test_progressive_resizing_follows_the_configured_hold_and_full_from(tmp_path):
    # 5 epochs from 0.5, hold 0.6 (epochs 0-2), full from 0.8 (epoch 4): epoch 3 is
    # 0.5 + 0.5 * (3 - 3) / (4 - 3) = 0.5, so only the last epoch is at full size
    _, history = _run(None, num_epochs=5, size=64, sizes=SizeSchedule(0.5, 0.6, 0.8))
    assert [r["image_size"] for r in history] == [32, 32, 32, 32, 64]
    with pytest.raises(ValueError, match="hold <= full_from"):
        SizeSchedule(hold=0.9, full_from=0.5)
    # cxrlearn train's defaults: three quarters of the side for 70% of the run (96 px of 128)
    assert [SizeSchedule().side(128, e, 12) for e in range(12)] == [96] * 9 + [112, 128, 128]


def test_progressive_epochs_validate_small_and_never_become_best(tmp_path, monkeypatch):
    import cxrlearn.training as training

    sides = []

    def worse_every_epoch(model, loader, loss_fn, device, num_classes, image_size=None):
        sides.append(image_size)
        return {"loss": float(len(sides)), "accuracy": 0.5, "macro_f1": 1.0 - len(sides) / 10}

    monkeypatch.setattr(training, "evaluate", worse_every_epoch)
    _, history = _run(tmp_path, num_epochs=6, size=64, sizes=SizeSchedule(0.5, 0.5, 0.75),
                      patience=1)
    assert sides == [32, 32, 32, 32, 48, 64]
    # Epoch 1 scored best, but at 32 px: only the full-size epoch 6 may become best.pt, and
    # patience (1) does not stop the run during the small epochs.
    assert len(history) == 6
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 6
    _, plain = _run(None, num_epochs=2, size=64)
    assert [r["image_size"] for r in plain] == [64, 64]


def test_ctrl_c_inside_an_epoch_keeps_finished_epochs(tmp_path, ctrl_c_in_epoch):
    ctrl_c_in_epoch(2)
    with pytest.raises(TrainingInterrupted, match="epoch 2.*last.pt holds epoch 1"):
        _run(tmp_path, num_epochs=3)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    def poison_after_first(row):
        if row["epoch"] == 1:
            with torch.no_grad():
                model.conv.weight.fill_(float("nan"))

    torch.manual_seed(0)
    model = TinyNet()
    config = TrainConfig(num_epochs=3, batch_size=8, lr=1e-2, warmup_epochs=1)
    with pytest.raises(TrainingDiverged, match=r"epoch 2: loss became nan.*last.pt holds epoch 1"):
        fit(model, toy_data(6, 0, train_transform()), toy_data(3, 1, eval_transform()),
            config, torch.device("cpu"), CLASSES, out_dir=tmp_path, meta=META,
            on_epoch=poison_after_first)
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    _, history = _run(tmp_path, num_epochs=4)
    best = load_checkpoint(tmp_path / "best.pt")
    scores = [r["val_macro_f1"] for r in history]
    assert best["epoch"] == 1 + scores.index(max(scores))
    assert best["scores"]["val_macro_f1"] == max(scores)
    assert best["scores"] == {k: v for k, v in history[best["epoch"] - 1].items()
                              if k.startswith("val_")}


def test_best_is_lean_and_last_can_resume(tmp_path):
    # best.pt: what using the model needs; last.pt: what resuming needs as well.
    _run(tmp_path, num_epochs=2)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert not {"optimizer", "scheduler", "rng"} & set(best)
    assert {"optimizer", "scheduler", "rng", "best", "since_best"} <= set(last)
    assert set(best["model"]) == set(last["model"])


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    _, history = _run(None, num_epochs=30, patience=1, select_by="val_loss", lr=1e-6)
    losses = [r["val_loss"] for r in history]
    best_at = losses.index(min(losses))
    assert len(history) == best_at + 2  # one epoch without improvement, then stop
    assert len(history) < 30


def test_resume_refuses_a_checkpoint_for_other_classes_or_architecture(tmp_path):
    _run(tmp_path, num_epochs=1)
    last = tmp_path / "last.pt"
    with pytest.raises(CxrlearnError, match=r"last.pt: checkpoint was trained for classes"):
        fit(TinyNet(), toy_data(2, 0, eval_transform()), toy_data(2, 1, eval_transform()),
            TrainConfig(num_epochs=2), torch.device("cpu"), ("A", "B", "C", "D"),
            resume_from=last, meta=META)
    with pytest.raises(CxrlearnError, match="last.pt: checkpoint is for"):
        fit(TinyNet(), toy_data(2, 0, eval_transform()), toy_data(2, 1, eval_transform()),
            TrainConfig(num_epochs=2), torch.device("cpu"), CLASSES, resume_from=last,
            meta={"arch": {"name": "other"}})
    with pytest.raises(CxrlearnError, match="best.pt: holds no training state"):
        fit(TinyNet(), toy_data(2, 0, eval_transform()), toy_data(2, 1, eval_transform()),
            TrainConfig(num_epochs=2), torch.device("cpu"), CLASSES,
            resume_from=tmp_path / "best.pt", meta=META)


def _one_epoch(amp: Amp) -> nn.Module:
    torch.manual_seed(0)
    model, config, data = TinyNet(), TrainConfig(batch_size=8), toy_data(6, 0, train_transform())
    loader = DataLoader(data, batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    train_one_epoch(model, loader, make_loss_fn(config, data.labels, 4),
                    make_optimizer(model, config), torch.device("cpu"), amp=amp)
    return model


def test_one_training_step_serves_a_working_gradient_scaler_too():
    # fp16's GradScaler takes the same five steps as fp32. Scaling by a power of two and
    # dividing back are exact, so the weights are fp32's bit for bit; with an infinite scale
    # every gradient overflows and the scaler skips every step (only BN statistics move).
    plain = _one_epoch(Amp())
    scaled = _one_epoch(Amp(None, torch.amp.GradScaler("cpu", init_scale=2.0**10)))
    for (k, a), b in zip(plain.state_dict().items(), scaled.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    torch.manual_seed(0)
    start = TinyNet().state_dict()
    overflowed = _one_epoch(Amp(None, torch.amp.GradScaler("cpu", init_scale=math.inf)))
    for name, weight in overflowed.named_parameters():
        assert torch.equal(weight.detach(), start[name]), name


def test_fit_refuses_empty_splits():
    with pytest.raises(CxrlearnError, match="at least 2 training and 1 validation"):
        fit(TinyNet(), toy_data(2, 0, eval_transform()),
            torch.utils.data.Subset(toy_data(2, 1, eval_transform()), []),
            TrainConfig(num_epochs=1), torch.device("cpu"), CLASSES)


def test_checkpoint_write_is_atomic_under_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "class_names": list(CLASSES)})

    def crash(obj, f, *a, **k):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CxrlearnError, match="last.pt: could not write the checkpoint.*disk full"
                       ".*the previous file is intact"):
        save_checkpoint(path, {"epoch": 2, "class_names": list(CLASSES)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint survived, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CxrlearnError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(100))
    with pytest.raises(CxrlearnError, match="junk.pt: not a checkpoint: not a PyTorch file"):
        load_checkpoint(junk)
    bare = tmp_path / "bare.pt"
    torch.save(TinyNet().state_dict(), bare)
    with pytest.raises(CxrlearnError, match="bare.pt: not a cxrlearn checkpoint"):
        load_checkpoint(bare)


def test_checkpoint_refuses_pickled_code(tmp_path):
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "cxrlearn-checkpoint-v1", "x": Boom()}, evil)
    with pytest.raises(CxrlearnError, match="evil.pt: not a cxrlearn checkpoint: it holds "
                                            "objects other than plain data") as caught:
        load_checkpoint(evil)
    assert "weights_only" not in str(caught.value)  # never advise turning the guard off


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    seed_everything(5)
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3))  # noqa: NPY002 - testing the global state
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])  # noqa: NPY002


def test_evaluate_matches_the_metrics_module():
    from cxrlearn.evaluation.metrics import classification_report

    torch.manual_seed(0)
    model = TinyNet()
    data = toy_data(5, 3, eval_transform())
    loader = torch.utils.data.DataLoader(data, batch_size=7)
    loss_fn = nn.CrossEntropyLoss()
    got = evaluate(model, loader, loss_fn, torch.device("cpu"), 4)
    model.eval()
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        logits = model(x)
    y = torch.tensor(data.labels)
    report = classification_report(y.numpy(), logits.argmax(1).numpy(), list(CLASSES))
    assert got["loss"] == pytest.approx(loss_fn(logits, y).item(), rel=1e-5)
    assert got["accuracy"] == pytest.approx(report["accuracy"])
    assert got["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])


def test_class_weights_are_inverse_frequency():
    w = class_weights([0, 0, 0, 1], 2)
    torch.testing.assert_close(w, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    torch.testing.assert_close(class_weights([0, 1, 2, 3], 4), torch.ones(4))


@settings(max_examples=60, deadline=None)
@given(total=st.integers(2, 500), frac=st.floats(0, 0.9),
       kind=st.sampled_from(["onecycle", "cosine", "constant"]))
def test_schedules_warm_up_then_never_exceed_the_peak(total, frac, kind):
    warmup = int(frac * total)
    factors = [lr_factor(s, total, warmup, kind) for s in range(total)]
    assert all(0 <= f <= 1 + 1e-12 for f in factors)
    rising = factors[: warmup + 1]
    assert all(a <= b + 1e-12 for a, b in zip(rising, rising[1:], strict=False))
    if kind != "constant":
        falling = factors[warmup:]
        assert all(a >= b - 1e-12 for a, b in zip(falling, falling[1:], strict=False))
    if kind == "onecycle" and total > 10 and warmup > 0:
        assert factors[0] == pytest.approx(1 / 25)
        assert factors[-1] == pytest.approx(1 / 25 / 1e4)


@settings(max_examples=80, deadline=None)
@given(epochs=st.integers(1, 60), start=st.floats(0.05, 1.0))
def test_size_fraction_grows_from_start_to_full_size(epochs, start):
    f = [size_fraction(e, epochs, start, 0.5, 0.75) for e in range(epochs)]
    assert f[-1] == 1.0  # the last epoch is always at full size
    assert all(start - 1e-12 <= x <= 1.0 for x in f)
    assert all(a <= b for a, b in zip(f, f[1:], strict=False))
    if epochs > 1:
        assert f[0] == pytest.approx(start)
    assert sum(x == 1.0 for x in f) >= epochs // 4  # the last quarter at full size


def test_size_fraction_and_scaled_side_hand_values():
    # 8 epochs: 0.5 for epochs 0-3, then 0.5 + 0.5 * (e - 4) / 2 up to epoch 6 = 3/4 of 8
    assert [size_fraction(e, 8, 0.5, 0.5, 0.75) for e in range(8)] == pytest.approx(
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.75, 1, 1])
    assert [size_fraction(e, 2, 0.5, 0.5, 0.75) for e in range(2)] == [0.5, 1.0]
    assert [size_fraction(e, 3, 1.0, 0.5, 0.75) for e in range(3)] == [1.0, 1.0, 1.0]
    assert scaled_side(128, 0.5) == 64
    assert scaled_side(128, 0.7) == 96  # 89.6 -> nearest multiple of 16
    assert scaled_side(128, 0.97) == 128  # 124.2 rounds to 128: never above the full side
    assert scaled_side(16, 0.3) == 16  # at least one multiple
    assert scaled_side(100, 1.0) == 100
    with pytest.raises(ValueError, match="start"):
        size_fraction(0, 4, 0.0, 0.5, 0.75)
    with pytest.raises(ValueError, match=r"start must be in \(0, 1\], got 1.5"):
        SizeSchedule(start=1.5)


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": -1.0}, {"num_epochs": 0},
                                 {"batch_size": 0}, {"num_workers": -1}, {"patience": 0},
                                 {"label_smoothing": 1.0}, {"weight_decay": float("inf")}])
def test_train_config_refuses_impossible_settings(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_train_config_reads_its_own_stored_form():
    import json

    from cxrlearn.settings import from_plain, to_plain

    config = TrainConfig(num_epochs=7, sizes=SizeSchedule(0.5), patience=3)
    assert from_plain(TrainConfig, json.loads(json.dumps(to_plain(config)))) == config
    assert from_plain(TrainConfig, {"lr": 0.1}) == TrainConfig(lr=0.1)  # the rest: defaults
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        from_plain(TrainConfig, {"lr": "fast"})
    with pytest.raises(ValueError, match="start must be in"):
        from_plain(TrainConfig, {"sizes": {"start": 2}})


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.1, 10), shift=st.floats(-5, 5), fraction=st.floats(0.2, 0.9))
def test_resizing_a_batch_commutes_with_normalisation(scale, shift, fraction):
    # Normalising then resizing == resizing then normalising: resizing is a weighted average
    # whose weights sum to one. That is why progressive resizing may act on normalised batches.
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    side = scaled_side(64, fraction)
    small = resize(x, side)
    assert small.shape == (2, 3, side, side)
    torch.testing.assert_close(resize(x * scale + shift, side), small * scale + shift,
                               atol=1e-4 * (scale + abs(shift)), rtol=1e-5)
    assert resize(x, 64) is x


def test_cosine_schedule_hand_values():
    assert lr_factor(0, 11, 0, "cosine") == 1.0
    assert lr_factor(5, 11, 0, "cosine") == pytest.approx((1 + math.cos(math.pi * 5 / 11)) / 2)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert describe_device(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(CxrlearnError, match="unknown device"):
        select_device("tpu-of-dreams")
    if not torch.cuda.is_available():
        assert select_device(None) == select_device("auto")
        with pytest.raises(CxrlearnError, match="CUDA was requested but no CUDA GPU"):
            select_device("cuda")


def test_select_device_prefers_cuda_then_mps(monkeypatch):
    import cxrlearn.device as device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.select_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    assert device.select_device() == torch.device("mps")
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    assert device.select_device() == torch.device("cpu")
    with pytest.raises(CxrlearnError, match="MPS was requested"):
        device.select_device("mps")


# --- precise BN, weight averaging, MixUp/CutMix (issue 22) -----------------------------------

def _bn_input(model: TinyNet, x: torch.Tensor) -> torch.Tensor:
    return model.conv(x)  # (B, 8, H, W): what the BatchNorm sees


def test_precise_bn_is_the_plain_mean_of_the_batch_statistics():
    from cxrlearn.training import recompute_bn_statistics

    torch.manual_seed(0)
    model = TinyNet()
    batches = [torch.randn(5, 3, S, S) * (1 + i) + i for i in range(3)]  # unlike statistics
    model.bn.running_mean.fill_(7.0)  # stale numbers that must be forgotten
    model.eval()
    assert recompute_bn_statistics(model, iter(batches), torch.device("cpu")) == 3
    with torch.no_grad():
        acts = [_bn_input(model, x) for x in batches]
    # By hand: per channel, the mean of the batch means and of the unbiased batch variances.
    means = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    variances = torch.stack([a.transpose(0, 1).flatten(1).var(dim=1, unbiased=True)
                             for a in acts]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, means)
    torch.testing.assert_close(model.bn.running_var, variances)
    assert not model.training and model.bn.momentum == 0.1  # mode and momentum restored


def test_precise_bn_keeps_the_statistics_when_given_no_batch_and_spares_frozen_norms():
    from cxrlearn.training import recompute_bn_statistics

    model = TinyNet()
    model.bn.running_mean.fill_(3.0)
    assert recompute_bn_statistics(model, iter([]), torch.device("cpu")) == 0
    assert torch.equal(model.bn.running_mean, torch.full((8,), 3.0))

    class FrozenNorm(TinyNet):  # as cxrlearn.transfer.freeze_backbone leaves a BatchNorm
        def train(self, mode: bool = True):
            super().train(mode)
            self.bn.eval()
            return self

    frozen = FrozenNorm()
    frozen.bn.running_mean.fill_(3.0)
    recompute_bn_statistics(frozen, iter([torch.randn(4, 3, S, S)]), torch.device("cpu"))
    assert torch.equal(frozen.bn.running_mean, torch.full((8,), 3.0))


def test_stale_statistics_mislead_validation_and_precise_bn_repairs_it():
    """Weights that moved since the statistics were gathered: scaling the convolution by c > 0
    changes nothing in training mode (BatchNorm divides the scale out) but misleads running
    statistics gathered before. Recomputed, the loss is the unscaled network's again."""
    import copy

    from cxrlearn.training import recompute_bn_statistics

    model, _ = _run(None, num_epochs=8)
    train = toy_data(6, 0, train_transform())
    val = DataLoader(toy_data(3, 1, eval_transform()), batch_size=8)
    loss_fn, cpu = nn.CrossEntropyLoss(), torch.device("cpu")

    def batches():
        return (x for x, _ in DataLoader(train, batch_size=8))

    recompute_bn_statistics(model, batches(), cpu)
    fresh = evaluate(model, val, loss_fn, cpu, 4)["loss"]
    for scale in (0.05, 20.0):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            moved.conv.weight.mul_(scale)
            moved.conv.bias.mul_(scale)
        stale = evaluate(moved, val, loss_fn, cpu, 4)["loss"]
        recompute_bn_statistics(moved, batches(), cpu)
        repaired = evaluate(moved, val, loss_fn, cpu, 4)["loss"]
        assert abs(stale - fresh) > 0.5 * fresh, scale
        assert repaired == pytest.approx(fresh, rel=1e-2), scale  # eps: 1e-5


def test_fit_validates_with_recomputed_statistics():
    from cxrlearn.training import recompute_bn_statistics

    model, history = _run(None, num_epochs=2, precise_bn_batches=2, ema_epochs=0)
    # Without a weight average the live network is validated. The last epoch's statistics
    # are those of its first two batches: measured again by hand on the same batches, they
    # agree.
    mean = model.bn.running_mean.clone()
    train = toy_data(6, 0, train_transform())
    train.set_epoch(1)
    from cxrlearn.training import train_loader
    config = TrainConfig(num_epochs=2, batch_size=8, precise_bn_batches=2)
    recompute_bn_statistics(model, [x for x, _ in list(train_loader(train, config, 1))[:2]],
                            torch.device("cpu"))
    torch.testing.assert_close(model.bn.running_mean, mean)


def test_weight_average_follows_the_hand_written_formula():
    from cxrlearn.training import WeightAverage

    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    for n, w in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
        assert average.network.weight[0, 0].item() == pytest.approx(expected)
    assert average.network.weight.requires_grad == model.weight.requires_grad  # a plain copy
    average.restart()
    assert average.network.weight[0, 0].item() == 8.0 and average.updates == 0
    assert WeightAverage.over_epochs(model, 2, 5).decay == pytest.approx(0.9)


def test_after_a_restart_the_average_is_the_mean_until_its_memory_is_reached():
    # Late in a run (progressive resizing restarts the average at each new size), the
    # warm-up that forgets the random start must not count from the restart: it kept the
    # memory near a ninth of the steps since it, about 1 epoch where 3 were asked for.
    from cxrlearn.training import WeightAverage

    model = nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, decay=0.9)  # memory about 10 steps
    for _ in range(200):  # well past the warm-up
        average.update()
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.restart()  # the restart's weights: 0
    seen = [0.0]
    expected = 0.0
    for n, w in enumerate([3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 24.0, 27.0, 30.0, 33.0],
                          start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update()
        seen.append(w)
        d = min(0.9, n / (n + 1))  # the plain mean, then the EMA of decay 0.9
        expected = d * expected + (1 - d) * w
        assert average.network.weight[0, 0].item() == pytest.approx(expected)
        if n <= 9:  # n / (n + 1) <= 0.9: the mean of the restart's weights and all since
            assert expected == pytest.approx(sum(seen) / len(seen))
    assert average.steps == 211 and average.updates == 11
    state = average.state_dict()
    reloaded = WeightAverage(model, decay=0.9)
    reloaded.load_state_dict(state)
    assert (reloaded.steps, reloaded.updates) == (211, 11)


def test_precise_bn_measures_the_averaged_resnet18s_own_statistics():
    # ResNet.train keeps BatchNorms with no trainable weight in eval mode (freeze_backbone);
    # an average whose copy had its gradients turned off was such a network, so precise BN
    # left it with reset statistics (mean 0, variance 1) and it validated as garbage.
    from cxrlearn.resnet import resnet18
    from cxrlearn.training import WeightAverage, recompute_bn_statistics

    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    average = WeightAverage(model, decay=0.9)
    batches = [torch.randn(4, 3, 32, 32) + i for i in range(2)]
    assert recompute_bn_statistics(average.network, batches, torch.device("cpu")) == 2
    recompute_bn_statistics(model, batches, torch.device("cpu"))
    for (name, a), b in zip(average.network.state_dict().items(), model.state_dict().values(),
                            strict=True):  # the same weights, so the same statistics
        torch.testing.assert_close(a, b, msg=name)
    assert int(average.network.bn1.num_batches_tracked) == 2
    assert average.network.layer4[1].bn2.running_var.ne(1).all()


def test_an_average_that_keeps_nothing_validates_as_the_live_resnet18():
    # decay 0 (`ema_epochs` below one step): the average is the live network after every
    # step, so with its own precise-BN statistics it must score exactly what the live one does.
    from cxrlearn.resnet import resnet18

    def run(**cfg):
        torch.manual_seed(0)
        config = TrainConfig(num_epochs=2, batch_size=8, lr=1e-2, warmup_epochs=1,
                             precise_bn_batches=2, **cfg)
        return fit(resnet18(num_classes=4), toy_data(4, 0, train_transform(), 32),
                   toy_data(2, 1, eval_transform(), 32), config, torch.device("cpu"), CLASSES)

    assert without_timings(run(ema_epochs=1e-6)) == without_timings(run(ema_epochs=0))


def test_fit_keeps_the_averaged_network_in_best_and_resumes_it_exactly(tmp_path):
    cfg = {"num_epochs": 4, "ema_epochs": 1.0, "mixup": 0.4, "cutmix": 1.0,
           "precise_bn_batches": 2}
    full, h_full = _run(tmp_path / "full", **cfg)
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    last = load_checkpoint(tmp_path / "full" / "last.pt")
    assert torch.equal(last["model"]["conv.weight"], full.conv.weight.detach())
    assert "average" in last
    if best["epoch"] == 4:  # best.pt holds the average, not the live weights
        assert torch.equal(best["model"]["conv.weight"],
                           last["average"]["network"]["conv.weight"])
        assert not torch.equal(best["model"]["conv.weight"], full.conv.weight.detach())

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch=stop_after_two, **cfg)
    resumed, h_res = _run(tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", **cfg)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert without_timings(h_full) == without_timings(h_res)
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")["average"]["network"]
    for k, v in last["average"]["network"].items():
        assert torch.equal(v, cut[k]), k


def _signal_in(monkeypatch, signum: int, phase: str, call: int) -> None:
    """Send `signum` to this process in the `call`-th forward pass of `phase` over the run:
    "step" (a training step, between its forward and its update: mid-step) or "bn" (precise
    BN's forward passes, after an epoch's last step). Deterministic, not a race."""
    real, calls = TinyNet.forward, {"n": 0}

    def forward(self, x):
        if self.training and torch.is_grad_enabled() == (phase == "step"):
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signum)
        return real(self, x)

    monkeypatch.setattr(TinyNet, "forward", forward)


# Three steps an epoch; epoch 2 is stopped mid-step 2 (5th step of the run), mid-step 3 (its
# last: all steps done when it stops), or in precise BN after its last step.
@pytest.mark.parametrize(("phase", "call", "batches"), [("step", 5, 2), ("step", 6, 3),
                                                        ("bn", 3, 3)])
def test_ctrl_c_mid_epoch_saves_the_epoch_so_far_and_resumes_bit_for_bit(
        tmp_path, monkeypatch, phase, call, batches, same_state):
    import signal

    cfg = {"num_epochs": 3, "ema_epochs": 1.0, "mixup": 0.4, "cutmix": 1.0,
           "precise_bn_batches": 2}
    full, h_full = _run(tmp_path / "full", **cfg)
    with monkeypatch.context() as m:
        _signal_in(m, signal.SIGINT, phase, call)
        with pytest.raises(TrainingInterrupted) as stopped:
            _run(tmp_path / "cut", **cfg)
    assert stopped.value.signal_number == signal.SIGINT
    assert (f"interrupted in epoch 2: {tmp_path / 'cut' / 'interrupted.pt'} holds epoch 2 "
            f"up to batch {batches} of 3; continue with --resume") == str(stopped.value)
    saved = load_checkpoint(tmp_path / "cut" / "interrupted.pt")
    assert saved["epoch"] == 1 and saved["in_progress"]["batches"] == batches
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1  # untouched
    torch.manual_seed(123)  # resuming must not depend on the global state at the time
    resumed, h_res = _run(tmp_path / "cut", resume=tmp_path / "cut" / "interrupted.pt", **cfg)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert without_timings(h_full) == without_timings(h_res)
    same_state(load_checkpoint(tmp_path / "full" / "last.pt"),
                       load_checkpoint(tmp_path / "cut" / "last.pt"))
    same_state(load_checkpoint(tmp_path / "full" / "best.pt"),
                       load_checkpoint(tmp_path / "cut" / "best.pt"))
    assert not (tmp_path / "cut" / "interrupted.pt").exists()  # done with, once epoch 2 is


def test_ctrl_c_before_an_epochs_first_step_saves_nothing_new(tmp_path, monkeypatch):
    import signal

    with monkeypatch.context() as m:
        _signal_in(m, signal.SIGINT, "bn", 1)  # epoch 1's precise BN: its steps are done
        with pytest.raises(TrainingInterrupted, match="holds epoch 1 up to batch 3 of 3"):
            _run(tmp_path, num_epochs=2)
    assert not (tmp_path / "last.pt").exists()
    # Resumed from it, and stopped again before a new step: the file is kept as it was.
    before = (tmp_path / "interrupted.pt").read_bytes()
    with monkeypatch.context() as m:
        _signal_in(m, signal.SIGINT, "bn", 1)
        with pytest.raises(TrainingInterrupted, match="holds epoch 1 up to batch 3 of 3"):
            _run(tmp_path, num_epochs=2, resume=tmp_path / "interrupted.pt")
    assert (tmp_path / "interrupted.pt").read_bytes() == before


GOOD_PROGRESS = {"batches": 2, "batches_in_epoch": 3, "loss_sum": 20.5, "correct": 3,
                 "seen": 16, "seconds": 0.5, "image_size": 16, "lr": 1e-3, "mix_rng": None}


@pytest.mark.parametrize(("change", "problem"), [
    ({"batches": 4}, "in_progress.batches must be a whole number from 1 to 3, got 4"),
    ({"batches": -1}, "in_progress.batches must be a whole number from 1 to 3, got -1"),
    ({"batches": 0}, "in_progress.batches must be a whole number from 1 to 3, got 0"),
    ({"batches": True}, "in_progress.batches must be a whole number"),
    ({"batches_in_epoch": "3"}, "in_progress.batches_in_epoch must be a whole number"),
    ({"correct": 17}, "in_progress.correct must be a whole number from 0 to 16, got 17"),
    ({"loss_sum": float("nan")}, "in_progress.loss_sum must be a finite number"),
    ({"lr": 10**400}, "in_progress.lr must be a finite number"),
    ({"mix_rng": [1, 2]}, "in_progress.mix_rng must be a dict or None"),
    ({"seen": None}, "in_progress.seen must be a whole number"),
])
def test_a_malformed_epoch_in_progress_is_one_line_naming_the_field(tmp_path, change, problem):
    from cxrlearn.checkpoint import check_checkpoint

    check_checkpoint({"format": "cxrlearn-checkpoint-v1", "in_progress": GOOD_PROGRESS})
    bad = {"format": "cxrlearn-checkpoint-v1", "in_progress": {**GOOD_PROGRESS, **change}}
    with pytest.raises(CxrlearnError) as e:
        check_checkpoint(bad, tmp_path / "interrupted.pt")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'interrupted.pt'}: damaged checkpoint: {problem}")
    assert message.endswith("delete it to resume from the last finished epoch (last.pt)")
    assert "\n" not in message
    with pytest.raises(CxrlearnError, match="in_progress must be a dict"):
        check_checkpoint({"format": "cxrlearn-checkpoint-v1", "in_progress": [2, 3]})


def test_a_saved_mixup_generator_is_restored_or_refused():
    from cxrlearn.training import _batch_mix

    config = TrainConfig(mixup=0.2)
    drawn = _batch_mix(config, 3)
    drawn.rng.random(5)
    again = _batch_mix(config, 3, drawn.rng.bit_generator.state)
    assert again.rng.random() == drawn.rng.random()
    with pytest.raises(CxrlearnError, match="interrupted.pt: damaged checkpoint: "
                                            "in_progress.mix_rng is not a generator state"):
        _batch_mix(config, 3, {"bit_generator": "nope"})


def test_an_epoch_in_progress_resumes_only_with_its_own_length(tmp_path, monkeypatch):
    import signal

    with monkeypatch.context() as m:
        _signal_in(m, signal.SIGINT, "step", 2)
        with pytest.raises(TrainingInterrupted, match="up to batch 2 of 3"):
            _run(tmp_path, num_epochs=2)
    with pytest.raises(CxrlearnError, match="the interrupted epoch had 3 batches, this data "
                                            "and batch size make 2"):
        _run(tmp_path, num_epochs=2, resume=tmp_path / "interrupted.pt", batch_size=12)


def test_an_average_needs_statistics_of_its_own():
    with pytest.raises(ValueError, match="ema_epochs needs precise_bn_batches"):
        TrainConfig(ema_epochs=2, precise_bn_batches=0)
    with pytest.raises(ValueError, match="mixup must be 0 or more"):
        TrainConfig(mixup=-1)


def test_mixed_batches_train_on_the_blend_of_the_two_losses():
    """One step with a mix: the loss reported is share * CE(y) + (1 - share) * CE(y')."""
    from cxrlearn.transforms import BatchMix

    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(8, 3, S, S), torch.arange(8) % 4
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    mix = BatchMix(0.4, 0.0, np.random.default_rng(0))
    xm, partner, share = BatchMix(0.4, 0.0, np.random.default_rng(0))(x)
    model.train()
    logits = model(xm)
    expected = (share * loss_fn(logits, y) + (1 - share) * loss_fn(logits, y[partner])).item()
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, [(x, y)], loss_fn, optimizer, torch.device("cpu"), mix=mix)
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)


class _Brightest(nn.Module):
    """Names the channel that is brightest on average (4 channels, 4 classes): shown a blend
    of two one-hot images, it names the one that makes up most of the blend."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(2, 3))  # (B, 4, H, W) -> (B, 4)


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_a_blend_counts_as_right_when_the_network_names_its_larger_part(share):
    """Training accuracy under MixUp/CutMix is measured against the label of the image that
    makes up most of each blend: the partner's when the image's own share is under a half.
    Against the image's own label, a network that names every larger part would score 0
    at share 0.3."""
    y = torch.arange(8) % 4
    x = nn.functional.one_hot(y, 4).float()[:, :, None, None].expand(8, 4, S, S)
    partner = torch.arange(8).flip(0)  # y[partner] differs from y everywhere

    def mix(batch):
        return share * batch + (1 - share) * batch[partner], partner, share

    model = _Brightest()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, [(x, y)], nn.CrossEntropyLoss(), optimizer,
                            torch.device("cpu"), mix=mix)
    assert stats["accuracy"] == 1.0


def test_lr_range_test_rises_exponentially_and_stops_when_the_loss_explodes():
    from cxrlearn.training import lr_range_test, suggest_lr

    torch.manual_seed(0)
    model = TinyNet()
    loader = DataLoader(toy_data(6, 0, train_transform()), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    lrs, losses = lr_range_test(model, loader, nn.CrossEntropyLoss(), optimizer,
                                torch.device("cpu"), start=1e-4, end=1e4, steps=41)
    assert lrs[:3] == pytest.approx([1e-4, 1e-4 * 10 ** 0.2, 1e-4 * 10 ** 0.4])
    assert len(lrs) == len(losses) < 41  # SGD at lr 1e4 diverges before the end
    assert losses[-1] > 4 * min(losses) or not math.isfinite(losses[-1])
    # A hand-made curve: flat, falling, exploding; the lowest point is at lr 10, a tenth is 1.
    curve_lrs = [10.0 ** k for k in range(-4, 3)]
    assert suggest_lr(curve_lrs, [2, 2, 2, 1.5, 0.5, 0.1, 50], smoothing=0) == pytest.approx(1.0)
