"""`cxrlearn.runs.evaluate_run`, the library half of `cxrlearn evaluate`, without the CLI.

A run trained by `train_run` for one epoch on 8 sample X-rays per class. Oracles: the report
recomputed here from the network's own logits (divided by the temperature), the confusion
matrix counted from those predictions, and the files on disk read back; progress goes to
`RunEvents` and nothing is printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlearn.data import CLASS_NAMES, sample_root
from cxrlearn.errors import CxrlearnError
from cxrlearn.evaluation.metrics import UndefinedMetricWarning, classification_report
from cxrlearn.runs import EVALUATION_FILES, RunEvents, RunSettings, evaluate_run, train_run
from cxrlearn.trained import TrainedModel, open_model
from cxrlearn.training import TrainConfig
from cxrlearn.transforms import Preprocess

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder: 8 X-rays per class (2 test), one epoch at 32 px."""
    base = tmp_path_factory.mktemp("evaluate-run")
    data = base / "data"
    for name in CLASS_NAMES:
        (data / name).mkdir(parents=True)
        for src in sorted((sample_root() / name).glob("*.png"))[:8]:
            shutil.copy(src, data / name / src.name)
    settings = RunSettings(data_root=data, preprocess=Preprocess(image_size=32),
                           test_per_class=2, val_fraction=0.3,
                           train=TrainConfig(num_epochs=1, batch_size=8))
    train_run(settings, base / "run", CPU, cache_dir=base / "cache")
    return base / "run"


class Recorder(RunEvents):
    """Keeps what `evaluate_run` reports."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []
        self.advanced = 0
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        self.steps.append((description, total))

        def advance(n: int) -> None:
            self.advanced += n

        yield advance


def _predictions_by_hand(model: TrainedModel, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions: the network on the split's images, logits divided by T."""
    data = model.dataset(split)
    x = torch.stack([data[i][0] for i in range(len(data))])  # (N, C, S, S)
    y = np.array([int(data[i][1]) for i in range(len(data))])  # (N,)
    with torch.no_grad():
        logits = model.network.to(CPU)(x)  # (N, K)
    return y, (logits / model.temperature).argmax(dim=1).numpy()


def test_the_report_is_the_networks_own(run, tmp_path):
    model = open_model(run)
    result = evaluate_run(model, tmp_path, CPU)
    y_true, y_pred = _predictions_by_hand(model, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # a class never predicted
        expected = classification_report(y_true, y_pred, list(CLASS_NAMES))
    assert result.split == "test" and result.n == len(y_true) == 2 * len(CLASS_NAMES)
    assert result.report == expected
    counted = [[int(((y_true == t) & (y_pred == p)).sum()) for p in range(len(CLASS_NAMES))]
               for t in range(len(CLASS_NAMES))]
    assert result.confusion_matrix == counted
    for k, name in enumerate(CLASS_NAMES):
        assert result.sensitivity[name] == pytest.approx(expected[name]["recall"])
        negatives = y_true != k
        assert result.specificity[name] == pytest.approx((y_pred[negatives] != k).mean())
        assert 0.0 <= result.auc[name] <= 1.0
    assert result.temperature == model.temperature
    assert set(result.ece) == {"before_temperature", "after_temperature"}


def test_it_writes_its_files_and_returns_their_paths(run, tmp_path):
    out = tmp_path / "new" / "folder"  # created
    result = evaluate_run(open_model(run), out, CPU, split="val")
    assert result.files == tuple(out / name for name in EVALUATION_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(EVALUATION_FILES)
    written = json.loads((out / "report.json").read_text())
    # report.json is `to_dict()`, with NaN (an undefined score) written as null.
    expected = json.loads(json.dumps(result.to_dict()).replace("NaN", "null"))
    assert written == expected
    assert written["checkpoint"] == str(run / "best.pt") and written["split"] == "val"
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + result.n


def test_progress_goes_to_events_and_nothing_is_printed(run, tmp_path, capsys):
    events = Recorder()
    result = evaluate_run(open_model(run), tmp_path, CPU, split="val", batch_size=3,
                          events=events)
    assert events.steps == [("predicting val", result.n)]
    assert events.advanced == result.n  # every image, in batches of 3
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_only_the_test_split_writes_its_scores_beside_the_checkpoint(run, tmp_path):
    """Beside it, in test_scores.json: the checkpoint itself is only read (issue 24)."""
    model = open_model(run)
    checkpoint = (run / "best.pt").read_bytes()
    (run / "test_scores.json").unlink(missing_ok=True)
    evaluate_run(model, tmp_path / "val", CPU, split="val")
    assert not (run / "test_scores.json").exists()
    result = evaluate_run(model, tmp_path / "test", CPU)
    stored = json.loads((run / "test_scores.json").read_text())["best.pt"]
    assert stored == {"weights_sha256": model.sha256,
                      "test_accuracy": result.report["accuracy"],
                      "test_macro_f1": result.report["macro avg"]["f1-score"],
                      "test_images": result.n}
    assert (run / "best.pt").read_bytes() == checkpoint
    assert open_model(run).scores["test_macro_f1"] == result.report["macro avg"]["f1-score"]


def test_a_model_without_its_network_is_refused(run, tmp_path):
    exported_like = dataclasses.replace(open_model(run), network=None)
    with pytest.raises(CxrlearnError, match="evaluation needs a checkpoint"):
        evaluate_run(exported_like, tmp_path, CPU)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_undefined_scores_become_notes_not_warnings(run, tmp_path):
    """A barely trained network never predicts some class: a note, not a Python warning."""
    model = open_model(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        result = evaluate_run(model, tmp_path, CPU, split="val")
    _, y_pred = _predictions_by_hand(model, "val")
    never_predicted = set(range(len(CLASS_NAMES))) - set(y_pred.tolist())
    assert bool(result.notes) == bool(never_predicted)
    assert len(set(result.notes)) == len(result.notes)  # each once
    assert all(isinstance(v, float) for v in result.auc.values())
    assert not any(math.isinf(v) for v in result.auc.values())
