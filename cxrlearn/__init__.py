"""cxrlearn: chest X-ray classification with PyTorch, built piece by piece to be learned.

Importing the package does nothing but define names: it sets no seed, picks no device,
downloads nothing, prints nothing (house style, section 7), and imports no torch. Each
concept lives in its own module, next to a lesson in `lessons/`; they are imported when
first used, so `import cxrlearn; cxrlearn.data.sample_root()` works as well as
`from cxrlearn.data import sample_root`. The docs' architecture page lists them.

This is a teaching tool, not a diagnostic device.
"""

from __future__ import annotations

import importlib
from typing import Any

from cxrlearn.errors import CxrlearnError

__version__ = "0.3.0"

SUBMODULES = ("app", "atomic", "checkpoint", "cli", "contrast", "data", "device", "distributed",
              "errors", "evaluation", "export", "gradcam", "heatmap", "resnet", "runs",
              "sample_run", "schedule", "seeding", "trained", "training", "transfer",
              "transforms")

__all__ = ["CxrlearnError", "__version__"]


def __getattr__(name: str) -> Any:
    # PEP 562: `cxrlearn.data` imports cxrlearn.data on first use, not before.
    if name in SUBMODULES:
        return importlib.import_module(f"cxrlearn.{name}")
    raise AttributeError(f"module 'cxrlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *SUBMODULES])
