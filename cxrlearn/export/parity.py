"""The parity check: an exported file counts only if it gives the Python pipeline's answers.

An export can go wrong silently: a preprocessing step scripted differently, a dtype
converted on the way, weights saved from the wrong copy. So every file is loaded back,
as an app would load it, and run on real X-rays; its probabilities p_file are compared
with those of the eager Python pipeline p_python (`eager_probs`), which is what training
and evaluation used:

    max |p_file - p_python| <= atol    (1e-5 by default)

over each image alone (as float, and as the uint8 an app reads from a PNG) and over a
batch. The weights inside the file must also hash to the sha256 in its `cxrlearn.json`.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cxrlearn.data import load_image, sample_root
from cxrlearn.errors import CxrlearnError
from cxrlearn.export.load import load_module, network_sha256
from cxrlearn.export.metadata import ExportMetadata
from cxrlearn.export.pipeline import Preprocess, eager_probs

__all__ = ["check_saved_file", "max_abs_diff", "sample_check_images"]


def sample_check_images() -> list[np.ndarray]:
    """Real X-rays for the parity check: the first sample image of each class, plus a
    non-square crop of the first (117 x 101), so that resizing is checked both ways.

    Shape:
        -> N x (H, W) float32 in [0, 1]
    """
    root = sample_root()
    images = [load_image(sorted(d.glob("*.png"))[0])
              for d in sorted(root.iterdir()) if d.is_dir()]
    return [*images, images[0][5:122, 10:111].copy()]


def max_abs_diff(
    run: Callable[[Tensor], Tensor],
    model: nn.Module,
    preprocess: Preprocess,
    temperature: float,
    images: Sequence[np.ndarray],
    *,
    with_uint8: bool,
    batched_only: bool,
) -> tuple[float, int]:
    """Largest |p_file - p_python| of `run` (the loaded file) against the eager pipeline.

    Each image is checked alone (as float, and as uint8 if `with_uint8`), plus a batch of
    the images that share the first one's size. The Python pipeline runs once, on all
    images together (each is prepared on its own, so sizes may differ). A uint8 copy whose
    values / 255 give back the float image exactly, as for every 8-bit file `load_image`
    reads, shares its reference row.

    Args:
        run: The loaded file, called on `(H, W)` or `(B, 1, H, W)` images.
        model: The network the file was made from.
        preprocess: The preprocessing settings inside the file.
        temperature: The temperature T inside the file.
        images: Grey float images in [0, 1].
        with_uint8: Also check each image as uint8.
        batched_only: The file takes only `(B, 1, H, W)` (a `torch.export` program).

    Returns:
        (the largest difference, the number of inputs compared). A NaN difference is kept,
        so that it fails every comparison with `atol`.

    Raises:
        CxrlearnError: The file returned a different shape.
    """
    floats = [torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images]  # (H, W)
    want = eager_probs(model, floats, preprocess, temperature)  # (N, K)
    cases: list[tuple[Tensor, Tensor]] = []  # (input for the file, expected probabilities)
    for i, x in enumerate(floats):
        cases.append((x[None, None] if batched_only else x, want[i:i + 1]))
        if with_uint8:
            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (H, W)
            same = torch.equal(u8.to(torch.float32) / 255.0, x)
            cases.append((u8, want[i:i + 1] if same else
                          eager_probs(model, [u8], preprocess, temperature)))
    rows = [i for i, x in enumerate(floats) if x.shape == floats[0].shape]
    if len(rows) > 1:
        cases.append((torch.stack([floats[i] for i in rows])[:, None], want[rows]))
    worst = 0.0
    for x, expected in cases:
        with torch.no_grad():
            got = run(x)  # (B, K)
        if got.shape != expected.shape:
            raise CxrlearnError(f"the file returned shape {tuple(got.shape)}, the Python "
                                f"pipeline {tuple(expected.shape)}")
        diff = float((got - expected).abs().max())
        worst = diff if not diff <= worst else worst  # a NaN diff sticks
    return worst, len(cases)


def check_saved_file(
    path: Path,
    metadata: ExportMetadata,
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    with_uint8: bool,
    batched_only: bool,
) -> tuple[float, int]:
    """Load `path` as an app would, check its weights' hash, then `max_abs_diff`.

    Args:
        path: The saved file.
        metadata: What was written into it (format, preprocessing, T, weights' sha256).
        model: The network it was made from.
        images: As in `max_abs_diff`.
        with_uint8: As in `max_abs_diff`.
        batched_only: As in `max_abs_diff`.

    Returns:
        As `max_abs_diff`.

    Raises:
        CxrlearnError: The weights in the file do not hash to `metadata.weights_sha256`.
    """
    module = load_module(path, metadata.file_format)
    found = network_sha256(module, metadata.file_format)
    if found is not None and found != metadata.weights_sha256:
        raise CxrlearnError("the saved weights do not hash to the recorded sha256", path=path)
    return max_abs_diff(module, model, metadata.preprocess, metadata.temperature, images,
                        with_uint8=with_uint8, batched_only=batched_only)
