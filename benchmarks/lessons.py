"""How long each lesson takes under nbval, alone from an empty cache, and all together.

    .venv/bin/python benchmarks/lessons.py [--variant] [LESSON ...]

A student runs one lesson, perhaps on the first day (nothing cached yet); CI runs all eight in
one go. So each lesson is timed twice: alone, with an empty cache (the worst case: a lesson
that needs the sample network trains it), and as part of one `pytest --nbval lessons` run
over all of them from an empty cache (where the first lesson that needs the network trains it
and the later ones load it). `--variant` times everything under `scripts/cpu_variant.sh`
(another kernel choice, one thread), the test command's second configuration.

Prints a table; numbers are wall-clock seconds of nbval's setup + call + teardown per cell,
kernel start-up included. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
ROW = re.compile(r"^(lessons/\S+\.ipynb)\s+(\d+)\s+([\d.]+)$")


def nbval(paths: list[Path], variant: bool) -> tuple[dict[str, float], float, bool]:
    """Run nbval over `paths` from an empty cache; per-lesson seconds, wall time, passed."""
    prefix = ["bash", str(ROOT / "scripts" / "cpu_variant.sh")] if variant else []
    with tempfile.TemporaryDirectory(prefix="cxrlearn-bench-cache-") as cache:
        env = {**os.environ, "CXRLEARN_CACHE_DIR": cache}
        start = time.perf_counter()
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
             "-p", "tools.nbval_timing", "-p", "no:cacheprovider", "-q",
             *(str(p.relative_to(ROOT)) for p in paths)],
            cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    seconds = {}
    for line in done.stdout.splitlines():  # the table tools/nbval_timing.py prints
        match = ROW.match(line.strip())
        if match:
            seconds[Path(match[1]).name] = float(match[3])
    return seconds, wall, done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", type=Path, help="default: every lesson")
    parser.add_argument("--variant", action="store_true",
                        help="run under scripts/cpu_variant.sh (another kernel choice, 1 thread)")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.lessons] or sorted(LESSONS.glob("*.ipynb"))

    alone: dict[str, tuple[float, bool]] = {}
    for path in paths:
        seconds, wall, ok = nbval([path], args.variant)
        alone[path.name] = (seconds.get(path.name, wall), ok)
        print(f"  {path.name}: {alone[path.name][0]:.0f} s alone", file=sys.stderr)
    together, wall, ok_all = nbval(paths, args.variant)

    print(f"{'lesson':<38} {'alone, empty cache':>18} {'in the full run':>15}")
    for path in paths:
        seconds, ok = alone[path.name]
        status = "" if ok else "  FAILED"
        print(f"{path.name:<38} {seconds:>16.0f} s {together.get(path.name, float('nan')):>13.0f} s"
              f"{status}")
    print(f"{'all, one nbval run':<38} {'':>18} {sum(together.values()):>13.0f} s"
          f"{'' if ok_all else '  FAILED'}")
    print(f"(wall clock of the full run, pytest start-up included: {wall:.0f} s)")
    return 0 if ok_all and all(ok for _, ok in alone.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
