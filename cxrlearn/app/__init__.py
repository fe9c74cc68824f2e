"""The app: a trained model behind a web page and an HTTP API, on the student's own machine.

The reference project ended in a phone app: take a picture of a chest X-ray, get the
network's answer. cxrlearn's counterpart is a local web app started with one command,

    cxrlearn app --model runs/NAME/best.pt        # or an exported model.pt

which serves a page (choose or drop an X-ray, or try a bundled one; see the class
probabilities, the Grad-CAM overlay, and what the model file says of its own quality) and
the JSON API a mobile app would call: `POST /api/predict` with the image as the multipart
field `file`. `create_app` builds it (`cxrlearn.app.server`; the answers' shapes are
`cxrlearn.app.schemas`, the model side `cxrlearn.app.service`, the quality warning
`cxrlearn.app.card`, the sample X-rays `cxrlearn.app.samples`, what is refused before any
endpoint runs `cxrlearn.app.guard`); FastAPI writes its OpenAPI description at
`/openapi.json`, which `/docs` points to.

It needs the optional extra: `pip install 'cxrlearn[app]'` (FastAPI, uvicorn,
python-multipart). Importing this package without them raises ModuleNotFoundError;
`cxrlearn app` checks first and says what to install.

A teaching tool, not a diagnostic device.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

from cxrlearn.app.schemas import APP_MAX_PIXELS, DEFAULT_MAX_BYTES, DISCLAIMER, Prediction
from cxrlearn.app.server import create_app
from cxrlearn.app.service import XrayService, read_upload

__all__ = ["APP_MAX_PIXELS", "DEFAULT_MAX_BYTES", "DISCLAIMER", "Prediction", "XrayService",
           "create_app", "read_upload"]
