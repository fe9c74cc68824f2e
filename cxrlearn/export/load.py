"""Reading an exported file back as data: its metadata and its weights, nothing run.

An exported file is a program. TorchScript's `torch.jit.load` runs the file's own code (a
crafted file's `__setstate__` can write files), and `torch.export.load` quietly retries a
refused `weights_only=True` load with `weights_only=False`, which unpickles anything. So
cxrlearn never hands a file it did not just write to either loader. It reads an export as
data:

- `read_metadata`: the small JSON document `extra/cxrlearn.json` (classes, preprocessing,
  temperature, a sha256 of the weights), read with `zipfile` alone;
- `read_weights`: the tensors, from the archive's raw storage records. A TorchScript or
  lite file's `data.pkl` is read by a restricted unpickler that knows tensors and plain
  containers and stands an inert placeholder in for every TorchScript class, so nothing of
  the file's code is ever called; a `.pt2` program's weights are raw bytes described by
  JSON.

Both return data, not a model. `cxrlearn.trained.open_model` is the one way from a file to
a model: for an export it puts these weights into cxrlearn's own `EndToEndModel`, after
their sha256 matched the one in `cxrlearn.json`. The exported graph itself is for other apps
(a phone, LibTorch); it was checked against the Python pipeline when it was written
(`cxrlearn.export.files`, the only place cxrlearn loads a graph, a moment after writing it),
so the model `open_model` rebuilds answers like the graph, to 1e-5.

Lesson: lessons/06_torchscript_export.ipynb
"""
from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cxrlearn.checkpoint import MAX_DEPTH, check_depth
from cxrlearn.data.folder import MAX_CLASSES
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.calibration import plausible_temperature
from cxrlearn.transforms import Preprocess

__all__ = [
    "EXPORT_FORMAT",
    "FILE_FORMATS",
    "ExportMetadata",
    "read_metadata",
    "read_weights",
    "upstream_deprecation",
]

EXPORT_FORMAT = "cxrlearn-export-v1"
"""The marker in `cxrlearn.json` that says "made by cxrlearn, in this layout"."""

FILE_FORMATS = {"torchscript": ".pt", "lite": ".ptl", "export": ".pt2"}
"""Export formats and their usual file suffix."""

METADATA_NAME = "cxrlearn.json"
CLASS_NAMES_NAME = "class_names.txt"
MAX_RECORD_BYTES = 1 << 30  # one tensor of ResNet18 is under 10 MB; 1 GiB is a damaged file
MAX_METADATA_BYTES = 1 << 20


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


@dataclass(frozen=True)
class ExportMetadata:
    """The contents of `cxrlearn.json`.

    Attributes:
        file_format: `"torchscript"`, `"lite"` or `"export"` (a `torch.export` program).
        class_names: Column order of the probabilities.
        preprocess: Image size, stretch percentiles, channels, mean and std.
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
    def from_json(cls, text: str, path: str | Path = METADATA_NAME) -> ExportMetadata:
        """Parse `cxrlearn.json`; a missing marker or a bad field is a `CxrlearnError`.

        A file exported with flip averaging (`"flip_average": true`, cxrlearn 0.1) is
        refused: its graph averages two passes, which cxrlearn no longer does.
        """
        try:
            doc = json.loads(text)
        except RecursionError:  # json.loads recurses once per level of nesting
            raise CxrlearnError(f"damaged cxrlearn.json inside: nested more than {MAX_DEPTH} "
                                "levels deep; export the model again", path=path) from None
        except ValueError as e:
            raise CxrlearnError(f"damaged cxrlearn.json inside ({type(e).__name__}: {e}); "
                                "export the model again", path=path) from None
        check_depth(doc, path, "cxrlearn.json")
        try:
            if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
                found = doc.get("format") if isinstance(doc, dict) else None
                raise CxrlearnError(f"not a {EXPORT_FORMAT} file (format marker {found!r})",
                                    path=path)
            if doc.get("flip_average"):
                raise CxrlearnError("exported with flip averaging, which this cxrlearn no "
                                    "longer supports; export the checkpoint again", path=path)
            names = doc["class_names"]
            if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                    or not 2 <= len(names) <= MAX_CLASSES):
                raise ValueError(f"class_names must be 2 to {MAX_CLASSES} names, got "
                                 f"{names!r:.60}")
            if doc["file_format"] not in FILE_FORMATS:
                raise ValueError(f"unknown file_format {doc['file_format']!r:.40}")
            temperature = float(doc["temperature"])
            if not plausible_temperature(temperature):
                raise ValueError(f"temperature {temperature} out of range")
            preprocess = Preprocess.from_dict(doc)
            shape = doc["input"]["shape"]
            if not isinstance(shape, list) or len(shape) != 4:
                raise ValueError(f"input shape {shape!r:.60} is not [B, C, H, W]")
            fixed = all(isinstance(v, int) and not isinstance(v, bool) for v in shape[2:])
            if fixed:  # a size the network could not take, or one that allocates gigabytes
                for side in shape[2:]:
                    try:  # the one definition of a valid image side: Preprocess's
                        dataclasses.replace(preprocess, image_size=side)
                    except ValueError as e:
                        raise ValueError(f"input shape {shape[2]} x {shape[3]}: {e}") from None
            return cls(
                file_format=str(doc["file_format"]),
                class_names=tuple(names),
                preprocess=preprocess,
                temperature=temperature,
                weights_sha256=str(doc["weights_sha256"]),
                input_size=(int(shape[2]), int(shape[3])) if fixed else None,
                input_dtypes=tuple(str(d) for d in doc["input"]["dtypes"]),
                cxrlearn_version=str(doc["cxrlearn_version"]),
                torch_version=str(doc["torch_version"]),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise CxrlearnError(f"damaged cxrlearn.json inside ({type(e).__name__}: {e}); "
                                "export the model again", path=path) from None


def _archive_entry(names: list[str], *parts: str) -> str | None:
    """The entry `<root>/<parts...>`, whatever the archive's root folder is called."""
    for entry in names:
        pieces = entry.split("/")
        if len(pieces) == len(parts) + 1 and tuple(pieces[1:]) == parts:
            return entry
    return None


def read_metadata(path: str | Path) -> ExportMetadata | None:
    """The metadata of a cxrlearn export, or None for any other file (a checkpoint, say).

    Only the zip directory and one small entry are read; nothing is unpickled or run.

    Raises:
        CxrlearnError: The file is missing or unreadable, or its `cxrlearn.json` is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrlearnError("no such file", path=path)
    try:
        with zipfile.ZipFile(path) as z:
            entry = _archive_entry(z.namelist(), "extra", METADATA_NAME)
            if entry is None:
                return None
            if z.getinfo(entry).file_size > MAX_METADATA_BYTES:
                raise CxrlearnError("damaged cxrlearn.json inside (too large)", path=path)
            text = z.read(entry).decode("utf-8")
    except zipfile.BadZipFile:
        return None
    except (OSError, UnicodeDecodeError, RuntimeError) as e:
        raise CxrlearnError(f"cannot read the file ({e})", path=path) from None
    return ExportMetadata.from_json(text, path)


# --- the weights, read as data -------------------------------------------------------------

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ByteStorage": torch.uint8, "BoolStorage": torch.bool}
# torch.export's serialised dtypes (torch._export.serde.schema.ScalarType) that a network has.
_PT2_DTYPES = {5: torch.int64, 6: torch.float16, 7: torch.float32, 8: torch.float64,
               13: torch.bfloat16}


class _Inert:
    """Stands in for a TorchScript class while `data.pkl` is read: keeps its state, runs
    nothing (the file's own `__setstate__`, if any, lives in its code and is never called)."""

    def __init__(self, *args: object) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple,
                    *rest: object) -> Tensor:
    try:
        return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()
    except RuntimeError as e:  # a size or stride outside its storage
        raise pickle.UnpicklingError(f"a tensor does not fit its storage ({e})") from None


class _DataUnpickler(pickle.Unpickler):
    """Python's unpickler restricted to what a TorchScript `data.pkl` needs to give tensors."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("collections", "OrderedDict"): dict}

    def __init__(self, data: bytes, read_record: Callable[[str], bytes]) -> None:
        super().__init__(io.BytesIO(data))
        self.read_record = read_record

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return type(name, (_Inert,), {})
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value, *args: value  # build_intlist([1, 2]) is just the list
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not plain data")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown record {pid!r:.80}")
        raw = self.read_record(str(pid[2]))
        return torch.frombuffer(bytearray(raw), dtype=pid[1].dtype) if raw else \
            torch.empty(0, dtype=pid[1].dtype)


def _flatten(obj: object, prefix: str = "", depth: int = 0) -> dict[str, Tensor]:
    """`{"model.conv1.weight": tensor, ...}` from the tree of placeholders `data.pkl` gave.

    Raises:
        ValueError: The tree is deeper than `MAX_DEPTH` (a crafted file).
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"modules nested more than {MAX_DEPTH} levels deep")
    state = obj.state if isinstance(obj, _Inert) else obj
    if not isinstance(state, dict):
        return {}
    found: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            found[prefix + str(key)] = value
        elif isinstance(value, _Inert):
            found.update(_flatten(value, f"{prefix}{key}.", depth + 1))
    return found


def _read(z: zipfile.ZipFile, entry: str, path: Path) -> bytes:
    if z.getinfo(entry).file_size > MAX_RECORD_BYTES:
        raise CxrlearnError(f"damaged export: {entry} is too large", path=path)
    return z.read(entry)


def read_weights(path: str | Path, metadata: ExportMetadata) -> dict[str, Tensor]:
    """The tensors of an exported `EndToEndModel` (`mean`, `std`, `model.*`), read as data.

    Nothing in the file is run: see the module docstring.

    Raises:
        CxrlearnError: The archive holds anything other than plain tensors where the weights
            should be, or is damaged.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if metadata.file_format == "export":
                return _read_program_weights(z, names, path)
            entry = _archive_entry(names, "data.pkl")
            if entry is None:
                raise CxrlearnError("damaged export: no data.pkl", path=path)
            root = entry.split("/")[0]

            def record(key: str) -> bytes:
                if not key.isdigit():
                    raise pickle.UnpicklingError(f"bad record name {key!r:.40}")
                return _read(z, f"{root}/data/{key}", path)

            tree = _DataUnpickler(_read(z, entry, path), record).load()
            return _flatten(tree)
    except RecursionError:  # the unpickler recurses on nested objects; _flatten stops sooner
        raise CxrlearnError(f"damaged export: its data is nested more than {MAX_DEPTH} levels "
                            "deep; export the model again", path=path) from None
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, zipfile.BadZipFile, RuntimeError) as e:
        raise CxrlearnError(f"cannot read the weights as data ({e}); cxrlearn does not run "
                            "a model file's code, export the model again", path=path) from None


def _read_program_weights(z: zipfile.ZipFile, names: list[str],
                          path: Path) -> dict[str, Tensor]:
    """A `.pt2` program's weights: raw storage bytes, described by a JSON config."""
    entry = _archive_entry(names, "data", "weights", "model_weights_config.json")
    if entry is None:
        raise CxrlearnError("damaged export: no weights config (a torch.export archive of "
                            "another layout?)", path=path)
    root = entry.split("/")[0]
    weights: dict[str, Tensor] = {}
    try:
        config = json.loads(_read(z, entry, path))["config"]
    except RecursionError:
        raise ValueError(f"its weights config is nested more than {MAX_DEPTH} levels deep") \
            from None
    if not isinstance(config, dict):
        raise ValueError(f"its weights config is {type(config).__name__}, not a mapping")
    for name, spec in config.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("tensor_meta", {}), dict):
            raise CxrlearnError(f"damaged export: weight {name!r:.40} is described by "
                                f"{type(spec).__name__}, not a mapping", path=path)
        if spec.get("use_pickle", True):
            raise CxrlearnError(f"the weight {name!r:.40} is pickled, and cxrlearn unpickles "
                                "nothing from a model file; export the model again", path=path)
        meta = spec["tensor_meta"]
        dtype = _PT2_DTYPES.get(meta["dtype"])
        record = str(spec["path_name"])
        if dtype is None or "/" in record or ".." in record:
            raise CxrlearnError(f"damaged export: weight {name!r:.40}", path=path)
        flat = torch.frombuffer(bytearray(_read(z, f"{root}/data/weights/{record}", path)),
                                dtype=dtype)
        weights[name] = _rebuild_tensor(flat, meta["storage_offset"]["as_int"],
                                        [d["as_int"] for d in meta["sizes"]],
                                        [d["as_int"] for d in meta["strides"]])
    return weights
