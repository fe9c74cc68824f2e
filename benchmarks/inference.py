"""How fast is a prediction, preprocessing included: eager Python, TorchScript, torch.export.

Run: .venv/bin/python benchmarks/inference.py [--size 224] [--raw 512] [--batch 4]
     [--repeats 3] [--threads N] [--compile]

Every variant starts from raw grey X-rays (the bundled sample, upsampled to `--raw` pixels
so that stretching and resizing cost what they cost on real files) and ends with class
probabilities, for an untrained ResNet18 at `--size` pixels on the CPU:

- eager, Python pipeline: `cxrlearn.export.eager_probs` (numpy and torch, image by image);
- eager, EndToEndModel: the same steps as one module, in plain PyTorch;
- TorchScript: `torch.jit.script(EndToEndModel)`, as in `model.pt`;
- torch.export: the `.pt2` program (fixed image size, dynamic batch);
- torch.compile (with `--compile`): Inductor-generated C++; compiling takes minutes on a
  small CPU (and again for a new batch size), so it is off by default.

Latency is the median time for one image; throughput is images per second in batches of
`--batch`. The setup column is the one-time cost (scripting, tracing, compiling). Numbers
vary from run to run and machine to machine; compare variants within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cxrlearn.export import (
    EndToEndModel,
    eager_probs,
    resize_hw,
    sample_check_images,
    upstream_deprecation,
)
from cxrlearn.resnet import resnet18
from cxrlearn.transforms import Preprocess

Runner = Callable[[list[np.ndarray]], torch.Tensor]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls (the caller has already warmed `fn` up)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def batch_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None]  # (B, 1, H, W)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="network input side S (224)")
    ap.add_argument("--raw", type=int, default=512, help="side of the raw X-rays (512)")
    ap.add_argument("--batch", type=int, default=4, help="images per batch (4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (3)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = resnet18(num_classes=4).eval()
    preprocess = Preprocess(args.size)
    sample = sample_check_images()[:4]
    images = [resize_hw(sample[i % 4], (args.raw, args.raw)) for i in range(args.batch)]
    wrapper = EndToEndModel(model, preprocess)

    variants: list[tuple[str, Callable[[], Runner]]] = [
        ("eager, Python pipeline", lambda: lambda ims: eager_probs(model, ims, preprocess)),
        ("eager, EndToEndModel", lambda: lambda ims: wrapper(batch_tensor(ims))),
        ("TorchScript", lambda: _scripted(wrapper)),
        ("torch.export", lambda: _program(wrapper, images)),
    ]
    if args.compile:
        variants.append(("torch.compile", lambda: _compiled(wrapper)))

    console = Console(width=110)
    table = Table(title=f"CPU inference, raw {args.raw}x{args.raw} -> {args.size}x{args.size}, "
                        f"ResNet18, {torch.get_num_threads()} threads, preprocessing included")
    for col in ("variant", "setup s", "latency ms (1 image)",
                f"throughput img/s (batch {args.batch})", "max |p - p_python|"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    reference = eager_probs(model, images, preprocess)
    with torch.no_grad():
        for name, make in variants:
            console.print(f"timing {name} ...")
            t = time.perf_counter()
            try:
                run = make()
                run(images[:1])  # first call: TorchScript profiles, torch.compile compiles
            except Exception as e:  # an unavailable backend is a row, not a crash
                table.add_row(name, "-", "-", "-", f"unavailable: {str(e).splitlines()[0][:60]}")
                continue
            setup = time.perf_counter() - t
            latency = timed(lambda run=run: run(images[:1]), args.repeats)
            diff = float((run(images) - reference).abs().max())  # also warms up the batch
            per_batch = timed(lambda run=run: run(images), args.repeats)
            table.add_row(name, f"{setup:.1f}", f"{latency * 1e3:.0f}",
                          f"{len(images) / per_batch:.1f}", f"{diff:.1e}")
    if not args.compile:
        table.caption = "torch.compile skipped: pass --compile (compiling takes minutes on a CPU)"
    console.print(table)


def _scripted(wrapper: EndToEndModel) -> Runner:
    with upstream_deprecation("`torch.jit.script`"):
        scripted = torch.jit.script(wrapper)
    return lambda ims: scripted(batch_tensor(ims))


def _program(wrapper: EndToEndModel, images: list[np.ndarray]) -> Runner:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(wrapper, (batch_tensor((images * 2)[:2]),),
                                  dynamic_shapes={"image": {0: batch}})
    module = program.module()
    return lambda ims: module(batch_tensor(ims))


def _compiled(wrapper: EndToEndModel) -> Runner:
    compiled = torch.compile(wrapper, dynamic=True)  # one compilation for every batch size
    return lambda ims: compiled(batch_tensor(ims))


if __name__ == "__main__":
    main()
