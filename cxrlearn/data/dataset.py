"""The PyTorch `Dataset`: prepared X-rays in, `(x, y)` pairs out.

Each item is read and prepared once (load, stretch, resize, 8 bits: `cxrlearn.transforms`),
then transformed every time it is drawn. Prepared images can be handed in as one uint8
array (from `cxrlearn.data.cache`), in which case no PNG is read at all; otherwise each item
is read from disk on every access, which is the slow path the cache exists to avoid.

Randomness: item `i` of epoch `e` draws its augmentations from a generator seeded with
`(seed, e, i)`. The images a model sees therefore depend only on the seed and the epoch, not
on how many workers load them or in which order.

Alternating flips (`alternate_flips=True`, after Jordan 2024, arXiv 2404.00498): instead of
a fresh coin in every epoch, item `i` is flipped in epoch `e` when `(b_i + e)` is odd, with
the bit `b_i` drawn once per item. Every image is then seen both ways round in any two
consecutive epochs, where random flips show half of them the same way round twice.

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cxrlearn.data.images import load_image
from cxrlearn.data.splits import SplitRow
from cxrlearn.errors import CxrlearnError
from cxrlearn.transforms import Preprocess

__all__ = ["XrayDataset", "item_generator", "alternate_flip", "split_dataset"]

FIRST_FLIP_EPOCH = 2**32 - 1
"""The epoch number whose generator draws each item's first flip in `alternate_flip`: one no
run reaches, so that the bit is independent of every epoch's augmentations."""


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch generator for one item of one epoch, independent of all others.

    numpy's SeedSequence mixes the three numbers into a well-spread 64-bit seed, so that
    nearby triples (seed 0 item 1, seed 1 item 0) give unrelated streams.
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def alternate_flip(seed: int, epoch: int, index: int) -> bool:
    """Whether item `index` is flipped in `epoch` under alternating flips.

    A fair coin decides the item's flip in epoch 0 (drawn once, from the item's generator of
    `FIRST_FLIP_EPOCH`); after that the item's flip changes every epoch.
    """
    first = torch.rand((), generator=item_generator(seed, FIRST_FLIP_EPOCH, index)).item() < 0.5
    return first != (epoch % 2 == 1)


class XrayDataset(Dataset):
    """Chest X-rays as `(x, y)`: `x` a float32 image `(C, S, S)`, `y` the class index.

    Args:
        paths: Image files.
        labels: Class index per file.
        preprocess: How the images are prepared (its side S and stretch percentiles).
        transform: Stage-2 transform (`preprocess.train_transform()` or
            `preprocess.eval_transform()`), called as `transform(x, generator)` on a float
            image `(1, S, S)` in [0, 1].
        images: Optional prepared images, uint8 `(N, S, S)`, one per path (see
            `cxrlearn.data.cache.prepare_images`). When given, no file is read.
        seed: Seed of the augmentations.
        alternate_flips: Mirror item `i` left-right in every other epoch (`alternate_flip`),
            after `transform`; give a `transform` without a random flip of its own.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        preprocess: Preprocess,
        transform: Callable[[Tensor, torch.Generator | None], Tensor],
        images: np.ndarray | None = None,
        seed: int = 0,
        alternate_flips: bool = False,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        image_size = preprocess.image_size
        if images is not None and images.shape != (len(paths), image_size, image_size):
            raise ValueError(
                f"images has shape {images.shape}, expected {(len(paths), image_size, image_size)}"
            )
        self.paths = [Path(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.preprocess = preprocess
        self.transform = transform
        self.images = images
        self.seed = seed
        self.alternate_flips = alternate_flips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentations `__getitem__` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def prepared(self, index: int) -> Tensor:
        """The prepared (stage 1) image of item `index`, uint8 `(1, S, S)`."""
        if self.images is not None:
            return torch.from_numpy(np.array(self.images[index])).unsqueeze(0)
        return self.preprocess.prepare(load_image(self.paths[index]))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.prepared(index).to(torch.float32) / 255.0  # (1, S, S) in [0, 1]
        x = self.transform(x, item_generator(self.seed, self.epoch, index))  # (C, S, S)
        # After the transform: a mirror commutes with the channels and the normalisation, and
        # the random shift is symmetric, so the order changes no image's chances.
        if self.alternate_flips and alternate_flip(self.seed, self.epoch, index):
            x = x.flip(-1)
        return x, self.labels[index]


def split_dataset(
    rows: Sequence[SplitRow],
    part: str,
    preprocess: Preprocess,
    transform: Callable[[Tensor, torch.Generator | None], Tensor],
    images: np.ndarray | None = None,
    seed: int = 0,
    alternate_flips: bool = False,
) -> XrayDataset:
    """The dataset of one part of a split: the rows whose `split` is `part`, in their order.

    Args:
        rows: The split, e.g. from `cxrlearn.data.split_items` or `read_manifest`.
        part: `"train"`, `"val"` or `"test"`.
        preprocess: How the images are prepared (its side S and stretch percentiles).
        transform: `preprocess.train_transform()` for training, `preprocess.eval_transform()`
            otherwise.
        images: Optional prepared images, uint8 `(len(rows), S, S)`, one per row of `rows`
            (from `prepare_images([r.path for r in rows], preprocess)`); the part's images are
            taken from it, so no file is read.
        seed: Seed of the augmentations.
        alternate_flips: Flip each image in every other epoch (`XrayDataset`).

    Raises:
        CxrlearnError: No row belongs to `part`.

    Shape:
        images: (N, S, S) -> items (C, S, S)
    """
    index = [i for i, r in enumerate(rows) if r.split == part]
    if not index:
        raise CxrlearnError(f"the split has no {part!r} images")
    return XrayDataset([rows[i].path for i in index], [rows[i].label for i in index],
                       preprocess, transform,
                       images=None if images is None else images[index], seed=seed,
                       alternate_flips=alternate_flips)
