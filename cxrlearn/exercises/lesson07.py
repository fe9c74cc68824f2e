"""Lesson 07 (the app): the Host header's name, the near-chance rule, the JSON API.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from cxrlearn.exercises.core import Exercise, Mismatch, compare_numbers

__all__ = ["EXERCISES"]


def _compare_str(got: object, want: str) -> Mismatch | None:
    if not isinstance(got, str):
        return Mismatch("type", f"returned {type(got).__name__}, expected a str")
    if got != want:
        return Mismatch("value", f"yours {got!r}, expected {want!r}")
    return None


def _host(parts: tuple[str, str, str]) -> str:
    name, port, space = parts
    return f"{space}{name}{port}{space}"


HOST_NAME = Exercise(
    id="07.host_name",
    signature="host_name(host) -> str",
    summary="The name part of an HTTP Host header, lower case and without the port: "
            "\"LocalHost:8000\" -> \"localhost\", \"[::1]:8000\" -> \"[::1]\"; a bare IPv6 "
            "address gets brackets: \"::1\" -> \"[::1]\".",
    reference_path="cxrlearn.app.guard:host_name",
    cases=st.one_of(
        st.tuples(st.sampled_from(["localhost", "LocalHost", "127.0.0.1", "Example.org",
                                   "[::1]", "[FE80::1]"]),
                  st.sampled_from(["", ":8000", ":1"]), st.sampled_from(["", " "])),
        st.tuples(st.sampled_from(["::1", "fe80::1"]), st.just(""), st.sampled_from(["", " "])),
    ).map(lambda parts: (_host(parts),)),
    edge_cases=[
        ("a port", ("localhost:8000",)),
        ("IPv6 with a port", ("[::1]:8000",)),
        ("a bare IPv6 address", ("::1",)),
        ("upper case", ("LocalHost",)),
    ],
    compare=lambda got, want, case: _compare_str(got, want),
    hint_text="Strip and lower-case first. A name in brackets ends at the closing ']' "
              "(keep the brackets). More than one ':' without brackets is a bare IPv6 "
              "address: put it in brackets. Otherwise the port is what follows the one ':'.",
)


def _compare_bool(got: object, want: bool) -> Mismatch | None:
    if not isinstance(got, (bool, np.bool_)):
        return Mismatch("type", f"returned {type(got).__name__}, expected a bool")
    if bool(got) != want:
        return Mismatch("value", f"yours {bool(got)}, expected {want}")
    return None


IS_NEAR_CHANCE = Exercise(
    id="07.is_near_chance",
    signature="is_near_chance(macro_f1, num_classes, margin=0.15) -> bool",
    summary="Whether the app should warn that a model is close to guessing: its macro-F1 "
            "is below chance (1 / num_classes) plus margin.",
    reference_path="cxrlearn.app.card:is_near_chance",
    cases=st.tuples(st.integers(0, 100).map(lambda v: v / 100), st.integers(2, 10),
                    st.sampled_from([0.15, 0.05, 0.3])),
    edge_cases=[
        ("well above", (0.9, 4)),
        ("exactly at the line", (0.4, 4)),
        ("below chance plus the margin", (0.3, 4)),
        ("two classes", (0.6, 2, 0.15)),
    ],
    compare=lambda got, want, case: _compare_bool(got, want),
    hint_text="Chance for K classes is 1 / K (a macro-F1 of about 0.25 for 4 classes). "
              "Warn below chance + margin; at exactly the line the model is not near chance "
              "(use <, not <=).",
)


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _client_and_png(case: tuple) -> tuple:
    return _test_client(), _png(np.array(case[0], dtype=np.uint8))


_CLIENT: list = []


def _test_client():
    """One app for the whole process: an untrained ResNet18 checkpoint in a temporary
    folder, removed when the process ends."""
    if not _CLIENT:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        import torch
        from fastapi.testclient import TestClient

        from cxrlearn.app import create_app
        from cxrlearn.checkpoint import save_checkpoint
        from cxrlearn.resnet import resnet18

        folder = Path(tempfile.mkdtemp(prefix="cxrlearn-exercise-app-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the checkpoint, 45 MB
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = resnet18(num_classes=2, in_channels=1)
        path = save_checkpoint(folder / "best.pt", {
            "model": model.state_dict(), "class_names": ["A", "B"], "epoch": 1,
            "meta": {"arch": {"name": "resnet18", "num_classes": 2, "in_channels": 1},
                     "preprocess": {"image_size": 32, "channels": 1}}})
        _CLIENT.append(TestClient(create_app(path), base_url="http://127.0.0.1"))
    return _CLIENT[0]


def _compare_probs(got: object, want: dict[str, float]) -> Mismatch | None:
    if not isinstance(got, dict):
        return Mismatch("type", f"returned {type(got).__name__}, expected a dict "
                                "{class name: probability}")
    if list(got) != list(want):
        return Mismatch("shape", f"returned the keys {list(got)}, expected {list(want)}")
    return compare_numbers(tuple(got.values()), tuple(want.values()), atol=1e-6,
                           names=list(want))


_GREYS = st.integers(0, 255)

API_PROBABILITIES = Exercise(
    id="07.api_probabilities",
    signature="api_probabilities(client, png) -> dict[str, float]",
    summary="Ask the app's HTTP API about one X-ray: POST the PNG bytes to /api/predict as "
            "the multipart field `file`, and return the answer's class probabilities.",
    reference_path="cxrlearn.app.server:api_probabilities",
    cases=st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
        lambda s: st.lists(st.lists(_GREYS, min_size=s[1], max_size=s[1]),
                           min_size=s[0], max_size=s[0])).map(lambda rows: (rows,)),
    build=_client_and_png,
    describe=lambda case: ["client = a TestClient of create_app(<an untrained checkpoint "
                           "for the classes A and B>)",
                           f"png = the PNG bytes of the uint8 image "
                           f"{np.array(case[0]).tolist()}"],
    edge_cases=[
        ("a grey square", ([[128] * 4] * 4,)),
        ("one pixel", ([[0]],)),
    ],
    compare=lambda got, want, case: _compare_probs(got, want),
    tolerance="1e-06 per probability",
    max_examples=8,
    hint_text="response = client.post(\"/api/predict\", files={\"file\": (\"xray.png\", "
              "png)}); an answer that is not 200 carries {\"error\": ...}: "
              "response.raise_for_status() says so. The JSON's \"probabilities\" maps each "
              "class name to its probability: return response.json()[\"probabilities\"].",
)

EXERCISES = [HOST_NAME, IS_NEAR_CHANCE, API_PROBABILITIES]
