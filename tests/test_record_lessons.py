"""tools/record_lessons.py's normaliser: a lesson as JupyterLab would save it on opening.

JupyterLab writes the kernelspec of the kernel it starts into the notebook; a lesson whose
stored kernelspec differs shows an unsaved-changes dot the moment it opens. The oracle is
the kernelspec jupyter_client reports for python3, which is where JupyterLab reads it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("record_lessons",
                                               ROOT / "tools" / "record_lessons.py")
record_lessons = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_lessons)


def test_normalise_writes_the_kernelspec_jupyterlab_would_write():
    nb = nbformat.read(ROOT / "lessons" / "01_data_and_contrast.ipynb", as_version=4)
    ids = [cell.id for cell in nb.cells]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-11-26T10:33:45Z"}
    del nb.cells[1]["id"]
    out = record_lessons.normalise(nb, record_lessons.kernelspec())
    installed = KernelSpecManager().get_kernel_spec("python3")
    assert out.metadata["kernelspec"] == {"display_name": installed.display_name,
                                          "language": installed.language, "name": "python3"}
    assert all("execution" not in cell.metadata for cell in out.cells)
    assert [cell.id for i, cell in enumerate(out.cells) if i != 1] == ids[:1] + ids[2:]
    assert out.cells[1].id and out.nbformat_minor >= 5
    nbformat.validate(out)
    # Normalising twice changes nothing: opening a normalised lesson changes nothing either.
    once = json.dumps(out, sort_keys=True)
    assert json.dumps(record_lessons.normalise(out, record_lessons.kernelspec()),
                      sort_keys=True) == once


def test_lessons_holds_notebooks_only():
    """The nbval timing plugin lives in tools/, so JupyterLab's file list shows lessons."""
    assert {p.suffix for p in (ROOT / "lessons").iterdir() if not p.name.startswith(".")} \
        == {".ipynb"}
    assert (ROOT / "tools" / "nbval_timing.py").is_file()
    assert "-p tools.nbval_timing" in (ROOT / "scripts" / "test.sh").read_text()
