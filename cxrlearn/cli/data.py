"""`cxrlearn data check DIR` and `cxrlearn data sample PATH`."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrlearn.cli import progress_bar
from cxrlearn.data import sample_root
from cxrlearn.data.dedup import dhash, near_duplicate_pairs
from cxrlearn.data.folder import scan_folder
from cxrlearn.data.images import load_image
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser"]

HELP = "Inspect a data folder, or copy the bundled sample."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help=HELP)
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = data_sub.add_parser(
        "check",
        help="Count images per class, find unreadable files and duplicates across classes, "
             "and warn about classes too small for cxrlearn train's split.",
    )
    c.add_argument("dir", type=Path, help="The folder with one sub-folder per class.")
    c.add_argument("--max-distance", type=int, default=12,
                   help="Difference-hash bits (of 256) within which two images are copies. "
                        "Default: 12.")
    c.set_defaults(func=run_check)

    s = data_sub.add_parser("sample", help="Copy the bundled sample (400 X-rays) to PATH.")
    s.add_argument("path", type=Path, help="A new or empty folder to copy into.")
    s.set_defaults(func=run_sample)


def run_check(args: argparse.Namespace, console: Console) -> int:
    scan = scan_folder(args.dir)
    hashes, labels, paths = [], [], []
    bad: list[tuple[Path, int, str]] = []
    with progress_bar(console) as progress:
        task = progress.add_task("reading", total=len(scan.items))
        for path, label in scan.items:
            try:
                hashes.append(dhash(load_image(path)))
                labels.append(label)
                paths.append(path)
            except CxrlearnError as e:
                bad.append((path, label, e.message))
            progress.advance(task)

    # File names go through escape(): rich would read "x[old].png" as markup and drop "[old]".
    table = Table(title=f"Images per class in {escape(str(scan.root))}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("unreadable", justify="right")
    for label, (name, n) in enumerate(scan.counts().items()):
        n_bad = sum(1 for _, bad_label, _ in bad if bad_label == label)
        table.add_row(name, str(n), str(n_bad))
    table.add_row("[bold]total", f"[bold]{len(scan.items)}", f"[bold]{len(bad)}")
    console.print(table)

    pairs = near_duplicate_pairs(np.stack(hashes), args.max_distance) if hashes else []
    cross = [(i, j, d) for i, j, d in pairs if labels[i] != labels[j]]
    console.print(f"near-duplicate pairs (<= {args.max_distance} of 256 bits): {len(pairs)}, "
                  f"of which across classes: {len(cross)}")
    if cross:
        dup = Table(title="Duplicates across classes")
        for col in ("file", "class", "file", "class", "bits"):
            dup.add_column(col)
        for i, j, d in cross:
            dup.add_row(escape(paths[i].name), scan.class_names[labels[i]],
                        escape(paths[j].name), scan.class_names[labels[j]], str(d))
        console.print(dup)
    for entry in scan.unknown:
        console.print(f"[yellow]warning:[/] {escape(str(entry))}: not a class folder, ignored",
                      soft_wrap=True)
    for warning in split_warnings(scan.counts()):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False,
                      soft_wrap=True)
    problems = [(path, problem) for path, _, problem in bad] + scan.problems
    for path, problem in problems:
        console.print(f"[red]bad file:[/] {escape(str(path))}: {escape(problem)}",
                      highlight=False, soft_wrap=True)
    return 1 if problems else 0


def split_warnings(counts: dict[str, int]) -> list[str]:
    """What `cxrlearn train` would refuse with its default split: one sentence per class
    too small for it, with the largest `--test-per-class` that would work."""
    from cxrlearn.data import splits  # RunSettings' defaults, where they are written

    test, val = splits.TEST_PER_CLASS, splits.VAL_FRACTION
    warnings = []
    for name, n in counts.items():
        problem = splits.split_shortfall(n, test, val)
        if problem is None:
            continue
        fits = next((t for t in range(test - 1, 0, -1)
                     if splits.split_shortfall(n, t, val) is None), None)
        fix = (f"hold out fewer with --test-per-class {fits} (or less), or add images"
               if fits else "add images")
        warnings.append(f"class {name!r} has {n} images: {problem} (cxrlearn train's default "
                        f"split: {test} test images per class, then {val:.0%} of the rest "
                        f"for validation), so cxrlearn train would refuse it; {fix}")
    return warnings


def run_sample(args: argparse.Namespace, console: Console) -> int:
    dest: Path = args.path
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CxrlearnError("already exists and is not an empty folder; choose a new path",
                            path=dest)
    shutil.copytree(sample_root(), dest, dirs_exist_ok=True)
    # The images' sources and terms travel with them.
    shutil.copy2(sample_root().parent / "SOURCES.md", dest / "SOURCES.md")
    n = sum(1 for _ in dest.rglob("*.png"))
    console.print(f"copied {n} X-rays to {escape(str(dest))}, with SOURCES.md (where they come "
                  "from, their terms, what to know before training on them)", highlight=False)
    return 0
