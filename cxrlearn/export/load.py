"""Loading an exported file back: check what it is, then run it like a function.

`load_exported` reads `cxrlearn.json` first (no graph is loaded for a file that is not a
cxrlearn export), checks the classes if asked, loads the graph with the loader its format
needs, and compares the weights with the hash written at export time.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cxrlearn.errors import CxrlearnError
from cxrlearn.export.metadata import ExportMetadata, read_metadata
from cxrlearn.export.pipeline import resize_hw, weights_sha256

__all__ = ["ExportedModel", "load_exported", "is_export", "upstream_deprecation"]


@contextmanager
def upstream_deprecation(*apis: str) -> Iterator[None]:
    """Hide the DeprecationWarning that PyTorch raises on purpose for the named APIs only.

    TorchScript (`torch.jit.script`, `save`, `load`) and the lite interpreter are deprecated
    upstream and warn on every call (torch 2.13: "`torch.jit.script` is deprecated. Please
    switch to `torch.compile` or `torch.export`." and "Lite Interpreter is deprecated.
    Please consider switching to ExecuTorch."). cxrlearn uses them because the mission asks
    for a TorchScript file, and says so in its docs and lesson 06; repeating the warning
    at every export tells the user nothing new. Any other warning still shows, and the
    filter is undone when the block ends.

    Args:
        apis: Start of the warning text, e.g. "`torch.jit.script`" or "Lite Interpreter".
    """
    with warnings.catch_warnings():
        for api in apis:
            warnings.filterwarnings("ignore", message=re.escape(api) + r".* is deprecated",
                                    category=DeprecationWarning)
        yield


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_module(path: Path, file_format: str) -> Callable[[Tensor], Tensor]:
    """Load the graph of an exported file with the loader of its format.

    Raises:
        CxrlearnError: The file cannot be loaded (damaged, or made by a newer PyTorch).
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
        raise CxrlearnError(f"cannot load the {file_format} graph ({_first_line(e)}); "
                            "the file may be damaged or made by another PyTorch version",
                            path=path) from None
    raise CxrlearnError(f"unknown export format {file_format!r}", path=path)


def network_sha256(module: object, file_format: str) -> str | None:
    """`weights_sha256` of the network inside a loaded file; None where it cannot be read.

    The lite interpreter keeps no state dict that Python can read, so it gives None.
    """
    if file_format == "torchscript":
        return weights_sha256(module.model.state_dict())
    if file_format == "export":
        state = module.state_dict()  # the wrapper's: "model.conv1.weight", ..., mean, std
        return weights_sha256({k[len("model."):]: v for k, v in state.items()
                               if k.startswith("model.")})
    return None


def is_export(path: str | Path) -> bool:
    """True when `path` is a file that cxrlearn exported (it holds `cxrlearn.json`).

    Raises:
        CxrlearnError: The file is missing or unreadable.
    """
    return read_metadata(path) is not None


class ExportedModel:
    """A loaded export: call it on raw grey images to get class probabilities.

    Attributes:
        path: The file it was loaded from.
        metadata: Its `cxrlearn.json` (classes, preprocessing, versions, hash).
        module: The loaded graph (a ScriptModule, a lite module, or the `torch.export`
            program's module).
    """

    def __init__(self, path: Path, metadata: ExportMetadata, module: Callable) -> None:
        self.path = path
        self.metadata = metadata
        self.module = module

    @property
    def class_names(self) -> tuple[str, ...]:
        """Column order of the probabilities."""
        return self.metadata.class_names

    def __call__(self, image: np.ndarray | Tensor, fit_size: bool = False) -> Tensor:
        """Class probabilities for raw grey images (as `load_image` returns, or uint8).

        A `torch.export` program takes a float32 batch of the size it was exported for;
        for it, a 2-D image gets its batch and channel dimensions and uint8 is divided by
        255 here (what the other formats do inside the graph).

        Args:
            image: One grey image or a batch.
            fit_size: For a `torch.export` program, resize a 2-D image of another size to
                the program's `input_size` (`resize_hw`) instead of refusing it. Other
                formats take any size and ignore this.

        Raises:
            CxrlearnError: The image does not have the size a `torch.export` program needs.

        Shape:
            image: (H, W) or (B, 1, H, W) -> (B, K)
        """
        x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
        if self.metadata.input_size is not None:
            if x.dtype == torch.uint8:
                x = x.to(torch.float32) / 255.0
            x = x.to(torch.float32)  # the program was traced for float32 only
            if x.dim() == 2:
                if fit_size and tuple(x.shape) != self.metadata.input_size:
                    x = torch.from_numpy(resize_hw(x, self.metadata.input_size))
                x = x[None, None]  # (1, 1, H, W)
            if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.metadata.input_size:
                h, w = self.metadata.input_size
                raise CxrlearnError(
                    f"this torch.export program takes (B, 1, {h}, {w}) images, got "
                    f"{tuple(x.shape)}; resize the image first, or use the TorchScript file, "
                    "which takes any size", path=self.path)
        with torch.no_grad():
            return self.module(x)

    def __repr__(self) -> str:
        return (f"ExportedModel({self.path.name!r}, format={self.metadata.file_format!r}, "
                f"classes={list(self.class_names)})")


def load_exported(
    path: str | Path, expected_classes: Sequence[str] | None = None
) -> ExportedModel:
    """Open a file written by `export_torchscript`, `export_lite` or `export_program`.

    Args:
        path: The `.pt`, `.ptl` or `.pt2` file.
        expected_classes: If given, the classes the caller expects, in order.

    Returns:
        An `ExportedModel` with the metadata and a callable graph.

    Raises:
        CxrlearnError: Missing file, not a cxrlearn export (a checkpoint, another program's
            model), other classes, a graph that does not load, or weights that no longer
            match the hash written at export time. The message names the file.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if metadata is None:
        raise CxrlearnError(
            "not a cxrlearn export (it holds no cxrlearn.json); if it is a checkpoint such "
            "as best.pt, export it with `cxrlearn export --run RUN`", path=path)
    if expected_classes is not None and list(metadata.class_names) != list(expected_classes):
        raise CxrlearnError(f"exported for classes {list(metadata.class_names)}, not "
                            f"{list(expected_classes)}", path=path)
    module = load_module(path, metadata.file_format)
    found = network_sha256(module, metadata.file_format)
    if found is not None and found != metadata.weights_sha256:
        raise CxrlearnError("the weights do not match the sha256 written at export time; "
                            "the file was changed after export, export it again", path=path)
    return ExportedModel(path, metadata, module)
