"""Indexed images as PNG (full view and thumbnails, cached) and uploaded query images, decoded safely.

Indexed images are found by id through the :class:`~radlens.retrieval.Retriever` only — a request never
names a path. They go through :func:`radlens.data.images.load_image` (JPEG, PNG, DICOM alike) and are
re-encoded as 8-bit PNG, so a DICOM file is shown like any other image and the browser never receives
the stored file itself.

Uploads are checked by decoding, not by their name: the bytes are written to a private temporary file
(the client's file name is not used, except that ``.dcm`` tells the decoder to try DICOM), the header is
probed and the pixel count checked against the limit *before* any pixel is decoded (decompression
bombs), then the image is decoded by the data layer.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path

import cachetools
import numpy as np
from PIL import Image

from radlens.core import InputError
from radlens.data.images import ImageDecodeError, load_image, probe_image

_DICOM_NAMES = (".dcm", ".dicom", ".dic")


class UploadRejected(InputError):
    """An upload that is not an acceptable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, hint: str | None = None, status: int = 422) -> None:
        super().__init__(message, hint)
        self.status = status


def to_png(pixels: np.ndarray, max_side: int) -> bytes:
    """A float (h, w) image in [0, 1] as an 8-bit grey PNG, shrunk (aspect kept) to ``max_side``."""
    image = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageStore:
    """PNG renderings of indexed image files, kept in an LRU cache bounded by bytes (``cache_mb``).

    The bound is on the PNGs' total size, not their count: a full-size rendering can be a hundred times
    a thumbnail's size, so a count bound would let memory run to gigabytes. A PNG larger than the whole
    cache is served but not kept. The cache is shared by the server's worker threads, hence the lock.
    """

    def __init__(self, thumb_side: int = 192, full_side: int = 1024, cache_mb: float = 128.0) -> None:
        self.sides = {"thumb": thumb_side, "full": full_side}
        self._cache: cachetools.LRUCache[tuple[str, str], bytes] = cachetools.LRUCache(
            maxsize=int(cache_mb * 1024 * 1024), getsizeof=len
        )
        self._render = cachetools.cached(self._cache, lock=threading.Lock(), info=True)(self._render_uncached)

    def png(self, path: Path, size: str) -> bytes:
        """The PNG of the image at ``path`` in ``size`` ("thumb" or "full"); InputError if unreadable."""
        return self._render(str(path), size)

    def _render_uncached(self, path: str, size: str) -> bytes:
        return to_png(load_image(path), self.sides[size])

    @property
    def cached_bytes(self) -> int:
        """Total size of the PNGs now held, never above the bound."""
        return int(self._cache.currsize)

    def cache_info(self) -> str:
        """Hits, misses, and the bytes held against the bound."""
        return f"{self._render.cache_info()}, {self._cache.currsize} of {self._cache.maxsize} bytes"


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image into a float32 (h, w) array in [0, 1]; :class:`UploadRejected` if not.

    The pixel count is checked from the header first (``max_pixels``), so a small file that claims a
    huge image is refused without being decoded. Whatever exception decoding raises becomes an
    :class:`UploadRejected` (422) whose message never quotes it.
    """
    if not data:
        raise UploadRejected("the uploaded file is empty", "choose a PNG, JPEG or DICOM image")
    dicom = data[128:132] == b"DICM" or (filename or "").lower().endswith(_DICOM_NAMES)
    fd, name = tempfile.mkstemp(prefix="radlens-upload-", suffix=".dcm" if dicom else ".img")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            height, width = probe_image(name)
            if height * width > max_pixels:
                raise UploadRejected(
                    f"the image is {width}×{height} pixels, more than the {max_pixels / 1e6:g} MP limit",
                    "downscale it first",
                )
            return load_image(name)
        except UploadRejected:
            raise
        except ImageDecodeError as exc:  # its message names our temporary file: use the reason only
            raise UploadRejected(f"the upload is not a usable image: {exc.reason}", exc.hint) from exc
        except Exception as exc:
            # A malformed file can make a decoder fail in ways the data layer does not translate (a
            # DICOM value of the wrong type, say). It is still the upload's fault: a 422, never a 500,
            # and never the exception's text, which may name our temporary file.
            raise UploadRejected(
                "the upload is not a usable image", "choose a PNG, JPEG or DICOM image, or convert it to PNG"
            ) from exc
    finally:
        os.unlink(name)
