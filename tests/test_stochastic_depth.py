"""Stochastic depth: the keep rule, the drop, the hooks' lifetime, and a resumed run."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import toy_data, without_timings
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cxrlearn.errors import TrainingInterrupted
from cxrlearn.resnet import BasicBlock, ResNet, resnet18
from cxrlearn.stochastic_depth import StochasticDepth, drop_branch, keep_probabilities
from cxrlearn.training import TrainConfig, fit
from cxrlearn.transforms import eval_transform, train_transform

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def test_keep_probabilities_fall_linearly_to_one_minus_the_rate():
    # Huang et al. 2016, eq. 4, by hand for ResNet18's 8 blocks and a rate of 0.2
    assert keep_probabilities(8, 0.2) == pytest.approx(
        [0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.825, 0.8])
    assert keep_probabilities(8, 0.0) == [1.0] * 8
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="at least 0 and below 1"):
            keep_probabilities(8, bad)


@settings(max_examples=25, deadline=None)
@given(keep=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_drop_branch_zeroes_whole_images_and_scales_the_rest(keep, seed):
    torch.manual_seed(seed)
    branch = torch.rand(64, 3, 4, 4) + 0.5  # no zeros of its own
    out = drop_branch(branch, keep)
    dropped = (out == 0).flatten(1).all(dim=1)  # (B,)
    assert torch.equal(dropped, (out == 0).flatten(1).any(dim=1))  # all of an image or none
    torch.testing.assert_close(out[~dropped], branch[~dropped] / keep)


def test_drop_branch_keeps_the_expected_value():
    torch.manual_seed(0)
    branch = torch.ones(200_000, 1, 1, 1)
    # mean of 200,000 draws of Bernoulli(0.7) / 0.7: sd sqrt(0.3 / 0.7 / 200000) = 0.0015
    assert drop_branch(branch, 0.7).mean().item() == pytest.approx(1.0, abs=0.006)


def test_a_dropped_block_is_its_shortcut_and_a_kept_one_is_scaled():
    """The oracle: the block's own layers, applied by hand with the same draws."""
    torch.manual_seed(0)
    block = BasicBlock(4, 4).train()
    x = torch.randn(16, 4, 6, 6)
    keep = 0.5  # one block alone is the last block: keep = 1 - rate
    torch.manual_seed(1)
    mask = torch.bernoulli(torch.full((16, 1, 1, 1), keep))
    assert 0 < mask.sum() < 16  # both cases occur
    branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    expected = torch.relu(branch * mask / keep + x)
    torch.manual_seed(1)
    with StochasticDepth(block, rate=0.5):
        out = block(x)
    torch.testing.assert_close(out, expected)
    dropped = mask.flatten() == 0
    torch.testing.assert_close(out[dropped], torch.relu(x[dropped]))


def test_evaluation_mode_and_rate_zero_leave_the_network_whole():
    torch.manual_seed(0)
    model = resnet18(num_classes=4, in_channels=1)
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    plain = model(x)
    with StochasticDepth(model, rate=0.5):
        torch.testing.assert_close(model(x), plain)  # eval mode: whole
    model.train()
    torch.manual_seed(3)
    plain_train = model(x)
    with StochasticDepth(model, rate=0.0):
        torch.manual_seed(3)
        assert torch.equal(model(x), plain_train)
    with StochasticDepth(model, rate=0.9):
        torch.manual_seed(3)
        assert not torch.equal(model(x), plain_train)


def test_a_frozen_batch_norm_does_not_stop_its_block_from_dropping():
    block = BasicBlock(4, 4).train()
    block.bn2.eval()  # as freeze_backbone leaves it
    x = torch.randn(32, 4, 6, 6)
    with StochasticDepth(block, rate=0.5):
        torch.manual_seed(0)
        out = block(x)
    assert (out == torch.relu(x)).flatten(1).all(dim=1).any()  # some image took the shortcut


def test_hooks_are_removed_on_exit_even_when_the_body_raises():
    model = resnet18(num_classes=4, in_channels=1)
    norms = [m.bn2 for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(norms) == 8
    with pytest.raises(RuntimeError, match="boom"), StochasticDepth(model, rate=0.1):
        assert all(len(n._forward_hooks) == 1 for n in norms)
        raise RuntimeError("boom")
    assert all(len(n._forward_hooks) == 0 for n in norms)


def test_a_network_without_blocks_is_refused_unless_the_rate_is_zero():
    with pytest.raises(ValueError, match="Sequential has none"):
        StochasticDepth(nn.Sequential(nn.Linear(2, 2)), rate=0.1)
    with StochasticDepth(nn.Sequential(nn.Linear(2, 2)), rate=0.0):
        pass


def _fit(out, rate: float, resume=None):
    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    config = TrainConfig(num_epochs=2, batch_size=8, lr=1e-2, warmup_epochs=1,
                         precise_bn_batches=2, ema_epochs=1.0, stochastic_depth=rate)
    history = fit(model, toy_data(6, 0, train_transform()), toy_data(2, 1, eval_transform()),
                  config, torch.device("cpu"), CLASSES, out_dir=out, resume_from=resume)
    return model, history


def test_fit_drops_branches_only_in_its_steps_and_resumes_the_same_draws(tmp_path, monkeypatch):
    """A run stopped by Ctrl-C in the middle of epoch 2 resumes to the same weights: the
    masks come from the generator the checkpoint saved. No hook outlives the run."""
    plain, _ = _fit(None, 0.0)
    full, h_full = _fit(tmp_path / "full", 0.5)
    assert not torch.equal(plain.fc.weight, full.fc.weight)  # the setting does something
    assert all(not m._forward_hooks for m in full.modules())

    real, calls = ResNet.forward, {"n": 0}

    def forward(self, x):  # SIGINT in the 5th training step: epoch 2, batch 2 of 3
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, x)

    with monkeypatch.context() as m:
        m.setattr(ResNet, "forward", forward)
        with pytest.raises(TrainingInterrupted, match="holds epoch 2 up to batch 2 of 3"):
            _fit(tmp_path / "cut", 0.5)
    torch.manual_seed(123)  # the global generator's state now must not matter
    resumed, h_res = _fit(tmp_path / "cut", 0.5, resume=tmp_path / "cut" / "interrupted.pt")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert without_timings(h_full) == without_timings(h_res)
