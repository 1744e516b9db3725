"""A persistent cache of decoded, resized uint8 images in memory-mapped arrays.

Decoding a 3000 x 2500 JPEG and resizing it costs tens of milliseconds; reading 50 kB from a
memory-mapped file costs microseconds. :class:`ImageCache` stores, per resize policy, each image as
``round(resize(load_image(path), policy) * 255)`` in uint8.

Layout of ``root/<policy key>/`` (e.g. ``root/square-224/``):

- ``chunk-NNN.pixels.npy`` — uint8 ``(capacity, slot)``; an image of ``h x w`` fills the first ``h*w``
  bytes of its slot. ``slot`` is the policy's largest output (``size**2`` for ``square``,
  ``size * max_longer`` for ``shorter_side``, whose outputs vary in shape), so entries of any shape
  can be rebuilt in place.
- ``chunk-NNN.meta.npy`` — int64 ``(capacity, 6)``: ``valid, file size, mtime_ns, h, w, crc32``.
- ``index.json`` — the policy and ``absolute path -> (chunk, slot)``; written atomically.

An entry is keyed by (absolute path, resize policy, file size, mtime_ns): the policy picks the folder,
the path the slot, and a read checks the file's current size and mtime_ns against the slot's record
and the crc32 of the slot's bytes against the recorded checksum. A stale entry (file modified) or a
corrupt one (checksum mismatch) is decoded again from the source, and rewritten in place.

Concurrency: entries are ADDED only by :meth:`ImageCache.build`, run in the main process before
training (it holds an exclusive file lock while it works, and writes the index atomically). DataLoader
workers only read; when one finds a stale or corrupt entry it returns a fresh decode and rewrites that
one slot (same bytes whoever writes them; a torn write fails the checksum and is decoded again), so
reads are always correct without locks. Paths that were never built are decoded every time (counted in
``stats["misses"]``) — build first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radlens.core.errors import InputError
from radlens.core.io import atomic_write_text
from radlens.core.progress import progress as progress_bar
from radlens.data.images import ImageDecodeError, load_image
from radlens.data.schema import Problem
from radlens.data.transforms import ResizePolicy, resize

_FORMAT = 1
_VALID, _SIZE, _MTIME, _HEIGHT, _WIDTH, _CRC = range(6)


def quantize(image: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` → uint8 by rounding ``image * 255``: what the cache stores."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One image decoded for the cache, with the file identity it was decoded from."""

    path: str
    size: int
    mtime_ns: int
    pixels: np.ndarray | None
    error: str | None = None


class ImageCache:
    """Decoded, resized uint8 images for one :class:`ResizePolicy`, persisted under ``root``.

    ``cache.build(paths)`` fills it (main process); ``cache.get(path)`` returns the cached uint8
    ``(h, w)`` image, or decodes the file when the entry is missing, stale or corrupt. Pass
    ``readonly=True`` for a cache on read-only storage (nothing is ever written).
    """

    def __init__(self, root: str | os.PathLike[str], policy: ResizePolicy, readonly: bool = False) -> None:
        self.root = Path(root)
        self.policy = policy
        self.readonly = readonly
        self.folder = self.root / policy.key()
        self.stats = {"hits": 0, "misses": 0, "rebuilt": 0}
        self._entries: dict[str, tuple[int, int]] = {}
        self._chunk_names: list[str] = []
        self._index_mtime: int | None = None
        self._maps: dict[int, tuple[np.memmap, np.memmap]] = {}

    # ------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        self._ensure_index()
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str | os.PathLike):
            return False
        self._ensure_index()
        return os.path.abspath(path) in self._entries

    def decode(self, path: str | os.PathLike[str]) -> np.ndarray:
        """What the cache holds for ``path``, computed from the file: ``quantize(resize(load_image))``."""
        return quantize(resize(load_image(path), self.policy))

    def get(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The resized uint8 ``(h, w)`` image for ``path``: from the cache when valid, else decoded."""
        key = os.path.abspath(path)
        self._ensure_index()
        location = self._entries.get(key)
        if location is None and self._index_changed():
            self._load_index()
            location = self._entries.get(key)
        if location is None:
            self.stats["misses"] += 1
            return self.decode(key)
        stat = _stat(key)
        cached = self._read_slot(location, stat)
        if cached is not None:
            self.stats["hits"] += 1
            return cached
        image = self.decode(key)
        self.stats["rebuilt"] += 1
        if self._writable():
            self._write_slot(location, image, stat)
        return image

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """:meth:`get` as float32 in ``[0, 1]`` (uint8 / 255), the form :func:`load_image` returns."""
        return self.get(path).astype(np.float32) / np.float32(255)

    # ------------------------------------------------------------------------------- building

    def build(
        self,
        paths: Iterable[str | os.PathLike[str]],
        progress: bool = False,
        num_workers: int = 0,
        verify: bool = False,
    ) -> list[Problem]:
        """Add ``paths`` to the cache and rebuild stale entries; returns the files it could not decode.

        Run it in the main process before starting DataLoader workers. ``num_workers > 0`` decodes in
        that many processes. Entries already present are checked against the file's size and mtime;
        ``verify=True`` also checks every checksum (reads the whole cache; corrupt entries are otherwise
        found and repaired when read). Files that cannot be decoded are not cached and come back as
        :class:`Problem` s (reading them later raises :class:`ImageDecodeError`).
        """
        if self.readonly:
            raise InputError(f"image cache {self.folder} was opened read-only", "open it with readonly=False")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._build_lock():
            self._load_index()
            keys = list(dict.fromkeys(os.path.abspath(path) for path in paths))
            todo = [key for key in keys if not self._entry_is_valid(key, verify)]
            new = [key for key in todo if key not in self._entries]
            new_slots: dict[str, tuple[int, int]] = {}
            if new:  # one new chunk holds every image this build adds
                chunk = self._create_chunk(len(new))
                new_slots = {key: (chunk, slot) for slot, key in enumerate(new)}
            problems: list[Problem] = []
            decoded = _decode_all(todo, self.policy, num_workers)
            if progress:
                decoded = progress_bar(decoded, total=len(todo), description=f"caching {self.policy.key()}")
            for item in decoded:
                if item.pixels is None:
                    problems.append(Problem(item.path, item.error or "unreadable"))
                    self._entries.pop(item.path, None)
                    continue
                location = self._entries.get(item.path) or new_slots[item.path]
                self._write_slot(location, item.pixels, (item.size, item.mtime_ns))
                self._entries[item.path] = location
            for pixels, meta in self._maps.values():
                pixels.flush()
                meta.flush()
            self._save_index()
        return problems

    def _entry_is_valid(self, key: str, verify: bool) -> bool:
        location = self._entries.get(key)
        if location is None:
            return False
        try:
            stat = _stat(key)
        except ImageDecodeError:
            return False
        if verify:
            return self._read_slot(location, stat) is not None
        row = self._chunk(location[0])[1][location[1]]
        return bool(row[_VALID] == 1 and row[_SIZE] == stat[0] and row[_MTIME] == stat[1])

    # ------------------------------------------------------------------------------- slots

    def _read_slot(self, location: tuple[int, int], stat: tuple[int, int]) -> np.ndarray | None:
        """The slot's image if its record matches ``stat`` and its checksum; else ``None``."""
        pixels, meta = self._chunk(location[0])
        row = meta[location[1]]
        if row[_VALID] != 1 or row[_SIZE] != stat[0] or row[_MTIME] != stat[1]:
            return None
        height, width = int(row[_HEIGHT]), int(row[_WIDTH])
        if not 0 < height * width <= pixels.shape[1]:
            return None
        data = np.array(pixels[location[1], : height * width])
        if zlib.crc32(data.data) != row[_CRC]:
            return None
        return data.reshape(height, width)

    def _write_slot(self, location: tuple[int, int], image: np.ndarray, stat: tuple[int, int]) -> None:
        pixels, meta = self._chunk(location[0])
        flat = np.ascontiguousarray(image, dtype=np.uint8).ravel()
        if flat.size > pixels.shape[1]:
            raise ValueError(f"image of {image.shape} does not fit a slot of {pixels.shape[1]} pixels")
        meta[location[1], _VALID] = 0
        pixels[location[1], : flat.size] = flat
        meta[location[1]] = (1, stat[0], stat[1], image.shape[0], image.shape[1], zlib.crc32(flat.data))

    def _writable(self) -> bool:
        return not self.readonly and os.access(self.folder, os.W_OK)

    def _chunk(self, number: int) -> tuple[np.memmap, np.memmap]:
        """The memory maps of chunk ``number``, opened once per process (never pickled)."""
        if number not in self._maps:
            name = self._chunk_names[number]
            mode: Literal["r+", "r"] = "r+" if self._writable() else "r"
            try:
                pixels = np.load(self.folder / f"{name}.pixels.npy", mmap_mode=mode)
                meta = np.load(self.folder / f"{name}.meta.npy", mmap_mode=mode)
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"image cache {self.folder} is damaged ({name}: {exc.__class__.__name__})",
                    "delete the cache folder and build it again",
                ) from exc
            self._maps[number] = (pixels, meta)
        return self._maps[number]

    def _create_chunk(self, capacity: int) -> int:
        number = len(self._chunk_names)
        name = f"chunk-{number:03d}"
        slot = self.policy.max_pixels
        open_memmap = np.lib.format.open_memmap
        pixels = open_memmap(self.folder / f"{name}.pixels.npy", "w+", np.uint8, (capacity, slot))
        meta = open_memmap(self.folder / f"{name}.meta.npy", "w+", np.int64, (capacity, 6))
        self._chunk_names.append(name)
        self._maps[number] = (pixels, meta)
        return number

    # ------------------------------------------------------------------------------- index

    def _ensure_index(self) -> None:
        if self._index_mtime is None:
            self._load_index()

    def _index_changed(self) -> bool:
        try:
            return os.stat(self.folder / "index.json").st_mtime_ns != self._index_mtime
        except FileNotFoundError:
            return False

    def _load_index(self) -> None:
        path = self.folder / "index.json"
        try:
            mtime = os.stat(path).st_mtime_ns
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._entries, self._chunk_names, self._index_mtime = {}, [], 0
            return
        except (OSError, ValueError) as exc:
            raise InputError(f"image cache index {path} is unreadable", "delete the cache folder") from exc
        expected = {"format": _FORMAT, "policy": self.policy.model_dump(), "slot": self.policy.max_pixels}
        if {key: data.get(key) for key in expected} != expected:
            raise InputError(
                f"image cache {self.folder} was written for another policy or format",
                "delete the cache folder or choose another cache root",
            )
        names = list(data["chunks"])
        if names != self._chunk_names[: len(names)]:
            self._maps = {}
        self._chunk_names = names
        self._entries = {key: (int(chunk), int(slot)) for key, (chunk, slot) in data["entries"].items()}
        self._index_mtime = mtime

    def _save_index(self) -> None:
        data = {
            "format": _FORMAT,
            "policy": self.policy.model_dump(),
            "slot": self.policy.max_pixels,
            "chunks": self._chunk_names,
            "entries": {key: list(location) for key, location in self._entries.items()},
        }
        path = atomic_write_text(self.folder / "index.json", json.dumps(data))
        self._index_mtime = os.stat(path).st_mtime_ns

    @contextlib.contextmanager
    def _build_lock(self) -> Iterator[None]:
        """An exclusive lock so two builds (e.g. two training runs) never interleave index writes."""
        with open(self.folder / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def __getstate__(self) -> dict[str, Any]:
        """Memory maps are reopened in each process (e.g. spawned DataLoader workers), not pickled."""
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def _stat(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageDecodeError(path, "file not found", "check the path (was the dataset moved?)") from exc
    return info.st_size, info.st_mtime_ns


def _decode_one(path: str, policy: ResizePolicy) -> _Decoded:
    """Stat, then decode (a file changed in between fails the next validity check: safe)."""
    try:
        size, mtime_ns = _stat(path)
        return _Decoded(path, size, mtime_ns, quantize(resize(load_image(path), policy)))
    except ImageDecodeError as exc:
        return _Decoded(path, 0, 0, None, exc.reason)


def _decode_all(paths: list[str], policy: ResizePolicy, num_workers: int) -> Iterator[_Decoded]:
    if num_workers <= 0 or len(paths) < 2:
        for path in paths:
            yield _decode_one(path, policy)
        return
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        yield from pool.map(_decode_one, paths, [policy] * len(paths), chunksize=8)
