"""A trained model, whichever file it comes from: one object to predict, explain, evaluate.

`open_model(path)` is the one way from a file to a model. It accepts

- a **run folder** (what `cxrlearn train --out` wrote): its `best.pt`, and its split
  (`manifest.csv`) with the data folder it points into;
- a **checkpoint** (`best.pt`, or `last.pt`): read as plain data with
  `torch.load(weights_only=True)` and checked before anything is built
  (`cxrlearn.checkpoint`); a `manifest.csv` beside it brings the split along. An
  `interrupted.pt` (an epoch stopped midway by Ctrl-C or SIGTERM) is refused with what to
  do: its weights are half an epoch's, for `cxrlearn train --resume` only;
- an **exported file** (`model.pt`, `.ptl`, `.pt2`): read as data, never run
  (`cxrlearn.export.load`), and rebuilt as cxrlearn's own `EndToEndModel` once the weights
  hash to the sha256 written at export time;
- an **ONNX file** (`model.onnx`): parsed as data and verified (`cxrlearn.export.onnx`),
  then run by onnxruntime, which runs operators, never Python code from the file;

and returns a `TrainedModel`: the class names, the preprocessing, the temperature, and
calibrated probabilities for a raw X-ray (`probs`), whatever the file. Each kind of file
has a *reader* (`_READERS`, tried in order); a new format, such as ONNX, is one more
reader that returns the same `TrainedModel`, never a new kind of object.

Opening a model never changes it. What is learned about a checkpoint later, its test
scores (`cxrlearn evaluate`), is written beside it in `test_scores.json`
(`save_test_scores`), under the sha256 of its weights, and `TrainedModel.scores` reads it
from there: a checkpoint replaced since it was evaluated does not inherit the old scores.

Some things need the eager network, which only a checkpoint holds: Grad-CAM (`explain`),
evaluation (`logits`), `export`, and `update_checkpoint`. An exported file gives
probabilities only, and every one of those is refused in one place with one wording
(`TrainedModel.require_network`). `cxrlearn predict`, `gradcam`, `evaluate`, `export`, the
app, the benchmarks and the lessons all start here.

Lesson: lessons/04_evaluation_metrics.ipynb
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cxrlearn.checkpoint import (
    INTERRUPTED,
    check_architecture,
    load_checkpoint,
    save_checkpoint,
)
from cxrlearn.data import XrayDataset, prepare_images, read_manifest, split_dataset
from cxrlearn.data.splits import SplitRow, manifest_classes
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.calibration import plausible_temperature
from cxrlearn.export.files import ExportResult, export_model
from cxrlearn.export.load import read_metadata, read_weights
from cxrlearn.export.onnx import read_onnx
from cxrlearn.export.pipeline import EndToEndModel, resize_hw, weights_sha256
from cxrlearn.gradcam import GradCAM
from cxrlearn.resnet import resnet18
from cxrlearn.training import predict
from cxrlearn.transforms import Preprocess

__all__ = ["TrainedModel", "Explanation", "open_model", "TEST_SCORES_FILE"]

TEST_SCORES_FILE = "test_scores.json"
"""Beside a checkpoint: its test scores, by the checkpoint's file name (`save_test_scores`)."""


@dataclass(frozen=True)
class Explanation:
    """A model's answer for one X-ray, and where its evidence for one class lies.

    Attributes:
        probs: Calibrated class probabilities. Shape (K,).
        predicted: The class with the highest probability.
        target: The class the map explains (the predicted one unless asked otherwise).
        seen: The image the network saw: stretched, resized, 8 bits. Shape (S, S), uint8.
        cam: The Grad-CAM map of `target` at the network's input size, in [0, 1].
            Shape (S, S).
    """

    probs: Tensor
    predicted: int
    target: int
    seen: np.ndarray
    cam: Tensor


@dataclass
class TrainedModel:
    """A trained classifier and what using it needs; see the module docstring.

    Attributes:
        path: The file opened (a run folder stands for its `best.pt`).
        kind: `"checkpoint"`, or an export's format (`"torchscript"`, `"lite"`, `"export"`,
            `"onnx"`).
        class_names: Column order of the probabilities.
        preprocess: How a raw X-ray becomes the network's input.
        temperature: T the logits are divided by (1.0 until calibrated).
        network: The eager network in eval mode (checkpoints only), else None: ask for it
            with `require_network`, which says why when it is missing.
        checkpoint: The checkpoint's plain data without the weights: `epoch`, `history`,
            `scores`, `config`, `meta`, ... (checkpoints only), else None.
        manifest: The run's `manifest.csv`, when the checkpoint sits in a run folder.
        data_root: The data folder the split's paths point into.
        notes: Things worth telling the user about this model.
    """

    path: Path
    kind: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    temperature: float
    network: nn.Module | None = None
    checkpoint: dict[str, Any] | None = None
    manifest: Path | None = None
    data_root: Path | None = None
    notes: tuple[str, ...] = ()
    # Files without an eager network: their reader's way to probabilities, (H, W) -> (1, K),
    # and the sha256 of the weights it checked.
    _run: Callable[[np.ndarray | Tensor], Tensor] | None = field(default=None, repr=False)
    _sha256: str | None = field(default=None, repr=False)
    _cam: tuple[nn.Module, threading.Lock] | None = field(default=None, repr=False)
    _split: list[SplitRow] | None = field(default=None, repr=False)

    def missing_network(self, purpose: str) -> str | None:
        """Why `purpose` cannot be done with this model, or None when it can.

        The one wording of the one refusal: a command that only warns (`cxrlearn predict
        --gradcam`, the app's model card) shows this text; `require_network` raises it.
        """
        if self.network is not None:
            return None
        return (f"{purpose} needs a checkpoint (best.pt, or its run folder): "
                f"{self.path.name} is an exported {self.kind} file, which holds no eager "
                "network and gives probabilities only")

    def require_network(self, purpose: str) -> nn.Module:
        """The eager network, for `purpose` (e.g. "Grad-CAM"): the one check that a
        model has one.

        Raises:
            CxrlearnError: The model is an exported file (`missing_network`'s words).
        """
        if self.network is None:
            raise CxrlearnError(str(self.missing_network(purpose)), path=self.path)
        return self.network

    @property
    def split(self) -> list[SplitRow]:
        """The run's split, one row per image (read from `manifest.csv` when first asked).

        Raises:
            CxrlearnError: No manifest beside the checkpoint, the data folder is gone, or
                the manifest is damaged, points outside the data folder, or belongs to a
                run with other classes.
        """
        if self._split is None:
            if self.manifest is None or self.data_root is None:
                raise CxrlearnError("no split: this model is not in a run folder with a "
                                    "manifest.csv", path=self.path)
            if not self.data_root.is_dir():
                raise CxrlearnError("the run's data folder is gone; if it moved, give its "
                                    "new place (cxrlearn evaluate --data DIR)",
                                    path=self.data_root)
            try:
                rows = read_manifest(self.manifest, self.data_root, self.class_names)
            except CxrlearnError:
                # Read the classes a second time only to say why: other classes mean another run.
                self._check_classes(manifest_classes(self.manifest))
                raise
            self._check_classes(list(dict.fromkeys(self.class_names[r.label] for r in rows)))
            self._split = rows
        return self._split

    def _check_classes(self, listed: list[str]) -> None:
        if set(listed) != set(self.class_names):
            raise CxrlearnError(
                f"{self.path.name} is for the classes {list(self.class_names)}, but the "
                f"run's manifest.csv lists {listed}: the checkpoint belongs to another "
                "run", path=self.path)

    @property
    def folder(self) -> Path:
        """The folder the model file is in (the run folder, for a checkpoint)."""
        return self.path.parent

    @property
    def epoch(self) -> int | None:
        """The epoch a checkpoint holds (for `best.pt`, the one validation chose)."""
        return None if self.checkpoint is None else int(self.checkpoint.get("epoch", 0))

    @property
    def history(self) -> list[dict[str, float]]:
        """`fit`'s history up to the checkpoint's epoch (empty for an export)."""
        return [] if self.checkpoint is None else list(self.checkpoint.get("history", []))

    @property
    def scores(self) -> dict[str, float]:
        """What is known of the model's quality: the chosen epoch's validation scores, and
        `test_*` scores once `cxrlearn evaluate` has run on the test split (read from
        `test_scores.json` beside the checkpoint; a checkpoint of cxrlearn 0.3 or earlier
        may hold them itself)."""
        if self.checkpoint is None:
            return {}
        scores = dict(self.checkpoint.get("scores") or {})
        if not scores and self.history and self.epoch:
            row = self.history[self.epoch - 1]
            scores = {k: v for k, v in row.items() if k.startswith("val_")}
        return {**scores, **(self.checkpoint.get("test_scores") or {}),
                **self._saved_test_scores()}

    def save_test_scores(self, scores: dict[str, float]) -> Path:
        """Write the test scores of this checkpoint beside it, in `test_scores.json`: the
        checkpoint itself is never changed by what is learned about it.

        The file holds one entry per checkpoint file name (`best.pt`, `last.pt`), with the
        sha256 of the weights it was measured on; the other entries are kept.

        Returns:
            The file written.

        Raises:
            CxrlearnError: The model is an exported file, not a checkpoint.
        """
        from cxrlearn.atomic import write_atomic

        entry = {"weights_sha256": weights_sha256(
            self.require_network("test scores").state_dict()), **scores}
        path = self.folder / TEST_SCORES_FILE
        doc = {**self._read_test_scores_file(), self.path.name: entry}
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        write_atomic(path, lambda f: f.write(text.encode()))
        return path

    def _read_test_scores_file(self) -> dict[str, Any]:
        """`test_scores.json` as a dict; empty when missing or damaged (it only adds)."""
        try:
            doc = json.loads((self.folder / TEST_SCORES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _saved_test_scores(self) -> dict[str, float]:
        """This checkpoint's entry of `test_scores.json`, if it was measured on these
        weights; only finite numbers are taken."""
        if self.network is None or not (self.folder / TEST_SCORES_FILE).is_file():
            return {}
        entry = self._read_test_scores_file().get(self.path.name)
        if not isinstance(entry, dict) or entry.get("weights_sha256") != self.sha256:
            return {}
        return {k: v for k, v in entry.items() if k.startswith("test_")
                and isinstance(v, int | float) and not isinstance(v, bool)
                and math.isfinite(v)}

    @property
    def sha256(self) -> str:
        """The fingerprint of the weights (`cxrlearn.export.weights_sha256`)."""
        if self._sha256 is not None:
            return self._sha256
        return weights_sha256(self.require_network("the weights' sha256").state_dict())

    def probs(self, images: Sequence[np.ndarray | Tensor]) -> Tensor:
        """Calibrated class probabilities for raw grey images (as `load_image` gives them).

        Shape:
            images: N x (H, W) -> (N, K)
        """
        if self._run is not None:  # an exported file: its reader's pipeline
            return torch.cat([self._run(im) for im in images])
        return self.probs_prepared([self.prepare(im) for im in images])

    def prepare(self, image: np.ndarray | Tensor) -> Tensor:
        """Stage 1 of the preprocessing (stretch, resize, 8 bits): what the network sees.

        The costly step on a big image. A caller that wants both the probabilities and the
        Grad-CAM map of one image (the app) prepares it once and passes the result to
        `probs_prepared` and `explain_prepared`.

        Shape:
            image: (H, W) -> uint8 (1, S, S)
        """
        return self.preprocess.prepare(image)

    def probs_prepared(self, prepared: Sequence[Tensor]) -> Tensor:
        """`probs` of images already through `prepare`: the same numbers, digit for digit
        (`eager_probs`, the export's reference, is `prepare`, then this).

        Raises:
            CxrlearnError: The model is an exported file (its graph prepares images itself).

        Shape:
            prepared: N x uint8 (1, S, S) -> (N, K)
        """
        network = self.require_network("probs_prepared")
        device = next(network.parameters()).device
        x = torch.stack([self.preprocess.from_prepared(p) for p in prepared])  # (N, C, S, S)
        logits = network(x.to(device)).float().cpu()  # (N, K)
        return torch.softmax(logits / self.temperature, dim=1)

    def explain(self, image: np.ndarray | Tensor, target: int | None = None) -> Explanation:
        """Predict one raw X-ray and draw the Grad-CAM map of `target` (default: predicted).

        Safe to call from several threads: Grad-CAM's hook would catch any pass through the
        hooked layer, so it runs on a private copy of the network, one call at a time.

        Raises:
            CxrlearnError: The model is an exported file (a graph has no layer to hook).
        """
        self.require_network("Grad-CAM")  # before the costly stretch
        return self.explain_prepared(self.prepare(image), target)

    def explain_prepared(self, prepared: Tensor, target: int | None = None) -> Explanation:
        """`explain` of an image already through `prepare` (uint8, shape (1, S, S)).

        Raises:
            CxrlearnError: The model is an exported file (a graph has no layer to hook).
        """
        network = self.require_network("Grad-CAM")
        device = next(network.parameters()).device
        if self._cam is None or next(self._cam[0].parameters()).device != device:
            # (again when the network was moved to another device since the last call)
            self._cam = (copy.deepcopy(network).eval(), threading.Lock())
        copied, lock = self._cam
        x = self.preprocess.from_prepared(prepared)[None].to(device)  # (1, C, S, S)
        with lock, GradCAM(copied) as cam:
            result = cam(x, target)
        probs = torch.softmax(result.logits[0].float().cpu() / self.temperature, dim=0)  # (K,)
        return Explanation(probs=probs, predicted=int(probs.argmax()),
                           target=int(result.targets[0]), seen=prepared[0].numpy(),
                           cam=result.cams[0].cpu())

    def dataset(self, part: str, cache_dir: Path | None = None) -> XrayDataset:
        """The evaluation-mode dataset of one part of the run's split.

        Raises:
            CxrlearnError: The model has no split (no `manifest.csv` beside it), or the split
                has no image in that part.
        """
        rows = [r for r in self.split if r.split == part]
        if not rows:
            raise CxrlearnError(f"the manifest has no {part!r} images", path=self.folder)
        p = self.preprocess
        prepared = prepare_images([r.path for r in rows], p, cache_dir=cache_dir)
        return split_dataset(rows, part, p, p.eval_transform(), images=prepared.images)

    def logits(self, data: XrayDataset, device: torch.device, batch_size: int = 64,
               on_batch: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
        """Logits `(N, K)` and labels `(N,)` of a dataset, in order (`training.predict`).

        Raises:
            CxrlearnError: The model is an exported file (no eager network).
        """
        network = self.require_network("evaluation")
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return predict(network.to(device), loader, device, on_batch=on_batch)

    def export(self, path: str | Path, file_format: str = "torchscript",
               **options: Any) -> ExportResult:
        """Write this model as one self-contained file with its classes, preprocessing and
        temperature inside: every format through this one method.

        Args:
            path: The file to write (`.pt`, `.ptl`, `.pt2` for `"export"`, `.onnx`), or the
                folder of the phone app (`"web"`).
            file_format: `"torchscript"`, `"lite"`, `"export"` (`cxrlearn.export.export_model`),
                `"onnx"` (`cxrlearn.export.onnx.export_onnx`) or `"web"`
                (`cxrlearn.export.web.export_web`, the offline phone app).
            options: What that writer takes besides the model: `input_size`, `check_images`,
                `atol` for the first three; `quantize`, `calibration_images` for the last two.

        Raises:
            CxrlearnError: The model is already an exported file, or the export failed its
                parity check (then nothing is written).
        """
        network = self.require_network("export")
        about = dict(class_names=self.class_names, preprocess=self.preprocess,
                     temperature=self.temperature)
        if file_format == "onnx":
            from cxrlearn.export.onnx import export_onnx  # onnx is an optional extra

            return export_onnx(network, path, **about, **options)
        if file_format == "web":
            from cxrlearn.export.web import export_web

            return export_web(network, path, scores=self.scores, **about, **options)
        return export_model(network, path, file_format, **about, **options)

    def update_checkpoint(self, **values: Any) -> None:
        """Store plain values (a fitted `temperature`) in the checkpoint file, atomically,
        keeping everything else in it; and in this object. Only training calls it: what
        is learned by reading a model goes beside it (`save_test_scores`).

        Raises:
            CxrlearnError: The model is an exported file, not a checkpoint.
        """
        self.require_network("updating the checkpoint")
        stored = load_checkpoint(self.path)
        stored.update(values)
        save_checkpoint(self.path, {k: v for k, v in stored.items() if k != "format"})
        if self.checkpoint is not None:
            self.checkpoint.update(values)
        if "temperature" in values:
            self.temperature = float(values["temperature"])


def open_model(path: str | Path, data_root: str | Path | None = None) -> TrainedModel:
    """Open a run folder, a checkpoint or an exported file; see the module docstring.

    Args:
        path: The file or run folder.
        data_root: Where the run's data folder is now, if it moved since training.

    Raises:
        CxrlearnError: Missing, unreadable, damaged or foreign files, with what to do.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file() and (path / INTERRUPTED).is_file():
            raise CxrlearnError("no epoch of this run is finished yet, only interrupted.pt "
                                "(an epoch stopped midway): continue the run with cxrlearn "
                                f"train --resume --out {path}", path=path)
        if not (path / "best.pt").is_file():
            raise CxrlearnError("not a run folder: it holds no best.pt (train into it with "
                                "cxrlearn train --out, or name a model file)", path=path)
        path = path / "best.pt"
    if not path.exists():
        raise CxrlearnError("no such file or folder", path=path)
    root = None if data_root is None else Path(data_root)
    for read in _READERS:
        model = read(path, root)
        if model is not None:
            return model
    raise CxrlearnError("not a model file cxrlearn can read", path=path)  # (unreachable)


# --- the readers: one per kind of file, each returns the same TrainedModel -----------------


def _read_export(path: Path, data_root: Path | None) -> TrainedModel | None:
    """An exported file (`cxrlearn.json` inside), read as data; None for any other file.

    Its weights go into cxrlearn's own `EndToEndModel`, after their sha256 matched the one
    written at export time; none of the file's code runs (`cxrlearn.export.load`).
    """
    metadata = read_metadata(path)
    if metadata is None:
        return None
    weights = read_weights(path, metadata)
    network = resnet18(num_classes=len(metadata.class_names),
                       in_channels=metadata.preprocess.channels)
    try:
        network.load_state_dict({k[len("model."):]: v for k, v in weights.items()
                                 if k.startswith("model.")})
    except RuntimeError as e:
        raise CxrlearnError(f"the weights do not fit resnet18 ({str(e).splitlines()[0]})",
                            path=path) from None
    if weights_sha256(network.state_dict()) != metadata.weights_sha256:
        raise CxrlearnError("the weights do not match the sha256 written at export time; "
                            "the file was changed after export, export it again", path=path)
    pipeline = EndToEndModel(network, metadata.preprocess, metadata.temperature)
    notes: tuple[str, ...] = ()
    if metadata.input_size is not None:
        h, w = metadata.input_size
        notes = (f"{path.name} is a torch.export program for {h}x{w} inputs: images of "
                 "other sizes are resized to that first",)
    return TrainedModel(path, metadata.file_format, metadata.class_names,
                        metadata.preprocess, metadata.temperature, notes=notes,
                        _run=_export_runner(pipeline, metadata.input_size),
                        _sha256=metadata.weights_sha256)


def _export_runner(pipeline: EndToEndModel,
                   size: tuple[int, int] | None) -> Callable[[np.ndarray | Tensor], Tensor]:
    """Probabilities of one raw image from an export's rebuilt pipeline.

    A `torch.export` program was exported for one image size (`size`); the answers are the
    program's, so an image of another size is resized to it first, as the program's app
    does (percentiles are then taken on the resized image).

    Shape:
        image: (H, W) -> (1, K)
    """
    def run(image: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
        if size is not None and tuple(x.shape) != size:
            x = torch.from_numpy(resize_hw(x, size))  # (h, w) of the program
        with torch.no_grad():
            return pipeline(x)  # (1, K)
    return run


def _read_onnx(path: Path, data_root: Path | None) -> TrainedModel | None:
    """A `.onnx` file of cxrlearn's; None for any other suffix.

    Parsed as data and verified first (no external data, cxrlearn's metadata, the graph's
    sha256: `cxrlearn.export.onnx.read_onnx`), then run by onnxruntime, which executes the
    graph's operators and never any Python code from the file.
    """
    if path.suffix.lower() != ".onnx":
        return None
    onnx_model = read_onnx(path)
    m = onnx_model.metadata
    notes = (f"{path.name} is quantized: {onnx_model.props['quantization']}",) if (
        onnx_model.props.get("quantization", "none").startswith("int8")) else ()
    return TrainedModel(path, "onnx", m.class_names, m.preprocess, m.temperature,
                        notes=notes, _run=onnx_model.probs, _sha256=m.weights_sha256)


def _read_checkpoint(path: Path, data_root: Path | None) -> TrainedModel:
    """A checkpoint, read as plain data and checked before the network is built.

    The last reader: a file that is not a checkpoint either is refused here, with what it
    looks like (`load_checkpoint`).
    """
    ckpt = load_checkpoint(path)
    if "in_progress" in ckpt:  # half an epoch's weights: for resuming, not for use
        raise CxrlearnError(_UNFINISHED.format(folder=path.parent), path=path)
    preprocess = check_architecture(ckpt, path)  # parsed once, here
    if preprocess is None:
        raise CxrlearnError(
            "the checkpoint does not say how its images were prepared (no "
            "meta['preprocess']), so a raw X-ray cannot be turned into its input; train "
            "with cxrlearn train, or give fit meta={'arch': ..., 'preprocess': "
            "Preprocess(image_size).to_dict()}", path=path)
    notes: tuple[str, ...] = ()
    if ckpt["meta"]["preprocess"].get("flip_average"):
        notes = ("this checkpoint was trained with --tta flip (cxrlearn 0.1): predictions now "
                 "use the image as it is, without averaging its mirror image",)
    temperature = ckpt.get("temperature", 1.0)
    if not plausible_temperature(temperature):
        raise CxrlearnError(f"damaged checkpoint: temperature {temperature!r:.30} is not a "
                            "number between 0.01 and 100", path=path)
    arch = ckpt["meta"]["arch"]
    network = resnet18(num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    try:
        network.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CxrlearnError(f"weights do not fit resnet18: {str(e).splitlines()[0]}",
                            path=path) from None
    manifest = path.parent / "manifest.csv"
    recorded = ckpt["meta"].get("data_root")
    root = data_root if data_root is not None else (
        Path(recorded) if isinstance(recorded, str) else None)
    info = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    return TrainedModel(path, "checkpoint", tuple(ckpt["class_names"]), preprocess,
                        float(temperature), network=network.eval(), checkpoint=info,
                        manifest=manifest if manifest.is_file() else None, data_root=root,
                        notes=notes)


_UNFINISHED = ("holds an epoch stopped midway (Ctrl-C or SIGTERM), to resume from, not a "
               "model to use: continue the run with cxrlearn train --resume --out {folder}, "
               "or use its best.pt or last.pt (the finished epochs)")


_READERS: tuple[Callable[[Path, Path | None], TrainedModel | None], ...] = (
    _read_export, _read_onnx, _read_checkpoint)
"""Tried in order; the first that recognises the file reads it. A new format (ONNX) is a
new reader, placed before `_read_checkpoint`, which reports a file nobody recognised."""
