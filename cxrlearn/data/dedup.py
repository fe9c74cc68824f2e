"""Near-duplicate detection with a difference hash, to catch leakage between splits.

The database holds the same radiograph more than once under different names. If one copy
lands in training and another in the test split, the test score measures memory, not
skill. A difference hash (dHash) finds such pairs cheaply: shrink the image to
`(n, n + 1)` grey pixels, then record for each row whether each pixel is brighter than its
right-hand neighbour. That gives n*n bits (256 for n = 16) that survive resizing,
re-compression and small changes of brightness. Two images whose hashes differ in only a
few bits (Hamming distance <= 12 of 256 by default) are treated as copies.

Reference: N. Krawetz, "Kind of like that", Hacker Factor blog, 2013 (the dHash idea).

Lesson: lessons/01_data_and_contrast.ipynb
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["dhash", "hamming", "near_duplicate_pairs", "duplicate_groups"]

# Number of set bits of every byte value: a lookup table for popcounts.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def dhash(image: np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hash of a grey image.

    Args:
        image: Grey image, float in [0, 1] (as `load_image` returns) or uint8.
        hash_size: n; the hash has n*n bits.

    Returns:
        The bits packed into bytes, uint8.

    Shape:
        image: (H, W) -> (n*n/8,)
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    # BOX = area averaging: each small pixel is the mean of the pixels it covers.
    small = np.asarray(
        Image.fromarray(a).resize((hash_size + 1, hash_size), Image.Resampling.BOX),
        dtype=np.int16,
    )  # (n, n+1)
    bits = small[:, 1:] > small[:, :-1]  # (n, n): brighter than the left neighbour?
    return np.packbits(bits.ravel())


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits between two packed hashes."""
    return int(_POPCOUNT[np.bitwise_xor(a, b)].sum())


def near_duplicate_pairs(
    hashes: np.ndarray, max_distance: int = 12, chunk: int = 256
) -> list[tuple[int, int, int]]:
    """All pairs of hashes within `max_distance` bits of each other.

    Compares every pair, a block of rows at a time so memory stays bounded
    (about chunk * N * bytes): 21,000 images take a few seconds.

    Args:
        hashes: Packed hashes, one per row (from `dhash`).
        max_distance: Largest Hamming distance that counts as a duplicate.
        chunk: Rows compared at once.

    Returns:
        `(i, j, distance)` with `i < j`, sorted.

    Shape:
        hashes: (N, n_bytes)
    """
    h = np.asarray(hashes, dtype=np.uint8)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]  # (c, n_bytes)
        xor = np.bitwise_xor(block[:, None, :], h[None, :, :])  # (c, N, n_bytes)
        dist = _POPCOUNT[xor].sum(axis=2, dtype=np.int32)  # (c, N)
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:  # each unordered pair once, never an image with itself
                pairs.append((i, c, int(dist[r, c])))
    return sorted(pairs)


def duplicate_groups(n: int, pairs: list[tuple[int, int, int]]) -> list[int]:
    """Group id per item: items linked by a chain of duplicate pairs share one id.

    Union-find over the pairs, so copies of copies end up together.

    Args:
        n: Number of items.
        pairs: `(i, j, distance)` pairs, e.g. from `near_duplicate_pairs`.

    Returns:
        For each item, the smallest index in its group.
    """
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]
