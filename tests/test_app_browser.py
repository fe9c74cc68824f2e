"""The app in a real browser: uvicorn on 127.0.0.1, headless Chromium driven by Playwright.

What a student does, checked against the eager pipeline: open the page, read what it says
of the model (scores against chance, and the warning for a model of unknown quality),
choose an X-ray, read the predicted class, the bars and the Grad-CAM overlay; drop a second
X-ray on the page; pick a sample X-ray; choose a text file and read the error; choose a
DICOM file and see the server's picture of it; switch to "run on this device" and get the
same answer from the browser itself, with nothing sent to the API. The page runs under the app's
Content-Security-Policy, which the browser enforces: a violation is a console error, and
fails the test. A screenshot of the answered page is saved to
the test's temporary folder; with CXRLEARN_APP_SCREENSHOT=docs/img/app.png it is also
written there, for the docs (optionally of a trained checkpoint: CXRLEARN_APP_MODEL=PATH).

Playwright drives Debian's Chromium (/usr/bin/chromium); it never downloads a browser. The
tests are skipped only when that browser is missing (and the DICOM one without pydicom).
"""

from __future__ import annotations

import base64
import io
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image
from playwright.sync_api import sync_playwright

import cxrlearn.app.device as device_module
from cxrlearn.app import DEFAULT_MAX_BYTES, create_app
from cxrlearn.checkpoint import load_checkpoint, save_checkpoint
from cxrlearn.data import load_image, sample_root
from cxrlearn.export import eager_probs
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import overlay
from cxrlearn.resnet import resnet18
from cxrlearn.trained import open_model
from cxrlearn.transforms import Preprocess, prepare

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine with no display, GPU or network, as root (hence --no-sandbox).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PREPROCESS = {"image_size": 64, "low": 2.0, "high": 98.0, "channels": 3,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TIMEOUT_MS = 60_000  # every browser wait; a contended CPU is slow, a hung page still fails


@contextmanager
def serving(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free port of 127.0.0.1; yield its URL.

    The socket is bound here, before the server starts, so the port cannot be taken in
    between. The server is stopped, and its thread joined, when the block ends.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """An untrained ResNet18 checkpoint, or the trained one named by CXRLEARN_APP_MODEL."""
    if os.environ.get("CXRLEARN_APP_MODEL"):
        return Path(os.environ["CXRLEARN_APP_MODEL"])
    torch.manual_seed(11)
    return save_checkpoint(tmp_path / "best.pt", {
        "model": resnet18(num_classes=4).state_dict(), "class_names": CLASSES, "epoch": 1,
        "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                 "preprocess": PREPROCESS}})


def _oracle(ckpt_path: Path, path: Path) -> tuple[dict[str, float], np.ndarray]:
    """Probabilities and overlay of the eager pipeline and the library's Grad-CAM."""
    ckpt = load_checkpoint(ckpt_path)
    model = open_model(ckpt_path).network
    pre = Preprocess.from_dict(ckpt["meta"]["preprocess"])
    image = load_image(path)
    probs = eager_probs(model, [image], pre, float(ckpt.get("temperature", 1.0)))[0]
    with GradCAM(model) as cam:
        heat = cam(pre.network_input(image)[None], int(probs.argmax())).cams[0]
    seen = prepare(image, pre.image_size, pre.low, pre.high)[0].numpy()
    return dict(zip(ckpt["class_names"], probs.tolist(), strict=True)), overlay(seen, heat)


def _shown_answer(page) -> tuple[str, dict[str, float], np.ndarray]:
    """The predicted class, the bars and the overlay as the page shows them."""
    predicted = page.text_content("#predicted")
    bars = page.eval_on_selector_all(
        "#bars li", "items => items.map(li => [li.dataset.class, li.dataset.probability])")
    src = page.get_attribute("#overlay", "src")
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1])
    return predicted, {name: float(p) for name, p in bars}, np.asarray(Image.open(io.BytesIO(png)))


def _check_shown(page, ckpt_path: Path, xray: Path) -> None:
    want_probs, want_overlay = _oracle(ckpt_path, xray)
    predicted, probs, shown_overlay = _shown_answer(page)
    assert predicted == max(want_probs, key=want_probs.get)
    assert list(probs) == list(want_probs)
    np.testing.assert_allclose(list(probs.values()), list(want_probs.values()), atol=1e-6)
    np.testing.assert_array_equal(shown_overlay, want_overlay)
    assert page.is_visible("#overlay") and not page.is_visible("#error")
    # The image is drawn: the browser decoded the PNG at the network's input size.
    size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == list(shown_overlay.shape[:2])


def _answered(page, name: str) -> None:
    """Wait until the page shows the answer (or error) for the file called `name`."""
    page.wait_for_function(
        "name => document.getElementById('preview-caption').textContent.startsWith(name)"
        " && document.getElementById('status').hidden", arg=name, timeout=TIMEOUT_MS)


def _save_screenshot(png: bytes, path: Path) -> None:
    """The screenshot for the docs, as compact as PNG gets without losing colours (a
    256-colour palette would band the heat map)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").save(path, optimize=True)


PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True,
         "device_scale_factor": 3}
"""A phone's screen (390 x 844 CSS pixels, touch), as the issue tried it."""


@contextmanager
def browsing(app: FastAPI, phone: bool = False
             ) -> Iterator[tuple[object, str, list[str], list[str]]]:
    """Serve `app`, open its page in headless Chromium once the page has described the
    model and listed its samples; yield the page, the URL, and the lists of requests made
    and problems logged. `phone`: on a 390 x 844 touch screen."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                    "chromium) to run the browser test")
    requests: list[str] = []
    problems: list[str] = []
    with serving(app) as url, sync_playwright() as playwright, \
            tempfile.TemporaryDirectory(prefix="cxrlearn-chromium-") as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            **(PHONE if phone else {"viewport": {"width": 980, "height": 720}}))
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            page.wait_for_function(
                "() => document.getElementById('model').textContent.startsWith('Model:')"
                " && (!document.getElementById('sample').disabled"
                "     || !document.getElementById('samples-note').hidden)")
            yield page, url, requests, problems
        finally:
            browser.close()


def test_upload_through_the_page(checkpoint, tmp_path):
    covid = sorted((sample_root() / "COVID").glob("*.png"))[0]
    normal = sorted((sample_root() / "Normal").glob("*.png"))[0]
    app = create_app(checkpoint)  # the default limits, as the screenshot shows them
    info = app.state.service.info
    with browsing(app) as (page, url, requests, problems):
        assert "not a diagnostic device" in page.text_content("#disclaimer")
        # The model card: scores against chance; the warning when they are unknown
        # or near chance (the untrained checkpoint carries none).
        assert "Chance for 4 classes: 0.25." in page.text_content("#scores")
        assert page.is_visible("#warning") is (info.warning is not None)
        if info.warning:
            assert info.warning in page.text_content("#warning")

        # 1. Choose a file.
        page.set_input_files("#file", str(covid))
        _answered(page, covid.name)
        _check_shown(page, checkpoint, covid)
        screenshot = page.screenshot(full_page=True)

        # 2. Drop a file on the drop zone (a DataTransfer holding a File, as a drag does).
        page.eval_on_selector(
            "#drop", """(zone, [b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], name, {type: "image/png"}));
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data,
                                                          bubbles: true, cancelable: true}));
            }""", [base64.b64encode(normal.read_bytes()).decode(), normal.name])
        _answered(page, normal.name)
        _check_shown(page, checkpoint, normal)
        assert not page.is_visible("#truth")  # the user's own file: no label known
        # An answer of a model of unknown quality says so next to the bars.
        assert page.is_visible("#answer-warning") is (info.warning is not None)

        # 2b. A sample X-ray, picked from the list: fetched from the app, then classified.
        sample = sorted((sample_root() / "Lung_Opacity").glob("*.png"))[1]
        page.select_option("#sample", label=sample.name)
        _answered(page, sample.name)
        _check_shown(page, checkpoint, sample)
        assert page.text_content("#truth") == "The data set labels this X-ray Lung_Opacity."

        # 3. A text file: the server's message is shown, the old answer is not.
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"not an X-ray\n"}])
        page.wait_for_selector("#error", state="visible")
        error = page.text_content("#error")
        assert error.startswith("notes.txt: ") and "not a PNG, JPEG or DICOM image" in error
        assert not page.is_visible("#result")

        # 4. Too large: refused by the page itself, before any upload.
        sent = len([r for r in requests if r.endswith("/api/predict?gradcam=true")])
        page.set_input_files("#file", files=[{"name": "huge.png", "mimeType": "image/png",
                                              "buffer": b"\0" * (DEFAULT_MAX_BYTES + 1)}])
        page.wait_for_function(
            "() => document.getElementById('error').textContent.startsWith('huge.png')")
        assert "limit" in page.text_content("#error")
        assert len([r for r in requests if r.endswith("/api/predict?gradcam=true")]) == sent

        # 5. The text file again, then a good one: the server kept serving.
        page.set_input_files("#file", str(covid))
        _answered(page, covid.name)
        _check_shown(page, checkpoint, covid)

    assert sent == 4  # covid, normal, the sample, notes.txt went to the server
    # Everything came from the app itself (no CDN); the previews are blob: URLs.
    outside = [r for r in requests if not r.startswith((url + "/", "blob:", "data:"))]
    assert outside == []
    # A rejected upload is a 4xx, which Chromium logs as a failed resource: nothing else
    # (no CSP violation either).
    assert all("status of 422" in p for p in problems), problems

    (tmp_path / "app.png").write_bytes(screenshot)
    target = os.environ.get("CXRLEARN_APP_SCREENSHOT")
    if target:
        _save_screenshot(screenshot, Path(target))
    assert Image.open(tmp_path / "app.png").size[0] == 980


def test_dicom_shows_the_servers_picture(checkpoint, tmp_path, write_dicom):
    """A browser cannot draw DICOM: the page shows the image as the server read it."""
    grey = np.asarray(Image.open(sorted((sample_root() / "Normal").glob("*.png"))[0])
                      .convert("L"), dtype=np.uint16)
    dcm = write_dicom(tmp_path / "scan.dcm", grey * 16)
    with browsing(create_app(checkpoint)) as (page, _, _, problems):
        page.set_input_files("#file", files=[{"name": "scan.dcm", "mimeType":
                                              "application/dicom", "buffer": dcm.read_bytes()}])
        _answered(page, "scan.dcm")
        page.wait_for_function(
            "() => document.getElementById('preview').src.startsWith('data:image/png')"
            " && document.getElementById('preview').complete")
        assert page.is_visible("#preview")
        shown = page.eval_on_selector("#preview", "img => [img.naturalWidth, img.naturalHeight]")
        assert shown == [128, 128]
        assert "as the server read it" in page.text_content("#preview-caption")
        assert page.is_visible("#result") and not page.is_visible("#error")
    # The browser's failed attempt to draw the DICOM file is not a console error.
    assert problems == []


IN_VIEW = """selector => {
    const box = document.querySelector(selector).getBoundingClientRect();
    return box.height > 0 && box.top >= 0 && box.bottom <= window.innerHeight;
}"""


def test_on_a_phone_the_answer_scrolls_into_view(checkpoint):
    """390 x 844: the answer sits below the chosen image; after a prediction the page
    scrolls so that the predicted class and the bars are on the screen."""
    covid = sorted((sample_root() / "COVID").glob("*.png"))[0]
    with browsing(create_app(checkpoint), phone=True) as (page, _, _, problems):
        page.set_input_files("#file", str(covid))
        _answered(page, covid.name)
        # The answer lies below the first screen of the page: it had to be scrolled to.
        assert page.evaluate("() => document.getElementById('predicted')"
                             ".getBoundingClientRect().top + window.scrollY") > 844
        for selector in ("#predicted", "#bars"):
            page.wait_for_function(IN_VIEW, arg=selector)  # a smooth scroll takes a moment
            assert page.evaluate(IN_VIEW, selector), f"{selector} is off the screen"
        assert page.evaluate("() => window.scrollY") > 0
    assert problems == []


def test_a_model_of_other_classes_offers_no_samples_and_says_why(tmp_path):
    """A student's two-class model: no 4-class sample, no "The data set labels this X-ray
    COVID", a sentence instead."""
    torch.manual_seed(3)
    two = save_checkpoint(tmp_path / "best.pt", {
        "model": resnet18(num_classes=2).state_dict(), "epoch": 1,
        "class_names": ["Healthy", "Pneumothorax with spaces"],
        "meta": {"arch": {"name": "resnet18", "num_classes": 2, "in_channels": 3},
                 "preprocess": PREPROCESS}})
    covid = sorted((sample_root() / "COVID").glob("*.png"))[0]
    with browsing(create_app(two)) as (page, _, requests, problems):
        assert not page.is_visible("#sample")
        note = page.text_content("#samples-note")
        assert page.is_visible("#samples-note")
        assert "Healthy, Pneumothorax with spaces" in note and "your own" in note
        assert page.eval_on_selector_all("#sample option", "o => o.length") == 1  # the prompt
        page.set_input_files("#file", str(covid))
        _answered(page, covid.name)
        assert not page.is_visible("#truth")
        assert "COVID" not in page.text_content("#result")
    assert problems == []


def test_serving_stops_cleanly(checkpoint):
    """The helper above must not leave a server behind: after the block, nothing listens."""
    with serving(create_app(checkpoint)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass



def test_run_on_this_device_answers_as_the_server_and_sends_it_nothing(checkpoint, tmp_path,
                                                                     monkeypatch):
    """The app's other mode, on a phone: its link opens the page of `cxrlearn export
    --format web` (the same files) for the loaded model. The browser's probabilities equal
    the server's to 1e-4, and no request of that mode goes to /api/."""
    monkeypatch.setattr(device_module, "web_apps_dir", lambda: tmp_path / "web-apps")
    app = create_app(checkpoint)
    device = app.state.device
    if device.url is None:  # no onnx extra, or no ONNX Runtime Web in the cache
        pytest.skip(device.note)
    device.build()  # the export (tens of seconds) before the browser's clock starts
    sample = sorted((sample_root() / "Viral Pneumonia").glob("*.png"))[0]
    with browsing(app, phone=True) as (page, url, requests, problems):
        assert "is sent to this cxrlearn app" in page.inner_text("#mode")
        assert "never leaves this device" in page.inner_text("#device-offer")
        page.select_option("#sample", label=sample.name)  # 1. on the server
        _answered(page, sample.name)
        server = page.eval_on_selector_all(
            "#bars li", "items => items.map(li => [li.dataset.class, li.dataset.probability])")
        switched = len(requests)
        page.click("#device-link")  # 2. on this device
        page.wait_for_url(f"{url}{device.url}?from=app")
        page.wait_for_function("() => window.cxrlearn && window.cxrlearn.session !== null",
                               timeout=2 * TIMEOUT_MS)  # 45 MB of model, 12 MB of wasm
        assert "the image never leaves it" in page.text_content("#privacy")
        page.set_input_files("#file", str(sample))
        page.wait_for_function("() => window.cxrlearn.lastProbs !== null")
        rows = page.eval_on_selector_all(
            ".row[data-class]", "rs => rs.map(r => [r.dataset.class, r.dataset.probability])")
        on_device = requests[switched:]
        page.click("#switch a")  # 3. and back to the server's page
        page.wait_for_url(f"{url}/")
        # Only the web app's own files were asked for, by name, never anything else.
        wrong = page.request.get(f"{url}{device.url}..%2Fbest.pt")
        assert wrong.status == 404
    assert [name for name, _ in rows] == [name for name, _ in server]
    got, want = (np.array([float(p) for _, p in pairs]) for pairs in (rows, server))
    assert np.abs(got - want).max() <= 1e-4
    assert on_device and all(r.startswith(url + device.url) for r in on_device), on_device
    assert not any("/api/" in r for r in on_device)
    assert problems == [], problems  # a CSP violation (WebAssembly refused) would be here
