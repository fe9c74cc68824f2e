"""Seeds: one call makes a run repeatable on the CPU.

Randomness enters a training run in four places: Python's `random`, numpy, torch's global
generator (weight initialisation) and the data pipeline (shuffling, augmentation). `seed_everything`
seeds the first three and returns fresh generators for the fourth, so that two runs with the
same seed give bit-identical weights and metrics on the CPU. (GPUs use some non-deterministic
kernels; see `torch.use_deterministic_algorithms` for the price of avoiding them.)

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Generators", "seed_everything", "rng_state", "set_rng_state"]


@dataclass
class Generators:
    """Generators for the data pipeline, seeded from the run's seed."""

    torch: torch.Generator
    numpy: np.random.Generator


def seed_everything(seed: int) -> Generators:
    """Seed Python, numpy and torch, and return generators for the data pipeline."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state, for code that uses it
    torch.manual_seed(seed)
    return Generators(torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def rng_state() -> dict:
    """The global random states, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],  # noqa: NPY002
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x):
    # Python's random state is nested tuples; a round trip through some formats gives lists.
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x
