"""Writing the three kinds of file, each checked against the Python pipeline before it counts.

Every writer follows the same steps: wrap the network in `EndToEndModel`, convert it
(script it, or trace it with `torch.export`), save it to a temporary file next to the
target with `cxrlearn.json` inside, load that file back with the loader an app would use,
compare its probabilities with `eager_probs` on real X-rays (`cxrlearn.export.parity`), and
only then rename it into place. A file that disagrees by more than `atol` is deleted and
never seen.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cxrlearn
from cxrlearn.checkpoint import load_checkpoint, model_from_checkpoint
from cxrlearn.errors import CxrlearnError
from cxrlearn.export.load import upstream_deprecation
from cxrlearn.export.metadata import CLASS_NAMES_NAME, METADATA_NAME, ExportMetadata
from cxrlearn.export.parity import check_saved_file, sample_check_images
from cxrlearn.export.pipeline import (
    EndToEndModel,
    Preprocess,
    eager_probs,
    resize_hw,
    weights_sha256,
)

__all__ = [
    "ExportResult",
    "export_torchscript",
    "export_lite",
    "export_program",
]

ModelSource = nn.Module | Mapping[str, Any] | str | Path


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


@dataclass(frozen=True)
class _Source:
    model: nn.Module
    class_names: tuple[str, ...]
    preprocess: Preprocess
    temperature: float


def _resolve(
    source: ModelSource,
    class_names: Sequence[str] | None,
    preprocess: Preprocess | None,
    temperature: float | None,
) -> _Source:
    """The network and its settings, from a checkpoint (path or dict) or a bare model."""
    if isinstance(source, nn.Module):
        if class_names is None or preprocess is None:
            raise ValueError("exporting a bare model needs class_names= and preprocess=")
        return _Source(source, tuple(class_names), preprocess,
                       1.0 if temperature is None else float(temperature))
    where: str | Path = "checkpoint"
    if isinstance(source, (str, Path)):
        where = Path(source)
        source = load_checkpoint(where)
    model = model_from_checkpoint(dict(source), where)
    if preprocess is None:
        try:
            preprocess = Preprocess.from_dict(source["meta"]["preprocess"])
        except (KeyError, TypeError, ValueError) as e:
            raise CxrlearnError(f"checkpoint has no usable meta.preprocess ({e}); pass "
                                "preprocess=Preprocess(...)", path=where) from None
    names = tuple(source["class_names"]) if class_names is None else tuple(class_names)
    # A calibrated checkpoint carries T (cxrlearn.calibration); otherwise T = 1.
    t = float(source.get("temperature", 1.0)) if temperature is None else float(temperature)
    return _Source(model, names, preprocess, t)


def _metadata(src: _Source, wrapper: EndToEndModel, file_format: str,
              input_size: tuple[int, int] | None, input_dtypes: tuple[str, ...]
              ) -> ExportMetadata:
    # The hash is of the weights as saved: the wrapper's float32 CPU copy of the network.
    return ExportMetadata(
        file_format=file_format,
        class_names=src.class_names,
        preprocess=src.preprocess,
        temperature=src.temperature,
        weights_sha256=weights_sha256(wrapper.model.state_dict()),
        input_size=input_size,
        input_dtypes=input_dtypes,
        cxrlearn_version=cxrlearn.__version__,
        torch_version=torch.__version__,
    )


def _extra_files(metadata: ExportMetadata) -> dict[str, str]:
    return {METADATA_NAME: metadata.to_json(),
            CLASS_NAMES_NAME: "".join(f"{c}\n" for c in metadata.class_names)}


def _check_classes(src: _Source, image: np.ndarray, path: Path) -> None:
    """One class name per output of the model, or a clear error naming the target file."""
    num_outputs = eager_probs(src.model, [image], src.preprocess).shape[1]
    if num_outputs != len(src.class_names):
        raise CxrlearnError(f"the model has {num_outputs} outputs but there are "
                            f"{len(src.class_names)} class names {list(src.class_names)}",
                            path=path)


def _write_checked(
    path: Path,
    save: Callable[[Path], None],
    meta: ExportMetadata,
    src: _Source,
    images: Sequence[np.ndarray],
    atol: float,
) -> tuple[float, int]:
    """Save to a temporary file beside `path`, check it, and rename it only if it passes.

    A `torch.export` program takes float `(B, 1, H, W)` only; the other files also take
    uint8 and single `(H, W)` images, and are checked with them.
    """
    program = meta.file_format == "export"
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private folder on the same file system, so the final rename is atomic. The file in
    # it has the final name because the savers name the archive's root folder after it.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        save(tmp)
        worst, n = check_saved_file(tmp, meta, src.model, images, with_uint8=not program,
                                    batched_only=program)
        if not worst <= atol:
            raise CxrlearnError(
                f"the exported file disagrees with the Python pipeline (max |diff| = "
                f"{worst:.3g} > {atol:g} on {n} inputs); nothing was written", path=path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return worst, n


def _wrap(src: _Source) -> EndToEndModel:
    return EndToEndModel(src.model, src.preprocess, src.temperature)


def _script(wrapper: EndToEndModel) -> torch.jit.ScriptModule:
    with upstream_deprecation("`torch.jit.script`"):
        return torch.jit.script(wrapper)


def export_torchscript(
    source: ModelSource,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    temperature: float | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-5,
) -> ExportResult:
    """Script the whole pipeline (`EndToEndModel`) with `torch.jit.script` and save it.

    The file takes a raw grey image, uint8 or float, `(H, W)` or `(B, 1, H, W)`, of any
    size, and returns probabilities `(B, K)`; it runs with `torch.jit.load` in Python or
    C++ (LibTorch), with no cxrlearn needed. TorchScript is deprecated upstream in favour
    of `torch.export` (see `export_program`); it is still what PyTorch Mobile apps load.

    Args:
        source: A checkpoint path (`best.pt`), a loaded checkpoint dict, or an `nn.Module`
            (which then needs `class_names` and `preprocess`).
        path: The file to write, usually `model.pt`. Written only if the check passes.
        class_names: Override (or, for a bare model, give) the class names.
        preprocess: Override (or give) the preprocessing settings.
        temperature: Override T; default the checkpoint's `"temperature"`, else 1.
        check_images: Grey float images for the parity check; default
            `sample_check_images()`.
        atol: Largest accepted |p_file - p_python|.

    Returns:
        An `ExportResult`.

    Raises:
        CxrlearnError: Unreadable checkpoint, or the reloaded file disagrees with the
            Python pipeline (then no file is written).
    """
    src = _resolve(source, class_names, preprocess, temperature)
    wrapper = _wrap(src)
    meta = _metadata(src, wrapper, "torchscript", None, ("uint8", "float32"))
    images = sample_check_images() if check_images is None else list(check_images)
    _check_classes(src, images[0], Path(path))
    scripted = _script(wrapper)

    def save(tmp: Path) -> None:
        with upstream_deprecation("`torch.jit.save`"):
            torch.jit.save(scripted, str(tmp), _extra_files=_extra_files(meta))

    worst, n = _write_checked(Path(path), save, meta, src, images, atol)
    return ExportResult(Path(path), meta, worst, n)


def export_lite(
    source: ModelSource,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    temperature: float | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-5,
    optimize: bool = True,
) -> ExportResult:
    """Write the scripted pipeline for PyTorch Mobile's lite interpreter (`.ptl`).

    This is the file an Android or iOS app (or Flutter, through a PyTorch Mobile plugin)
    loads. Both PyTorch Mobile and its lite interpreter are deprecated upstream in favour
    of ExecuTorch, which runs `torch.export` programs (see `export_program`).

    `torch.utils.mobile_optimizer.optimize_for_mobile` (batch norm folded into the
    convolutions, XNNPACK kernels) is tried first. PyTorch builds without XNNPACK, such as
    the CPU wheels of torch 2.13 for Linux, fail it with "Mobile optimization only
    available with XNNPACK"; the unoptimised graph is then written, with a note in the
    result. Either way the reloaded file must pass the parity check.

    Args:
        source: As in `export_torchscript`.
        path: The file to write, usually `model.ptl`.
        class_names: As in `export_torchscript`.
        preprocess: As in `export_torchscript`.
        temperature: As in `export_torchscript`.
        check_images: As in `export_torchscript`.
        atol: Largest accepted |p_file - p_python|.
        optimize: Try `optimize_for_mobile` first.

    Returns:
        An `ExportResult`; `notes` says whether the optimisation was skipped and why.

    Raises:
        CxrlearnError: This PyTorch cannot write lite-interpreter files, or the check fails.
    """
    src = _resolve(source, class_names, preprocess, temperature)
    wrapper = _wrap(src)
    meta = _metadata(src, wrapper, "lite", None, ("uint8", "float32"))
    images = sample_check_images() if check_images is None else list(check_images)
    _check_classes(src, images[0], Path(path))
    module = _script(wrapper)
    if not hasattr(module, "_save_for_lite_interpreter"):
        raise CxrlearnError("this PyTorch cannot write lite-interpreter files; use the "
                            "TorchScript (.pt) or torch.export (.pt2) format", path=path)
    notes: list[str] = []
    if optimize:
        try:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            module = optimize_for_mobile(module, preserved_methods=["preprocess"])
        except (ImportError, RuntimeError) as e:
            notes.append(f"optimize_for_mobile skipped ({_reason(e)}); the lite file holds "
                         "the unoptimised scripted graph, which gives the same results")

    def save(tmp: Path) -> None:
        with upstream_deprecation("Lite Interpreter"):
            module._save_for_lite_interpreter(str(tmp), _extra_files=_extra_files(meta))

    worst, n = _write_checked(Path(path), save, meta, src, images, atol)
    return ExportResult(Path(path), meta, worst, n, tuple(notes))


def _reason(e: BaseException) -> str:
    text = str(e)
    if "XNNPACK" in text:
        return "this PyTorch build has no XNNPACK"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:200]


def export_program(
    source: ModelSource,
    path: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    temperature: float | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    atol: float = 1e-5,
) -> ExportResult:
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
    The program takes float32 `(B, 1, H, W)` in [0, 1] only (no uint8, no 2-D input).

    Args:
        source: As in `export_torchscript`.
        path: The file to write; must end in `.pt2`, as `torch.export.save` expects.
        input_size: (H, W) of the program's input; default (S, S), the training size.
        class_names: As in `export_torchscript`.
        preprocess: As in `export_torchscript`.
        temperature: As in `export_torchscript`.
        check_images: As in `export_torchscript`; resized to `input_size` for the check.
        atol: Largest accepted |p_file - p_python|.

    Returns:
        An `ExportResult`.

    Raises:
        CxrlearnError: The path does not end in `.pt2`, `torch.export` fails on this
            PyTorch, or the check fails.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise CxrlearnError("a torch.export program is saved as a .pt2 file; change the "
                            "suffix", path=path)
    src = _resolve(source, class_names, preprocess, temperature)
    size = (src.preprocess.image_size,) * 2 if input_size is None else tuple(input_size)
    wrapper = _wrap(src)
    meta = _metadata(src, wrapper, "export", (int(size[0]), int(size[1])), ("float32",))
    raw = sample_check_images() if check_images is None else list(check_images)
    images = [resize_hw(im, size) for im in raw]  # inputs the program accepts
    _check_classes(src, images[0], path)
    # An example batch of 2: torch.export treats a size of 1 as a constant, not a symbol.
    example = torch.from_numpy(np.stack((images * 2)[:2]))[:, None]  # (2, 1, H, W)
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(wrapper, (example,),
                                      dynamic_shapes={"image": {0: batch}})
    except Exception as e:  # torch.export reports unsupported code with many error types
        raise CxrlearnError(f"torch.export could not capture the model ({_reason(e)})",
                            path=path) from None

    def save(tmp: Path) -> None:
        torch.export.save(program, str(tmp), extra_files=_extra_files(meta))

    worst, n = _write_checked(path, save, meta, src, images, atol)
    return ExportResult(path, meta, worst, n)

