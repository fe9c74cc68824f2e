"""On this device: the app serves its model as the offline web app, so the browser runs it.

The app can answer in two places, and says on its page which one it uses:

- **on the server** (its own page, `cxrlearn/app/static/`): the page sends the X-ray to the
  app (`POST /api/predict`), PyTorch answers;
- **on this device** (`/device/<id>/`): the page is the phone app that
  `cxrlearn export --format web` writes (`cxrlearn.export.web`), the very same files, served
  by the app: ONNX Runtime Web runs the model in the browser and the image never leaves it.

So there is one front end per mode, not two copies of one: the on-device page is not
rewritten for the app, it *is* the web export, of the model the app has loaded. `OnDevice`
writes that folder once, on the first request for it, into the cache
(`<cache>/web-apps/<id>/`); `<id>` is a digest of everything the folder is made from (the
weights' sha256, the temperature, the cxrlearn and ONNX Runtime Web versions, the page's own
files), so another model, or a new cxrlearn, gets a new folder and a new URL, and the page's
offline cache (its service worker's scope is `/device/<id>/`) never mixes two models.

It needs what `cxrlearn export --format web` needs: the network itself (a checkpoint, not an
exported file), the `onnx` extra (`pip install 'cxrlearn[onnx]'`) and the pinned ONNX Runtime
Web in the cache (`scripts/setup.sh`). When one is missing, `OnDevice.note` says so in one
sentence, which the app's page shows instead of a link that would fail.

The web page compiles WebAssembly, which the app's Content-Security-Policy forbids
elsewhere: `cxrlearn.app.guard.Guard` allows it (`'wasm-unsafe-eval'`) under `/device/` only.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

from cxrlearn import __version__
from cxrlearn.data import default_cache_dir
from cxrlearn.errors import CxrlearnError
from cxrlearn.trained import TrainedModel

__all__ = ["DEVICE_PREFIX", "MEDIA_TYPES", "OnDevice", "web_apps_dir"]

DEVICE_PREFIX = "/device/"
"""Where the app serves the on-device page: `/device/<id>/`."""

ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
"""The `onnx` extra: the exporter and the runtime that checks its file."""

MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
               ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm",
               ".onnx": "application/octet-stream", ".png": "image/png",
               ".webmanifest": "application/manifest+json", ".txt": "text/plain", "": "text/plain"}
"""The type of each file of the web app, by suffix (`SHA256SUMS` has none). Given, not
guessed: under `nosniff` a script served as anything but JavaScript does not run, and
WebAssembly compiles while it downloads only when served as `application/wasm`."""


def web_apps_dir() -> Path:
    """The cache folder of the web apps the app writes: `<cache>/web-apps`."""
    return default_cache_dir() / "web-apps"


class OnDevice:
    """The on-device page of one model: whether it can be offered, and its files.

    Args:
        model: The app's model.
        folder: Where to keep the web apps (default `web_apps_dir()`).

    Attributes:
        note: Why the page cannot be offered (one sentence), or None when it can.
        key: The folder's id, a digest of what it is made from; in the URL.
        url: `/device/<key>/`, or None when `note` says why not.
    """

    def __init__(self, model: TrainedModel, folder: Path | None = None) -> None:
        self.model = model
        self.note = _missing(model)
        self.key = _key(model)
        self.folder = (folder or web_apps_dir()) / self.key
        self.url = None if self.note else f"{DEVICE_PREFIX}{self.key}/"
        self._lock = threading.Lock()  # one export at a time, however many requests wait

    def build(self) -> Path:
        """The web app's folder, written on the first call (10 to 60 s: an ONNX export and
        its parity check), then read from the cache.

        Raises:
            CxrlearnError: It cannot be offered (`note`), or the export failed.
        """
        if self.note:
            raise CxrlearnError(self.note)
        with self._lock:
            if not (self.folder / "SHA256SUMS").is_file():  # written last: a whole folder
                self.folder.parent.mkdir(parents=True, exist_ok=True)
                self.model.export(self.folder, "web")  # whole or not at all
        return self.folder

    def file(self, name: str) -> Path | None:
        """The file `name` of the web app (building it first), or None when it has none.

        Only names the folder lists are served: `name` never becomes a path of its own,
        so `../` and friends find nothing.
        """
        folder = self.build()
        return next((p for p in folder.iterdir() if p.name == name and p.is_file()), None)


def _missing(model: TrainedModel) -> str | None:
    """Why the on-device page cannot be written for `model`, or None: one sentence that
    starts "Running on this device needs", for the app's page."""
    note = model.missing_network("Running on this device")
    if note:
        return note
    absent = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        return (f"Running on this device needs the onnx extra ({', '.join(absent)} missing): "
                "pip install 'cxrlearn[onnx]', then restart the app")
    from cxrlearn.export.web.runtime import runtime_files

    try:
        runtime_files()
    except CxrlearnError as e:
        return f"Running on this device needs the browser's runtime: {e.message}"
    return None


def _key(model: TrainedModel) -> str:
    """A digest of everything the web app is made from: a change to any, a new folder."""
    from cxrlearn.export.web import STATIC
    from cxrlearn.export.web.runtime import ORT_WEB_VERSION

    h = hashlib.sha256(f"{model.sha256} {model.temperature!r} {model.scores!r} "
                       f"{model.class_names!r} {model.preprocess.to_dict()!r} {__version__} "
                       f"{ORT_WEB_VERSION}".encode())
    for path in sorted(STATIC.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]
