"""The model side of the app: read an upload, predict, draw Grad-CAM; safe from threads.

`read_upload` turns the bytes a browser sent into the grey image every other part of
cxrlearn reads (PNG, JPEG or DICOM, told apart by their contents). `XrayService` loads the
model once, with the loader of `cxrlearn predict`, and answers two questions about an
image: the class probabilities, and where the evidence for a class lies (Grad-CAM).

Threads. Predictions run under `torch.inference_mode()`: a network in eval mode only reads
its weights, so many threads may call the same model. Grad-CAM cannot run in inference
mode (it needs autograd), and its forward hook would catch the activations of every pass
through the hooked layer, its own or another thread's. So it runs on its own copy of the
network, behind a lock: one Grad-CAM at a time, and predictions never wait for it.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import copy
import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlearn.app.schemas import DEFAULT_MAX_BYTES, Limits, ModelInfo, ModelRef
from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.data.dicom import DICOM_EXTENSIONS
from cxrlearn.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import eager_input, read_metadata, weights_sha256
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import overlay
from cxrlearn.predictor import Predictor, open_model
from cxrlearn.transforms import prepare

__all__ = ["XrayService", "read_upload"]


def read_upload(data: bytes, filename: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read uploaded bytes as a grey image, the way `cxrlearn predict` reads a file.

    The bytes go to a temporary file so that the reader the rest of cxrlearn uses,
    `load_image`, decides what the file is from its contents (a DICOM file has the marker
    "DICM" at byte 128). Of the name the browser sent only the suffix is kept, so that a
    broken `.dcm` file gets the DICOM reader's message.

    Args:
        data: The uploaded file.
        filename: Its name on the user's machine, for the messages; of it, only the suffix
            reaches the file system.
        max_pixels: Refuse larger images.

    Raises:
        CxrlearnError: Not an image, corrupt, or too large; the message names `filename`.

    Shape:
        -> (H, W) float32 in [0, 1]
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
        suffix = ""  # never let a user-chosen name reach the file system
    with tempfile.TemporaryDirectory(prefix="cxrlearn-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_image(path, max_pixels=max_pixels)  # PNG, JPEG or DICOM
        except CxrlearnError as e:
            # The library names the temporary file; the user knows the file by its name.
            raise CxrlearnError(e.message, path=filename) from None


class XrayService:
    """The loaded model and everything a request needs from it; safe to call from threads.

    Args:
        model_path: An export (`model.pt`, `.ptl`, `.pt2`), a checkpoint (`best.pt`), or a
            run folder (its `best.pt`).
        max_bytes: Largest upload, in bytes.
        max_pixels: Largest image, in pixels.

    Raises:
        CxrlearnError: The model file is missing or not a cxrlearn export or checkpoint.
    """

    def __init__(self, model_path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = MAX_PIXELS) -> None:
        path = Path(model_path)
        if path.is_dir():
            path = path / "best.pt"
        self.path = path
        self.limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels)
        self.predictor: Predictor = open_model(path)  # the loader of `cxrlearn predict`
        self.info = _describe(path, self.predictor, self.limits)
        self.ref = ModelRef(file=self.info.file, kind=self.info.kind, sha256=self.info.sha256)
        # Grad-CAM's own network: its hooks and autograd never touch the one that predicts.
        self._cam_model = (copy.deepcopy(self.predictor.model)
                           if self.predictor.model is not None else None)
        self._cam_lock = threading.Lock()

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """Class probabilities, temperature-scaled as the model file says.

        Shape:
            image: (H, W) -> (K,)
        """
        with torch.inference_mode():  # no autograd bookkeeping: faster, and nothing shared
            return self.predictor.probs(image).float().cpu()

    def gradcam_png(self, image: np.ndarray, target: int) -> bytes:
        """An RGB PNG: the Grad-CAM map of class `target` over the image the network saw
        (stretched and resized to S x S), as `cxrlearn predict --gradcam` draws it.

        Raises:
            CxrlearnError: The model is an exported file (no eager network to hook).

        Shape:
            image: (H, W) -> PNG of (S, S, 3)
        """
        pre = self.predictor.preprocess
        if self._cam_model is None or pre is None:
            raise CxrlearnError(self.info.gradcam_note or "no Grad-CAM for this model")
        x = eager_input(image, pre)[None]  # (1, C, S, S), made outside inference mode
        with self._cam_lock, GradCAM(self._cam_model) as cam:
            heat = cam(x, target).cams[0]  # (S, S) in [0, 1]
        seen = prepare(image, pre.image_size, pre.low, pre.high)[0].numpy()  # (S, S) uint8
        buffer = io.BytesIO()
        Image.fromarray(overlay(seen, heat)).save(buffer, format="PNG")
        return buffer.getvalue()


def _describe(path: Path, predictor: Predictor, limits: Limits) -> ModelInfo:
    """`GET /api/model`: the facts `open_model` does not keep, read from the file once more
    (the small `cxrlearn.json` of an export, or the checkpoint's temperature)."""
    metadata = read_metadata(path)
    if metadata is not None:
        preprocess, temperature = metadata.preprocess, metadata.temperature
        sha256 = metadata.weights_sha256
        note = (f"{path.name} is an exported {metadata.file_format} file: it gives "
                "probabilities only. Grad-CAM hooks a layer of the eager network and "
                "back-propagates to it, which an exported graph does not allow; start the app "
                "with the checkpoint (best.pt) to see overlays.")
    else:
        assert predictor.model is not None and predictor.preprocess is not None
        preprocess = predictor.preprocess
        temperature = float(load_checkpoint(path).get("temperature", 1.0))
        sha256 = weights_sha256(predictor.model.state_dict())
        note = None
    return ModelInfo(file=path.name, kind=predictor.kind, sha256=sha256,
                     classes=list(predictor.class_names), preprocess=preprocess.to_dict(),
                     temperature=temperature, gradcam=note is None, gradcam_note=note,
                     notes=list(predictor.notes), limits=limits)
