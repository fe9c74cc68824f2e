"""Training speed on a busy machine: torch's default threads, one thread, passive waiting.

    .venv/bin/python benchmarks/threads.py [--steps 8] [--repeats 3]

One ResNet18 training step (forward, loss, backward, AdamW step) on a batch of 32 grey
X-ray-sized inputs at 96 px, timed in a fresh process for each setting, once on an idle
machine and once beside another busy process (a Python loop that keeps one core at 100%,
as a browser or a second notebook does on a student's laptop). The settings:

- torch's default: as many intra-op threads as cores, OpenMP's default wait policy, under
  which idle threads spin for a while before they sleep;
- 1 thread (`torch.set_num_threads(1)`): no waiting at all, no parallelism either;
- `OMP_WAIT_POLICY=PASSIVE` with the default threads: waiting threads sleep at once.

OpenMP reads the policy when it starts, so each setting runs in its own process. The table
shows the median step time over `--repeats` processes of `--steps` timed steps each (after
two warm-up steps). Nothing is asserted; benchmarks/README.md records a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

SETTINGS = {
    "default threads": {"threads": 0, "env": {}},
    "1 thread": {"threads": 1, "env": {}},
    "OMP_WAIT_POLICY=PASSIVE": {"threads": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}
BUSY = "while True: pass"


def step_ms(threads: int, steps: int) -> float:
    """Median milliseconds of one training step, in this process (the worker)."""
    import torch

    from cxrlearn.resnet import resnet18

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = resnet18(num_classes=4, in_channels=3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(32, 3, 96, 96)  # (B, C, H, W)
    y = torch.randint(0, 4, (32,))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # the first two steps allocate and warm the caches
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@contextmanager
def busy(on: bool) -> Iterator[None]:
    """Another process spinning on one core while the block runs (when `on`)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY]) if on else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def measure(setting: dict, steps: int) -> float:
    """One fresh worker process with `setting`; its median step time in ms."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(setting["env"])
    out = subprocess.run([sys.executable, __file__, "--worker", str(setting["threads"]),
                          "--steps", str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps({"ms": step_ms(args.worker, args.steps)}))
        return
    import torch

    print(f"{os.cpu_count()} cores, torch {torch.__version__}, default "
          f"{torch.get_num_threads()} threads; ResNet18 step, batch 32, 96 px")
    width = max(map(len, SETTINGS))
    print(f"{'setting':<{width}}  idle ms  beside a busy process ms")
    for name, setting in SETTINGS.items():
        row = []
        for load in (False, True):
            with busy(load):
                row.append(statistics.median(measure(setting, args.steps)
                                             for _ in range(args.repeats)))
        print(f"{name:<{width}}  {row[0]:>7.0f}  {row[1]:>24.0f}")


if __name__ == "__main__":
    main()
