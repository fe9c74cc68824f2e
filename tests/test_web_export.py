"""The web app's folder, without a browser: refusals, the pinned runtime, icons, the grey formula.

The browser itself is tests/test_web_browser.py; these are the cheap checks around it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
from cxrlearn.cli import main  # noqa: E402
from cxrlearn.errors import CxrlearnError  # noqa: E402
from cxrlearn.export.web import STATIC, export_web, icon  # noqa: E402
from cxrlearn.export.web import runtime as web_runtime  # noqa: E402
from cxrlearn.resnet import resnet18  # noqa: E402
from cxrlearn.transforms import Preprocess  # noqa: E402


def test_the_page_grey_formula_is_pils_convert_L() -> None:
    """app.js converts colour to grey with PIL's integer ITU-R 601-2 luma; read its
    constants from the script and compare with PIL on every kind of pixel."""
    script = (STATIC / "app.js").read_text()
    r, g, b, half = map(int, re.search(
        r"\((\d+) \* rgba\[j\] \+ (\d+) \* rgba\[j \+ 1\] \+ (\d+) \* rgba\[j \+ 2\] "
        r"\+ (\d+)\) >>> 16", script).groups())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    rgb[0, :, :] = np.arange(256)[:, None]  # every grey level: must stay itself
    want = np.asarray(Image.fromarray(rgb).convert("L"))
    x = rgb.astype(np.int64)
    got = (r * x[..., 0] + g * x[..., 1] + b * x[..., 2] + half) >> 16
    np.testing.assert_array_equal(got, want)


def test_a_non_empty_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "web"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CxrlearnError, match="not an empty folder"):
        export_web(resnet18(num_classes=4), out, class_names=list("abcd"),
                   preprocess=Preprocess(32))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_runtime_is_checked_against_its_pinned_sha256(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(web_runtime, "runtime_dir", lambda: tmp_path)
    with pytest.raises(CxrlearnError, match="not in the cache"):
        web_runtime.runtime_files()
    for name in web_runtime.RUNTIME_FILES:
        (tmp_path / name).write_bytes(b"not the real file")
    with pytest.raises(CxrlearnError, match="pinned sha256"):
        web_runtime.runtime_files()


def test_icons_are_square_pngs_of_the_manifest_sizes() -> None:
    for size in (192, 512):
        im = icon(size)
        assert im.size == (size, size) and im.mode == "RGB"
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 1  # not blank


def test_quantize_is_refused_for_torchscript(tmp_path, capsys) -> None:
    from cxrlearn.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "best.pt", {
        "model": resnet18(num_classes=4).state_dict(), "class_names": list("abcd"),
        "epoch": 1, "meta": {"arch": {"name": "resnet18", "num_classes": 4, "in_channels": 3},
                             "preprocess": Preprocess(32).to_dict()}})
    code = main(["export", "--model", str(ckpt), "--format", "torchscript", "--quantize",
                 "int8", "--out", str(tmp_path / "m.pt")])
    assert code == 1 and "--quantize applies to onnx and web" in capsys.readouterr().out
    assert not (tmp_path / "m.pt").exists()
