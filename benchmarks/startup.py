"""How long the command line takes to start: the commands a user types to look around.

    .venv/bin/python benchmarks/startup.py [--repeats 7]

Each command runs in a fresh process `--repeats` times; the table shows the median wall
time and the fastest. `import torch` alone is the yardstick: a command that imports torch
cannot start faster than that. The target: `cxrlearn --help` and `cxrlearn data check` under
a second on a laptop. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "cxrlearn" / "sample" / "radiography-sample-128"
CLI = [sys.executable, "-m", "cxrlearn"]

COMMANDS = {
    "python -c 'import torch' (yardstick)": [sys.executable, "-c", "import torch"],
    "python -c 'import cxrlearn'": [sys.executable, "-c", "import cxrlearn"],
    "cxrlearn --help": [*CLI, "--help"],
    "cxrlearn --version": [*CLI, "--version"],
    "cxrlearn data check SAMPLE (400 images)": [*CLI, "data", "check", str(SAMPLE)],
    "cxrlearn train --help": [*CLI, "train", "--help"],
}


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache once
        seconds(cmd)
    width = max(map(len, COMMANDS))
    print(f"{'command':<{width}}  median s  fastest s")
    for name, cmd in COMMANDS.items():
        times = [seconds(cmd) for _ in range(args.repeats)]
        print(f"{name:<{width}}  {statistics.median(times):>8.2f}  {min(times):>9.2f}")


if __name__ == "__main__":
    main()
