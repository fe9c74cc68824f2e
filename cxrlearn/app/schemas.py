"""What the app's HTTP API answers: the contract a mobile app is written against.

FastAPI turns these pydantic models into the OpenAPI schema at `/openapi.json` (which the
small local page at `/docs` points to), so the shapes below are the documentation of the API:

    GET  /api/health                 -> Health
    GET  /api/model                  -> ModelInfo (which model, how good, classes, Limits)
    GET  /api/samples                -> [Sample] (bundled X-rays to try)
    GET  /api/samples/{class}/{file} -> the PNG, or ApiError with status 404
    POST /api/predict                -> Prediction, or ApiError with status 400, 413 or 422
    GET  /device/<id>/               -> the on-device page (`cxrlearn.app.device`), whose
                                        answers never reach the server

Every answer about a model carries its `ModelRef` (file, kind, weights' sha256), the
`DISCLAIMER` (a teaching tool, not a diagnostic device) and, when the model's quality is
unknown or near chance, a `warning` that says so.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "APP_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CONCURRENT",
    "DISCLAIMER",
    "PREVIEW_SIDE",
    "ApiError",
    "Health",
    "Limits",
    "ModelInfo",
    "ModelRef",
    "Prediction",
    "Sample",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Largest upload accepted, in bytes (10 MiB): a 16-bit 3000 x 3000 PNG is about 8 MiB."""

APP_MAX_PIXELS = 4096 * 4096
"""Largest image the app decodes, in pixels (16.8 million, 4096 x 4096): radiographs are
about 3000 x 3000. Lower than the library's `MAX_PIXELS` (64 million) because the cost of a
request grows with the pixels, not the bytes: a 7900 x 7900 PNG can be a few kilobytes,
and reading and preparing it took 15 s and 2.7 GB on one core; at 4096 x 4096, 5 s and
0.8 GB."""

DEFAULT_MAX_CONCURRENT = 2
"""How many uploads are read and predicted at the same time; later ones wait their turn.
Two keep memory bounded (2 x 1 GB at the pixel limit) and both cores of a laptop busy."""

PREVIEW_SIDE = 512
"""Longest side, in pixels, of `Prediction.image_png`, the server's picture of the upload."""

DISCLAIMER = ("A teaching tool, not a diagnostic device: its answers are not a medical "
              "opinion and must not guide anyone's care.")


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
    max_pixels: int = Field(description="Largest image, in pixels (width x height), checked "
                                        "from the file's header before it is decoded.")
    max_concurrent: int = Field(description="Uploads read and predicted at the same time; "
                                            "later ones wait.")


class ModelInfo(ModelRef):
    """What `GET /api/model` says about the loaded model: what it is, and how good it is."""

    classes: list[str] = Field(description="Class names, in the order of the probabilities.")
    preprocess: dict[str, Any] = Field(description="Image size, contrast-stretch percentiles, "
                                                   "channels, mean and std.")
    temperature: float = Field(description="T the logits are divided by (1 = uncalibrated).")
    epoch: int | None = Field(None, description="The epoch the checkpoint holds (None for an "
                                                "exported file).")
    scores: dict[str, float | int] = Field(
        default_factory=dict,
        description="What the file says of the model's quality: val_macro_f1, val_accuracy, "
                    "val_loss of the chosen epoch; test_macro_f1, test_accuracy, test_images "
                    "once `cxrlearn evaluate` has run. Empty for an exported file.")
    chance: float = Field(description="1/K: the accuracy of guessing among K classes.")
    warning: str | None = Field(None, description="Why the answers should not be trusted: the "
                                                  "quality is unknown, or near chance.")
    gradcam: bool = Field(description="Whether this model can draw Grad-CAM overlays.")
    gradcam_note: str | None = Field(None, description="Why there is no Grad-CAM, if not.")
    device_url: str | None = Field(None, description="The page that runs this model in the "
                                                     "browser itself (`/device/<id>/`): the "
                                                     "image never leaves the device.")
    device_note: str | None = Field(None, description="Why there is no such page, if not.")
    notes: list[str] = Field(default_factory=list)
    limits: Limits
    disclaimer: str = DISCLAIMER


class Sample(BaseModel):
    """One of the bundled X-rays the page offers to try."""

    class_name: str = Field(description="The class the data set labels it with.")
    file: str = Field(description="Its file name.")
    url: str = Field(description="Where to GET its PNG bytes.")


class Prediction(BaseModel):
    """The answer for one image."""

    predicted: str = Field(description="The class with the highest probability.",
                           examples=["COVID"])
    probabilities: dict[str, float] = Field(description="Probability of each class.")
    classes: list[str] = Field(description="Class names, in the model's order.")
    model: ModelRef
    image_shape: list[int] = Field(description="(height, width) of the image as read.")
    image_png: str | None = Field(
        None, description="The image as the server read it (a DICOM file too), 8-bit grey, "
                          f"at most {PREVIEW_SIDE} pixels on its long side, a base64 PNG; "
                          "absent with ?preview=false.")
    gradcam_png: str | None = Field(
        None, description="Grad-CAM of the predicted class over the image the network saw, "
                          "a base64 PNG; present when a checkpoint is loaded and gradcam=true.")
    gradcam_note: str | None = Field(None, description="Why gradcam_png is missing, if it is.")
    warning: str | None = Field(None, description="ModelInfo.warning: why these answers "
                                                  "should not be trusted, if so.")
    disclaimer: str = DISCLAIMER
