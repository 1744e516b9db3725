"""Decode one radiograph (JPEG, PNG or DICOM) into a float32 grayscale array in ``[0, 1]``.

Every model in radlens sees images through :func:`load_image`, so the intensity rules live here once:

- JPEG/PNG (Pillow): 8-bit values are divided by 255, 16-bit PNG values by 65535, colour images are
  reduced to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B). Pixels are used as stored (no EXIF rotation;
  radiographs are read as acquired).
- DICOM (pydicom): stored values go through the Modality LUT (rescale slope/intercept or a Modality LUT
  Sequence), then the VOI LUT (a VOI LUT Sequence, else Window Center/Width), then are scaled by the
  *nominal* output range of the last step — so a 12-bit image with no window is divided by 4095, not by
  its own maximum. MONOCHROME1 images (where the lowest value is displayed white) are inverted, so that
  bright always means dense, as in MONOCHROME2 and in JPEG/PNG. Multi-frame files use their first frame.

:data:`MAX_PIXELS` and :data:`MIN_SIDE` are the size policy: images outside it are refused from their
header before any pixel is decoded (which also guards against decompression bombs).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from radlens.core.errors import InputError

#: Refuse images with more pixels than this (100 MP): no radiograph is that large, a decoded float
#: copy would need 400 MB, and such headers are typical of decompression bombs.
MAX_PIXELS = 100_000_000
#: Refuse images with a side shorter than this many pixels (icons, thumbnails, broken headers).
MIN_SIDE = 8

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageDecodeError(InputError):
    """An image file could not be read as an image radlens accepts; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], reason: str, hint: str | None = None) -> None:
        super().__init__(f"cannot read image {path}: {reason}", hint)
        self.path = str(path)
        self.reason = reason


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header only (cheap), after the size policy."""
    file = _existing_file(path)
    if _is_dicom(file):
        ds = _read_dicom(file, stop_before_pixels=True)
        height, width = _dicom_shape(file, ds)
    else:
        with _open_pil(file) as image:
            width, height = image.size
    _check_size(file, height, width)
    return height, width


def read_dicom_header(path: str | os.PathLike[str], *, force: bool = False) -> Any:
    """The pydicom data set of a DICOM file without its pixel data (header only, cheap).

    ``force`` also reads files that lack the preamble and ``DICM`` marker (as :func:`probe_image`
    does for a ``.dcm`` name); without it such a file is refused. Raises :class:`ImageDecodeError` for
    a missing, damaged or deflate-compressed file (see ``_refuse_deflated``).
    """
    return _read_dicom(_existing_file(path), stop_before_pixels=True, force=force)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` into a float32 ``(height, width)`` array with values in ``[0, 1]``.

    Raises :class:`ImageDecodeError` (naming the file) for a missing, truncated, unsupported or
    absurdly sized image.
    """
    file = _existing_file(path)
    image = _load_dicom(file) if _is_dicom(file) else _load_pil(file)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0, out=image), dtype=np.float32)


# ----------------------------------------------------------------------------- shared helpers


def _existing_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if not file.is_file():
        reason = "it is a folder" if file.is_dir() else "file not found"
        raise ImageDecodeError(file, reason, "check the path (is the dataset root right?)")
    return file


def _check_size(path: Path, height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ImageDecodeError(path, f"{width}x{height} pixels is smaller than {MIN_SIDE} px on a side")
    if height * width > MAX_PIXELS:
        raise ImageDecodeError(
            path,
            f"{width}x{height} pixels is more than the {MAX_PIXELS // 1_000_000} MP limit",
            "downscale the image first (or it is a corrupt or malicious file)",
        )


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128; raw DICOM is recognised by its suffix."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES


# ----------------------------------------------------------------------------- JPEG / PNG (Pillow)


def _open_pil(path: Path) -> Image.Image:
    """Open (header only) and apply our size policy before Pillow decodes anything."""
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check below replaces Pillow's warning; Pillow still raises
            # DecompressionBombError past twice its limit, which we report the same way.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, "image dimensions exceed the pixel limit", "downscale it first") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(path, "not a JPEG, PNG or DICOM image", "convert it to PNG or JPEG") from exc
    width, height = image.size
    try:
        _check_size(path, height, width)
    except ImageDecodeError:
        image.close()
        raise
    return image


def _load_pil(path: Path) -> np.ndarray:
    with _open_pil(path) as image:
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageDecodeError(
                path, f"the file is truncated or corrupt ({exc})", "re-export or re-download it"
            ) from exc
        return _pil_to_float(path, image)


def _pil_to_float(path: Path, image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.float32) / np.float32(255)
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float32) / np.float32(65535)
    if mode == "I":  # 32-bit container; Pillow uses it for some 16-bit PNG/TIFF files
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ImageDecodeError(path, "32-bit integer pixels are not supported", "save it as 16-bit")
        return values.astype(np.float32) / np.float32(65535)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageDecodeError(path, "floating-point pixels outside [0, 1]", "save it as 8/16-bit")
        return values.copy()
    if mode in ("LA", "La", "P", "PA"):
        return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb @ (_LUMA / np.float32(255))


# ----------------------------------------------------------------------------- DICOM (pydicom)


def _read_dicom(path: Path, stop_before_pixels: bool = False, force: bool = True) -> Any:
    import pydicom

    _refuse_deflated(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)
    except Exception as exc:
        # pydicom raises many types on a damaged file: InvalidDicomError, EOFError, struct.error,
        # BytesLengthException, ... depending on where a half-finished copy ends.
        raise ImageDecodeError(path, f"not a readable DICOM file ({exc.__class__.__name__})") from exc


def _refuse_deflated(path: Path) -> None:
    """Refuse the Deflated transfer syntax before pydicom inflates the whole file into memory.

    Deflate can compress ~1000:1, so a small file (an upload) could inflate to gigabytes before any size
    check runs; pydicom offers no cap. Chest films are practically never stored deflated.
    """
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        syntax = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # no preamble or meta group: then there is no transfer syntax to inflate
        return
    if syntax == DeflatedExplicitVRLittleEndian:
        raise ImageDecodeError(
            path, "deflate-compressed DICOM is not supported", "re-save it uncompressed (e.g. dcmconv +te)"
        )


def _dicom_shape(path: Path, ds: Any) -> tuple[int, int]:
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        raise ImageDecodeError(path, "DICOM file has no Rows/Columns (is it an image?)")
    try:
        return int(rows), int(columns)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(path, "DICOM Rows/Columns are not whole numbers") from exc


def _load_dicom(path: Path) -> np.ndarray:
    ds = _read_dicom(path)
    _check_size(path, *_dicom_shape(path, ds))
    if "PixelData" not in ds:
        raise ImageDecodeError(path, "DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing codecs / bad data
        raise ImageDecodeError(
            path,
            f"cannot decode DICOM pixel data ({exc.__class__.__name__}: {exc})",
            "for compressed transfer syntaxes install pylibjpeg/gdcm, or convert to uncompressed DICOM",
        ) from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            image = _dicom_monochrome(ds, pixels)
            return 1.0 - image if photometric == "MONOCHROME1" else image
        return _dicom_colour(ds, pixels, photometric)
    except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError, IndexError) as exc:
        # TypeError: e.g. a text WindowCenter or RescaleSlope reaching numpy arithmetic
        raise ImageDecodeError(path, f"invalid DICOM pixel module ({exc.__class__.__name__})") from exc


def _dicom_monochrome(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI LUT through pydicom, scaled by the nominal range of the last step."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, ds)
    low, high = _modality_range(ds)
    if _has_voi_lut_sequence(ds):
        # The VOI LUT is indexed by integer modality output (PS3.3 C.11.2.1.1).
        values = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        low, high = 0.0, float(2**depth - 1)
    elif None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):  # pydicom's own test
        values = apply_voi_lut(values, ds, prefer_lut=True)
        # pydicom maps values far below/above the window to its output range ends; probing with
        # -inf/+inf reads that range from pydicom itself instead of re-deriving its rules here.
        with np.errstate(over="ignore", invalid="ignore"):
            ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=True)
        low, high = float(ends[0]), float(ends[1])
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("window center/width could not be applied")
    return _scale(np.asarray(values, dtype=np.float64), low, high)


def _modality_range(ds: Any) -> tuple[float, float]:
    """The nominal range of Modality LUT output: stored range (BitsStored) through rescale or the LUT."""
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        stored = np.array([0, 2**bits - 1], dtype=np.int64)
    ends = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def _has_voi_lut_sequence(ds: Any) -> bool:
    """The same test pydicom's ``apply_voi_lut`` uses to prefer the VOI LUT Sequence over windowing."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return False
    return None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData"))


def _dicom_colour(ds: Any, pixels: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        top = float(np.iinfo(rgb.dtype).max)
    else:  # pydicom's pixel_array already converts YBR to RGB
        rgb = pixels
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"unsupported photometric interpretation {photometric}")
    return _scale(rgb.astype(np.float64) @ _LUMA.astype(np.float64), 0.0, top)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
