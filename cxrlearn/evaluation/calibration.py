"""Calibration: when the model says 90%, is it right 90% of the time?

Group the test images by confidence (the top softmax probability) into equal-width bins
B_1..B_M over [0, 1]. A calibrated model's accuracy in each bin equals its mean confidence;
the reliability diagram plots one against the other, and the expected calibration error
(Naeini et al., AAAI 2015) sums the gaps, weighted by how many images fall in each bin:

    ECE = sum_m (|B_m| / N) * |acc(B_m) - conf(B_m)|

Modern networks are overconfident (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017). Their fix is temperature scaling: divide every logit by one scalar T > 0,
fitted on validation data by minimising the negative log-likelihood,

    T* = argmin_T  -(1/N) sum_i log softmax(z_i / T)[y_i].

T > 1 softens the probabilities, T < 1 sharpens them. Dividing by T never changes the
arg-max, so accuracy and the confusion matrix stay exactly the same: only the confidence
moves. We optimise log T (so T stays positive) with L-BFGS, a quasi-Newton method that
suits a one-parameter problem.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrlearn.evaluation.metrics import as_labels

__all__ = [
    "reliability_bins",
    "expected_calibration_error",
    "fit_temperature",
    "plausible_temperature",
    "apply_temperature",
]

# T is kept in [1/100, 100]. Perfectly separable logits have NLL falling forever as T -> 0;
# the clamp stops log T running off to -inf (and T underflowing to 0.0).
LOG_T_LIMIT = float(np.log(100.0))

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def reliability_bins(
    probs: np.ndarray, y_true: np.ndarray | Sequence[int], num_bins: int = 15
) -> dict[str, np.ndarray]:
    """The data of a reliability diagram: per confidence bin, mean confidence and accuracy.

    Bin m covers the confidences in (edges[m], edges[m + 1]] (the first bin also takes 0).
    Confidence is `probs.max(axis=1)`, and a sample is correct when `probs.argmax(axis=1)`
    equals its label.

    Args:
        probs: Predicted probabilities, each row summing to 1.
        y_true: True class indices in [0, K).
        num_bins: M, the number of equal-width bins. 15 as in Guo et al.

    Returns:
        `bin_edges` (M + 1,), `confidence` (M,) mean confidence, `accuracy` (M,) share
        correct (both NaN for an empty bin), `count` (M,) int64 samples per bin.

    Shape:
        probs: (N, K), y_true: (N,) -> see Returns
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    y_true = as_labels(y_true, probs.shape[1], "y_true")
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)  # (N,)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # searchsorted(..., "left") - 1 puts c in the bin with edges[m] < c <= edges[m + 1],
    # comparing against the very same edges that are returned (no c * M rounding).
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bin: 0/0 -> NaN on purpose
        mean_conf = np.bincount(bins, weights=confidence, minlength=num_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / count
    return {"bin_edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray | Sequence[int], num_bins: int = 15
) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over the bins.

    Args:
        probs: Predicted probabilities, each row summing to 1.
        y_true: True class indices in [0, K).
        num_bins: Number of equal-width confidence bins.

    Returns:
        ECE in [0, 1]; 0 means every bin's accuracy equals its mean confidence.

    Shape:
        probs: (N, K), y_true: (N,) -> scalar
    """
    bins = reliability_bins(probs, y_true, num_bins)
    filled = bins["count"] > 0  # empty bins have NaN gaps and weight 0
    weights = bins["count"][filled] / bins["count"].sum()
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(weights @ gaps)


def fit_temperature(
    logits: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray | Sequence[int],
    max_iter: int = 100,
) -> float:
    """Fit the temperature T that minimises the NLL of `softmax(logits / T)` on labels y.

    Use validation logits, never the test set you report on. Computed in float64 on the
    CPU from a start of T = 1, so the result is deterministic.

    Args:
        logits: Raw model outputs (before softmax), detached or not.
        y: True class indices in [0, K).
        max_iter: Most L-BFGS iterations.

    Returns:
        T as a float, always in [0.01, 100].

    Shape:
        logits: (N, K), y: (N,) -> scalar
    """
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must be (N, K) with N >= 1, got shape {tuple(z.shape)}")
    y_np = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    labels = torch.from_numpy(as_labels(y_np, z.shape[1], "y"))  # (N,) int64
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = 1 to start
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        temperature = log_t.clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp()
        loss = F.cross_entropy(z / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp())


def plausible_temperature(value: object) -> bool:
    """True for a number `fit_temperature` could have returned, as a file stores it: T in
    [1/100, 100] (`LOG_T_LIMIT`), with room to spare for rounding. Anything else (a string,
    NaN, 0, 1e9) means the file that holds it is damaged.

    Examples:
        >>> plausible_temperature(1.7), plausible_temperature(0.0), plausible_temperature(True)
        (True, False, False)
    """
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0.5 * np.exp(-LOG_T_LIMIT) <= value <= 2 * np.exp(LOG_T_LIMIT))


def apply_temperature(logits: ArrayOrTensor, temperature: float) -> ArrayOrTensor:
    """Divide logits by T: softmax of the result gives the calibrated probabilities.

    Works on numpy arrays and torch tensors alike (returns the same kind); the input is
    not modified.

    Args:
        logits: Raw model outputs.
        temperature: T > 0, e.g. from `fit_temperature`.

    Returns:
        `logits / temperature`; the arg-max of every row is unchanged.

    Shape:
        logits: (N, K) -> (N, K)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits / temperature
