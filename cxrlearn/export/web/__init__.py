"""The phone app: a folder that a browser installs and then runs offline, model included.

`export_web` writes a complete progressive web app (PWA) around an ONNX export:

    index.html, app.js, app.css   the page: choose an X-ray, read the answer and the map
    dicom.js                      a reader of uncompressed DICOM files, as `load_dicom`
    model.onnx, model.json        the model (`cxrlearn.export.onnx`) and its card
    ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}
                                  ONNX Runtime Web, pinned and checked (`runtime`)
    manifest.webmanifest, icon-192.png, icon-512.png
                                  what makes the page installable ("Add to home screen")
    sw.js                         the service worker: caches every file on the first visit,
                                  then answers from the cache, so the app works offline
    SHA256SUMS, onnxruntime-web-LICENSE.txt

Any static host serves it (`python -m http.server -d DIR`, GitHub Pages); a service worker
needs `https://` or `http://127.0.0.1`/`localhost`. The image is decoded, converted to grey
(PIL's `convert("L")` luma, as `cxrlearn.data.load_image`; DICOM rescaled and min-max scaled,
as `cxrlearn.data.dicom.load_dicom`, by `static/dicom.js`) and classified by the browser
itself: nothing is uploaded, which the page says. The probabilities equal onnxruntime's in
Python to 1e-4 and the map equals `cxrlearn.gradcam`'s (tests/test_web_browser.py). `cxrlearn
app` serves this same page as its "run on this device" mode (`cxrlearn.app.device`).

Lesson: lessons/09_on_the_phone.ipynb
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import nn

from cxrlearn.atomic import temporary_folder
from cxrlearn.errors import CxrlearnError
from cxrlearn.export.files import ExportResult
from cxrlearn.export.onnx import WARNING, export_onnx
from cxrlearn.export.web.runtime import LICENSE_NAME, ORT_WEB_VERSION, runtime_files
from cxrlearn.transforms import Preprocess

__all__ = ["export_web", "STATIC", "icon"]

STATIC = Path(__file__).with_name("static")
"""The page's own files: index.html, app.js, app.css, the service worker's template."""
MODEL_NAME = "model.onnx"


def icon(size: int) -> Image.Image:
    """The app's icon, drawn: two lungs on the page's dark blue, with room to be cropped
    round ("maskable": the safe zone is the central 80%)."""
    im = Image.new("RGB", (size, size), (15, 28, 46))
    d = ImageDraw.Draw(im)
    u = size / 100
    for left in (True, False):
        x0, x1 = (22, 47) if left else (53, 78)
        d.rounded_rectangle([x0 * u, 24 * u, x1 * u, 78 * u], radius=12 * u,
                            fill=(214, 226, 240))
    d.rectangle([48.5 * u, 16 * u, 51.5 * u, 50 * u], fill=(214, 226, 240))  # the trachea
    return im


def _card(result: ExportResult, model_bytes: int, quantize: str | None,
          scores: Mapping[str, float] | None) -> dict:
    """model.json: what the page shows about the model."""
    m = result.metadata
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted((scores or {}).items())
                      if k.startswith("test_") and isinstance(v, float))
    return {"class_names": list(m.class_names), "preprocessing": m.preprocess.to_dict(),
            "temperature": m.temperature, "weights_sha256": m.weights_sha256,
            "quantization": "int8 (static, calibrated on training images)" if quantize
            else "float32", "scores": shown or None, "model_file": MODEL_NAME,
            "model_bytes": model_bytes, "runtime_version": ORT_WEB_VERSION,
            "cxrlearn_version": m.cxrlearn_version, "warning": WARNING,
            "parity": {"max_abs_diff": result.max_abs_diff, "inputs": result.num_checks}}


def export_web(
    network: nn.Module,
    folder: str | Path,
    *,
    class_names: Sequence[str],
    preprocess: Preprocess,
    temperature: float = 1.0,
    quantize: str | None = None,
    calibration_images: Sequence[np.ndarray] = (),
    scores: Mapping[str, float] | None = None,
    check_images: Sequence[np.ndarray] | None = None,
) -> ExportResult:
    """Write the offline web app into `folder` (new, or empty), whole or not at all.

    Args:
        network: The eager classifier. It, `class_names`, `preprocess`, `temperature`,
            `quantize`, `calibration_images` and `check_images` are what
            `cxrlearn.export.onnx.export_onnx` takes.
        folder: The folder to write; it must not exist yet, or be empty.
        scores: The model's scores (`TrainedModel.scores`); its `test_*` ones go on the card.

    Returns:
        The ONNX export's result, with `path` the folder.

    Raises:
        CxrlearnError: The folder is not empty, ONNX Runtime Web is not in the cache
            (`runtime`), or the ONNX export failed its parity check.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CxrlearnError("already exists and is not an empty folder; remove it or choose "
                            "another --out", path=folder)
    runtime = runtime_files()  # checked before the costly export
    with temporary_folder(folder, "the app folder") as tmp:
        out = tmp / folder.name
        out.mkdir()
        result = export_onnx(network, out / MODEL_NAME, class_names=class_names,
                             preprocess=preprocess, temperature=temperature,
                             check_images=check_images, quantize=quantize,
                             calibration_images=calibration_images)
        for name in ("index.html", "app.js", "dicom.js", "app.css", LICENSE_NAME):
            shutil.copyfile(STATIC / name, out / name)
        for name, path in runtime.items():
            shutil.copyfile(path, out / name)
        for size in (192, 512):
            icon(size).save(out / f"icon-{size}.png")
        card = _card(result, (out / MODEL_NAME).stat().st_size, quantize, scores)
        (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        (out / "manifest.webmanifest").write_text(json.dumps({
            "name": "cxrlearn: chest X-ray classifier (teaching tool)",
            "short_name": "cxrlearn", "description": WARNING,
            "start_url": "./index.html", "scope": "./", "display": "standalone",
            "background_color": "#0f1c2e", "theme_color": "#0f1c2e",
            "icons": [{"src": "icon-192.png", "sizes": "192x192", "type": "image/png"},
                      {"src": "icon-512.png", "sizes": "512x512", "type": "image/png",
                       "purpose": "any maskable"}]}, indent=2) + "\n")
        sums = {p.name: _sha256(p) for p in sorted(out.iterdir())}
        (out / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
        # The service worker's cache is named after the contents: a new export, a new cache.
        version = hashlib.sha256("".join(sums.values()).encode()).hexdigest()[:16]
        files = ["./", *sorted(sums), "SHA256SUMS"]
        sw = (STATIC / "sw.js").read_text().replace("__VERSION__", version)
        (out / "sw.js").write_text(sw.replace("__FILES__", json.dumps(files)))
        if folder.exists():
            folder.rmdir()  # empty (checked above); Windows renames onto no folder
        out.replace(folder)
    return ExportResult(folder, result.metadata, result.max_abs_diff, result.num_checks,
                        result.notes)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
