"""Re-record lessons: run each notebook top to bottom, store its outputs, then prove them.

    .venv/bin/python tools/record_lessons.py lessons/04_evaluation_metrics.ipynb [...]
    .venv/bin/python tools/record_lessons.py --all
    .venv/bin/python tools/record_lessons.py --normalise-only --all   # metadata only

A stored output is a promise that any student's machine prints the same thing. Recording
runs the notebook here (in `lessons/`, in this virtual environment, with a fresh sample-run
cache so the lesson also works from nothing), writes the outputs into the file, and then runs
nbval over it twice: on this CPU as it comes, and with another kernel choice and one thread
(`scripts/cpu_variant.sh`), the two configurations the test command uses. If either fails,
an output depends on the machine: print it rounded to what it can resolve, assert it in the
cell instead, or (only for a value that legitimately varies, such as a trained network's
scores or a timing) tag the cell `nbval-ignore-output`. See docs/contributing.md.

Every recorded file is then normalised (`normalise`) to what JupyterLab itself would write,
so that opening a lesson changes nothing and shows no unsaved-changes dot: JupyterLab sets
`metadata.kernelspec` from the kernel it starts (ipykernel's spec says "Python 3
(ipykernel)", where the lessons said "Python 3"), which marked every lesson modified the
moment it opened. Cells keep their ids; per-cell execution timestamps are dropped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.corpus.words import generate_corpus_id

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"


def kernelspec(name: str = "python3") -> dict[str, str]:
    """The kernelspec JupyterLab writes into a notebook when it starts kernel `name`."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    return {"display_name": spec.display_name, "language": spec.language, "name": name}


def normalise(nb: nbformat.NotebookNode, spec: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook as JupyterLab would save it after opening it: its kernelspec, the
    current nbformat minor version, an id on every cell, no execution timestamps."""
    nb.metadata["kernelspec"] = dict(spec)
    nb.nbformat, nb.nbformat_minor = 4, max(nb.nbformat_minor, 5)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # nbclient's timings: noise in every diff
        if not cell.get("id"):  # JupyterLab would add one, and mark the file modified
            cell["id"] = generate_corpus_id()
    return nb


def record(path: Path, cache_dir: Path) -> float:
    """Execute `path` in place; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # record_timing=False: no per-cell timestamps in the file, so diffs show outputs only.
    NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(LESSONS)}}).execute(
        env={**os.environ, "CXRLEARN_CACHE_DIR": str(cache_dir)})  # the kernel's environment
    seconds = time.perf_counter() - start
    nbformat.write(normalise(nb, kernelspec()), path)
    return seconds


def verify(paths: list[Path], variant: bool) -> int:
    """nbval over `paths`, on this CPU or on the other configuration; returns the exit code."""
    prefix = ["bash", str(ROOT / "scripts" / "cpu_variant.sh")] if variant else []
    with tempfile.TemporaryDirectory(prefix="cxrlearn-verify-cache-") as cache:
        env = {**os.environ, "CXRLEARN_CACHE_DIR": cache}
        cmd = [*prefix, sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
               "-p", "no:cacheprovider", "-q", *map(str, paths)]
        return subprocess.call(cmd, cwd=ROOT, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--all", action="store_true", help="every lesson in lessons/")
    parser.add_argument("--no-verify", action="store_true", help="record only")
    parser.add_argument("--normalise-only", action="store_true",
                        help="only rewrite the metadata JupyterLab would change on opening")
    args = parser.parse_args()
    paths = sorted(LESSONS.glob("*.ipynb")) if args.all else [p.resolve() for p in args.notebooks]
    if not paths:
        parser.error("name the notebooks to record, or --all")
    if args.normalise_only:
        for path in paths:
            nbformat.write(normalise(nbformat.read(path, as_version=4), kernelspec()), path)
        return 0
    with tempfile.TemporaryDirectory(prefix="cxrlearn-record-cache-") as cache:
        for path in paths:
            print(f"recording {path.name} ...", flush=True)
            print(f"  {record(path, Path(cache)):.0f} s", flush=True)
    if args.no_verify:
        return 0
    print("verifying on this CPU as it comes ...", flush=True)
    status = verify(paths, variant=False)
    print("verifying on the other CPU configuration (scripts/cpu_variant.sh) ...", flush=True)
    return status or verify(paths, variant=True)


if __name__ == "__main__":
    sys.exit(main())
