"""What an exported file says about itself: classes, preprocessing, versions, a weights hash.

Every file cxrlearn exports carries, next to the graph and weights, a small JSON document
`extra/cxrlearn.json` (and `extra/class_names.txt`, one name per line, for apps that want
nothing else). TorchScript, lite-interpreter and `torch.export` files are all zip archives
that keep such extra files under `<archive>/extra/`, so the metadata can be read with
`zipfile` alone, before any graph is loaded.

Lesson: lessons/06_torchscript_export.ipynb
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrlearn.errors import CxrlearnError
from cxrlearn.export.pipeline import Preprocess

__all__ = [
    "EXPORT_FORMAT",
    "FILE_FORMATS",
    "METADATA_NAME",
    "CLASS_NAMES_NAME",
    "ExportMetadata",
    "read_metadata",
]

EXPORT_FORMAT = "cxrlearn-export-v1"
"""The marker in `cxrlearn.json` that says "made by cxrlearn, in this layout"."""

FILE_FORMATS = {"torchscript": ".pt", "lite": ".ptl", "export": ".pt2"}
"""Export formats and their usual file suffix."""

METADATA_NAME = "cxrlearn.json"
CLASS_NAMES_NAME = "class_names.txt"


@dataclass(frozen=True)
class ExportMetadata:
    """The contents of `cxrlearn.json`.

    Attributes:
        file_format: `"torchscript"`, `"lite"` or `"export"` (a `torch.export` program).
        class_names: Column order of the probabilities.
        preprocess: Image size, stretch percentiles, channels, mean and std, flip averaging.
        temperature: T the logits are divided by (1.0 when the model is not calibrated).
        weights_sha256: `weights_sha256` of the network's state dict.
        input_size: (H, W) the file accepts, or None when any size works.
        input_dtypes: Tensor dtypes the file accepts, e.g. `("uint8", "float32")`.
        cxrlearn_version: The cxrlearn that wrote the file.
        torch_version: The PyTorch that wrote the file.
    """

    file_format: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    temperature: float
    weights_sha256: str
    input_size: tuple[int, int] | None
    input_dtypes: tuple[str, ...]
    cxrlearn_version: str
    torch_version: str

    def to_json(self) -> str:
        """The document written into the file, with the format marker first."""
        doc: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "file_format": self.file_format,
            "class_names": list(self.class_names),
            **self.preprocess.to_dict(),
            "temperature": self.temperature,
            "weights_sha256": self.weights_sha256,
            "input": {
                "shape": ["B", 1, *(self.input_size or ("H", "W"))],
                "dtypes": list(self.input_dtypes),
                "values": "raw grey levels: uint8 0..255, or float scaled like load_image",
            },
            "output": "probabilities (B, K), columns in class_names order",
            "cxrlearn_version": self.cxrlearn_version,
            "torch_version": self.torch_version,
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str | Path = "cxrlearn.json") -> ExportMetadata:
        """Parse `cxrlearn.json`; a missing marker or field is a `CxrlearnError` naming `path`."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
                found = doc.get("format") if isinstance(doc, dict) else None
                raise CxrlearnError(f"not a {EXPORT_FORMAT} file (format marker {found!r})",
                                    path=path)
            shape = doc["input"]["shape"]
            fixed = all(isinstance(v, int) for v in shape[2:])
            return cls(
                file_format=str(doc["file_format"]),
                class_names=tuple(str(c) for c in doc["class_names"]),
                preprocess=Preprocess.from_dict(doc),
                temperature=float(doc["temperature"]),
                weights_sha256=str(doc["weights_sha256"]),
                input_size=(int(shape[2]), int(shape[3])) if fixed else None,
                input_dtypes=tuple(str(d) for d in doc["input"]["dtypes"]),
                cxrlearn_version=str(doc["cxrlearn_version"]),
                torch_version=str(doc["torch_version"]),
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:  # JSONDecodeError too
            raise CxrlearnError(f"damaged cxrlearn.json inside ({type(e).__name__}: {e}); "
                                "export the model again", path=path) from None


def _extra_entry(names: list[str], name: str) -> str | None:
    """The archive entry `<root>/extra/<name>`, whatever the root folder is called."""
    for entry in names:
        parts = entry.split("/")
        if len(parts) == 3 and parts[1] == "extra" and parts[2] == name:
            return entry
    return None


def read_metadata(path: str | Path) -> ExportMetadata | None:
    """The metadata of a cxrlearn export, or None for any other file (a checkpoint, say).

    Only the zip directory and one small entry are read; no graph is loaded. Files that
    are not zip archives (PyTorch's format since 1.6) are not exports either: None.

    Args:
        path: A `.pt`, `.ptl` or `.pt2` file (or anything else).

    Returns:
        `ExportMetadata`, or None when the file holds no `cxrlearn.json`.

    Raises:
        CxrlearnError: The file is missing or unreadable, or its `cxrlearn.json` is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrlearnError("no such file", path=path)
    try:
        with zipfile.ZipFile(path) as z:
            entry = _extra_entry(z.namelist(), METADATA_NAME)
            if entry is None:
                return None
            text = z.read(entry).decode("utf-8")
    except zipfile.BadZipFile:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CxrlearnError(f"cannot read the file ({e})", path=path) from None
    return ExportMetadata.from_json(text, path)
