"""The decoded-image cache: hits equal fresh decodes; stale, corrupt and unknown entries are handled."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlens.core.errors import InputError
from radlens.data.cache import ImageCache
from radlens.data.images import ImageDecodeError, load_image
from radlens.data.transforms import ResizePolicy, resize

SQUARE = ResizePolicy(mode="square", size=32)
SHORTER = ResizePolicy(mode="shorter_side", size=24, max_longer=40)


def fresh(path: Path, policy: ResizePolicy) -> np.ndarray:
    """The reference: decode + resize + round to uint8, computed without the cache."""
    return np.rint(resize(load_image(path), policy) * 255).astype(np.uint8)


def write_images(folder: Path, count: int = 4) -> list[Path]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = [(64, 48), (40, 90), (50, 50), (120, 30)]
    paths = []
    for number in range(count):
        pixels = rng.integers(0, 256, shapes[number % len(shapes)], dtype=np.uint8)
        path = folder / f"img{number}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def pixel_file(cache: ImageCache) -> Path:
    return cache.folder / "chunk-000.pixels.npy"


@pytest.mark.parametrize("policy", [SQUARE, SHORTER], ids=["square", "shorter_side"])
def test_hit_returns_identical_pixels_to_fresh_decode(tmp_path: Path, policy: ResizePolicy) -> None:
    paths = write_images(tmp_path / "img")
    cache = ImageCache(tmp_path / "cache", policy)
    assert cache.build(paths) == []
    assert len(cache) == len(paths)
    for path in paths:
        cached = cache.get(path)
        assert cached.dtype == np.uint8
        np.testing.assert_array_equal(cached, fresh(path, policy))
    assert cache.stats == {"hits": len(paths), "misses": 0, "rebuilt": 0}
    np.testing.assert_allclose(cache.load(paths[0]), fresh(paths[0], policy) / 255, atol=1e-7)


def test_persists_across_instances_and_rebuild_is_a_no_op(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    ImageCache(tmp_path / "cache", SQUARE).build(paths)
    before = pixel_file(ImageCache(tmp_path / "cache", SQUARE)).stat().st_mtime_ns
    reopened = ImageCache(tmp_path / "cache", SQUARE)
    assert all(path in reopened for path in paths)
    np.testing.assert_array_equal(reopened.get(paths[1]), fresh(paths[1], SQUARE))
    assert reopened.stats["hits"] == 1
    assert reopened.build(paths) == []
    assert pixel_file(reopened).stat().st_mtime_ns == before  # nothing re-decoded or rewritten
    other = ImageCache(tmp_path / "cache", ResizePolicy(size=16))  # another policy: separate entries
    assert paths[0] not in other
    assert other.get(paths[0]).shape == (16, 16) and other.stats["misses"] == 1


def test_modified_file_is_rebuilt(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    cache = ImageCache(tmp_path / "cache", SQUARE)
    cache.build(paths)
    old = cache.get(paths[0])
    Image.fromarray(np.full((64, 48), 200, dtype=np.uint8)).save(paths[0])
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # coarse-mtime safety
    new = cache.get(paths[0])
    np.testing.assert_array_equal(new, fresh(paths[0], SQUARE))
    assert not np.array_equal(new, old)
    assert cache.stats["rebuilt"] == 1
    again = ImageCache(tmp_path / "cache", SQUARE)  # the rebuilt slot was written back
    np.testing.assert_array_equal(again.get(paths[0]), new)
    assert again.stats == {"hits": 1, "misses": 0, "rebuilt": 0}


def test_corrupt_entry_is_detected_and_rebuilt(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    cache = ImageCache(tmp_path / "cache", SQUARE)
    cache.build(paths)
    expected = fresh(paths[2], SQUARE)
    # Flip bytes inside slot 2 directly in the memory-mapped file, as disk corruption would.
    pixels = np.load(pixel_file(cache), mmap_mode="r+")
    pixels[2, 100:110] ^= 0xFF
    pixels.flush()
    del pixels
    reader = ImageCache(tmp_path / "cache", SQUARE)
    np.testing.assert_array_equal(reader.get(paths[2]), expected)
    assert reader.stats == {"hits": 0, "misses": 0, "rebuilt": 1}
    np.testing.assert_array_equal(np.load(pixel_file(cache))[2, : 32 * 32], expected.ravel())
    later = ImageCache(tmp_path / "cache", SQUARE)
    np.testing.assert_array_equal(later.get(paths[2]), expected)
    assert later.stats["hits"] == 1


def test_build_repairs_corrupt_entries(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    cache = ImageCache(tmp_path / "cache", SQUARE)
    cache.build(paths)
    pixels = np.load(pixel_file(cache), mmap_mode="r+")
    pixels[0, :5] ^= 0x0F
    pixels.flush()
    del pixels
    assert ImageCache(tmp_path / "cache", SQUARE).build(paths) == []  # checks size/mtime only
    assert not np.array_equal(np.load(pixel_file(cache))[0, : 32 * 32], fresh(paths[0], SQUARE).ravel())
    assert ImageCache(tmp_path / "cache", SQUARE).build(paths, verify=True) == []
    np.testing.assert_array_equal(np.load(pixel_file(cache))[0, : 32 * 32], fresh(paths[0], SQUARE).ravel())


def test_readonly_cache_serves_correct_pixels_without_writing(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    ImageCache(tmp_path / "cache", SQUARE).build(paths)
    pixels = np.load(pixel_file(ImageCache(tmp_path / "cache", SQUARE)), mmap_mode="r+")
    pixels[1, :3] ^= 0xFF
    pixels.flush()
    damaged = np.array(pixels[1])
    del pixels
    reader = ImageCache(tmp_path / "cache", SQUARE, readonly=True)
    np.testing.assert_array_equal(reader.get(paths[1]), fresh(paths[1], SQUARE))
    np.testing.assert_array_equal(np.load(pixel_file(reader))[1], damaged)
    with pytest.raises(InputError, match="read-only"):
        reader.build(paths)


def test_unknown_paths_are_decoded_and_new_builds_are_seen(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", count=6)
    reader = ImageCache(tmp_path / "cache", SQUARE)
    np.testing.assert_array_equal(reader.get(paths[0]), fresh(paths[0], SQUARE))
    assert reader.stats["misses"] == 1
    ImageCache(tmp_path / "cache", SQUARE).build(paths[:3])
    ImageCache(tmp_path / "cache", SQUARE).build(paths[3:])  # a second chunk
    for path in paths:
        np.testing.assert_array_equal(reader.get(path), fresh(path, SQUARE))
    assert reader.stats == {"hits": 6, "misses": 1, "rebuilt": 0}


def test_unreadable_files_become_problems(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", count=2)
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"not a png")
    cache = ImageCache(tmp_path / "cache", SQUARE)
    problems = cache.build([*paths, broken, tmp_path / "missing.png"])
    assert sorted(Path(problem.path).name for problem in problems) == ["broken.png", "missing.png"]
    assert broken not in cache and len(cache) == 2
    with pytest.raises(ImageDecodeError, match=r"broken\.png"):
        cache.get(broken)
    paths[0].unlink()
    with pytest.raises(ImageDecodeError, match="not found"):
        cache.get(paths[0])


def test_parallel_build_matches_serial(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", count=5)
    cache = ImageCache(tmp_path / "cache", SHORTER)
    assert cache.build(paths, num_workers=2) == []
    for path in paths:
        np.testing.assert_array_equal(cache.get(path), fresh(path, SHORTER))


def test_pickles_without_memory_maps(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", count=2)
    cache = ImageCache(tmp_path / "cache", SQUARE)
    cache.build(paths)
    clone = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 4096  # no pixel data travels to worker processes
    np.testing.assert_array_equal(clone.get(paths[1]), fresh(paths[1], SQUARE))


def test_damaged_index_is_an_input_error(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", count=1)
    cache = ImageCache(tmp_path / "cache", SQUARE)
    cache.build(paths)
    (cache.folder / "index.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable") as caught:
        ImageCache(tmp_path / "cache", SQUARE).get(paths[0])
    assert "delete the cache folder" in (caught.value.hint or "")
