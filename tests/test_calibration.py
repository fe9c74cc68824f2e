"""cxrlearn.evaluation.calibration: ECE by hand, calibrated synthetic data, fitted temperatures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrlearn.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def calibrated_logits(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    y = torch.multinomial(logits.softmax(dim=1), 1, generator=gen).squeeze(1)  # (N,)
    return logits, y


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(logits, y).item()


# Four two-class predictions; 5 bins with edges 0, 0.2, 0.4, 0.6, 0.8, 1.
TINY_PROBS = np.array([[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.45, 0.55]])
TINY_Y = np.array([0, 0, 1, 1])  # right, wrong, right, right


def test_reliability_bins_by_hand():
    bins = reliability_bins(TINY_PROBS, TINY_Y, num_bins=5)
    np.testing.assert_allclose(bins["bin_edges"], [0, 0.2, 0.4, 0.6, 0.8, 1])
    np.testing.assert_array_equal(bins["count"], [0, 0, 1, 1, 2])
    np.testing.assert_allclose(bins["confidence"], [np.nan, np.nan, 0.55, 0.7, 0.9])
    np.testing.assert_allclose(bins["accuracy"], [np.nan, np.nan, 1.0, 1.0, 0.5])


def test_ece_by_hand():
    # bin (0.4, 0.6]: 1 sample, |1 - 0.55|; (0.6, 0.8]: 1, |1 - 0.7|; (0.8, 1]: 2, |0.5 - 0.9|
    expected = 0.25 * 0.45 + 0.25 * 0.3 + 0.5 * 0.4
    assert expected_calibration_error(TINY_PROBS, TINY_Y, num_bins=5) == pytest.approx(expected)


def test_confidence_on_an_edge_goes_to_the_lower_bin():
    # 4 bins have exact edges 0, 0.25, 0.5, 0.75, 1: 0.5 belongs to (0.25, 0.5] and
    # 0.75 to (0.5, 0.75].
    probs = np.array([[0.5, 0.25, 0.25, 0.0], [0.25, 0.75, 0.0, 0.0]])
    bins = reliability_bins(probs, [0, 1], num_bins=4)
    np.testing.assert_array_equal(bins["count"], [0, 1, 1, 0])
    bins = reliability_bins(np.array([[1.0, 0.0]]), [0], num_bins=15)
    assert bins["count"][-1] == 1


def test_ece_of_calibrated_data_is_small_and_of_overconfident_data_large():
    logits, y = calibrated_logits(20_000, 4, seed=0)
    probs = logits.softmax(dim=1).numpy()
    assert expected_calibration_error(probs, y.numpy()) < 0.02
    overconfident = (3 * logits).softmax(dim=1).numpy()
    assert expected_calibration_error(overconfident, y.numpy()) > 0.1


def test_ece_is_zero_when_confidence_matches_accuracy_in_every_bin():
    # Confidence 0.75 in one bin, 3 of 4 right.
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probs, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-15)


def test_fit_temperature_undoes_overconfidence():
    logits, y = calibrated_logits(4000, 4, seed=1)
    overconfident = 3 * logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(apply_temperature(overconfident, t), y) < nll(overconfident, y)
    # Already calibrated logits want no temperature.
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.1)


def test_fit_temperature_finds_the_grid_minimum():
    # Oracle independent of L-BFGS: the NLL on a fine grid of temperatures.
    logits, y = calibrated_logits(500, 3, seed=2)
    logits = 0.4 * logits  # underconfident: T < 1
    grid = np.exp(np.linspace(np.log(0.05), np.log(5), 2001))
    losses = [nll(logits / t, y) for t in grid]
    t = fit_temperature(logits.numpy(), y.numpy())
    assert t == pytest.approx(grid[int(np.argmin(losses))], rel=0.01)
    assert t < 1
    assert fit_temperature(logits, y) == t  # deterministic, numpy or torch alike


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(2, 5),
    st.integers(0, 10_000),
    st.floats(0.01, 50),
)
def test_temperature_is_always_positive_and_bounded(n, k, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=gen)
    y = torch.randint(0, k, (n,), generator=gen)
    t = fit_temperature(logits, y)
    assert np.isfinite(t) and 0.01 - 1e-12 <= t <= 100 + 1e-9


def test_separable_data_gives_a_small_positive_temperature():
    # Every arg-max is right: the NLL keeps falling as T -> 0. The fit stops once the
    # gradient vanishes (or at the clamp, T = 0.01), never at T = 0 or with a NaN.
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    t = fit_temperature(logits, y)
    assert 0.01 <= t < 0.1
    assert nll(logits / t, y) < 1e-6 < nll(logits, y)


def test_apply_temperature():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    before = logits.copy()
    out = apply_temperature(logits, 2.0)
    np.testing.assert_array_equal(out, logits / 2)
    np.testing.assert_array_equal(logits, before)  # input untouched
    np.testing.assert_array_equal(out.argmax(axis=1), logits.argmax(axis=1))
    tensor_out = apply_temperature(torch.from_numpy(logits), 2.0)
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_array_equal(tensor_out.numpy(), out)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            apply_temperature(logits, bad)


def test_fit_temperature_rejects_bad_shapes():
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_plausible_temperature_is_what_fit_temperature_can_return():
    from cxrlearn.evaluation.calibration import LOG_T_LIMIT, plausible_temperature

    # fit_temperature's clamp, both ends, is plausible; a file may round it.
    for t in (np.exp(-LOG_T_LIMIT), np.exp(LOG_T_LIMIT), 1, 1.7, 0.005, 200):
        assert plausible_temperature(t), t
    for t in (0.0, -1.0, 0.0049, 201.0, float("nan"), float("inf"), True, "1.5", None):
        assert not plausible_temperature(t), t
