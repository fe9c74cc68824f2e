"""`cxrlearn evaluate` end to end, on a run trained for one epoch on a few sample X-rays.

The model is barely trained, so its numbers are not the point: the point is that what the
command writes agrees with itself. The oracle for report.json is predictions.csv, recounted
here by hand (accuracy and the confusion matrix by counting rows), so a report computed
from other predictions than the ones written, or a confusion matrix transposed, fails.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.cli import main
from cxrlearn.data import CLASS_NAMES, read_manifest, sample_root
from cxrlearn.evaluation.metrics import UndefinedMetricWarning, classification_report
from cxrlearn.evaluation.uncertainty import wilson_interval
from cxrlearn.trained import open_model

PER_CLASS = 8
TEST_PER_CLASS = 3
FAST = ["--image-size", "32", "--batch-size", "8", "--test-per-class", str(TEST_PER_CLASS),
        "--val-fraction", "0.3"]
# Figure sizes in plots.py, in inches, saved at dpi=100 by evaluate.
PLOT_PIXELS = {"confusion_matrix.png": (1100, 450), "roc_curves.png": (550, 500),
               "reliability.png": (500, 600)}


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    """`main(argv)` with stdout captured (module-scoped fixtures cannot use capsys)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One tiny run shared by every test: 8 X-rays per class (3 test), 1 epoch at 32 px.

    The copy is what conftest's `copy_sample(dest, per_class=8)` makes; that fixture is
    function-scoped, so it cannot feed this module-scoped one.
    """
    base = tmp_path_factory.mktemp("evaluate")
    data = base / "data"
    for name in CLASS_NAMES:
        (data / name).mkdir(parents=True)
        for src in sorted((sample_root() / name).glob("*.png"))[:PER_CLASS]:
            shutil.copy(src, data / name / src.name)
    run = base / "run"
    rc, _ = _quiet_main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                         "--cache-dir", str(base / "cache"), *FAST])
    assert rc == 0
    return {"base": base, "data": data, "run": run}


@pytest.fixture(scope="module")
def evaluated(trained) -> dict:
    best = trained["run"] / "best.pt"
    before = best.read_bytes()
    rc, printed = _quiet_main(["evaluate", "--model", str(trained["run"])])
    return {"rc": rc, "printed": printed, "best_before": before, **trained}


def _predictions(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (folder / "predictions.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _counted(rows: list[dict[str, str]]) -> tuple[list[list[int]], float]:
    """Confusion matrix (rows true, columns predicted) and accuracy, by counting CSV rows."""
    pairs = Counter((r["true"], r["predicted"]) for r in rows)
    cm = [[pairs[(t, p)] for p in CLASS_NAMES] for t in CLASS_NAMES]
    correct = sum(r["true"] == r["predicted"] for r in rows)
    return cm, correct / len(rows)


def test_evaluate_prints_the_report(evaluated):
    assert evaluated["rc"] == 0
    printed = evaluated["printed"]
    _, rows = _predictions(evaluated["run"])
    _, accuracy = _counted(rows)
    n_test = TEST_PER_CLASS * len(CLASS_NAMES)
    assert f"test split, {n_test} images" in printed
    for text in ("precision", "recall", "f1-score", "support", "macro avg", "weighted avg",
                 "95% intervals", "accuracy (Wilson)", "one-vs-rest", "calibration: ECE",
                 "wrote report.json, predictions.csv, confusion_matrix.png, roc_curves.png, "
                 "reliability.png, confident_mistakes.png", *CLASS_NAMES):
        assert text in printed, text
    # The intervals table shows the accuracy as a percentage: the counted one.
    assert re.search(rf"accuracy \(Wilson\)\W+{re.escape(f'{accuracy:.2%}')}", printed)


def test_report_json_equals_the_report_recounted_from_predictions(evaluated):
    result = json.loads((evaluated["run"] / "report.json").read_text())
    _, rows = _predictions(evaluated["run"])
    cm, accuracy = _counted(rows)
    n = len(rows)

    assert result["split"] == "test" and result["n"] == n
    assert result["confusion_matrix"] == cm
    assert result["report"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    index = {name: k for k, name in enumerate(CLASS_NAMES)}
    y_true = [index[r["true"]] for r in rows]
    y_pred = [index[r["predicted"]] for r in rows]
    with warnings.catch_warnings():
        # A barely trained model may never predict some class; the report warns about it.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        expected = classification_report(y_true, y_pred, CLASS_NAMES)
    assert result["report"] == expected  # JSON keeps floats exactly (repr round-trips)

    for k, name in enumerate(CLASS_NAMES):
        tp = cm[k][k]
        fn = sum(cm[k]) - tp
        fp = sum(cm[i][k] for i in range(len(CLASS_NAMES))) - tp
        tn = n - tp - fn - fp
        assert result["report"][name]["support"] == tp + fn
        assert result["sensitivity"][name] == pytest.approx(tp / (tp + fn))
        assert result["specificity"][name] == pytest.approx(tn / (tn + fp))
    correct = sum(cm[k][k] for k in range(len(CLASS_NAMES)))
    assert result["intervals"]["accuracy"] == pytest.approx(list(wilson_interval(correct, n)))
    # The temperature reported is the one `train` fitted on validation and stored in best.pt.
    best = load_checkpoint(evaluated["run"] / "best.pt")
    assert result["temperature"] == pytest.approx(best["temperature"])
    assert result["temperature"] > 0


def test_predictions_csv_has_one_row_per_test_image(evaluated):
    header, rows = _predictions(evaluated["run"])
    assert header == ["path", "true", "predicted", *[f"p_{n}" for n in CLASS_NAMES]]
    manifest = read_manifest(evaluated["run"] / "manifest.csv", evaluated["data"], CLASS_NAMES)
    tests = {(r.path.resolve(), CLASS_NAMES[r.label]) for r in manifest if r.split == "test"}
    assert len(tests) == TEST_PER_CLASS * len(CLASS_NAMES)
    assert len(rows) == len(tests)
    assert {(Path(r["path"]).resolve(), r["true"]) for r in rows} == tests
    for r in rows:
        probs = [float(r[f"p_{n}"]) for n in CLASS_NAMES]
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # 6 decimals each
        top = max(probs)
        if probs.count(top) == 1:  # written with 6 decimals, near-ties may round together
            assert r["predicted"] == CLASS_NAMES[probs.index(top)]


def test_probabilities_are_the_calibrated_models(evaluated):
    """The CSV's probabilities: the network's logits on the test images, divided by T."""
    run = open_model(evaluated["run"])
    data = run.dataset("test")
    x = torch.stack([data[i][0] for i in range(len(data))])  # (N, C, S, S)
    with torch.no_grad():
        logits = run.network(x)
    want = torch.softmax(logits / run.temperature, dim=1)
    _, rows = _predictions(evaluated["run"])
    by_path = {Path(r["path"]).resolve(): r for r in rows}
    for path, probs in zip(data.paths, want, strict=True):
        got = [float(by_path[Path(path).resolve()][f"p_{n}"]) for n in CLASS_NAMES]
        assert got == pytest.approx(probs.tolist(), abs=2e-6)  # 6 decimals in the CSV


def test_plots_are_written_as_png(evaluated):
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png",
                 "confident_mistakes.png"):
        with Image.open(evaluated["run"] / name) as img:
            img.load()  # decodes every pixel: a truncated file fails here
            assert img.format == "PNG"
            if name in PLOT_PIXELS:
                assert img.size == PLOT_PIXELS[name]


def test_the_command_writes_what_evaluate_run_writes(evaluated, tmp_path):
    """The command is a face: the library's `evaluate_run` writes the same bytes."""
    from cxrlearn.runs import EVALUATION_FILES, evaluate_run

    result = evaluate_run(open_model(evaluated["run"]), tmp_path, torch.device("cpu"))
    assert [p.name for p in result.files] == list(EVALUATION_FILES)
    for name in EVALUATION_FILES:
        assert (tmp_path / name).read_bytes() == (evaluated["run"] / name).read_bytes(), name


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_evaluate_never_changes_the_model(evaluated):
    """A command that reads a model leaves its bytes, and so its sha256, as they were."""
    after = (evaluated["run"] / "best.pt").read_bytes()
    assert hashlib.sha256(after).hexdigest() == \
        hashlib.sha256(evaluated["best_before"]).hexdigest()
    assert after == evaluated["best_before"]
    assert "test_scores" not in load_checkpoint(evaluated["run"] / "best.pt")


def test_test_scores_are_written_beside_the_model_for_the_app(evaluated):
    from cxrlearn.app.card import quality_warning

    result = json.loads((evaluated["run"] / "report.json").read_text())
    saved = json.loads((evaluated["run"] / "test_scores.json").read_text())["best.pt"]
    assert saved["test_macro_f1"] == result["report"]["macro avg"]["f1-score"]
    assert saved["test_images"] == result["n"]
    model = open_model(evaluated["run"])
    assert saved["weights_sha256"] == model.sha256
    assert model.scores["test_accuracy"] == result["report"]["accuracy"]
    assert model.scores["test_macro_f1"] == saved["test_macro_f1"]
    # The app's model card reads them from there: a test macro-F1 below the validation one
    # is the one it judges by.
    card = quality_warning({**model.scores, "val_macro_f1": 1.0, "test_macro_f1": 0.0}, 4,
                           "best.pt")
    assert card is not None and "on the test images" in card
    # Another checkpoint (last.pt) has no entry: the scores are not lent to it.
    assert "test_accuracy" not in open_model(evaluated["run"] / "last.pt").scores


def test_test_scores_of_other_weights_are_not_believed(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated["run"], run)
    doc = json.loads((run / "test_scores.json").read_text())
    doc["best.pt"]["weights_sha256"] = "0" * 64  # measured on a best.pt since replaced
    (run / "test_scores.json").write_text(json.dumps(doc))
    assert "test_accuracy" not in open_model(run).scores


def test_evaluating_the_run_folder_again_needs_overwrite(evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(evaluated["run"], run)
    report = (run / "report.json").read_bytes()
    assert main(["evaluate", "--model", str(run)]) == 1
    assert "already holds report.json" in _error_line(capsys)
    assert (run / "report.json").read_bytes() == report


def test_old_checkpoint_option_names_model(evaluated):
    done = subprocess.run([sys.executable, "-m", "cxrlearn", "evaluate", "--model",
                           str(evaluated["run"]), "--checkpoint", "last.pt"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cxrlearn evaluate: error: --checkpoint is gone; use --model PATH with the file "
        "itself, e.g. --model runs/NAME/last.pt"]


def test_missing_run_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["evaluate", "--model", str(missing)]) == 1
    assert _error_line(capsys) == f"error: {missing}: no such file or folder"
    with pytest.raises(SystemExit) as exit_:  # cxrlearn 0.1's flag: one line naming --model
        main(["evaluate", "--run", str(missing)])
    assert exit_.value.code == 2 and "--run is gone; use --model PATH" in _error_line(capsys)


def test_missing_checkpoint_is_one_line(tmp_path, trained, capsys):
    run = tmp_path / "run-without-best"
    run.mkdir()
    shutil.copy(trained["run"] / "manifest.csv", run / "manifest.csv")
    assert main(["evaluate", "--model", str(run)]) == 1
    assert _error_line(capsys) == (f"error: {run}: not a run folder: it holds no best.pt "
                                   "(train into it with cxrlearn train --out, or name a "
                                   "model file)")


def test_data_given_with_data_must_exist(tmp_path, trained, capsys):
    nowhere = tmp_path / "nowhere"
    assert main(["evaluate", "--model", str(trained["run"]), "--data", str(nowhere)]) == 1
    assert _error_line(capsys) == f"error: {nowhere}: data folder not found (given with --data)"


def test_moved_data_is_one_line_and_data_fixes_it(evaluated, tmp_path, capsys):
    data = evaluated["data"]
    moved = evaluated["base"] / "moved-data"
    data.rename(moved)
    try:
        assert main(["evaluate", "--model", str(evaluated["run"])]) == 1
        line = _error_line(capsys)
        assert line.startswith(f"error: {data.resolve()}: ")
        assert "--data" in line
        out = tmp_path / "again"
        assert main(["evaluate", "--model", str(evaluated["run"]), "--data", str(moved),
                     "--out", str(out)]) == 0
    finally:
        moved.rename(data)
    first = json.loads((evaluated["run"] / "report.json").read_text())
    again = json.loads((out / "report.json").read_text())
    # Same model, same images found in their new place: the same numbers.
    for key in ("report", "confusion_matrix", "intervals", "auc", "temperature"):
        assert again[key] == first[key], key
    _, rows = _predictions(out)
    assert all(Path(r["path"]).resolve().is_relative_to(moved.resolve()) for r in rows)


def test_reports_are_not_written_over_a_users_files(evaluated, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.json").write_text("my own notes")
    assert main(["evaluate", "--model", str(evaluated["run"]), "--out", str(out)]) == 1
    assert "already holds report.json" in _error_line(capsys)
    assert (out / "report.json").read_text() == "my own notes"
    assert main(["evaluate", "--model", str(evaluated["run"]), "--out", str(out),
                 "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["split"] == "test"


def test_a_checkpoint_of_another_run_is_named_as_such(evaluated, tmp_path, capsys):
    """A 3-class checkpoint in a 4-class run folder: the message blames the checkpoint."""
    from cxrlearn.checkpoint import save_checkpoint
    from cxrlearn.resnet import resnet18

    best = load_checkpoint(evaluated["run"] / "best.pt")
    three = {**{k: v for k, v in best.items() if k != "format"},
             "model": resnet18(num_classes=3).state_dict(), "class_names": CLASS_NAMES[:3],
             "meta": {**best["meta"], "arch": {**best["meta"]["arch"], "num_classes": 3}}}
    save_checkpoint(evaluated["run"] / "other.pt", three)
    try:
        assert main(["evaluate", "--model", str(evaluated["run"] / "other.pt"),
                     "--out", str(tmp_path / "o")]) == 1
        line = _error_line(capsys)
        assert "other.pt is for the classes" in line and "belongs to another run" in line
    finally:
        (evaluated["run"] / "other.pt").unlink()
