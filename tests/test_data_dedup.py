"""Difference hashes: robust to small edits, far apart for different X-rays; pairs and groups
checked against brute force."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from cxrlearn.data import dhash, duplicate_groups, hamming, load_image, near_duplicate_pairs


@pytest.fixture
def xray(sample_root) -> np.ndarray:
    return load_image(sample_root / "COVID" / "COVID-1007.png")


def test_hash_size_and_bit_direction():
    # A 16 x 17 image is its own (n, n + 1) thumbnail: the bits are read off directly.
    ramp = np.tile(np.arange(17, dtype=np.uint8) * 10, (16, 1))  # brighter to the right
    h = dhash(ramp)
    assert h.dtype == np.uint8 and h.shape == (32,)
    assert (h == 255).all()  # every pixel is brighter than its left-hand neighbour
    assert (dhash(ramp[:, ::-1]) == 0).all()
    assert dhash(ramp, hash_size=8).shape == (8,)
    # One pixel dimmer than its left neighbour clears exactly one bit: row 0, column 4.
    bumped = ramp.copy()
    bumped[0, 5] = 35
    bits = np.unpackbits(dhash(bumped)).reshape(16, 16)
    assert bits.sum() == 255 and bits[0, 4] == 0


def test_float_and_uint8_inputs_agree(xray):
    as_u8 = np.round(xray * 255).astype(np.uint8)
    np.testing.assert_array_equal(dhash(xray), dhash(as_u8))


def test_hamming_by_hand():
    a = np.array([0b1010_0000, 0xFF], dtype=np.uint8)
    b = np.array([0b0110_0000, 0x0F], dtype=np.uint8)
    assert hamming(a, b) == 2 + 4
    assert hamming(a, a) == 0


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"), dtype=np.float32) / 255


def _resized(x: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(np.round(x * 255).astype(np.uint8))
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255


def test_copies_are_close(xray):
    h = dhash(xray)
    copies = {
        "brighter": np.clip(xray + 0.04, 0, 1),
        "jpeg": _jpeg(xray, 70),
        "smaller": _resized(xray, 96),
        "larger": _resized(xray, 200),
    }
    for name, copy in copies.items():
        assert hamming(h, dhash(copy)) <= 12, name


def test_different_xrays_are_far_apart(sample_root, xray):
    others = [
        sample_root / "COVID" / "COVID-1014.png",
        sample_root / "Normal" / "Normal-10012.png",
        sample_root / "Viral Pneumonia" / "Viral Pneumonia-1001.png",
    ]
    for path in others:
        assert hamming(dhash(xray), dhash(load_image(path))) > 40, path.name


def brute_force_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    pairs = []
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            d = hamming(hashes[i], hashes[j])
            if d <= max_distance:
                pairs.append((i, j, d))
    return pairs


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda n_bytes: arrays(np.uint8, st.tuples(st.integers(0, 25), st.just(n_bytes)))
    ),
    st.integers(0, 16),
    st.integers(1, 30),
)
def test_pairs_match_brute_force(hashes, max_distance, chunk):
    assert near_duplicate_pairs(hashes, max_distance, chunk) == brute_force_pairs(
        hashes, max_distance
    )


def components_by_bfs(n: int, pairs: list[tuple[int, int, int]]) -> list[int]:
    """Label of each node: the smallest index of its connected component, found by BFS."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j, _ in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    label = [-1] * n
    for start in range(n):  # in increasing order, so `start` is its component's minimum
        if label[start] != -1:
            continue
        label[start] = start
        queue = deque([start])
        while queue:
            for k in neighbours[queue.popleft()]:
                if label[k] == -1:
                    label[k] = start
                    queue.append(k)
    return label


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40),
        )
    )
)
def test_groups_are_connected_components(n_and_edges):
    n, edges = n_and_edges
    pairs = [(min(i, j), max(i, j), 0) for i, j in edges if i != j]
    assert duplicate_groups(n, pairs) == components_by_bfs(n, pairs)


def test_groups_by_hand():
    # 0-3 and 3-5 chain into one group; 2-4 another; 1 alone.
    assert duplicate_groups(6, [(0, 3, 1), (3, 5, 2), (2, 4, 0)]) == [0, 1, 2, 0, 2, 0]
    assert duplicate_groups(3, []) == [0, 1, 2]


def test_pairs_on_real_copies(sample_root, xray):
    hashes = np.stack([
        dhash(xray),
        dhash(load_image(sample_root / "Normal" / "Normal-10012.png")),
        dhash(_jpeg(xray, 80)),
    ])
    pairs = near_duplicate_pairs(hashes)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)]
    assert near_duplicate_pairs(hashes[:0]) == []
