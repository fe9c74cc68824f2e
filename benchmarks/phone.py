"""The phone app's cost and accuracy: float32 and int8, in a browser and in Python.

Run: .venv/bin/python benchmarks/phone.py [--model runs/NAME] [--images 20]

For a trained run (default: the lessons' sample network, `cxrlearn.sample_run`), writes the
web app twice into a temporary folder, float32 and int8 (static quantization calibrated on
the run's training images), and measures:

- **size** of `model.onnx`;
- **test macro-F1** of each file on the run's test split (onnxruntime in Python, raw
  X-rays in, the app's own path), beside the checkpoint's (the eager pipeline);
- **cold start** in headless Chromium (WebAssembly, 1 thread): a fresh browser profile
  opens the page, downloads runtime and model and creates the session, until the page says
  it is ready; and in Python: `read_onnx` (verify and create the session);
- **per-image latency**: median over `--images` test X-rays, decode excluded, the whole
  graph included (stretch, resize, network, CAM), in Chromium and in onnxruntime (1 thread).

Times vary from run to run and machine to machine; compare the rows of one run. Needs the
onnx extra, Chromium (/usr/bin/chromium) and ONNX Runtime Web (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cxrlearn.data import load_image
from cxrlearn.evaluation.metrics import macro_f1
from cxrlearn.export.onnx import read_onnx
from cxrlearn.export.web import export_web
from cxrlearn.trained import TrainedModel, open_model

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """A static file server on a free port of 127.0.0.1 (as tests/test_web_browser.py)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".mjs": "text/javascript", ".wasm": "application/wasm"}

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def browser_times(folder: Path, paths: list[Path]) -> tuple[float, float]:
    """(cold start, median per-image latency) in ms, headless Chromium, a fresh profile."""
    from playwright.sync_api import sync_playwright

    with serving(folder) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True).new_page()
        page.set_default_timeout(300_000)
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function("() => window.cxrlearn && window.cxrlearn.session !== null")
        cold = (time.perf_counter() - started) * 1000
        times = []
        for path in paths:
            page.evaluate("() => { window.cxrlearn.lastProbs = null; }")
            page.set_input_files("#file", str(path))
            page.wait_for_function("() => window.cxrlearn.lastProbs !== null")
            times.append(page.evaluate("() => window.cxrlearn.lastMs"))
        browser.close()
    return cold, statistics.median(times)


def python_times(model_path: Path, images: list[np.ndarray]) -> tuple[float, float]:
    """(cold start, median per-image latency) in ms, onnxruntime in Python.

    Cold start is `read_onnx` (read, verify, create the session); latency is timed on a
    session with one thread, as the browser runs.
    """
    started = time.perf_counter()
    model = read_onnx(model_path)
    cold = (time.perf_counter() - started) * 1000
    model.session = type(model.session)(model_path.read_bytes(), _one_thread(),
                                        providers=["CPUExecutionProvider"])
    times = []
    for image in images:
        t = time.perf_counter()
        model.run(image)
        times.append((time.perf_counter() - t) * 1000)
    return cold, statistics.median(times)


def _one_thread() -> object:
    """onnxruntime's session options for one thread, as the browser runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def test_f1(model_path: Path, run: TrainedModel, rows: list) -> float:
    """Macro-F1 of an ONNX file on raw X-rays (the app's path), in onnxruntime."""
    session = read_onnx(model_path)
    preds = [int(session.run(load_image(r.path))["probs"].argmax()) for r in rows]
    return macro_f1([r.label for r in rows], preds, len(run.class_names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a run folder (default: the lessons' sample network)")
    parser.add_argument("--images", type=int, default=20, help="test X-rays timed per row")
    args = parser.parse_args()
    if args.model is None:
        from cxrlearn.sample_run import sample_run

        run = sample_run()
    else:
        run = open_model(args.model)
    network = run.require_network("the benchmark")
    test = [r for r in run.split if r.split == "test"]
    train = [r for r in run.split if r.split == "train"]
    eager = run.probs([load_image(r.path) for r in test]).argmax(dim=1).tolist()
    eager_f1 = macro_f1([r.label for r in test], eager, len(run.class_names))
    calibration = [load_image(r.path) for r in train[:64]]
    timed = [r.path for r in test[:args.images]]
    table = Table(title=f"The phone app: {run.path} ({len(test)} test X-rays)")
    for col in ("model", "file MB", "test macro-F1", "Chromium cold start ms",
                "Chromium ms/image", "onnxruntime start ms", "onnxruntime ms/image"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("checkpoint (eager PyTorch)", "", f"{eager_f1:.3f}", "", "", "", "")
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in (None, "int8"):
            folder = Path(tmp) / (quantize or "float32")
            export_web(network, folder, class_names=run.class_names,
                       preprocess=run.preprocess, temperature=run.temperature,
                       quantize=quantize, calibration_images=calibration if quantize else ())
            onnx_path = folder / "model.onnx"
            cold, per_image = browser_times(folder, timed)
            py_cold, py_image = python_times(onnx_path, [load_image(p) for p in timed])
            table.add_row(quantize or "float32", f"{onnx_path.stat().st_size / 1e6:.1f}",
                          f"{test_f1(onnx_path, run, test):.3f}", f"{cold:.0f}",
                          f"{per_image:.0f}", f"{py_cold:.0f}", f"{py_image:.1f}")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
