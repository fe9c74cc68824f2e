"""The web app: upload a chest X-ray, get class probabilities and a Grad-CAM overlay.

A model file becomes a small HTTP service with one page for people and a few JSON
endpoints for programs (a mobile app, `curl`, lesson 07):

    GET  /                       the page: choose, drop or pick a sample X-ray, see the answer
    GET  /api/health             is the server up?
    GET  /api/model              which model, how good (scores, chance, warning), limits
    GET  /api/samples            a few bundled X-rays to try, and where each one is
    GET  /api/samples/{c}/{f}    one of them, as PNG
    POST /api/predict            multipart field `file` -> predicted class, probabilities,
                                 the image as read, the Grad-CAM overlay
    GET  /docs                   where the OpenAPI description is (/openapi.json)
    GET  /device/<id>/           the same model run by the browser itself: the page of
                                 `cxrlearn export --format web` (`cxrlearn.app.device`)

One upload takes this path:

    bytes --limits--> temporary file --load_image (PNG, JPEG, DICOM)--> (H, W) in [0, 1]
          --TrainedModel.probs--> probs (K,) --TrainedModel.explain--> overlay PNG, base64

The model is loaded once, by `create_app`, with `cxrlearn.trained.open_model`: a run folder,
a checkpoint (`best.pt`) or an exported file (`cxrlearn export`, read as data, never run).
Only a checkpoint can draw Grad-CAM, because Grad-CAM hooks a layer of the eager network and
back-propagates to it; an exported graph runs forward only.

The answers' shapes are `cxrlearn.app.schemas`; reading the upload, predicting and drawing
Grad-CAM are `cxrlearn.app.service`; what the page says of the model's quality is
`cxrlearn.app.card`; what is refused before any endpoint runs (foreign hosts, cross-site
posts, oversized bodies) and the headers of every answer are `cxrlearn.app.guard`; the
on-device page is `cxrlearn.app.device`. This
module is the HTTP part: routes, limits, errors.

Threads. FastAPI runs each plain `def` endpoint in a pool of worker threads, so several
requests run at once; `XrayService` is written for that (predictions share the network,
Grad-CAM has its own copy behind a lock), and lets `max_concurrent` of them decode and
predict at a time. The cheap endpoints are `async def`: they answer from the event loop,
even while every worker thread waits its turn. Each forward pass also uses PyTorch's
intra-op threads (`torch.get_num_threads()`, one per core by default); with many requests
at once they compete for the cores, and on a small machine `torch.set_num_threads(1)` in
the script that starts the server gives each request one core. The library never sets it
(house style, section 7).

Errors. An expected fault in a request is a JSON answer `{"error": "..."}` with a message
for a person, and the server keeps serving: an empty upload is 400, a foreign Host header
400, a cross-site POST 403, an unknown sample 404, too many bytes 413, a file that is not
a readable X-ray (text, a corrupt image, too many pixels, a DICOM it cannot decode) 422, a
body that takes too long to arrive 408. A fault of the server itself (no writable temporary
folder) is a JSON 500 whose cause is written to the server's log.

A teaching tool, not a diagnostic device.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrlearn import __version__
from cxrlearn.app.device import DEVICE_PREFIX, MEDIA_TYPES, OnDevice
from cxrlearn.app.guard import BODY_TIMEOUT_S, DEFAULT_HOSTS, BodyLimit, Guard, too_large
from cxrlearn.app.samples import SampleShelf
from cxrlearn.app.schemas import (
    APP_MAX_PIXELS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONCURRENT,
    DISCLAIMER,
    ApiError,
    Health,
    ModelInfo,
    Prediction,
    Sample,
)
from cxrlearn.app.service import ServerFault, XrayService, preview_png, read_upload
from cxrlearn.errors import CxrlearnError

__all__ = ["create_app", "api_probabilities"]

STATIC = Path(__file__).resolve().parent / "static"
LOG = logging.getLogger("cxrlearn.app")

ERRORS = {400: {"model": ApiError, "description": "Empty upload."},
          413: {"model": ApiError, "description": "Upload larger than max_bytes."},
          422: {"model": ApiError, "description": "Not a readable X-ray (not a PNG, JPEG or "
                                                  "DICOM image, corrupt, too many pixels), "
                                                  "or no `file`."}}


def create_app(
    model_path: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = APP_MAX_PIXELS,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    allowed_hosts: Iterable[str] = (),
    body_timeout: float = BODY_TIMEOUT_S,
) -> FastAPI:
    """Build the web app around one model; serve it with uvicorn (`cxrlearn app`).

    The model is loaded here, once, so a bad model file fails before any server starts.

    Args:
        model_path: An export (`cxrlearn export`), a checkpoint (`best.pt`), or a run folder.
        max_bytes: Largest upload, in bytes (default 10 MiB).
        max_pixels: Largest image, in pixels, checked before decoding (default 4096 x 4096,
            `cxrlearn.app.schemas.APP_MAX_PIXELS`).
        max_concurrent: Uploads decoded and predicted at the same time (default 2); later
            ones wait.
        allowed_hosts: Host names or addresses the server answers to besides `localhost`,
            `127.0.0.1` and `[::1]` (the names other machines use to reach it).
        body_timeout: Seconds an upload may take to arrive (default 30,
            `cxrlearn.app.guard.BODY_TIMEOUT_S`); slower ones get 408.

    Returns:
        The FastAPI application; `app.state.service` is its `XrayService`.

    Raises:
        CxrlearnError: The model file cannot be used.

    Example:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> app = create_app("runs/demo/best.pt")  # doctest: +SKIP
        >>> client = TestClient(app, base_url="http://127.0.0.1")  # doctest: +SKIP
        >>> with open("xray.png", "rb") as f:  # doctest: +SKIP
        ...     client.post("/api/predict", files={"file": f}).json()["predicted"]
        'Normal'
    """
    service = XrayService(model_path, max_bytes, max_pixels, max_concurrent)
    # The same model, run by the browser itself: the web export's page (`app.device`).
    device = OnDevice(service.model)
    service.info = service.info.model_copy(update={"device_url": device.url,
                                                   "device_note": device.note})
    samples = SampleShelf(classes=service.model.class_names)  # only what the model can answer
    app = FastAPI(
        title="cxrlearn",
        version=__version__,
        description="Chest X-ray classification for learning. " + DISCLAIMER,
        # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline, and
        # another site's code on this origin. /docs below is a page of our own.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.device = device
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The last middleware added runs first: the guard, then the body limit, then the app.
    app.add_middleware(BodyLimit, max_bytes=max_bytes, timeout=body_timeout)
    app.add_middleware(Guard, allowed_hosts=[*DEFAULT_HOSTS, *allowed_hosts],
                       wasm_paths=[DEVICE_PREFIX])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # One error shape for the whole API: {"error": "..."} (FastAPI's is {"detail": ...}).
        # A body cut short (413, 408) is left unread: the connection must end with the answer.
        headers = {"Connection": "close"} if exc.status_code in (408, 413) else None
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(ServerFault)
    async def server_fault(request: Request, exc: ServerFault) -> JSONResponse:
        # The server's own trouble (no writable temporary folder): the cause goes to the
        # log for whoever runs it, and the page gets JSON it can show, not a plain-text 500.
        LOG.error("%s %s: %s", request.method, request.url.path, exc.cause)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad request ({problems}); send the X-ray as the "
                             "multipart form field `file`"}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app.openapi()))

    @app.get("/api/health", response_model=Health, summary="Is the server up?")
    async def health() -> Health:
        """Is the server up?"""
        return Health(version=__version__)

    @app.get("/api/model", response_model=ModelInfo,
             summary="The loaded model, and how good it is")
    async def model_info() -> ModelInfo:
        """The loaded model: file, kind, classes, preprocessing, scores against chance and a
        warning when they are unknown or near chance, Grad-CAM, limits."""
        return service.info

    @app.get("/api/samples", response_model=list[Sample],
             summary="Bundled X-rays to try")
    async def sample_list() -> list[Sample]:
        """Bundled X-rays to try, of the model's own classes only (none when the bundled
        sample has none of them): the class the data set gives each, and its URL."""
        return samples.listing()

    @app.get("/api/samples/{class_name}/{file_name}", response_class=FileResponse,
             summary="One bundled X-ray, as PNG",
             responses={200: {"content": {"image/png": {}}},
                        404: {"model": ApiError, "description": "Not a listed sample."}})
    async def sample_file(class_name: str, file_name: str) -> FileResponse:
        """One sample X-ray, as PNG; only the names `GET /api/samples` lists are served."""
        path = samples.find(class_name, file_name)
        if path is None:
            raise HTTPException(404, "no such sample; GET /api/samples lists them")
        return FileResponse(path, media_type="image/png")

    # A plain `def`: FastAPI runs it in a worker thread, so the model call does not block
    # the event loop and requests run side by side (see the module docstring on threads).
    @app.post("/api/predict", response_model=Prediction, responses=ERRORS,
              summary="Classify one X-ray")
    def predict(
        file: Annotated[UploadFile, File(description="A chest X-ray: PNG, JPEG or DICOM.")],
        gradcam: Annotated[bool, Query(description="Add the Grad-CAM overlay "
                                                   "(checkpoints only).")] = True,
        preview: Annotated[bool, Query(description="Add the image as read (image_png).")]
        = True,
    ) -> Prediction:
        """Classify one X-ray: the predicted class, every class's probability, the image as
        the server read it, and the Grad-CAM overlay of the predicted class when the model
        is a checkpoint."""
        name = file.filename or "upload"
        data = file.file.read(max_bytes + 1)  # one byte more than allowed tells "too big"
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name}: {too_large(None, max_bytes)}")
        if not data:
            raise HTTPException(400, f"{name}: the file is empty; choose an X-ray image")
        with service.slots:  # at most max_concurrent decode and predict at once
            try:
                image = read_upload(data, name, max_pixels)
            except CxrlearnError as e:
                raise HTTPException(422, str(e)) from None
            probs_k, overlay_png = service.predict(image, gradcam)  # (K,), PNG or None
            probs = probs_k.tolist()
            best = int(np.argmax(probs))
            classes = list(service.model.class_names)
            answer = Prediction(predicted=classes[best],
                                probabilities=dict(zip(classes, probs, strict=True)),
                                classes=classes, model=service.ref,
                                image_shape=list(image.shape), warning=service.info.warning)
            if preview:
                answer.image_png = base64.b64encode(preview_png(image)).decode()
            if overlay_png is not None:  # the map of `best`: the class with the highest p
                answer.gradcam_png = base64.b64encode(overlay_png).decode()
            elif gradcam:
                answer.gradcam_note = service.info.gradcam_note
        return answer

    # Plain `def`s: the first request writes the web app (an ONNX export, up to a minute),
    # in a worker thread, while the event loop keeps answering.
    @app.get(DEVICE_PREFIX + "{key}/", include_in_schema=False)
    def device_page(key: str) -> FileResponse:
        return device_file(key, "index.html")

    @app.get(DEVICE_PREFIX + "{key}/{name}", include_in_schema=False)
    def device_file(key: str, name: str) -> FileResponse:
        if device.url is None:
            raise HTTPException(404, device.note)
        if key != device.key:  # a page of an earlier model, still open or bookmarked
            raise HTTPException(404, "this on-device page is of another model; open the "
                                     "app's page (/) again")
        try:
            path = device.file(name)
        except CxrlearnError as e:
            LOG.error("writing the on-device page failed: %s", e)
            raise HTTPException(500, f"the model could not be made into the on-device "
                                     f"page: {e.message}") from None
        if path is None:
            raise HTTPException(404, "no such file in the on-device page")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "text/plain"))

    return app


def _docs_page(schema: dict[str, Any]) -> str:
    """/docs: the endpoints, from the OpenAPI schema, and where the schema is. Local and
    static: no script, nothing from another host."""
    rows = "".join(
        f"<tr><td><code>{html.escape(method.upper())} {html.escape(path)}</code></td>"
        f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
        for path, ops in schema["paths"].items() for method, op in ops.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxrlearn API</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css"></head>
<body><h1>cxrlearn API <span class="subtitle">version {html.escape(schema["info"]["version"])}
</span></h1>
<p>The full description, in OpenAPI 3 (JSON): <a href="/openapi.json">/openapi.json</a>.
Open it in any OpenAPI viewer, or generate a client from it.</p>
<table><tr><th>endpoint</th><th>what it does</th></tr>{rows}</table>
<p class="muted">{html.escape(DISCLAIMER)} <a href="/">Back to the app</a>.</p>
</body></html>"""


def api_probabilities(client: Any, png: bytes) -> dict[str, float]:
    """The client's side of the contract: POST one image to `/api/predict` and read back the
    class probabilities. What a mobile app, a script or a test does.

    Args:
        client: An HTTP client with `.post`, e.g. FastAPI's `TestClient(create_app(...))` or
            an `httpx.Client(base_url="http://127.0.0.1:8000")`.
        png: The image file's bytes (PNG, JPEG or DICOM).

    Returns:
        `{class name: probability}`, in the model's class order.

    Raises:
        httpx.HTTPStatusError: The app refused the image (its JSON says why).
    """
    response = client.post("/api/predict", files={"file": ("xray.png", png)},
                           params={"gradcam": "false", "preview": "false"})
    response.raise_for_status()  # a 4xx answer carries {"error": ...}, not probabilities
    return response.json()["probabilities"]
