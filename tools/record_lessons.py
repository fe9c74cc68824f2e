"""Re-record lessons: run each notebook top to bottom, store its outputs, then prove them.

    .venv/bin/python tools/record_lessons.py lessons/04_evaluation_metrics.ipynb [...]
    .venv/bin/python tools/record_lessons.py --all

A stored output is a promise that any student's machine prints the same thing. Recording
runs the notebook here (in `lessons/`, in this virtual environment, with a fresh sample-run
cache so the lesson also works from nothing), writes the outputs into the file, and then runs
nbval over it twice: on this CPU as it comes, and with another kernel choice and one thread
(`scripts/cpu_variant.sh`), the two configurations the test command uses. If either fails,
an output depends on the machine: print it rounded to what it can resolve, assert it in the
cell instead, or (only for a value that legitimately varies, such as a trained network's
scores or a timing) tag the cell `nbval-ignore-output`. See docs/contributing.md.
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

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"


def record(path: Path, cache_dir: Path) -> float:
    """Execute `path` in place; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # record_timing=False: no per-cell timestamps in the file, so diffs show outputs only.
    NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(LESSONS)}}).execute(
        env={**os.environ, "CXRLEARN_CACHE_DIR": str(cache_dir)})  # the kernel's environment
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
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
    args = parser.parse_args()
    paths = sorted(LESSONS.glob("*.ipynb")) if args.all else [p.resolve() for p in args.notebooks]
    if not paths:
        parser.error("name the notebooks to record, or --all")
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
