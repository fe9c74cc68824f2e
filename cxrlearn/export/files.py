"""Writing the three kinds of file, each checked against the Python pipeline before it counts.

Every writer follows the same steps: wrap the network in `EndToEndModel`, convert it
(script it, or trace it with `torch.export`), serialise it in memory with `cxrlearn.json`
inside, write it to a temporary file next to the target (a full disk is then Python's
OSError, not an abort inside PyTorch's C++ writer), load it back with the loader an app would use,
and compare its probabilities with `eager_probs` on real X-rays (the parity check):

    max |p_file - p_python| <= atol    (1e-5 by default)

over each image alone (as float, and as the uint8 an app reads from a PNG) and over a
batch, after checking that the weights inside hash to the sha256 in `cxrlearn.json`. Only
then is the file renamed into place. A file that disagrees is deleted and never seen.
(Loading the file back runs its code: that is safe here because this process wrote it a
moment ago, and this module is the only place cxrlearn does it. Files from elsewhere are
read as data: `cxrlearn.trained.open_model`.)

The writers take the network and its settings (classes, preprocessing, temperature) as
arguments. A trained model exports itself with `TrainedModel.export`, which hands over its
own; export sits below `cxrlearn.trained` in the layers, so it does not know that class.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import cxrlearn
from cxrlearn.atomic import temporary_folder
from cxrlearn.data import load_image, sample_root
from cxrlearn.errors import CxrlearnError
from cxrlearn.export.load import (
    CLASS_NAMES_NAME,
    FILE_FORMATS,
    METADATA_NAME,
    ExportMetadata,
    upstream_deprecation,
)
from cxrlearn.export.pipeline import EndToEndModel, eager_probs, resize_hw, weights_sha256
from cxrlearn.transforms import Preprocess

__all__ = ["ExportResult", "export_model", "export_torchscript", "export_lite",
           "export_program", "sample_check_images", "max_abs_diff"]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how well the file agreed with the Python pipeline.

    Attributes:
        path: The file written.
        metadata: The `cxrlearn.json` inside it.
        max_abs_diff: Largest |p_file - p_python| over all checked probabilities.
        num_checks: Inputs compared (each image as float and uint8, plus a batch).
        notes: Things the caller may want to tell the user (e.g. a skipped optimisation).
    """

    path: Path
    metadata: ExportMetadata
    max_abs_diff: float
    num_checks: int
    notes: tuple[str, ...] = ()


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


def max_abs_diff(run: Callable[[Tensor], Tensor], model: nn.Module, preprocess: Preprocess,
                 temperature: float, images: Sequence[np.ndarray], *,
                 batched_only: bool = False) -> tuple[float, int]:
    """Largest |p_file - p_python| of `run` (a loaded file) against the eager pipeline.

    Each image is checked alone, as float and (unless `batched_only`, a `torch.export`
    program, which takes float batches only) as uint8, plus a batch of the images that share
    the first one's size. A NaN difference is kept, so that it fails every comparison.

    Returns:
        (the largest difference, the number of inputs compared).
    """
    floats = [torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images]  # (H, W)
    want = eager_probs(model, floats, preprocess, temperature)  # (N, K)
    cases: list[tuple[Tensor, Tensor]] = []  # (input for the file, expected probabilities)
    for i, x in enumerate(floats):
        cases.append((x[None, None] if batched_only else x, want[i:i + 1]))
        if not batched_only:
            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (H, W), as a PNG holds it
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


def _load_graph(path: Path, file_format: str) -> Callable[[Tensor], Tensor]:
    """Load an exported graph the way an app does. This runs the file's own code.

    Called only by the parity check, on the file this process wrote a moment before. Files
    from elsewhere are read as data (`cxrlearn.export.load`, `cxrlearn.trained.open_model`).

    Raises:
        CxrlearnError: The graph cannot be loaded (damaged, or made by another PyTorch).
    """
    try:
        if file_format == "torchscript":
            with upstream_deprecation("`torch.jit.load`"):
                return torch.jit.load(str(path), map_location="cpu").eval()
        if file_format == "lite":
            from torch.jit.mobile import _load_for_lite_interpreter

            return _load_for_lite_interpreter(str(path))
        if file_format == "export":
            return torch.export.load(str(path)).module()
    except Exception as e:  # each loader fails in its own way (RuntimeError, KeyError, ...)
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise CxrlearnError(f"cannot load the {file_format} graph ({first}); the file may "
                            "be damaged or made by another PyTorch version", path=path) from None
    raise CxrlearnError(f"unknown export format {file_format!r}", path=path)


def _network_sha256(graph: object, file_format: str) -> str | None:
    """The hash of the network inside a loaded graph (the lite runtime keeps none)."""
    if file_format == "torchscript":
        return weights_sha256(graph.model.state_dict())  # type: ignore[attr-defined]
    if file_format == "export":
        state = graph.state_dict()  # type: ignore[attr-defined]
        return weights_sha256({k[len("model."):]: v for k, v in state.items()
                               if k.startswith("model.")})
    return None


def export_model(
    network: nn.Module,
    path: str | Path,
    file_format: str = "torchscript",
    *,
    class_names: Sequence[str],
    preprocess: Preprocess,
    temperature: float = 1.0,
    input_size: tuple[int, int] | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-5,
) -> ExportResult:
    """Write the whole pipeline as one file of `file_format`, checked before it is kept.

    The network and its settings come as arguments, not as a `TrainedModel`: export sits
    below `cxrlearn.trained` in the layers (tests/test_architecture.py) and must not import
    it. `TrainedModel.export(path)` passes its own network, classes, preprocessing and
    temperature, and is where a file without an eager network is refused.

    Args:
        network: The eager classifier (e.g. `resnet18`), any mode, any device.
        path: The file to write. Written only if the parity check passes.
        file_format: `"torchscript"` (`.pt`), `"lite"` (`.ptl`) or `"export"` (`.pt2`).
        class_names: The class names, in the order of the network's outputs.
        preprocess: The preprocessing settings the network was trained with.
        temperature: T the logits are divided by (1.0 when not calibrated).
        input_size: `"export"` only: (H, W) of the program's input; default (S, S).
        check_images: Grey float images for the parity check; default
            `sample_check_images()`.
        atol: Largest accepted |p_file - p_python|.

    Raises:
        CxrlearnError: A wrong suffix for `.pt2`, the format
            cannot be written by this PyTorch, or the reloaded file disagrees with the
            Python pipeline (then no file is written).
    """
    path = Path(path)
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {tuple(FILE_FORMATS)}, got {file_format!r}")
    names, pre, t = tuple(class_names), preprocess, float(temperature)
    wrapper = EndToEndModel(network, pre, t)
    images = sample_check_images() if check_images is None else list(check_images)
    program = file_format == "export"
    size = None
    if program:
        if path.suffix != ".pt2":
            raise CxrlearnError("a torch.export program is saved as a .pt2 file; change the "
                                "suffix", path=path)
        size = (pre.image_size,) * 2 if input_size is None else tuple(input_size)
        images = [resize_hw(im, size) for im in images]  # inputs the program accepts
    outputs = eager_probs(network, images[:1], pre).shape[1]
    if outputs != len(names):
        raise CxrlearnError(f"the model has {outputs} outputs but there are {len(names)} "
                            f"class names {list(names)}", path=path)
    meta = ExportMetadata(
        file_format=file_format, class_names=names, preprocess=pre, temperature=t,
        # The hash of the weights as saved: the wrapper's float32 CPU copy of the network.
        weights_sha256=weights_sha256(wrapper.model.state_dict()),
        input_size=None if size is None else (int(size[0]), int(size[1])),
        input_dtypes=("float32",) if program else ("uint8", "float32"),
        cxrlearn_version=cxrlearn.__version__, torch_version=torch.__version__)
    extra = {METADATA_NAME: meta.to_json(),
             CLASS_NAMES_NAME: "".join(f"{c}\n" for c in names)}
    save, notes = _saver(wrapper, file_format, images, extra, path)

    # Serialised in memory first: a disk that fills in the middle of the C++ writer aborts
    # the whole process (exit -6), while a full disk under Python's own write is an OSError.
    # Then written, loaded back and checked in a private folder, and renamed into place.
    data = save()
    with temporary_folder(path) as tmp_dir:
        _check_free_space(path, len(data))
        tmp = tmp_dir / path.name
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise CxrlearnError(f"could not write the file ({e.strerror or e}); nothing was "
                                "written", path=path) from None
        del data
        graph = _load_graph(tmp, file_format)  # safe: this process wrote it just now
        found = _network_sha256(graph, file_format)
        if found is not None and found != meta.weights_sha256:
            raise CxrlearnError("the saved weights do not hash to the recorded sha256",
                                path=path)
        worst, n = max_abs_diff(graph, network, pre, t, images, batched_only=program)
        if not worst <= atol:
            raise CxrlearnError(
                f"the exported file disagrees with the Python pipeline (max |diff| = "
                f"{worst:.3g} > {atol:g} on {n} inputs); nothing was written", path=path)
        os.replace(tmp, path)  # atomic: the folder is on the same file system
    return ExportResult(path, meta, worst, n, tuple(notes))


def _check_free_space(path: Path, size: int) -> None:
    """Refuse to write `size` bytes where they cannot fit, before writing any."""
    needed = size + (16 << 20)  # a margin for the file system's own bookkeeping
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise CxrlearnError(f"not enough free disk space: the file needs about "
                            f"{needed / 1e6:.0f} MB, {free / 1e6:.0f} MB are free; nothing was "
                            "written", path=path)


def _saver(wrapper: EndToEndModel, file_format: str, images: list[np.ndarray],
           extra: dict[str, str], path: Path) -> tuple[Callable[[], bytes], list[str]]:
    """Convert the wrapper for `file_format`; return the function that serialises it (to
    bytes, in memory), and notes."""
    notes: list[str] = []
    if file_format == "export":
        # An example batch of 2: torch.export treats a size of 1 as a constant, not a symbol.
        example = torch.from_numpy(np.stack((images * 2)[:2]))[:, None]  # (2, 1, H, W)
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.export.export(wrapper, (example,),
                                          dynamic_shapes={"image": {0: batch}})
        except Exception as e:  # torch.export reports unsupported code with many error types
            raise CxrlearnError(f"torch.export could not capture the model ({_reason(e)})",
                                path=path) from None
        def save_program() -> bytes:
            buffer = io.BytesIO()
            torch.export.save(program, buffer, extra_files=extra)
            return buffer.getvalue()
        return save_program, notes
    with upstream_deprecation("`torch.jit.script`"):
        module = torch.jit.script(wrapper)
    if file_format == "torchscript":
        def save_script() -> bytes:
            buffer = io.BytesIO()
            with upstream_deprecation("`torch.jit.save`"):
                torch.jit.save(module, buffer, _extra_files=extra)
            return buffer.getvalue()
        return save_script, notes
    if not hasattr(module, "_save_for_lite_interpreter"):
        raise CxrlearnError("this PyTorch cannot write lite-interpreter files; use the "
                            "TorchScript (.pt) or torch.export (.pt2) format", path=path)
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile

        module = optimize_for_mobile(module, preserved_methods=["preprocess"])
    except (ImportError, RuntimeError) as e:
        notes.append(f"optimize_for_mobile skipped ({_reason(e)}); the lite file holds the "
                     "unoptimised scripted graph, which gives the same results")

    def save_lite() -> bytes:
        with upstream_deprecation("Lite Interpreter"):
            return bytes(module._save_to_buffer_for_lite_interpreter(_extra_files=extra))
    return save_lite, notes


def _reason(e: BaseException) -> str:
    text = str(e)
    if "XNNPACK" in text:
        return "this PyTorch build has no XNNPACK"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:200]


def export_torchscript(network: nn.Module, path: str | Path,
                       **options) -> ExportResult:
    """Script the whole pipeline with `torch.jit.script` and save it (`.pt`).

    The file takes a raw grey image, uint8 or float, `(H, W)` or `(B, 1, H, W)`, of any
    size, and returns probabilities `(B, K)`; it runs with `torch.jit.load` in Python or
    C++ (LibTorch), with no cxrlearn needed. TorchScript is deprecated upstream in favour
    of `torch.export` (see `export_program`); it is still what PyTorch Mobile apps load.
    Options as in `export_model`.
    """
    return export_model(network, path, "torchscript", **options)


def export_lite(network: nn.Module, path: str | Path, **options) -> ExportResult:
    """Write the scripted pipeline for PyTorch Mobile's lite interpreter (`.ptl`).

    The file an Android or iOS app (or Flutter, through a PyTorch Mobile plugin) loads; both
    are deprecated upstream in favour of ExecuTorch, which runs `torch.export` programs.
    `optimize_for_mobile` (batch norm folded into the convolutions, XNNPACK kernels) is
    tried first; builds without XNNPACK, such as the Linux CPU wheels of torch 2.13, fail
    it, and the unoptimised graph is written with a note in the result. Options as in
    `export_model`.
    """
    return export_model(network, path, "lite", **options)


def export_program(network: nn.Module, path: str | Path,
                   **options) -> ExportResult:
    """Trace the pipeline with `torch.export.export` and save the program (`.pt2`).

    `torch.export` is the successor of TorchScript: it captures the graph by running the
    model on example inputs with symbolic shapes, and ExecuTorch compiles such programs
    for phones. Shapes are what it is strict about. The batch size is dynamic (1 to 1024),
    but height and width are fixed at `input_size`: two steps of the pipeline branch on
    the image size in Python (`percentile_tensor` turns the rank of the 2nd percentile
    into an `int`, `transforms.resize` skips images already S x S), and `torch.export`
    turns such branches into guards that hold for one size only. An app therefore resizes
    to `input_size` before calling; percentiles are then taken on that image instead of
    the full-size one, a small difference from the TorchScript file, which takes any size.
    The program takes float32 `(B, 1, H, W)` in [0, 1] only. Options as in `export_model`.
    """
    return export_model(network, path, "export", **options)
