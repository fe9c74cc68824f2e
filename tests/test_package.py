"""What users look for around the code: the licence, the images' terms, the changelog and
its version, and a start that does not wait for torch."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import cxrlearn

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (a clean sys.modules) and return what it prints."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_licence_is_mit_and_points_to_the_images_terms():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted" in text
    assert "cxrlearn/sample/SOURCES.md" in text and "not\ncovered by this licence" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_sources_state_the_images_terms():
    text = (ROOT / "cxrlearn" / "sample" / "SOURCES.md").read_text()
    terms = text[text.index("## Terms"):]
    assert "not** covered" in terms and "Chowdhury" in text and "Rahman" in text


def test_changelog_version_and_package_agree():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\d+\.\d+\.\d+) - \d{4}-\d\d-\d\d$", changelog, re.MULTILINE)
    assert newest is not None
    assert newest[1] == cxrlearn.__version__ == importlib.metadata.version("cxrlearn")


def test_pyproject_says_why_httpx2_is_a_test_dependency():
    line = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines()
                if '"httpx2' in line)
    assert "TestClient" in line


def test_import_cxrlearn_reaches_the_modules_without_torch():
    printed = _python(
        "import sys, cxrlearn\n"
        "print('torch' in sys.modules)\n"
        "print(cxrlearn.data.sample_root().name)\n"
        "print('torch' in sys.modules)\n"
        "print(callable(cxrlearn.trained.open_model), 'torch' in sys.modules)\n")
    assert printed.split() == ["False", "radiography-sample-128", "False", "True", "True"]


def test_help_and_data_check_start_without_torch(tmp_path):
    printed = _python(
        "import sys, contextlib, io\n"
        "from cxrlearn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    main(['data', 'check', str(__import__('cxrlearn').data.sample_root())])\n"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)\n")
    assert printed.split() == ["False", "False"]


def test_missing_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = cxrlearn.nope
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = cxrlearn.data.nope
