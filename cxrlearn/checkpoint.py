"""Checkpoints: what a run needs to resume exactly, and what a model needs to be used.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts. Plain data
means it loads with `torch.load(..., weights_only=True)`, which refuses to run code hidden in
a file: never unpickle a file you did not make. Two kinds, written by `fit`:

- `last.pt`, every epoch: `training_state` - the weights, the optimiser and schedule states,
  the random states, the epoch, the history. Everything needed to resume as if nothing had
  happened (`resume`).
- `best.pt`, the epoch chosen on validation: `model_state` - the weights, the class names,
  the preprocessing, the history and the chosen epoch's scores. What inference needs, and a
  third of the size: the optimiser's two running averages per weight stay in `last.pt`.
- `interrupted.pt`, only when Ctrl-C or SIGTERM stopped a run in the middle of an epoch:
  `last.pt`'s content as it was after the last whole step, plus `in_progress`, where the
  epoch stood (`cxrlearn.training.EpochProgress`: steps done, the running sums of its loss
  and accuracy; the lr it started with, the MixUp/CutMix generator). A file of its own, so
  that `last.pt` always means "the last finished epoch" for everything that reads it; the
  run deletes it once that epoch is finished. `resume` continues from either file: the
  resumed run ends bit for bit as the uninterrupted one would have. Its half-trained
  weights are for resuming only: `cxrlearn.trained.open_model` refuses the file.

`fit` stores whatever `meta` it is given; `cxrlearn.trained.open_model` needs
`meta["arch"]` (which network) and `meta["preprocess"]` (`Preprocess.to_dict()`: how a raw
X-ray becomes its input) to turn a checkpoint into a model. `load_checkpoint` reads one as
plain data, for resuming and for looking inside; a model to predict with comes from
`open_model`.

Writes are atomic (`cxrlearn.atomic.write_atomic`): the checkpoint goes to a temporary file
in the same folder, is flushed to disk, and is then renamed over the old one. A crash or a
full disk mid-write leaves the previous checkpoint intact, never half a file.

Reads are checked before anything is built: a file that is not a cxrlearn checkpoint, or
whose metadata is damaged (a missing key, a class list that does not match the network, a
size that would allocate gigabytes), is a `CxrlearnError` naming the file and the problem.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from cxrlearn.atomic import write_atomic
from cxrlearn.data.folder import MAX_CLASSES
from cxrlearn.errors import CxrlearnError
from cxrlearn.seeding import rng_state, set_rng_state
from cxrlearn.transforms import Preprocess

__all__ = ["CHECKPOINT_FORMAT", "INTERRUPTED", "MAX_CLASSES", "MAX_DEPTH", "save_checkpoint",
           "load_checkpoint", "check_checkpoint", "check_architecture", "check_depth",
           "is_real", "training_state", "model_state", "Resumed", "resume"]

CHECKPOINT_FORMAT = "cxrlearn-checkpoint-v1"
INTERRUPTED = "interrupted.pt"
"""The file name of an interrupted epoch's state, beside `last.pt`."""
_FORMAT = re.compile(r"cxrlearn-checkpoint-v(\d{1,6})")
MAX_DEPTH = 32
"""Deepest nesting of lists and dicts that metadata may have (a checkpoint's is 5 deep, an
export's `cxrlearn.json` 3): deeper is a crafted file, refused before it is walked."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename).

    Raises:
        CxrlearnError: The disk is full or not writable; the old file at `path` is intact.
    """
    def write(f: BinaryIO) -> None:
        try:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        except RuntimeError as e:  # torch.save's writer reports a full disk this way
            raise OSError(str(e).splitlines()[0]) from None

    return write_atomic(Path(path), write, "the checkpoint")


def load_checkpoint(
    path: str | Path, class_names: tuple[str, ...] | list[str] | None = None
) -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`) and check it is a usable one of ours.

    Plain data, for resuming and for looking inside. For a model to predict with, use
    `cxrlearn.trained.open_model`, which reads the file through here.

    Args:
        path: A `best.pt` or `last.pt`.
        class_names: If given, the classes the caller expects; a mismatch is an error.

    Raises:
        CxrlearnError: Missing, unreadable, not a cxrlearn checkpoint, damaged metadata
            (see `check_checkpoint`), or other classes.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrlearnError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways
        raise CxrlearnError(_not_a_checkpoint(path, e), path=path) from None
    check_checkpoint(ckpt, path)
    if class_names is not None:
        _check_classes(ckpt, class_names, path)
    return ckpt


def _check_classes(ckpt: dict[str, Any], class_names: tuple[str, ...] | list[str],
                   path: str | Path) -> None:
    if list(ckpt["class_names"]) != list(class_names):
        raise CxrlearnError(
            f"checkpoint was trained for classes {list(ckpt['class_names'])}, "
            f"not {list(class_names)}",
            path=path,
        )


def _not_a_checkpoint(path: Path, error: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused `path`, for a person.

    PyTorch's own message suggests re-running with `weights_only=False`, which would run
    any code hidden in the file: that advice never reaches the user.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return ("not a checkpoint: not a PyTorch file at all; a checkpoint is the best.pt or "
                "last.pt that cxrlearn train writes")
    if any(n.endswith("/extra/cxrlearn.json") for n in names):
        return ("this is an exported model (cxrlearn export), not a checkpoint; use it with "
                "cxrlearn predict or cxrlearn app, or give the run's best.pt here")
    if any("/code/" in n or n.endswith("/models/model.json") for n in names):
        return ("this is a TorchScript or torch.export file, not a checkpoint; cxrlearn reads "
                "checkpoints only as plain data, so it is not loaded")
    kind = type(error).__name__
    return (f"not a cxrlearn checkpoint: it holds objects other than plain data ({kind}), "
            "which cxrlearn never unpickles; use a best.pt or last.pt from cxrlearn train")


def check_checkpoint(ckpt: Any, path: str | Path = "checkpoint") -> None:
    """Check a loaded checkpoint's structure: the format marker, and the type of each
    field it has (class names, weights, metadata, epoch, history).

    `check_architecture` checks more, before a network is built from it: that the
    architecture, the class names and the preprocessing agree.

    Raises:
        CxrlearnError: The first problem found, naming the file and the field.
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = _FORMAT.fullmatch(str(ckpt.get("format"))) if isinstance(ckpt, dict) else None
        if found and int(found[1]) > 1:
            raise CxrlearnError(f"made by a newer cxrlearn (format v{int(found[1])}); upgrade "
                                "cxrlearn to read it (pip install -U cxrlearn)", path=path)
        raise CxrlearnError(
            "not a cxrlearn checkpoint (made by another program, or a bare state dict)",
            path=path)
    check_depth(ckpt, path, "checkpoint")
    names = ckpt.get("class_names", ["a", "b"])
    if (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            or not 2 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names)):
        raise _damaged(f"class_names must be 2 to {MAX_CLASSES} distinct names, got "
                       f"{_short(names)}", path)
    weights = ckpt.get("model", {})
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in weights.values()):
        raise _damaged("model must be a dict of tensors", path)
    if not isinstance(ckpt.get("meta", {}), dict):
        raise _damaged("meta must be a dict", path)
    history = ckpt.get("history", [])
    if not isinstance(history, list) or not all(_is_row(row, finite=False) for row in history):
        raise _damaged(f"history must be a list of {{name: number}} rows, got "
                       f"{_short(history)}", path)
    epoch = ckpt.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise _damaged(f"epoch must be a whole number, got {_short(epoch)}", path)
    if "history" in ckpt and epoch > len(history):
        raise _damaged(f"epoch {epoch} is past the history's {len(history)} epochs", path)
    for field in ("scores", "test_scores"):
        if field in ckpt and not _is_row(ckpt[field], finite=False):
            raise _damaged(f"{field} must be {{name: number}}, got "
                           f"{_short(ckpt[field])}", path)
    if "in_progress" in ckpt:
        _check_in_progress(ckpt["in_progress"], path)


def _check_in_progress(value: Any, path: str | Path) -> None:
    """An interrupted epoch's position and sums (`interrupted.pt`), checked before a resume
    trusts them: steps done between 1 and the epoch's length, counts that are whole numbers
    of 0 or more, sums that are finite numbers."""
    def whole(name: str, low: int, high: float = math.inf) -> int:
        n = value.get(name)
        if not isinstance(n, int) or isinstance(n, bool) or not low <= n <= high:
            raise _damaged_progress(f"in_progress.{name} must be a whole number from {low}"
                                    + (f" to {high}" if high != math.inf else "")
                                    + f", got {_short(n)}", path)
        return n

    if not isinstance(value, dict):
        raise _damaged_progress(f"in_progress must be a dict, got {_short(value)}", path)
    length = whole("batches_in_epoch", 1)
    whole("batches", 1, length)
    seen = whole("seen", 1)
    whole("correct", 0, seen)
    whole("image_size", 1)
    for name in ("loss_sum", "seconds", "lr"):
        if not is_real(value.get(name)):
            raise _damaged_progress(f"in_progress.{name} must be a finite number, got "
                                    f"{_short(value.get(name))}", path)
    if not isinstance(value.get("mix_rng"), (dict, type(None))):
        raise _damaged_progress(f"in_progress.mix_rng must be a dict or None, got "
                                f"{_short(value.get('mix_rng'))}", path)


def _damaged_progress(problem: str, path: str | Path) -> CxrlearnError:
    return CxrlearnError(f"damaged checkpoint: {problem}; delete it to resume from the last "
                         "finished epoch (last.pt)", path=path)


def is_real(value: Any, finite: bool = True) -> bool:
    """True for an int or float (not a bool) that is a float too: 10**400 is not; with
    `finite`, NaN and infinities are not either."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) or not finite


def _is_row(row: Any, finite: bool) -> bool:
    """A history row or a set of scores: names to numbers that are floats. NaN and
    infinities are allowed (a score that is unknown, a validation loss that diverged); what
    reads them shows them as such. 10**400, text, lists and booleans are not numbers here."""
    return isinstance(row, dict) and all(isinstance(k, str) and is_real(v, finite)
                                         for k, v in row.items())


def check_depth(value: Any, path: str | Path, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse metadata nested deeper than `limit` lists and dicts.

    Walked with a stack, not recursion: a crafted file nested 100,000 deep would otherwise
    end in RecursionError, here or in whoever reads it next.

    Raises:
        CxrlearnError: Too deep, naming `path` and `what` ("checkpoint", "cxrlearn.json").
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise CxrlearnError(f"damaged {what}: nested more than {limit} levels deep",
                                path=path)
        stack.extend((child, depth + 1) for child in children)


def _damaged(problem: str, path: str | Path) -> CxrlearnError:
    return CxrlearnError(f"damaged checkpoint: {problem}; train again or use another best.pt",
                         path=path)


def check_architecture(ckpt: dict[str, Any],
                       path: str | Path = "checkpoint") -> Preprocess | None:
    """Check what building the network reads, before any memory is allocated for it.

    The architecture (`resnet18`, one output per class name, 1 or 3 input channels) and the
    preprocessing if present (`Preprocess.from_dict`, its channels matching the network's).

    Returns:
        The preprocessing, parsed (once: callers use this object, they do not parse
        `meta["preprocess"]` again), or None when the checkpoint has none.

    Raises:
        CxrlearnError: The first problem found, naming the file and the field.
    """
    names = ckpt.get("class_names")
    if names is None or "model" not in ckpt:
        raise _damaged("no class_names or no model weights", path)
    arch = ckpt.get("meta", {}).get("arch")
    if not isinstance(arch, dict) or arch.get("name") != "resnet18":
        raise CxrlearnError(f"unknown architecture {_short(arch)}: cxrlearn builds resnet18",
                            path=path)
    classes = arch.get("num_classes")
    if classes != len(names) or isinstance(classes, bool):
        raise _damaged(f"the network has {_short(classes)} outputs for {len(names)} class "
                       "names", path)
    if arch.get("in_channels") not in (1, 3) or isinstance(arch.get("in_channels"), bool):
        raise _damaged(f"in_channels must be 1 or 3, got {_short(arch.get('in_channels'))}",
                       path)
    if "preprocess" not in ckpt["meta"]:
        return None
    try:
        preprocess = Preprocess.from_dict(ckpt["meta"]["preprocess"])
    except (ValueError, TypeError, KeyError) as e:
        raise _damaged(f"meta.preprocess: {e}", path) from None
    if preprocess.channels != arch["in_channels"]:
        raise _damaged(f"meta.preprocess makes {preprocess.channels}-channel images for a "
                       f"{arch['in_channels']}-channel network", path)
    return preprocess


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def model_state(model: nn.Module, class_names: list[str], meta: dict[str, Any],
                epoch: int, history: list[dict[str, float]], config: Any) -> dict[str, Any]:
    """What `best.pt` holds: the model and what using and judging it needs, no optimiser.

    `scores` are the chosen epoch's validation numbers (`history[epoch - 1]`).
    """
    return {"model": model.state_dict(), "class_names": list(class_names), "meta": meta,
            "epoch": epoch, "history": list(history),
            "scores": {k: v for k, v in history[epoch - 1].items() if k.startswith("val_")},
            "config": dataclasses.asdict(config)}


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, class_names: list[str],
                   meta: dict[str, Any], epoch: int, best: float | None, since_best: int,
                   history: list[dict[str, float]], config: Any) -> dict[str, Any]:
    """What `last.pt` holds: `model_state`'s content plus everything an exact resume needs."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch,
            "best": best, "since_best": since_best, "history": list(history),
            "class_names": list(class_names), "meta": meta,
            "config": dataclasses.asdict(config)}


@dataclass
class Resumed:
    """Where a resumed run stands: the next epoch is `epoch` (0-based), started already
    when `in_progress` is given (from `interrupted.pt`: see `check_checkpoint`)."""

    epoch: int
    best: float | None
    since_best: int
    history: list[dict[str, float]]
    in_progress: dict[str, Any] | None = None


def resume(path: str | Path | dict[str, Any], model: nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           class_names: list[str], meta: dict[str, Any]) -> Resumed:
    """Put the model, optimiser, schedule and random states back as `last.pt` saved them
    (or `interrupted.pt`: then `Resumed.in_progress` says where in the epoch to go on).

    `path` may also be the checkpoint itself, already read with `load_checkpoint` (a run
    that checked it before training reads the file once).

    Raises:
        CxrlearnError: Unreadable, not a `last.pt` (no optimiser state), or made for another
            network or class list.
    """
    ckpt = path if isinstance(path, dict) else load_checkpoint(path)
    path = "last.pt" if isinstance(path, dict) else path
    _check_classes(ckpt, class_names, path)
    if "optimizer" not in ckpt:
        raise CxrlearnError("holds no training state (a best.pt?); resume from last.pt",
                            path=path)
    if ckpt.get("meta", {}).get("arch") != meta.get("arch"):
        raise CxrlearnError(f"checkpoint is for {ckpt.get('meta', {}).get('arch')}, not "
                            f"{meta.get('arch')}", path=path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return Resumed(ckpt["epoch"], ckpt["best"], ckpt["since_best"], list(ckpt["history"]),
                   ckpt.get("in_progress"))
