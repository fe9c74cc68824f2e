"""The model side of the app: read an upload, predict, draw Grad-CAM; safe from threads.

`read_upload` turns the bytes a browser sent into the grey image every other part of
cxrlearn reads (PNG, JPEG or DICOM, told apart by their contents). `XrayService` opens the
model once, with `cxrlearn.trained.open_model` (the loader of every command), and answers
two questions about an image: the class probabilities, and where the evidence for the
predicted class lies (Grad-CAM). Asked both, it stretches the image once
(`TrainedModel.prepare`) and gives the prepared image to both.

Threads. Predictions run under `torch.inference_mode()`: a network in eval mode only reads
its weights, so many threads may call the same model. Grad-CAM cannot run in inference
mode (it needs autograd), and its forward hook would catch the activations of every pass
through the hooked layer, its own or another thread's. So `TrainedModel.explain` runs it on
its own copy of the network, behind a lock: one Grad-CAM at a time, and predictions never
wait for it.

Cost. What an upload costs grows with its pixels, not its bytes: a PNG of one colour
compresses 1000 to 1, so a 60 KB file can hold 60 million pixels. Three bounds keep a
request cheap: only PNG, JPEG and DICOM files are decoded (recognised by their first
bytes, not by their name, so none of PIL's other decoders ever runs); their size is read
from the header and checked against `max_pixels` before the pixels are decoded
(`load_image` does that); and `XrayService.slots` lets `max_concurrent` requests decode
and predict at a time, the others wait.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlearn.app.card import quality_warning, read_card
from cxrlearn.app.schemas import (
    APP_MAX_PIXELS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONCURRENT,
    PREVIEW_SIDE,
    Limits,
    ModelInfo,
    ModelRef,
)
from cxrlearn.data.dicom import DICOM_EXTENSIONS
from cxrlearn.data.images import IMAGE_EXTENSIONS, load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.heatmap import overlay
from cxrlearn.trained import TrainedModel, open_model

__all__ = ["ServerFault", "XrayService", "preview_png", "read_upload"]

# The first bytes of the files the app decodes (DICOM's "DICM" is at byte 128).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM image"  # load_image's words for the same fault


class ServerFault(Exception):
    """The server, not the upload, is at fault (e.g. no writable temporary folder): the app
    answers 500 with this message and logs `cause` for whoever runs it."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def read_upload(data: bytes, filename: str, max_pixels: int = APP_MAX_PIXELS) -> np.ndarray:
    """Read uploaded bytes as a grey image, the way `cxrlearn predict` reads a file.

    Only PNG, JPEG and DICOM are read, told apart by their first bytes (a DICOM file has the
    marker "DICM" at byte 128; a `.dcm` name is enough for the DICOM reader, so that a broken
    DICOM file gets its message). Anything else is refused before any decoder sees it: PIL
    would open a dozen other formats, each a decoder an attacker could aim at. The bytes
    then go to a temporary file and through the reader the rest of cxrlearn uses,
    `load_image`, which checks the pixel count from the header before decoding.

    Args:
        data: The uploaded file.
        filename: Its name on the user's machine, for the messages; of it, only the suffix
            reaches the file system.
        max_pixels: Refuse larger images.

    Raises:
        CxrlearnError: Not a PNG, JPEG or DICOM image, corrupt, or too large; the message
            names `filename`.
        ServerFault: The upload cannot be stored: no writable temporary folder.

    Shape:
        -> (H, W) float32 in [0, 1]
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
        suffix = ""  # never let a user-chosen name reach the file system
    if not (data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)) or data[128:132] == b"DICM"
            or suffix in DICOM_EXTENSIONS):
        raise CxrlearnError(NOT_AN_IMAGE, path=filename)
    try:
        tmp = tempfile.TemporaryDirectory(prefix="cxrlearn-upload-")
    except OSError as e:  # no usable folder: TMPDIR gone, read-only or full
        raise ServerFault("the server cannot store the upload: it has no writable temporary "
                          "folder; whoever runs it will find the cause in its log",
                          f"no writable temporary folder ({e}); set TMPDIR to a writable "
                          "folder and restart the app") from None
    with tmp:
        path = Path(tmp.name) / f"upload{suffix}"
        try:
            path.write_bytes(data)
        except OSError as e:  # a full disk
            raise ServerFault("the server cannot store the upload; whoever runs it will "
                              "find the cause in its log",
                              f"writing the upload to {path.parent} failed ({e})") from None
        try:
            return load_image(path, max_pixels=max_pixels)  # PNG, JPEG or DICOM
        except CxrlearnError as e:
            # The library names the temporary file; the user knows the file by its name.
            raise CxrlearnError(e.message, path=filename) from None


def preview_png(image: np.ndarray, max_side: int = PREVIEW_SIDE) -> bytes:
    """The image as read, 8-bit grey, shrunk to at most `max_side` on its long side: a PNG
    the browser can show when it cannot draw the upload itself (a DICOM file).

    Shape:
        image: (H, W) in [0, 1] -> PNG of (h, w), max(h, w) <= max_side
    """
    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    scale = max_side / max(grey.size)
    if scale < 1:  # BOX: the mean of the pixels each new pixel covers
        grey = grey.resize((max(1, round(grey.width * scale)),
                            max(1, round(grey.height * scale))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    return buffer.getvalue()


class XrayService:
    """The loaded model and everything a request needs from it; safe to call from threads.

    Args:
        model_path: What `cxrlearn.trained.open_model` opens: a run folder, a checkpoint
            (`best.pt`) or an exported file (`model.pt`, `.ptl`, `.pt2`, read as data).
        max_bytes: Largest upload, in bytes.
        max_pixels: Largest image, in pixels.
        max_concurrent: Requests that may read and predict at the same time (`slots`).

    Raises:
        CxrlearnError: The model file is missing or not a cxrlearn export or checkpoint.
        ValueError: A limit is below 1.
    """

    def __init__(self, model_path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = APP_MAX_PIXELS,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        if min(max_bytes, max_pixels, max_concurrent) < 1:
            raise ValueError(f"limits must be at least 1, got max_bytes={max_bytes}, "
                             f"max_pixels={max_pixels}, max_concurrent={max_concurrent}")
        self.model: TrainedModel = open_model(model_path)  # `cxrlearn predict`'s loader
        self.limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels,
                             max_concurrent=max_concurrent)
        # Held while an upload is decoded and predicted: beyond `max_concurrent` at once,
        # requests wait here, so memory and CPU stay bounded however many arrive.
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.info = _describe(self.model, self.limits)
        self.ref = ModelRef(file=self.info.file, kind=self.info.kind, sha256=self.info.sha256)

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """Class probabilities, temperature-scaled as the model file says.

        Shape:
            image: (H, W) -> (K,)
        """
        with torch.inference_mode():  # no autograd bookkeeping: faster, and nothing shared
            return self.model.probs([image])[0].float().cpu()

    def predict(self, image: np.ndarray, gradcam: bool) -> tuple[torch.Tensor, bytes | None]:
        """The class probabilities and, if asked and the model can, the Grad-CAM PNG of
        the predicted class (else None).

        With Grad-CAM the upload is stretched once (`TrainedModel.prepare`, the costly step
        on a big image) and the prepared image serves both; the probabilities are those of
        `probabilities`, digit for digit (the same steps, in inference mode).

        Shape:
            image: (H, W) -> (K,), PNG of (S, S, 3)
        """
        if not (gradcam and self.info.gradcam):
            return self.probabilities(image), None
        prepared = self.model.prepare(image)  # outside inference mode: Grad-CAM needs autograd
        with torch.inference_mode():
            probs = self.model.probs_prepared([prepared])[0].float().cpu()
        return probs, self.gradcam_png(prepared, int(probs.argmax()))

    def gradcam_png(self, prepared: torch.Tensor, target: int) -> bytes:
        """An RGB PNG: the Grad-CAM map of class `target` over the image the network saw,
        drawn by `cxrlearn.heatmap.overlay`.

        `TrainedModel.explain_prepared` runs Grad-CAM on a private copy of the network, one
        request at a time, so it never touches the predictions running in other threads.

        Args:
            prepared: The image through `TrainedModel.prepare` (stretched, resized to S x S).
            target: The class to explain.

        Raises:
            CxrlearnError: The model is an exported file (no eager network to hook).

        Shape:
            prepared: uint8 (1, S, S) -> PNG of (S, S, 3)
        """
        explained = self.model.explain_prepared(prepared, target)
        buffer = io.BytesIO()
        Image.fromarray(overlay(explained.seen, explained.cam)).save(buffer, format="PNG")
        return buffer.getvalue()


def _describe(model: TrainedModel, limits: Limits) -> ModelInfo:
    """`GET /api/model`: what the app tells about its model, its quality included."""
    note = model.missing_network("Grad-CAM")
    # The file's word on its quality, each field checked once (`card.read_card`): plain
    # finite numbers only, which JSON can carry (a class never predicted can leave a NaN).
    card = read_card(model.checkpoint, model.path.name)
    scores = card.scores
    num_classes = len(model.class_names)
    return ModelInfo(file=model.path.name, kind=model.kind, sha256=model.sha256,
                     classes=list(model.class_names), preprocess=model.preprocess.to_dict(),
                     temperature=model.temperature, epoch=card.epoch, scores=scores,
                     chance=1.0 / num_classes,
                     warning=quality_warning(scores, num_classes, model.path.name,
                                             exported=model.kind != "checkpoint"),
                     gradcam=note is None, gradcam_note=note,
                     notes=[*model.notes, *card.notes],
                     limits=limits)
