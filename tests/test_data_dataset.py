"""`XrayDataset`: (x, y) pairs, seeded augmentation, and the cached path equal to the slow one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from cxrlearn.data import (
    XrayDataset,
    alternate_flip,
    item_generator,
    load_image,
    prepare_images,
    scan_folder,
)
from cxrlearn.transforms import Preprocess, eval_transform, prepare, train_transform


@pytest.fixture
def scan(tiny_dataset):
    return scan_folder(tiny_dataset)


def make(scan, transform, **kwargs) -> XrayDataset:
    paths = [p for p, _ in scan.items]
    labels = [y for _, y in scan.items]
    return XrayDataset(paths, labels, Preprocess(32), transform, **kwargs)


def test_items_are_float_images_and_int_labels(scan):
    ds = make(scan, eval_transform(3))
    assert len(ds) == 20
    for i in (0, 7, 19):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert isinstance(y, int) and y == scan.items[i][1]
        # By hand: prepare, scale to [0, 1], repeat to 3 channels, ImageNet normalisation.
        grey = prepare(load_image(scan.items[i][0]), 32).to(torch.float32) / 255  # (1, S, S)
        for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                       strict=True)):
            torch.testing.assert_close(x[c], (grey[0] - m) / s)


def test_same_seed_and_epoch_same_item(scan):
    a, b = make(scan, train_transform(), seed=3), make(scan, train_transform(), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][0], a[i][0])  # drawing again changes nothing


def test_another_epoch_or_seed_changes_augmentations(scan):
    ds = make(scan, train_transform(), seed=3)
    epoch0 = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], epoch0[i]) for i in range(len(ds)))
    other = make(scan, train_transform(), seed=4)
    assert any(not torch.equal(other[i][0], epoch0[i]) for i in range(len(ds)))
    # Without randomness the epoch does not matter.
    ev = make(scan, eval_transform())
    first = ev[5][0]
    ev.set_epoch(9)
    assert torch.equal(ev[5][0], first)


def test_prepared_images_give_the_same_items(scan, monkeypatch):
    paths = [p for p, _ in scan.items]
    images = prepare_images(paths, Preprocess(32)).images
    slow = make(scan, train_transform(), seed=1)
    fast = make(scan, train_transform(), seed=1, images=images)
    for i in range(len(slow)):
        assert torch.equal(fast.prepared(i), slow.prepared(i))
        x_fast, y_fast = fast[i]
        x_slow, y_slow = slow[i]
        assert torch.equal(x_fast, x_slow) and y_fast == y_slow

    def no_reading(path, *args, **kwargs):
        raise AssertionError("read a file although images were given")

    monkeypatch.setattr("cxrlearn.data.dataset.load_image", no_reading)
    fast[0]
    with pytest.raises(AssertionError, match="although"):
        slow[0]


def test_workers_do_not_change_the_batches(scan):
    paths = [p for p, _ in scan.items]
    images = prepare_images(paths, Preprocess(32)).images

    def batches(num_workers):
        ds = make(scan, train_transform(1), seed=5, images=images)
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=6, num_workers=num_workers)
        return [(x, y) for x, y in loader]

    for (xa, ya), (xb, yb) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_arguments(scan):
    paths = [p for p, _ in scan.items]
    with pytest.raises(ValueError, match="length"):
        XrayDataset(paths, [0], Preprocess(32), eval_transform())
    with pytest.raises(ValueError, match="shape"):
        XrayDataset(paths, [0] * 20, Preprocess(32), eval_transform(),
                    images=np.zeros((20, 16, 16), dtype=np.uint8))


def test_item_generator_streams():
    def draw(*key):
        return torch.rand(4, generator=item_generator(*key))

    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    keys = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 0), (0, 1, 2), (0, 2, 1)]
    streams = [draw(*k) for k in keys]
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not torch.equal(streams[i], streams[j]), (keys[i], keys[j])


def test_split_dataset_takes_one_part_with_its_images(scan):
    from cxrlearn.data import split_dataset, split_items

    rows = split_items(scan.items, test_per_class=2, val_fraction=0.25, seed=0)
    images = prepare_images([r.path for r in rows], Preprocess(32)).images  # (N, S, S), one per row
    for part in ("train", "val", "test"):
        picked = [i for i, r in enumerate(rows) if r.split == part]
        fast = split_dataset(rows, part, Preprocess(32), eval_transform(1), images=images)
        slow = split_dataset(rows, part, Preprocess(32), eval_transform(1))  # reads the files
        assert fast.paths == [rows[i].path for i in picked]
        assert fast.labels == [rows[i].label for i in picked]
        for j in range(len(fast)):
            np.testing.assert_array_equal(fast.prepared(j)[0].numpy(), images[picked[j]])
            torch.testing.assert_close(fast[j][0], slow[j][0], rtol=0, atol=0)


def test_split_dataset_refuses_an_empty_part(scan):
    from cxrlearn import CxrlearnError
    from cxrlearn.data import split_dataset, split_items

    rows = split_items(scan.items, test_per_class=2, val_fraction=0.0, seed=0)
    with pytest.raises(CxrlearnError, match="no 'val' images"):
        split_dataset(rows, "val", Preprocess(32), eval_transform(1))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 10_000),
       index=st.integers(0, 100_000))
def test_alternate_flip_changes_every_epoch(seed, epoch, index):
    flips = [alternate_flip(seed, epoch + k, index) for k in range(3)]
    assert flips[0] != flips[1] and flips[0] == flips[2]


def test_alternate_flip_starts_with_a_fair_coin_per_item():
    first = [alternate_flip(0, 0, i) for i in range(1000)]
    assert 450 <= sum(first) <= 550  # a fair coin: 500 +- 1.6 standard deviations
    assert first != [alternate_flip(1, 0, i) for i in range(1000)]  # the seed decides
    # Drawn from a stream of its own: not the first draw of epoch 0's augmentations.
    coin = [torch.rand((), generator=item_generator(0, 0, i)).item() < 0.5 for i in range(1000)]
    assert first != coin


def test_alternating_flips_mirror_each_item_every_other_epoch(scan):
    plain = make(scan, eval_transform(3), seed=5)
    alternating = make(scan, eval_transform(3), seed=5, alternate_flips=True)
    flipped_in = {0: 0, 1: 0}
    for epoch in range(4):
        alternating.set_epoch(epoch)
        for i in range(len(plain)):
            x, y = alternating[i]
            mirror = alternate_flip(5, epoch, i)
            assert torch.equal(x, plain[i][0].flip(-1) if mirror else plain[i][0])
            assert y == plain[i][1]
            flipped_in[epoch % 2] += mirror
    # Over two consecutive epochs every item is seen both ways round.
    assert flipped_in[0] + flipped_in[1] == 2 * len(plain)
    assert 0 < flipped_in[0] < 2 * len(plain)
