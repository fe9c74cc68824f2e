"""Shared fixtures: the bundled sample, and small synthetic X-ray folders written to tmp_path.

Tests never read /work/shared: real images come from `cxrlearn.data.sample_root()` (the copy
inside the package), everything else is written by the test itself.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlearn.data import CLASS_NAMES
from cxrlearn.data import sample_root as _sample_root


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_python() -> None:
    """Let the tests that press Ctrl-C (SIGINT to their own process, or to a child) see it.

    A job started in the background by a non-interactive shell (`cmd &` in a script, as some
    CI runners start steps) inherits SIGINT ignored, and Python keeps an ignored signal
    ignored; so do pytest-xdist's workers and every child process they start. Those tests then
    fail with "DID NOT RAISE" although cxrlearn behaves. Python's own handler is put back, for
    this process and (since an exec resets a handled signal to the default) its children.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _synthetic_xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random grey image (uint8): unlike white noise it survives resizing, and two
    of them are never near-duplicates of each other."""
    coarse = rng.random((6, 6))
    big = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    )
    return big


@pytest.fixture
def sample_root() -> Path:
    """The bundled sample: `<Class>/<file>.png`, 100 grey 128x128 X-rays per class."""
    return _sample_root()


@pytest.fixture
def write_png() -> Callable[[Path, np.ndarray], Path]:
    """Write a numpy array as a PNG (mode from the dtype: uint8 -> L, uint16 -> I;16)."""

    def write(path: Path, array: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="PNG")
        return path

    return write


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Four classes x 5 synthetic 48x48 PNGs in the current Kaggle layout.

    `<root>/<Class>/images/<Class>-<i>.png`, with a lung mask of each image in
    `<root>/<Class>/masks/` (which readers must ignore).
    """
    root = tmp_path / "tiny"
    rng = np.random.default_rng(1234)
    for name in CLASS_NAMES:
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir(parents=True)
        for i in range(5):
            img = _synthetic_xray(rng, 48)
            Image.fromarray(img).save(root / name / "images" / f"{name}-{i}.png")
            mask = (img > 128).astype(np.uint8) * 255
            Image.fromarray(mask).save(root / name / "masks" / f"{name}-{i}.png")
    return root


@pytest.fixture
def copy_sample(sample_root: Path) -> Callable[..., Path]:
    """Copy the first `per_class` sample X-rays of some classes to `dest/<Class>/`."""

    def copy(dest: Path, per_class: int = 3, classes: tuple[str, ...] = CLASS_NAMES) -> Path:
        for name in classes:
            (dest / name).mkdir(parents=True, exist_ok=True)
            for src in sorted((sample_root / name).glob("*.png"))[:per_class]:
                shutil.copy(src, dest / name / src.name)
        return dest

    return copy


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: on a few shared cores, more threads only wait
    for each other. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_dicom() -> Callable[..., Path]:
    """A writer of minimal single-frame DICOM Part 10 files (explicit VR little endian).

    `write_dicom(path, stored, photometric="MONOCHROME2", slope=None, intercept=None,
    bits=12)`; rescale tags are written only when given. Skips the test without pydicom.
    """
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    def write(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2",
              slope: float | None = None, intercept: float | None = None,
              bits: int = 12) -> Path:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.Modality = "CR"
        dtype = np.uint8 if bits <= 8 else np.uint16
        ds.set_pixel_data(stored.astype(dtype), photometric, bits)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if slope is not None:
            ds.RescaleSlope = slope
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def ctrl_c_in_epoch(monkeypatch) -> Callable[[int], None]:
    """`ctrl_c_in_epoch(n)`: make the n-th call of `train_one_epoch` raise KeyboardInterrupt,
    as if the user pressed Ctrl-C while that epoch ran; the epochs before it train for real."""
    import cxrlearn.training as training

    def arm(epoch: int) -> None:
        real, calls = training.train_one_epoch, {"n": 0}

        def interrupted(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == epoch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(training, "train_one_epoch", interrupted)

    return arm


def _same_state(a, b, where: str = "") -> None:
    """Two checkpoints' contents equal bit for bit, but for the time each epoch took."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        timings = {"seconds", "images_per_s"} if "train_loss" in a else set()
        assert set(a) - timings == set(b) - timings, where
        for k in set(a) - timings:
            _same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def same_state() -> Callable[..., None]:
    """`same_state(a, b)`: assert two checkpoints' contents equal bit for bit (tensors by
    `torch.equal`), but for the time each epoch took (`seconds`, `images_per_s`)."""
    return _same_state
