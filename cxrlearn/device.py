"""Choosing where tensors live: one function decides, everything else takes `device`.

The order is the usual one: what the user asked for, else a CUDA GPU, else Apple's MPS,
else the CPU. Asking for a device that is not there is an error, not a silent fall-back:
a run that was meant for a GPU and quietly trains on a CPU for ten hours helps nobody.

On NVIDIA GPUs since Ampere, PyTorch computes float32 convolutions in TF32 by default (10
bits of mantissa instead of 23): fine for training, but a CUDA answer then differs from the
CPU's by about 1e-3. `full_float32()` turns TF32 off for a block that must agree with
another device to 1e-5, such as the Python pipeline an exported file is checked against.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cxrlearn.errors import CxrlearnError

__all__ = ["select_device", "describe_device", "full_float32"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """Pick the device to compute on.

    Args:
        prefer: `None` or `"auto"` to choose (CUDA, then MPS, then CPU), or an explicit
            `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`.

    Returns:
        The chosen device.

    Raises:
        CxrlearnError: The requested device does not exist on this machine.
    """
    if prefer is None or str(prefer) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError as e:
        raise CxrlearnError(f"unknown device {prefer!r}: {e}; use auto, cpu, cuda or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CxrlearnError("CUDA was requested but no CUDA GPU is available; "
                                "use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CxrlearnError(f"{device} was requested but only "
                                f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise CxrlearnError("MPS was requested but Apple's Metal backend is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CxrlearnError(f"unsupported device {prefer!r}; use auto, cpu, cuda or mps")
    return device


def describe_device(device: torch.device) -> str:
    """A human description, e.g. `"cpu (2 threads)"` or `"cuda:0 (NVIDIA H100 80GB HBM3)"`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


@contextmanager
def full_float32() -> Iterator[None]:
    """Inside the block, CUDA computes float32 convolutions and matrix products in float32,
    not TF32; the previous settings come back afterwards, even after an error.

    The settings are global (not per thread), and have no effect on the CPU or MPS.
    """
    backends = torch.backends
    before = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = before
