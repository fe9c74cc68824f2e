"""The web app: upload a chest X-ray, get class probabilities and a Grad-CAM overlay.

A model file becomes a small HTTP service with one page for people and three JSON
endpoints for programs (a mobile app, `curl`, lesson 07):

    GET  /               the page: choose or drop an image, see the answer
    GET  /api/health     is the server up?
    GET  /api/model      which model, classes, preprocessing and limits
    POST /api/predict    multipart field `file` -> predicted class, probabilities, overlay

One upload takes this path:

    bytes --limits--> temporary file --load_image (PNG, JPEG, DICOM)--> (H, W) in [0, 1]
          --open_model's predictor--> probs (K,) --GradCAM on a copy--> overlay PNG, base64

The model is loaded once, by `create_app`, with the loader of `cxrlearn predict`: an
exported file (`cxrlearn export`) or a checkpoint (`best.pt`). Only a checkpoint can draw
Grad-CAM, because Grad-CAM hooks a layer of the eager network and back-propagates to it;
an exported graph runs forward only.

Threads. FastAPI runs each plain `def` endpoint in a pool of worker threads, so several
requests run at once. Predictions run under `torch.inference_mode()`: a network in eval
mode only reads its weights, so many threads may call the same model. Grad-CAM cannot run
in inference mode (it needs autograd), and its forward hook would catch the activations of
every pass through the hooked layer, its own or another thread's. So it runs on its own
copy of the network, behind a lock: one Grad-CAM at a time, and predictions never wait for
it. Each forward pass also uses PyTorch's intra-op threads (`torch.get_num_threads()`, one
per core by default); with many requests at once they compete for the cores, and on a
small machine `torch.set_num_threads(1)` in the script that starts the server gives each
request one core. The library never sets it (house style, section 7).

Errors. An expected fault in a request is a JSON answer `{"error": "..."}` with a message
for a person, and the server keeps serving: an empty upload is 400, too many bytes 413, a
file that is not a readable X-ray (text, a corrupt image, too many pixels, a DICOM it
cannot decode) 422.

A teaching tool, not a diagnostic device.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import base64
import copy
import io
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrlearn import __version__
from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.data.dicom import DICOM_EXTENSIONS
from cxrlearn.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, load_image
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import eager_input, read_metadata, weights_sha256
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import overlay
from cxrlearn.predictor import Predictor, open_model
from cxrlearn.transforms import prepare

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DISCLAIMER",
    "ApiError",
    "Health",
    "Limits",
    "ModelInfo",
    "ModelRef",
    "Prediction",
    "XrayService",
    "create_app",
    "read_upload",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Largest upload accepted, in bytes (10 MiB): a 16-bit 3000 x 3000 PNG is about 8 MiB."""

DISCLAIMER = ("A teaching tool, not a diagnostic device: its answers are not a medical "
              "opinion and must not guide anyone's care.")

STATIC = Path(__file__).resolve().parent / "static"

# Room for the multipart envelope (boundary lines, part headers) around the file itself.
MULTIPART_SLACK = 64 * 1024


# Response bodies. FastAPI turns these pydantic models into the OpenAPI schema at
# /openapi.json (and the pages /docs and /redoc), which is what a mobile app is written against.

class ApiError(BaseModel):
    """Every error the API answers, whatever its status."""

    error: str = Field(description="What went wrong, for a person to read.")


class Health(BaseModel):
    """The server is up (any answer at all says that much)."""

    status: Literal["ok"] = "ok"
    version: str = Field(description="cxrlearn version of the server.")


class ModelRef(BaseModel):
    """Which model answered: enough to tell two models apart."""

    file: str = Field(description="Name of the model file.")
    kind: str = Field(description='"checkpoint", or the export format: "torchscript", '
                                  '"lite" or "export".')
    sha256: str = Field(description="weights_sha256 of the network's weights; a checkpoint "
                                    "and its export have the same one.")


class Limits(BaseModel):
    """What the server accepts."""

    max_bytes: int = Field(description="Largest upload, in bytes.")
    max_pixels: int = Field(description="Largest image, in pixels (width x height).")


class ModelInfo(ModelRef):
    """What `GET /api/model` says about the loaded model."""

    classes: list[str] = Field(description="Class names, in the order of the probabilities.")
    preprocess: dict[str, Any] = Field(description="Image size, contrast-stretch percentiles, "
                                                   "channels, mean and std.")
    temperature: float = Field(description="T the logits are divided by (1 = uncalibrated).")
    gradcam: bool = Field(description="Whether this model can draw Grad-CAM overlays.")
    gradcam_note: str | None = Field(None, description="Why there is no Grad-CAM, if not.")
    notes: list[str] = Field(default_factory=list)
    limits: Limits
    disclaimer: str = DISCLAIMER


class Prediction(BaseModel):
    """The answer for one image."""

    predicted: str = Field(description="The class with the highest probability.",
                           examples=["COVID"])
    probabilities: dict[str, float] = Field(description="Probability of each class.")
    classes: list[str] = Field(description="Class names, in the model's order.")
    model: ModelRef
    image_shape: list[int] = Field(description="(height, width) of the image as read.")
    gradcam_png: str | None = Field(
        None, description="Grad-CAM of the predicted class over the image the network saw, "
                          "a base64 PNG; present when a checkpoint is loaded and gradcam=true.")
    gradcam_note: str | None = Field(None, description="Why gradcam_png is missing, if it is.")
    disclaimer: str = DISCLAIMER


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


ERRORS = {400: {"model": ApiError, "description": "Empty upload."},
          413: {"model": ApiError, "description": "Upload larger than max_bytes."},
          422: {"model": ApiError, "description": "Not a readable X-ray (not an image, "
                                                  "corrupt, too many pixels), or no `file`."}}


def create_app(
    model_path: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> FastAPI:
    """Build the web app around one model; serve it with uvicorn (`cxrlearn app`).

    The model is loaded here, once, so a bad model file fails before any server starts.

    Args:
        model_path: An export (`cxrlearn export`), a checkpoint (`best.pt`), or a run folder.
        max_bytes: Largest upload, in bytes (default 10 MiB).
        max_pixels: Largest image, in pixels (default `cxrlearn.data.MAX_PIXELS`).

    Returns:
        The FastAPI application; `app.state.service` is its `XrayService`.

    Raises:
        CxrlearnError: The model file cannot be used.

    Example:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> client = TestClient(create_app("runs/demo/best.pt"))  # doctest: +SKIP
        >>> with open("xray.png", "rb") as f:  # doctest: +SKIP
        ...     client.post("/api/predict", files={"file": f}).json()["predicted"]
        'Normal'
    """
    service = XrayService(model_path, max_bytes, max_pixels)
    app = FastAPI(
        title="cxrlearn",
        version=__version__,
        description="Chest X-ray classification for learning. " + DISCLAIMER,
    )
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # One error shape for the whole API: {"error": "..."} (FastAPI's is {"detail": ...}).
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad request ({problems}); send the X-ray as the "
                             "multipart form field `file`"}, status_code=422)

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next: Any) -> Any:
        # The form is parsed (and a big file spooled to disk) before the endpoint runs, so
        # the endpoint's own size check would come after the whole upload was stored.
        # The declared length lets us refuse at once; the endpoint still checks the bytes,
        # because a chunked upload declares no length.
        declared = request.headers.get("content-length", "")
        if (request.method == "POST" and declared.isdigit()
                and int(declared) > max_bytes + MULTIPART_SLACK):
            return JSONResponse({"error": _too_large(int(declared), max_bytes)},
                                status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health", response_model=Health)
    def health() -> Health:
        """Is the server up?"""
        return Health(version=__version__)

    @app.get("/api/model", response_model=ModelInfo)
    def model_info() -> ModelInfo:
        """The loaded model: file, kind, classes, preprocessing, Grad-CAM, limits."""
        return service.info

    # A plain `def`: FastAPI runs it in a worker thread, so the model call does not block
    # the event loop and requests run side by side (see the module docstring on threads).
    @app.post("/api/predict", response_model=Prediction, responses=ERRORS)
    def predict(
        file: Annotated[UploadFile, File(description="A chest X-ray: PNG, JPEG or DICOM.")],
        gradcam: Annotated[bool, Query(description="Add the Grad-CAM overlay "
                                                   "(checkpoints only).")] = True,
    ) -> Prediction:
        """Classify one X-ray: the predicted class, every class's probability, and the
        Grad-CAM overlay of the predicted class when the model is a checkpoint."""
        name = file.filename or "upload"
        data = file.file.read(max_bytes + 1)  # one byte more than allowed tells "too big"
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name}: {_too_large(None, max_bytes)}")
        if not data:
            raise HTTPException(400, f"{name}: the file is empty; choose an X-ray image")
        try:
            image = read_upload(data, name, max_pixels)
        except CxrlearnError as e:
            raise HTTPException(422, str(e)) from None
        probs = service.probabilities(image).tolist()
        best = int(np.argmax(probs))
        classes = list(service.predictor.class_names)
        answer = Prediction(predicted=classes[best],
                            probabilities=dict(zip(classes, probs, strict=True)),
                            classes=classes, model=service.ref, image_shape=list(image.shape))
        if gradcam and service.info.gradcam:
            answer.gradcam_png = base64.b64encode(service.gradcam_png(image, best)).decode()
        elif gradcam:
            answer.gradcam_note = service.info.gradcam_note
        return answer

    return app


def _size(num_bytes: int) -> str:
    """1536 -> "1.5 KiB": sizes for people."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def _too_large(size: int | None, max_bytes: int) -> str:
    got = "" if size is None else f" ({_size(size)})"
    return (f"the upload is too large{got}; the limit is {_size(max_bytes)}. "
            "Send a smaller image (an X-ray needs no more than about 2000 x 2000 pixels)")
