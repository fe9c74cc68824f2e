"""What the app's HTTP API answers: the contract a mobile app is written against.

FastAPI turns these pydantic models into the OpenAPI schema at `/openapi.json` (and the
pages `/docs` and `/redoc`), so the shapes below are the documentation of the API:

    GET  /api/health     -> Health
    GET  /api/model      -> ModelInfo (which model, classes, preprocessing, Limits)
    POST /api/predict    -> Prediction, or ApiError with status 400, 413 or 422

Every answer about a model carries its `ModelRef` (file, kind, weights' sha256) and the
`DISCLAIMER`: this is a teaching tool, not a diagnostic device.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DISCLAIMER",
    "ApiError",
    "Health",
    "Limits",
    "ModelInfo",
    "ModelRef",
    "Prediction",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Largest upload accepted, in bytes (10 MiB): a 16-bit 3000 x 3000 PNG is about 8 MiB."""

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
