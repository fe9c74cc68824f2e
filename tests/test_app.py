"""The app's HTTP API (`cxrlearn.app`) through FastAPI's test client, and `cxrlearn app`.

The oracle for every probability is the eager Python pipeline, `eager_probs`, on the image
as `load_image` or `load_dicom` reads the same file; for every overlay it is `GradCAM` and
`overlay` called directly on the network. Nothing here opens a port: the test client calls
the app in-process (tests/test_app_browser.py runs a real server and a real browser).

The app answers only to the names of this machine (its host check), and FastAPI's test
client says "Host: testserver" unless told otherwise: every client here is `_client(app)`,
which speaks to http://127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import re
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import cxrlearn
import cxrlearn.cli as cli
from cxrlearn.app import APP_MAX_PIXELS, DISCLAIMER, create_app
from cxrlearn.app.card import quality_warning
from cxrlearn.app.guard import SECURITY_HEADERS
from cxrlearn.app.samples import SampleShelf
from cxrlearn.checkpoint import save_checkpoint
from cxrlearn.data import load_image, sample_root
from cxrlearn.data.dicom import load_dicom
from cxrlearn.errors import CxrlearnError
from cxrlearn.export import (
    eager_probs,
    read_metadata,
    weights_sha256,
)
from cxrlearn.gradcam import GradCAM
from cxrlearn.heatmap import overlay
from cxrlearn.resnet import resnet18
from cxrlearn.trained import open_model
from cxrlearn.transforms import Preprocess, prepare

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PREPROCESS = {"image_size": 64, "low": 2.0, "high": 98.0, "channels": 3,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PRE = Preprocess.from_dict(PREPROCESS)
APP_STATIC = Path(cxrlearn.__file__).resolve().parent / "app" / "static"


pytestmark = pytest.mark.usefixtures("one_thread")


def _client(app) -> TestClient:
    """A test client that names an allowed host (the default "testserver" is refused)."""
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(7)
    return resnet18(num_classes=4).eval()


def _save(path: Path, model: torch.nn.Module, **extra) -> Path:
    return save_checkpoint(path, {
        "model": model.state_dict(), "class_names": CLASSES, "epoch": 1,
        "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                 "preprocess": PREPROCESS}, **extra})


@pytest.fixture(scope="module")
def xrays() -> list[Path]:
    """One bundled X-ray per class."""
    return [sorted((sample_root() / c).glob("*.png"))[0] for c in CLASSES]


@pytest.fixture(scope="module")
def files(model, xrays, tmp_path_factory) -> dict[str, Path]:
    """best.pt (checkpoint) and model.pt (its TorchScript export)."""
    folder = tmp_path_factory.mktemp("app")
    best = _save(folder / "best.pt", model)
    # Two check images keep the export's self-check short; the tests below check the rest.
    open_model(best).export(folder / "model.pt",
                            check_images=[load_image(p) for p in xrays[:2]])
    return {"checkpoint": best, "export": folder / "model.pt"}


@pytest.fixture(scope="module")
def clients(files):
    """One test client per kind of model file, opened once for the module."""
    with _client(create_app(files["checkpoint"])) as ckpt, \
            _client(create_app(files["export"])) as export:
        yield {"checkpoint": ckpt, "export": export}


def _post(client: TestClient, name: str, data: bytes, query: str = ""):
    return client.post(f"/api/predict{query}", files={"file": (name, data)})


def _oracle(model, image: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
    return eager_probs(model, [image], PRE, temperature)[0]


def _check_answer(answer: dict, want: torch.Tensor, atol: float) -> None:
    assert answer["classes"] == CLASSES
    assert list(answer["probabilities"]) == CLASSES
    got = torch.tensor([answer["probabilities"][c] for c in CLASSES])
    torch.testing.assert_close(got, want.float(), atol=atol, rtol=0)
    assert answer["predicted"] == CLASSES[int(want.argmax())]
    assert answer["disclaimer"] == DISCLAIMER


def _png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# Exported graphs are checked against the Python pipeline to 1e-5 when written; the
# checkpoint runs that very pipeline, so it must agree to float rounding.
ATOL = {"checkpoint": 1e-7, "export": 1e-5}
KIND = {"checkpoint": "checkpoint", "export": "torchscript"}  # what the API calls each file


# --- good images: PNG, JPEG, DICOM ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_png_matches_eager_pipeline(clients, files, model, xrays, kind):
    for path in xrays:
        response = _post(clients[kind], path.name, path.read_bytes())
        assert response.status_code == 200, response.text
        answer = response.json()
        _check_answer(answer, _oracle(model, load_image(path)), ATOL[kind])
        assert answer["image_shape"] == [128, 128]
        assert answer["model"] == {"file": files[kind].name, "kind": KIND[kind],
                                   "sha256": weights_sha256(model.state_dict())}


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_jpeg_matches_eager_pipeline(clients, model, xrays, tmp_path, kind):
    jpeg = tmp_path / "xray.jpg"
    Image.open(xrays[2]).convert("L").save(jpeg, quality=85)
    answer = _post(clients[kind], "xray.jpg", jpeg.read_bytes()).json()
    _check_answer(answer, _oracle(model, load_image(jpeg)), ATOL[kind])


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_dicom_matches_eager_pipeline(clients, model, xrays, tmp_path, kind, write_dicom):
    grey = np.asarray(Image.open(xrays[0]).convert("L"), dtype=np.uint16)
    # MONOCHROME1 with a rescale: the reader must invert and rescale, as load_dicom does.
    dcm = write_dicom(tmp_path / "scan.dcm", (255 - grey) * 16, "MONOCHROME1", 0.5, -100.0)
    want = _oracle(model, load_dicom(dcm))
    _check_answer(_post(clients[kind], "scan.dcm", dcm.read_bytes()).json(), want, ATOL[kind])
    # Found by its "DICM" marker too, whatever name the browser sends.
    _check_answer(_post(clients[kind], "scan", dcm.read_bytes()).json(), want, ATOL[kind])


def test_temperature_of_the_checkpoint_is_applied(model, xrays, tmp_path):
    best = _save(tmp_path / "calibrated.pt", model, temperature=2.5)
    with _client(create_app(best)) as client:
        answer = _post(client, xrays[0].name, xrays[0].read_bytes()).json()
        info = client.get("/api/model").json()
    image = load_image(xrays[0])
    _check_answer(answer, _oracle(model, image, 2.5), 1e-7)
    assert not torch.allclose(_oracle(model, image, 2.5), _oracle(model, image, 1.0))
    assert info["temperature"] == 2.5


def test_a_run_folder_means_its_best_checkpoint(files):
    app = create_app(files["checkpoint"].parent)
    assert app.state.service.info.file == "best.pt"


# --- Grad-CAM ------------------------------------------------------------------------------

def test_gradcam_overlay_equals_the_library(model, xrays, tmp_path):
    # An untrained network says "COVID" (class 0) to everything; a bias on class 2 makes it
    # say "Normal", so that an overlay of class 0 (or of any fixed class) cannot pass.
    biased = copy.deepcopy(model)
    with torch.no_grad():
        biased.fc.bias[2] += 5.0
    with _client(create_app(_save(tmp_path / "biased.pt", biased))) as client:
        for path in xrays[:2]:
            answer = _post(client, path.name, path.read_bytes()).json()
            assert answer["predicted"] == "Normal"
            image = load_image(path)
            with GradCAM(biased) as cam:
                heat = cam(PRE.network_input(image)[None], 2).cams[0]
            seen = prepare(image, PRE.image_size, PRE.low, PRE.high)[0].numpy()
            want = overlay(seen, heat)  # (S, S, 3) uint8
            got = _png_array(answer["gradcam_png"])
            assert got.shape == (64, 64, 3)
            np.testing.assert_array_equal(got, want)
            assert answer["gradcam_note"] is None


def test_gradcam_reuses_the_prepared_upload(clients, model, xrays, monkeypatch):
    """With Grad-CAM the upload is stretched once, and its probabilities are those of the
    plain prediction to the last digit."""
    stretched = []
    prepare_once = Preprocess.prepare
    monkeypatch.setattr(Preprocess, "prepare",
                        lambda self, image: stretched.append(1) or prepare_once(self, image))
    data = xrays[1].read_bytes()
    with_map = _post(clients["checkpoint"], "x.png", data).json()
    assert with_map["gradcam_png"] is not None and len(stretched) == 1
    without = _post(clients["checkpoint"], "x.png", data, "?gradcam=false").json()
    assert with_map["probabilities"] == without["probabilities"]
    _check_answer(with_map, _oracle(model, load_image(xrays[1])), ATOL["checkpoint"])


def test_gradcam_can_be_switched_off(clients, xrays):
    answer = _post(clients["checkpoint"], "x.png", xrays[0].read_bytes(), "?gradcam=false").json()
    assert answer["gradcam_png"] is None and answer["gradcam_note"] is None


def test_export_gives_no_gradcam_and_says_why(clients, xrays):
    answer = _post(clients["export"], "x.png", xrays[0].read_bytes()).json()
    assert answer["gradcam_png"] is None
    assert "Grad-CAM" in answer["gradcam_note"] and "checkpoint" in answer["gradcam_note"]
    info = clients["export"].get("/api/model").json()
    assert info["gradcam"] is False and info["gradcam_note"] == answer["gradcam_note"]


# --- health, model, page, schema -----------------------------------------------------------

def test_health(clients):
    assert clients["export"].get("/api/health").json() == {"status": "ok",
                                                           "version": cxrlearn.__version__}


def test_model_description(clients, files, model):
    sha = weights_sha256(model.state_dict())
    assert read_metadata(files["export"]).weights_sha256 == sha
    for kind, client in clients.items():
        info = client.get("/api/model").json()
        assert info["classes"] == CLASSES
        assert info["preprocess"] == PREPROCESS
        assert info["sha256"] == sha  # a checkpoint and its export: the same weights
        assert info["kind"] == KIND[kind]
        assert info["gradcam"] is (kind == "checkpoint")
        assert info["temperature"] == 1.0
        assert info["limits"] == {"max_bytes": 10 * 2**20, "max_pixels": 4096 * 4096,
                                  "max_concurrent": 2}


def test_page_is_served_with_its_own_files_only(clients):
    page = clients["checkpoint"].get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "not a diagnostic device" in page.text
    assert 'src="/static/app.js"' in page.text and 'href="/static/app.css"' in page.text
    for name in ("index.html", "app.js", "app.css"):
        text = (APP_STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text, name  # no CDN: works offline
    script = clients["checkpoint"].get("/static/app.js")
    assert script.status_code == 200 and script.text == (APP_STATIC / "app.js").read_text()


def test_page_has_one_way_to_choose_a_file():
    page = (APP_STATIC / "index.html").read_text()
    assert page.count('type="file"') == 1  # the browser's own file button
    assert "choose a file" not in page.lower()  # no second, look-alike link


def test_page_runs_under_its_content_security_policy():
    """The CSP allows no inline script or style: the page must have none."""
    page = (APP_STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert re.findall(r"\son\w+=|\sstyle=|<style", page) == []
    assert "'unsafe-inline'" not in SECURITY_HEADERS["Content-Security-Policy"]


def test_docs_is_a_local_page_that_points_to_the_schema(clients):
    """FastAPI's /docs loads Swagger UI from a CDN (blank offline); ours loads nothing."""
    client = clients["checkpoint"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert 'href="/openapi.json"' in docs.text
    references = re.findall(r'(?:src|href)="([^"]*)"', docs.text)
    assert references and all(r.startswith("data:") or (r.startswith("/")
                                                         and not r.startswith("//"))
                              for r in references), references
    assert "http://" not in docs.text and "https://" not in docs.text
    for path in ("/api/predict", "/api/model", "/api/samples", "/api/health"):
        assert path in docs.text
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_openapi_schema_documents_the_api(clients):
    schema = clients["checkpoint"].get("/openapi.json").json()
    assert {"/api/predict", "/api/health", "/api/model"} <= set(schema["paths"])
    assert "/" not in schema["paths"]
    predict = schema["paths"]["/api/predict"]["post"]
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Prediction"}
    for status in ("400", "413", "422"):
        body = predict["responses"][status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ApiError"}
    fields = schema["components"]["schemas"]["Prediction"]["properties"]
    assert {"predicted", "probabilities", "classes", "model", "gradcam_png", "image_png",
            "warning"} <= set(fields)
    info = schema["components"]["schemas"]["ModelInfo"]["properties"]
    assert {"scores", "chance", "warning", "epoch", "limits"} <= set(info)
    assert {"/api/samples", "/api/samples/{class_name}/{file_name}"} <= set(schema["paths"])
    assert "sha256" in schema["components"]["schemas"]["ModelRef"]["properties"]


# --- bad input: a 4xx with a message, and the server keeps serving -------------------------

def _bad_inputs() -> list[tuple[str, bytes, int, str]]:
    png = sorted((sample_root() / "Normal").glob("*.png"))[0].read_bytes()
    return [
        ("notes.txt", b"Not an X-ray, just some text.\n", 422, "not a PNG, JPEG or DICOM image"),
        ("cut.png", png[: len(png) // 2], 422, "corrupt or truncated"),
        ("empty.png", b"", 400, "empty"),
        ("fake.dcm", b"DICM? no, not really", 422, "DICOM"),
    ]


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
@pytest.mark.parametrize(("name", "data", "status", "words"), _bad_inputs(),
                         ids=["text", "corrupt", "empty", "fake-dicom"])
def test_bad_upload_is_a_4xx_with_a_message(clients, xrays, kind, name, data, status, words):
    response = _post(clients[kind], name, data)
    assert response.status_code == status
    assert response.json() == {"error": response.json()["error"]}  # nothing else
    message = response.json()["error"]
    assert message.startswith(f"{name}: ") and words in message
    assert "/tmp" not in message and "upload" not in message.split(":")[0]  # names the user's file
    assert _post(clients[kind], "ok.png", xrays[0].read_bytes()).status_code == 200


def test_size_limit_in_bytes(files, xrays):
    limit = 3000
    with _client(create_app(files["checkpoint"], max_bytes=limit)) as client:
        # Exactly the limit is allowed through to the reader (which finds no image in it).
        at_limit = _post(client, "a.png", b"\x00" * limit)
        assert at_limit.status_code == 422
        # One byte more: refused by the endpoint, which names the file.
        over = _post(client, "b.png", b"\x00" * (limit + 1))
        assert over.status_code == 413
        assert over.json()["error"].startswith("b.png: the upload is too large; the limit is "
                                               "2.9 KiB")
        # Far more: refused from the declared length, before the body is parsed.
        huge = _post(client, "c.png", b"\x00" * (limit + 100_000))
        assert huge.status_code == 413
        assert re.match(r"the upload is too large \(10\d\.\d KiB\); the limit is 2\.9 KiB",
                        huge.json()["error"])
        assert _post(client, "small.png", _small_png(xrays[0], 32)).status_code == 200


def _small_png(path: Path, size: int) -> bytes:
    out = io.BytesIO()
    Image.open(path).resize((size, size)).save(out, format="PNG")
    return out.getvalue()


def test_pixel_limit(files, xrays):
    with _client(create_app(files["export"], max_pixels=100 * 100)) as client:
        big = _post(client, "big.png", xrays[0].read_bytes())  # 128 x 128 = 16,384 pixels
        assert big.status_code == 422
        assert big.json()["error"].startswith("big.png: image is 128x128 = 16,384 pixels")
        assert _post(client, "ok.png", _small_png(xrays[0], 100)).status_code == 200


def test_missing_file_field(clients):
    response = clients["checkpoint"].post("/api/predict", data={"image": "x"})
    assert response.status_code == 422
    assert "`file`" in response.json()["error"]


def test_unknown_route_has_the_same_error_shape(clients):
    response = clients["checkpoint"].get("/api/nothing")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


def test_bad_model_file_fails_before_serving(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(CxrlearnError, match="notes.txt"):
        create_app(text)


# --- threads -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_twenty_concurrent_requests_each_get_the_single_request_answer(clients, xrays, kind):
    client = clients[kind]
    single = [_post(client, p.name, p.read_bytes()).json() for p in xrays]

    def ask(i: int) -> dict:
        path = xrays[i % len(xrays)]
        return _post(client, path.name, path.read_bytes()).json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, range(20)))
    for i, answer in enumerate(answers):
        assert answer == single[i % len(xrays)]  # probabilities and overlay, bit for bit


def test_requests_really_run_at_the_same_time(files, xrays, monkeypatch):
    """Four requests must all be inside the model call at once to pass the barrier; a
    server that answered one request at a time would break it (BrokenBarrierError)."""
    app = create_app(files["checkpoint"], max_concurrent=4)
    service = app.state.service
    barrier = threading.Barrier(4, timeout=60)
    probs = service.model.probs

    def waiting_probs(images: list[np.ndarray]) -> torch.Tensor:
        barrier.wait()
        return probs(images)

    monkeypatch.setattr(service.model, "probs", waiting_probs)
    with _client(app) as client, ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda p: _post(client, p.name, p.read_bytes()), xrays))
    assert [a.status_code for a in answers] == [200] * 4


# --- the command: cxrlearn app -------------------------------------------------------------

@pytest.fixture
def command(monkeypatch):
    """Register the sub-command (a no-op once cxrlearn.cli lists it itself)."""
    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys((*cli.COMMANDS, "app"))))


@pytest.fixture
def served(monkeypatch) -> list[tuple]:
    """What `cxrlearn app` would serve, instead of serving it: (app, host, port) per run."""
    import uvicorn

    import cxrlearn.app.connections as connections

    calls: list[tuple] = []
    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(connections, "bind_port", lambda host, port: bound.append((host, port))
                        or ("socket", host, port))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: calls.append(
        (self.config.app, *sockets[0][1:])))
    return calls


def test_command_without_model_explains_and_trains_nothing(command, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("no server"))
    assert cli.main(["app"]) == 2
    out = capsys.readouterr().out
    assert "--model" in out and "cxrlearn demo" in out and "cxrlearn export" in out


def test_command_without_the_extra_says_what_to_install(command, files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    assert cli.main(["app", "--model", str(files["checkpoint"])]) == 1
    err = capsys.readouterr().err
    assert "fastapi" in err and "pip install 'cxrlearn[app]'" in err
    assert "Traceback" not in err


def test_command_serves_on_localhost_by_default(command, files, capsys, served):
    calls = served
    assert cli.main(["app", "--model", str(files["export"])]) == 0
    assert cli.main(["app", "--model", str(files["checkpoint"]), "--host", "0.0.0.0",
                     "--port", "8123"]) == 0
    (app1, *kw1), (app2, *kw2) = calls
    assert tuple(kw1) == ("127.0.0.1", 8000)
    assert tuple(kw2) == ("0.0.0.0", 8123)
    assert app1.state.service.info.kind == "torchscript"
    assert app2.state.service.info.kind == "checkpoint"
    out = capsys.readouterr().out
    assert "http://localhost:8000/" in out and "Grad-CAM" in out  # the export's note
    assert "other machines" in out  # the warning for 0.0.0.0
    assert "carries no scores" in out  # the model's warning, before the server starts


def test_command_with_a_missing_model_is_one_red_line(command, tmp_path, capsys):
    assert cli.main(["app", "--model", str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err
    assert "nope.pt" in err and "Traceback" not in err


def test_command_port_out_of_range_is_one_argparse_line(command, files, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["app", "--model", str(files["export"]), "--port", "99999"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(
        "argument --port: must be a port between 1 and 65535, got 99999")
    assert "Traceback" not in err


def test_command_passes_allowed_hosts_and_pixel_limit(command, files, capsys, served):
    assert cli.main(["app", "--model", str(files["export"]), "--host", "0.0.0.0",
                     "--allowed-host", "xray.lan", "--allowed-host", "192.168.1.20",
                     "--max-pixels", "1000"]) == 0
    assert cli.main(["app", "--model", str(files["export"]), "--host", "0.0.0.0"]) == 0
    apps = [app for app, *_ in served]
    assert apps[0].state.service.limits.max_pixels == 1000
    for host in ("xray.lan:8000", "192.168.1.20:8000", "localhost:8000"):
        assert TestClient(apps[0], base_url=f"http://{host}").get("/api/health").status_code \
            == 200
    assert TestClient(apps[0], base_url="http://evil.example").get("/api/health") \
        .status_code == 400
    assert TestClient(apps[1], base_url="http://xray.lan").get("/api/health").status_code == 400
    out = capsys.readouterr().out
    assert out.count("--allowed-host") == 1  # the note, for the second run only


# --- the model card: scores, chance, and a warning when they are missing or poor ----------

def test_model_card_shows_validation_and_test_scores(model, xrays, tmp_path):
    scores = {"val_macro_f1": 0.82, "val_accuracy": 0.84, "val_loss": 0.5}
    tested = {"test_macro_f1": 0.79, "test_accuracy": 0.81, "test_images": 60}
    best = _save(tmp_path / "good.pt", model, epoch=3, scores=scores, test_scores=tested)
    with _client(create_app(best)) as client:
        info = client.get("/api/model").json()
        answer = _post(client, "x.png", xrays[0].read_bytes()).json()
    assert info["scores"] == {**scores, **tested}
    assert info["epoch"] == 3 and info["chance"] == 0.25
    assert info["warning"] is None and answer["warning"] is None


@pytest.mark.parametrize(("scores", "part"), [
    ({"val_macro_f1": 0.30, "val_accuracy": 0.33}, "validation"),
    ({"val_macro_f1": 0.80, "test_macro_f1": 0.31}, "test"),  # the lower of the two counts
])
def test_near_chance_model_carries_a_warning(model, xrays, tmp_path, scores, part):
    best = _save(tmp_path / "poor.pt", model, scores={k: v for k, v in scores.items()
                                                      if k.startswith("val_")},
                 test_scores={k: v for k, v in scores.items() if k.startswith("test_")})
    with _client(create_app(best)) as client:
        warning = client.get("/api/model").json()["warning"]
        answer = _post(client, "x.png", xrays[0].read_bytes()).json()
    assert warning.startswith("near chance: poor.pt scored a macro-F1 of 0.3")
    assert f"on the {part} images" in warning and "0.25" in warning and "0.40" in warning
    assert answer["warning"] == warning  # every answer says it, for clients that never ask


def test_a_file_without_scores_says_its_quality_is_unknown(clients, tmp_path, model):
    for kind, client in clients.items():
        info = client.get("/api/model").json()
        assert info["scores"] == {} and info["chance"] == 0.25
        assert "carries no scores; its quality is unknown" in info["warning"]
        # ... and what to do about it.
        todo = "with its checkpoint (best.pt)" if kind == "export" else "cxrlearn train"
        assert todo in info["warning"]
    # A score that is not a finite number is left out (JSON has no NaN), not passed on.
    best = _save(tmp_path / "nan.pt", model, scores={"val_macro_f1": 0.9,
                                                     "val_loss": float("nan")})
    info = _client(create_app(best)).get("/api/model").json()
    assert info["scores"] == {"val_macro_f1": 0.9} and info["warning"] is None


def test_quality_warning_rule():
    """Warn below chance (1/K) + 0.15, on the lower of the validation and test macro-F1."""
    assert quality_warning({"val_macro_f1": 0.41}, 4, "m.pt") is None
    assert quality_warning({"val_macro_f1": 0.39}, 4, "m.pt").startswith("near chance")
    assert quality_warning({"val_macro_f1": 0.49}, 3, "m.pt") is None  # 1/3 + 0.15 = 0.48
    assert quality_warning({"val_macro_f1": 0.47}, 3, "m.pt") is not None
    assert quality_warning({"val_macro_f1": 0.9, "test_macro_f1": 0.3}, 4, "m.pt") is not None
    assert "quality is unknown" in quality_warning({"val_accuracy": 0.9}, 4, "m.pt")


# --- sample X-rays: a fixed list, nothing else ---------------------------------------------

def test_samples_are_listed_and_served(clients):
    client = clients["checkpoint"]
    listing = client.get("/api/samples").json()
    assert [s["class_name"] for s in listing] == [c for c in CLASSES for _ in range(3)]
    for c in CLASSES:
        want = [p.name for p in sorted((sample_root() / c).glob("*.png"))[:3]]
        assert [s["file"] for s in listing if s["class_name"] == c] == want
    for sample in listing:
        response = client.get(sample["url"])
        assert response.status_code == 200, sample["url"]
        assert response.headers["content-type"] == "image/png"
        assert response.content == (sample_root() / sample["class_name"]
                                    / sample["file"]).read_bytes()
    assert "%20" in listing[-1]["url"]  # "Viral Pneumonia", quoted


def _unlisted_sample() -> str:
    return sorted((sample_root() / "COVID").glob("*.png"))[3].name  # real, but not offered


@pytest.mark.parametrize("url", [
    "/api/samples/COVID/%2E%2E",  # a literal ".." is resolved by the client: see below
    "/api/samples/%2E%2E/%2E%2E",
    "/api/samples/COVID/..%2F..%2F__init__.py",
    "/api/samples/..%2F..%2Fapp/server.py",
    "/api/samples/COVID/%2Fetc%2Fpasswd",
    "/api/samples/%2Fetc/passwd",
    "/api/samples/COVID/..%5C..%5C__init__.py",
    f"/api/samples/COVID/{_unlisted_sample()}",
])
def test_only_listed_samples_are_served(clients, url):
    response = clients["checkpoint"].get(url)
    assert response.status_code == 404 and set(response.json()) == {"error"}


@pytest.mark.parametrize(("class_name", "file_name"), [
    ("..", ".."), ("COVID", "../Normal/" + "x.png"), ("/etc", "passwd"),
    ("COVID", "/etc/passwd"), ("../../cxrlearn", "__init__.py")])
def test_sample_names_never_become_paths(small_app, class_name, file_name):
    """The names reach the app decoded (as below); none of them is in the list."""
    assert SampleShelf().find(class_name, file_name) is None
    status, _, _ = asyncio.run(_asgi(small_app, "GET",
                                     f"/api/samples/{class_name}/{file_name}"))
    assert status == 404


@pytest.fixture(scope="module")
def small_app(files):
    """An app with a 100 KB upload limit, for the raw ASGI calls."""
    return create_app(files["export"], max_bytes=100_000)


async def _asgi(app, method: str, path: str, headers: list[tuple[bytes, bytes]] = (),
                chunks=None) -> tuple[int, dict, bytes]:
    """Call the ASGI app directly, as a server would: `path` arrives as it is (already
    decoded), and the body is pulled chunk by chunk from `chunks`. Returns the status, the
    response headers and the body."""
    chunks = iter(chunks or [])
    messages = []

    async def receive():
        chunk = next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), *headers]}
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


# --- what the server reads back: the preview, and only PNG, JPEG, DICOM --------------------

@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_dicom_upload_comes_back_as_a_png(clients, xrays, tmp_path, kind, write_dicom):
    grey = np.asarray(Image.open(xrays[0]).convert("L"), dtype=np.uint16)
    dcm = write_dicom(tmp_path / "scan.dcm", (255 - grey) * 16, "MONOCHROME1", 0.5, -100.0)
    answer = _post(clients[kind], "scan.dcm", dcm.read_bytes()).json()
    want = np.round(load_dicom(dcm) * 255).astype(np.uint8)  # as read, 8 bits
    np.testing.assert_array_equal(_png_array(answer["image_png"]), want)


def test_preview_is_at_most_512_pixels_and_can_be_skipped(clients, xrays):
    wide = io.BytesIO()
    Image.open(xrays[1]).convert("L").resize((1024, 640)).save(wide, format="PNG")
    answer = _post(clients["export"], "wide.png", wide.getvalue()).json()
    assert answer["image_shape"] == [640, 1024]
    assert _png_array(answer["image_png"]).shape == (320, 512)
    skipped = _post(clients["export"], "wide.png", wide.getvalue(), "?preview=false").json()
    assert skipped["image_png"] is None
    assert skipped["probabilities"] == answer["probabilities"]


@pytest.mark.parametrize("image_format", ["BMP", "GIF", "TIFF", "WEBP"])
def test_other_image_formats_are_refused_before_decoding(clients, image_format):
    """PIL reads these; the app decodes PNG, JPEG and DICOM only, whatever the name says."""
    data = io.BytesIO()
    Image.new("L", (32, 32), 128).save(data, format=image_format)
    for name in ("picture.img", "picture.png"):
        response = _post(clients["export"], name, data.getvalue())
        assert response.status_code == 422
        assert response.json()["error"] == f"{name}: not a PNG, JPEG or DICOM image"


# --- cost: pixels checked before decoding, and few decodes at a time -----------------------

def _png_of_size(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG: millions of pixels in a few kilobytes (zeros compress)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = zlib.compress(bytes(height * (1 + (width + 7) // 8)), 9)  # filter byte + bits
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
            + chunk(b"IEND", b""))


def test_image_with_too_many_pixels_is_refused_from_its_header(clients):
    """7900 x 7900: under the library's 64 Mpx, and it once cost the app 27 s and 2.7 GB."""
    bomb = _png_of_size(7900, 7900)
    assert len(bomb) < 20_000 and Image.open(io.BytesIO(bomb)).size == (7900, 7900)
    start = time.perf_counter()
    response = _post(clients["checkpoint"], "bomb.png", bomb)
    seconds = time.perf_counter() - start
    assert response.status_code == 422
    assert response.json()["error"] == (
        "bomb.png: image is 7900x7900 = 62,410,000 pixels, more than the limit of "
        f"{APP_MAX_PIXELS:,}; resize it first")
    assert seconds < 5  # decoding and preparing it takes over 10 s; reading a header, ms
    just_over = _post(clients["checkpoint"], "b.png", _png_of_size(4097, 4096))
    assert just_over.status_code == 422 and "16,777,216" in just_over.json()["error"]


def test_at_most_max_concurrent_uploads_are_decoded_at_once(files, xrays, monkeypatch):
    app = create_app(files["export"], max_concurrent=2)
    service = app.state.service
    lock, inside, most = threading.Lock(), [0], [0]
    barrier = threading.Barrier(2, timeout=60)  # two must be inside together ...
    probs = service.model.probs

    def counting_probs(images: list[np.ndarray]) -> torch.Tensor:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        barrier.wait()
        time.sleep(0.2)  # ... and stay a moment, so that a third one let in would be seen
        with lock:
            inside[0] -= 1
        return probs(images)

    monkeypatch.setattr(service.model, "probs", counting_probs)
    with _client(app) as client, ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda p: _post(client, p.name, p.read_bytes()), xrays[:3] * 2))
    assert [a.status_code for a in answers] == [200] * 6
    assert most[0] == 2


# --- hostile requests: bodies without a length, foreign hosts and origins, headers --------

def test_a_body_without_length_is_counted_and_cut_off(small_app):
    """A chunked upload declares no length: the app must stop reading at the limit, not
    store the whole body first. 1 GiB is offered; the app may pull a little over 100 KB."""
    offered = 2**30
    chunk = bytes(64 * 1024)
    pulled = [0]
    head = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")

    def body():
        yield head
        for _ in range(offered // len(chunk)):
            pulled[0] += len(chunk)
            yield chunk

    status, _, text = asyncio.run(_asgi(
        small_app, "POST", "/api/predict",
        [(b"content-type", b"multipart/form-data; boundary=B"),
         (b"transfer-encoding", b"chunked")], body()))
    assert status == 413
    assert b"the upload is too large; the limit is 97.7 KiB" in text
    assert pulled[0] <= 100_000 + 64 * 1024 + len(chunk)  # far less than 1 GiB


@pytest.mark.parametrize("path", ["/", "/api/model", "/api/nothing", "/static/app.js",
                                  "/docs"])
def test_every_answer_carries_the_security_headers(clients, path):
    response = clients["checkpoint"].get(path, headers={"Origin": "http://evil.example"})
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert not any(h.startswith("access-control-") for h in response.headers)  # no CORS


def test_refused_requests_carry_the_headers_too(clients):
    response = clients["checkpoint"].get("/api/model", headers={"Host": "evil.example"})
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "testserver",
                                  "127.0.0.1.evil.example", "localhost.evil.example:80"])
def test_a_foreign_host_is_refused(clients, xrays, host):
    """Against DNS rebinding: a page whose name points at 127.0.0.1 still sends its own
    name in the Host header."""
    client = clients["checkpoint"]
    for response in (client.get("/api/model", headers={"Host": host}),
                     client.post("/api/predict", headers={"Host": host},
                                 files={"file": ("x.png", xrays[0].read_bytes())})):
        assert response.status_code == 400
        assert "--allowed-host" in response.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:8123",
                                  "LocalHost", "[::1]:8000"])
def test_the_names_of_this_machine_are_answered(clients, host):
    assert clients["checkpoint"].get("/api/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_adds_names(files):
    app = create_app(files["export"], allowed_hosts=["xray.lan", "fd00::1"])
    for host in ("xray.lan:8000", "XRAY.lan", "[fd00::1]:8000", "localhost"):
        assert TestClient(app, base_url=f"http://{host}").get("/api/health").status_code == 200
    assert TestClient(app, base_url="http://evil.example").get("/").status_code == 400


@pytest.mark.parametrize(("origin", "status"), [
    ("http://evil.example", 403), ("null", 403), ("http://127.0.0.1:9999", 403),
    ("http://127.0.0.1", 200), (None, 200)])
def test_a_cross_origin_post_is_refused(clients, xrays, origin, status):
    headers = {} if origin is None else {"Origin": origin}
    response = clients["export"].post("/api/predict", headers=headers,
                                      files={"file": ("x.png", xrays[0].read_bytes())})
    assert response.status_code == status
    if status == 403:
        assert response.json() == {"error": "cross-origin request refused: only this app's "
                                            "own page may send to it"}
    assert "access-control-allow-origin" not in response.headers


# --- issue 26: what one request may cost, and what a model file may claim ------------------

def _deflated_dicom(rows: int, cols: int, pixel_bytes: int) -> bytes:
    """A deflated DICOM file (transfer syntax 1.2.840.10008.1.2.1.99) whose header declares
    rows x cols 16-bit pixels and whose PixelData element holds `pixel_bytes` zeros: with more
    bytes than declared, a decompression bomb (1 GiB of zeros deflate to about 1 MB)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(np.zeros((2, 2), np.uint16), "MONOCHROME2", 16)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData  # written below, by hand, so that its length can lie
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    whole = buffer.getvalue()
    body = 132 + 12 + int.from_bytes(whole[140:144], "little")  # after the file meta group
    header = zlib.decompress(whole[body:], -zlib.MAX_WBITS)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [whole[:body], deflate.compress(header + b"\xe0\x7f\x10\x00OW\x00\x00"
                                            + struct.pack("<I", pixel_bytes))]
    zeros = bytes(1 << 22)
    for start in range(0, pixel_bytes, len(zeros)):
        parts.append(deflate.compress(zeros[:min(len(zeros), pixel_bytes - start)]))
    return b"".join([*parts, deflate.flush()])


def test_a_deflated_dicom_bomb_is_refused_before_it_inflates(clients):
    """509 KB that inflate to about 1 GB: refused once it inflates past what its header
    declares (64 x 64 pixels), with a few MB of memory, and the app keeps answering."""
    import tracemalloc

    client = clients["export"]
    bomb = _deflated_dicom(64, 64, 1 << 30)
    assert len(bomb) < 1_100_000
    tracemalloc.start()
    try:
        response = _post(client, "bomb.dcm", bomb, "?preview=false")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("bomb.dcm: ") and "inflates to more than" in error
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced while refusing the bomb"
    assert client.get("/api/health").status_code == 200


def test_a_deflated_dicom_declaring_too_many_pixels_is_refused_from_its_header(clients):
    response = _post(clients["export"], "huge.dcm", _deflated_dicom(20_000, 20_000, 1 << 20))
    assert response.status_code == 422
    assert "20000x20000 = 400,000,000 pixels, more than the limit" in response.json()["error"]


def test_an_honest_deflated_dicom_is_read(clients, model):
    response = _post(clients["export"], "flat.dcm", _deflated_dicom(64, 48, 64 * 48 * 2))
    assert response.status_code == 200, response.text
    assert response.json()["image_shape"] == [64, 48]


def test_a_jpeg_2000_dicom_without_a_decoder_is_one_clean_line(clients, tmp_path, write_dicom):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((32, 32), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])  # a J2K start, then junk
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    response = _post(clients["export"], "j2k.dcm", path.read_bytes())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("j2k.dcm: cannot decode the pixel data")
    assert "\n" not in error and "object at 0x" not in error
    assert "JPEG 2000" in error


def test_no_writable_temporary_folder_is_a_json_500_with_a_logged_cause(
        files, xrays, monkeypatch, tmp_path, caplog):
    import tempfile

    client = _client(create_app(files["export"]))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # TMPDIR removed
    with caplog.at_level("ERROR", logger="cxrlearn.app"):
        response = _post(client, "a.png", xrays[0].read_bytes())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert "temporary folder" in response.json()["error"]
    assert any("TMPDIR" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(("fields", "problem"), [
    ({"scores": {"val_macro_f1": 10**400, "val_accuracy": 0.9}}, "scores must be"),
    ({"scores": [0.9, 0.8]}, "scores must be"),
    ({"scores": {}, "history": [1, 2, 3]}, "history must be a list of"),
    ({"epoch": 7, "history": [{"val_macro_f1": 0.9}]}, "past the history"),
    ({"test_scores": "excellent"}, "test_scores must be"),
], ids=["huge", "list", "int-history", "epoch-past-history", "text-tests"])
def test_a_model_card_field_of_the_wrong_kind_is_one_line_at_start(model, tmp_path, fields,
                                                                     problem):
    """Fields the card reads, written as the wrong kind of thing: the one metadata validator
    (`checkpoint.check_checkpoint`) refuses the file before the app starts, in one line that
    names the file and the field, never a traceback from inside the card."""
    path = _save(tmp_path / "best.pt", model, **{"epoch": 1, **fields})
    with pytest.raises(CxrlearnError, match=problem) as refused:
        create_app(path)
    assert "\n" not in str(refused.value) and "best.pt" in str(refused.value)


def test_a_score_out_of_range_is_left_out_of_the_card(model, tmp_path):
    """A number where a number belongs, but no F1 can be 7: the app starts and says what it
    left out."""
    path = _save(tmp_path / "best.pt", model, epoch=1, scores={"val_macro_f1": 7.0})
    info = _client(create_app(path)).get("/api/model").json()
    assert any("not between 0 and 1" in n for n in info["notes"]), info["notes"]
    assert "val_macro_f1" not in info["scores"]
    assert info["warning"] is not None  # so the quality is unknown, and the page says so


def test_read_card_keeps_what_training_writes():
    from cxrlearn.app.card import read_card

    card = read_card({"epoch": 2, "history": [{"val_macro_f1": 0.5}, {"val_macro_f1": 0.7,
                                                                       "train_loss": 0.3}],
                      "test_scores": {"test_macro_f1": 0.6, "test_images": 120}})
    assert card.epoch == 2 and card.notes == ()
    assert card.scores == {"val_macro_f1": 0.7, "test_macro_f1": 0.6, "test_images": 120}


def test_only_samples_of_the_models_own_classes_are_offered(tmp_path):
    """A student's two-class model: none of the bundled 4-class X-rays is offered."""
    torch.manual_seed(3)
    two = save_checkpoint(tmp_path / "best.pt", {
        "model": resnet18(num_classes=2).state_dict(), "epoch": 1,
        "class_names": ["Healthy", "Pneumothorax with spaces"],
        "meta": {"arch": {"name": "resnet18", "num_classes": 2, "in_channels": 3},
                 "preprocess": PREPROCESS}})
    client = _client(create_app(two))
    assert client.get("/api/samples").json() == []
    covid = sorted((sample_root() / "COVID").glob("*.png"))[0].name
    assert client.get(f"/api/samples/COVID/{covid}").status_code == 404
    shelf = SampleShelf(classes=["Normal", "Healthy"])
    assert {s.class_name for s in shelf.listing()} == {"Normal"}


def test_command_runs_the_network_where_device_says(command, files, capsys, served):
    """`--device`, as in every command that runs the network: the checkpoint's network moves
    there; an exported file runs on the CPU, and the command says so; an unknown device is
    one line before any server starts."""
    assert cli.main(["app", "--model", str(files["checkpoint"]), "--device", "cpu"]) == 0
    app = served[-1][0]
    assert next(app.state.service.model.network.parameters()).device.type == "cpu"
    assert cli.main(["app", "--model", str(files["checkpoint"]), "--device", "tpu"]) == 1
    err = capsys.readouterr().err
    assert "unknown device 'tpu'" in err and "Traceback" not in err
    assert len(served) == 1  # the refused one never served


def test_the_device_mode_is_explained_when_it_cannot_be_offered(clients, files, monkeypatch):
    """No link that would fail: for an exported file (no network to export) and without the
    pinned ONNX Runtime Web, /api/model says why in one sentence, and /device/ answers it.
    Only /device/ may compile WebAssembly (the on-device page, tests/test_app_browser.py)."""
    import cxrlearn.app.device as device_module
    from cxrlearn.export.web import runtime

    export = clients["export"].get("/api/model").json()
    assert export["device_url"] is None
    assert export["device_note"].startswith("Running on this device needs a checkpoint")

    def not_fetched() -> dict:
        raise CxrlearnError("ONNX Runtime Web 1.31.1 is not in the cache; fetch it once")

    monkeypatch.setattr(device_module, "ONNX_MODULES", ())  # as if the extra were there
    monkeypatch.setattr(runtime, "runtime_files", not_fetched)
    with _client(create_app(files["checkpoint"])) as client:
        info = client.get("/api/model").json()
        response = client.get("/device/0123456789abcdef/index.html")
    assert info["device_url"] is None
    assert info["device_note"] == ("Running on this device needs the browser's runtime: "
                                   "ONNX Runtime Web 1.31.1 is not in the cache; fetch it once")
    assert response.status_code == 404 and response.json()["error"] == info["device_note"]
    csp = response.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "frame-ancestors 'none'" in csp
    assert "wasm" not in clients["checkpoint"].get("/").headers["content-security-policy"]
