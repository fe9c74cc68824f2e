"""How fast are images served: decoding PNGs every time versus the prepared-image cache.

Run: .venv/bin/python benchmarks/data.py [--data DIR] [--sizes 64 128 224] [--n 400]

Prints a table of images per second for
- decode + stretch + resize (what every epoch would cost without a cache),
- building the cache (the first epoch with a cache),
- reading a cached item (later epochs, and later runs),
- a full `XrayDataset` item from the cache, training transform included.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cxrlearn.data import XrayDataset, load_image, prepare_images, sample_root, scan_folder
from cxrlearn.transforms import Preprocess, prepare, train_transform


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=sample_root())
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--n", type=int, default=400, help="images to use")
    args = ap.parse_args()

    items = scan_folder(args.data).items[: args.n]
    paths = [p for p, _ in items]
    labels = [y for _, y in items]
    table = Table(title=f"Images per second, {len(paths)} images from {args.data}")
    for col in ("size", "decode+stretch+resize", "build cache", "cached item (uint8)",
                "dataset item (cached, augmented)"):
        table.add_column(col, justify="right")
    for size in args.sizes:
        t = time.perf_counter()
        for p in paths:
            prepare(load_image(p), size)
        uncached = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            prepare_images(paths, Preprocess(size), cache_dir=tmp)
            build = time.perf_counter() - t
            t = time.perf_counter()
            cached = prepare_images(paths, Preprocess(size), cache_dir=tmp)
            read = time.perf_counter() - t
        assert cached.from_cache
        ds = XrayDataset(paths, labels, Preprocess(size), train_transform(), images=cached.images)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        item = time.perf_counter() - t
        table.add_row(str(size), rate(len(paths), uncached), rate(len(paths), build),
                      rate(len(paths), read), rate(len(paths), item))
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
