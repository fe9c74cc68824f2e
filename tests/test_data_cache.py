"""The prepared-image cache: same result as preparing directly, reused only while valid."""

from __future__ import annotations

import os

import numpy as np
import pytest

import cxrlearn.data.cache
from cxrlearn.data import load_image, prepare_images, scan_folder
from cxrlearn.errors import CxrlearnError
from cxrlearn.transforms import Preprocess, prepare


@pytest.fixture
def paths(tiny_dataset):
    return [p for p, _ in scan_folder(tiny_dataset).items][:8]


def direct(paths, size):
    return np.stack([prepare(load_image(p), size)[0].numpy() for p in paths])


def test_equals_preparing_each_image(paths):
    calls = []
    result = prepare_images(paths, Preprocess(24), progress=calls.append)
    assert result.images.dtype == np.uint8 and result.images.shape == (8, 24, 24)
    np.testing.assert_array_equal(result.images, direct(paths, 24))
    assert result.kept == list(range(8)) and result.bad == []
    assert result.cache_file is None and not result.from_cache
    assert calls == [1] * 8


def test_second_call_reads_the_cache_not_the_pngs(paths, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare_images(paths, Preprocess(24), cache_dir=cache)
    assert not first.from_cache and first.cache_file.is_file()
    assert first.cache_file.parent == cache

    def no_reading(path, *args, **kwargs):
        raise AssertionError(f"read {path} although it is cached")

    monkeypatch.setattr(cxrlearn.data.cache, "load_image", no_reading)
    second = prepare_images(paths, Preprocess(24), cache_dir=cache)
    assert second.from_cache and second.cache_file == first.cache_file
    np.testing.assert_array_equal(second.images, first.images)
    assert second.kept == first.kept and second.bad == []
    # The trap works: without a cache the patched reader is called and fails.
    with pytest.raises(AssertionError, match="although it is cached"):
        prepare_images(paths, Preprocess(24))


def test_new_settings_or_touched_file_make_a_new_cache(paths, tmp_path):
    cache = tmp_path / "cache"
    base = prepare_images(paths, Preprocess(24), cache_dir=cache).cache_file
    other_size = prepare_images(paths, Preprocess(16), cache_dir=cache)
    assert other_size.cache_file != base and not other_size.from_cache
    assert other_size.images.shape == (8, 16, 16)
    other_window = prepare_images(paths, Preprocess(24, low=1.0), cache_dir=cache)
    assert other_window.cache_file != base and not other_window.from_cache

    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    touched = prepare_images(paths, Preprocess(24), cache_dir=cache)
    assert touched.cache_file != base and not touched.from_cache
    assert len(list(cache.iterdir())) == 4
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_skip_bad_reports_and_caches_the_bad_file(paths, tmp_path, monkeypatch):
    bad = paths[2].parent / "zz-broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = paths[2].parent / "zz-missing.png"
    with_bad = [*paths[:4], bad, *paths[4:], missing]
    cache = tmp_path / "cache"
    result = prepare_images(with_bad, Preprocess(20), cache_dir=cache, skip_bad=True)
    assert result.kept == [0, 1, 2, 3, 5, 6, 7, 8]
    np.testing.assert_array_equal(result.images, direct(paths, 20))
    assert [p for p, _ in result.bad] == [bad, missing]
    assert "no such file" in result.bad[1][1]

    monkeypatch.setattr(cxrlearn.data.cache, "load_image", None)  # any read would fail
    again = prepare_images(with_bad, Preprocess(20), cache_dir=cache, skip_bad=True)
    assert again.from_cache and again.kept == result.kept and again.bad == result.bad
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("cache", [False, True])
def test_bad_file_stops_everything_without_skip_bad(paths, tmp_path, cache):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    cache_dir = tmp_path / "cache" if cache else None
    with pytest.raises(CxrlearnError) as info:
        prepare_images([paths[0], bad, paths[1]], Preprocess(20), cache_dir=cache_dir)
    assert str(bad) in str(info.value)
    missing = tmp_path / "missing.png"
    with pytest.raises(CxrlearnError, match="no such file") as info:
        prepare_images([paths[0], missing], Preprocess(20), cache_dir=cache_dir)
    assert str(missing) in str(info.value)
    if cache:  # nothing was written, not even a temporary file
        assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


def test_a_full_disk_goes_on_without_the_cache(paths, tmp_path, monkeypatch):
    def half_then_full(file, **arrays):
        file.write(b"PK half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_then_full)
    result = prepare_images(paths, Preprocess(24), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(result.images, direct(paths, 24))
    assert result.cache_file is None and not result.from_cache
    assert list((tmp_path / "cache").iterdir()) == []  # no half cache, no temporary
