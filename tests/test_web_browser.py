"""The phone app in a real browser: installed, offline, answering like Python.

`cxrlearn export --format web` writes a folder; a plain static server (Python's
`http.server`) serves it on 127.0.0.1; headless Chromium, driven by Playwright at a phone's
viewport (390 x 844, touch), opens it and lets the service worker cache it, then goes
**offline** and reloads: the page must still start and classify. The oracles are onnxruntime
in Python on `load_image`'s array (probabilities, to 1e-4), `cxrlearn.gradcam` (the map, to
1e-4) and PIL (the grey levels the page computed, exactly). Every request is routed through
a handler that refuses anything not on 127.0.0.1, and the test fails if one was tried.

Skipped only where Chromium, the onnx extra or the pinned ONNX Runtime Web (fetched by
scripts/setup.sh) is missing. CXRLEARN_PHONE_SCREENSHOT=docs/img/phone.png saves the
answered page for the docs (CXRLEARN_PHONE_MODEL=PATH: a trained checkpoint for it).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from playwright.sync_api import sync_playwright  # noqa: E402

from cxrlearn.data import load_image, sample_root  # noqa: E402
from cxrlearn.errors import CxrlearnError  # noqa: E402
from cxrlearn.export.onnx import read_onnx  # noqa: E402
from cxrlearn.export.web import export_web  # noqa: E402
from cxrlearn.export.web.runtime import runtime_files  # noqa: E402
from cxrlearn.gradcam import GradCAM  # noqa: E402
from cxrlearn.resnet import resnet18  # noqa: E402
from cxrlearn.trained import open_model  # noqa: E402
from cxrlearn.transforms import Preprocess  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 120_000  # a contended CPU compiles 15 MB of WebAssembly slowly

if not CHROMIUM.exists():
    pytest.skip("Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
try:
    runtime_files()
except CxrlearnError as e:
    pytest.skip(f"ONNX Runtime Web is not fetched: {e}", allow_module_level=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """A static file server, as any host would be; the types a PWA needs."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".webmanifest": "application/manifest+json"}

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """`python -m http.server` in a thread on a free port of 127.0.0.1; yield its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, Preprocess]:
    """The web app of an untrained ResNet18 at 64 px, or of CXRLEARN_PHONE_MODEL."""
    folder = tmp_path_factory.mktemp("phone") / "web"
    if os.environ.get("CXRLEARN_PHONE_MODEL"):
        model = open_model(os.environ["CXRLEARN_PHONE_MODEL"])
        network, pre, names, t = (model.network, model.preprocess, model.class_names,
                                  model.temperature)
    else:
        torch.manual_seed(5)
        network, pre, names, t = resnet18(num_classes=4).eval(), Preprocess(64), CLASSES, 1.0
    export_web(network, folder, class_names=names, preprocess=pre, temperature=t)
    return folder, network, pre


@contextmanager
def phone(url: str) -> Iterator[tuple[object, object, list[str]]]:
    """A phone-sized, touch-enabled page; every request off 127.0.0.1 is refused and listed."""
    refused: list[str] = []

    def guard(route) -> None:
        if route.request.url.startswith(url) or route.request.url.startswith("blob:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True,
                                      device_scale_factor=2)
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", guard)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            yield context, page, errors
        finally:
            browser.close()
    assert refused == [], f"requests left 127.0.0.1: {refused}"


def _ready(page) -> None:
    page.wait_for_function("() => window.cxrlearn && window.cxrlearn.session !== null")
    assert page.is_enabled("#file")


def _answer(page, path: Path) -> None:
    page.evaluate("() => { window.cxrlearn.lastProbs = null; }")
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => window.cxrlearn.lastProbs !== null")


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"]


def test_installs_then_predicts_offline_like_python(app, tmp_path) -> None:
    folder, network, pre = app
    xray = sorted((sample_root() / "COVID").glob("*.png"))[0]
    with serving(folder) as url, phone(url) as (context, page, errors):
        page.goto(url)
        _ready(page)
        # The service worker has cached every file and controls the page after a reload.
        page.evaluate("async () => { await navigator.serviceWorker.ready; }")
        page.reload()
        page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        context.set_offline(True)
        page.reload()
        _ready(page)
        _answer(page, xray)
        rows = page.eval_on_selector_all(
            ".row[data-class]", "rs => rs.map(r => [r.dataset.class, r.dataset.probability])")
        got_map = np.array(page.evaluate("() => window.cxrlearn.lastMap"), dtype=np.float64)
        got_input = np.array(page.evaluate("() => Array.from(window.cxrlearn.lastInput)"))
        for selector in ("#answer", "#view", ".row:last-child"):
            assert _in_view(page, selector), f"{selector} is not visible without scrolling"
        if os.environ.get("CXRLEARN_PHONE_SCREENSHOT"):
            page.screenshot(path=os.environ["CXRLEARN_PHONE_SCREENSHOT"])
        assert "never leaves" in page.inner_text("#privacy")
        assert "not a diagnostic device" in page.inner_text("#warning")
        assert errors == []
    image = load_image(xray)
    np.testing.assert_array_equal(got_input.reshape(image.shape), image)  # grey, exactly
    want = read_onnx(folder / "model.onnx").run(image)["probs"][0]
    names = [name for name, _ in rows]
    assert names == list(open_model(folder / "model.onnx").class_names)
    assert np.abs(np.array([float(p) for _, p in rows]) - want).max() <= 1e-4
    with GradCAM(network) as cam:
        heat = cam(pre.network_input(image)[None], int(want.argmax())).cams[0].numpy()
    assert np.abs(got_map.reshape(heat.shape) - heat).max() <= 1e-4


def test_bad_files_get_a_clear_message_and_the_page_keeps_working(app, tmp_path) -> None:
    folder, _, _ = app
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 8000)).save(huge, optimize=False)  # small file, 64 M pixels
    # Colour, transparency and JPEG: the page must find load_image's grey levels exactly.
    rng = np.random.default_rng(0)
    kinds = {"colour.png": rng.integers(0, 256, (90, 70, 3), dtype=np.uint8),
             "alpha.png": rng.integers(0, 256, (90, 70, 4), dtype=np.uint8),
             "colour.jpg": rng.integers(0, 256, (90, 70, 3), dtype=np.uint8),
             "grey.jpg": np.asarray(Image.open(sorted((sample_root() / "COVID").glob(
                 "*.png"))[1]).convert("L"))}
    for name, pixels in kinds.items():
        Image.fromarray(pixels).save(tmp_path / name, quality=85)
    xray = sorted((sample_root() / "Normal").glob("*.png"))[0]
    with serving(folder) as url, phone(url) as (_, page, errors):
        page.goto(url)
        _ready(page)
        for path, words in ((text, "is not a PNG, JPEG or DICOM"), (empty, "is empty"),
                            (huge, "8000 x 8000 = 64,000,000 pixels")):
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#error:not([hidden])")
            assert words in page.inner_text("#error")
            _answer(page, xray)  # still works, and the message is gone
            assert page.is_hidden("#error")
        seen = {}
        for name in kinds:
            _answer(page, tmp_path / name)
            seen[name] = np.array(page.evaluate("() => Array.from(window.cxrlearn.lastInput)"))
        assert errors == []
    for name, got in seen.items():
        want = load_image(tmp_path / name)
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=name)


def test_dicom_is_read_in_the_browser_as_load_image_reads_it(app, tmp_path, write_dicom):
    """dicom.js against pydicom (`load_image`): the grey image value for value, and the
    probabilities within 1e-4, for 8, 12 and 16 bits, MONOCHROME1 and 2, rescale slope and
    intercept, signed pixels, implicit and explicit VR, and sequences of undefined length;
    a compressed file and a non-DICOM file get one sentence each."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    folder, _, _ = app
    xray = np.asarray(Image.open(sorted((sample_root() / "Normal").glob("*.png"))[0])
                      .convert("L"))
    good = [write_dicom(tmp_path / "scan.dcm", xray.astype(np.uint16) * 16),
            write_dicom(tmp_path / "inverted.dcm", (255 - xray).astype(np.uint16) * 16,
                        photometric="MONOCHROME1", slope=0.5, intercept=-1024),
            write_dicom(tmp_path / "eight.dcm", xray, bits=8)]
    # Implicit VR, signed 16-bit pixels, and a sequence (of undefined length) to skip.
    ds = pydicom.dcmread(good[0])
    ds.set_pixel_data((xray.astype(np.int16) - 128) * 9, "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept = "1.25", "7.3"
    item = Dataset()
    item.CodeMeaning = "chest"
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    good.append(tmp_path / "implicit.dcm")
    ds = pydicom.dcmread(good[0])
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    (tmp_path / "notes.dcm").write_text("not a scan\n")
    seen = {}
    with serving(folder) as url, phone(url) as (_, page, errors):
        page.goto(url)
        _ready(page)
        for path in good:
            _answer(page, path)
            seen[path] = (
                np.array(page.evaluate("() => Array.from(window.cxrlearn.lastInput)")),
                np.array(page.evaluate("() => window.cxrlearn.lastProbs")))
        for name, words in (("rle.dcm", "stored as RLE Lossless; this page reads "
                                        "uncompressed DICOM only"),
                            ("notes.dcm", "not a DICOM file (no DICM marker")):
            page.set_input_files("#file", str(tmp_path / name))
            page.wait_for_selector("#error:not([hidden])")
            assert page.inner_text("#error").startswith(f"{name}: ")
            assert words in page.inner_text("#error")
            _answer(page, good[0])  # still works, and the message is gone
            assert page.is_hidden("#error")
        assert errors == []
    model = read_onnx(folder / "model.onnx")
    for path, (got_input, got_probs) in seen.items():
        image = load_image(path)
        np.testing.assert_array_equal(got_input.reshape(image.shape), image, err_msg=path.name)
        want = model.run(image)["probs"][0]
        assert np.abs(got_probs - want).max() <= 1e-4, path.name
