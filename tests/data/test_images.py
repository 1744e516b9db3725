"""Decoding: DICOM intensity pipeline against hand-computed values, PNG/JPEG, size policy, bad files."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radlens.core.errors import InputError
from radlens.data.images import MAX_PIXELS, ImageDecodeError, load_image, probe_image


def write_dicom(path: Path, stored: np.ndarray, bits_stored: int, **attributes: Any) -> Path:
    """An uncompressed single-frame DICOM file holding ``stored`` (2-D) as its stored pixel values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    signed = bool(attributes.pop("signed", False))
    ds.PixelRepresentation = int(signed)
    for name, value in attributes.items():
        setattr(ds, name, value)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = stored.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def tile(values: list[int], shape: tuple[int, int] = (8, 10)) -> np.ndarray:
    """``values`` along the first row, repeated to fill an image of ``shape`` (>= 8 px a side)."""
    return np.resize(np.array(values, dtype=np.int64), shape)


def first_values(image: np.ndarray, count: int) -> np.ndarray:
    return image.reshape(-1)[:count]


@pytest.mark.parametrize(
    ("bits", "values"), [(8, [0, 51, 255]), (12, [0, 1365, 4095]), (16, [0, 13107, 65535])]
)
def test_dicom_bit_depth_scales_by_bits_stored(tmp_path: Path, bits: int, values: list[int]) -> None:
    path = write_dicom(tmp_path / "a.dcm", tile(values), bits)
    image = load_image(path)
    assert image.dtype == np.float32 and image.shape == (8, 10)
    top = 2**bits - 1  # e.g. a 12-bit image is divided by 4095, not by its own maximum
    np.testing.assert_allclose(first_values(image, 3), np.array(values) / top, atol=1e-6)


def test_dicom_12_bit_without_full_range_is_not_stretched(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "dim.dcm", tile([0, 1000, 2000]), 12)
    np.testing.assert_allclose(first_values(load_image(path), 3), [0, 1000 / 4095, 2000 / 4095], atol=1e-6)


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "s.dcm", tile([-32768, 0, 32767]), 16, signed=True)
    np.testing.assert_allclose(first_values(load_image(path), 3), [0.0, 32768 / 65535, 1.0], atol=1e-6)


def test_dicom_rescale_then_linear_window(tmp_path: Path) -> None:
    # Stored s -> value v = 2 s - 1024 (RescaleSlope 2, RescaleIntercept -1024).
    # LINEAR window, center 0, width 401 (PS3.3 C.11.2.1.2.1): c' = -0.5, w' = 400;
    # v <= -200.5 -> 0; v > 199.5 -> 1; else (v + 0.5) / 400 + 0.5.
    stored = [0, 411, 412, 512, 562, 611, 612, 4095]
    expected = [0.0, 0.0, 0.00125, 0.50125, 0.75125, 0.99625, 1.0, 1.0]
    path = write_dicom(
        tmp_path / "w.dcm",
        tile(stored),
        12,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=401,
    )
    np.testing.assert_allclose(first_values(load_image(path), 8), expected, atol=1e-6)


def test_dicom_negative_rescale_slope_without_window(tmp_path: Path) -> None:
    # v = 255 - s over the nominal range [0, 255]: a high stored value is a low (dark) value.
    path = write_dicom(tmp_path / "n.dcm", tile([0, 51, 255]), 8, RescaleSlope=-1, RescaleIntercept=255)
    np.testing.assert_allclose(first_values(load_image(path), 3), [1.0, 0.8, 0.0], atol=1e-6)


def test_dicom_voi_lut_sequence_wins_over_window(tmp_path: Path) -> None:
    # LUT descriptor [entries=4, first mapped=10, 16 bits]: s < 10 -> LUT[0]; s >= 13 -> LUT[3].
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]
    item.add_new(0x00283006, "US", [0, 1000, 30000, 65535])  # LUT Data
    path = write_dicom(
        tmp_path / "l.dcm",
        tile([0, 10, 11, 12, 13, 200]),
        8,
        VOILUTSequence=[item],
        WindowCenter=5,
        WindowWidth=2,
    )
    expected = np.array([0, 0, 1000, 30000, 65535, 65535]) / 65535
    np.testing.assert_allclose(first_values(load_image(path), 6), expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m1.dcm", tile([0, 51, 255]), 8, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(first_values(load_image(path), 3), [1.0, 0.8, 0.0], atol=1e-6)


def test_dicom_probe_reads_rows_and_columns(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "p.dcm", np.zeros((9, 12)), 8)
    assert probe_image(path) == (9, 12)


def test_dicom_too_small_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "tiny.dcm", np.zeros((4, 12)), 8)
    with pytest.raises(ImageDecodeError, match="smaller than 8 px"):
        probe_image(path)
    with pytest.raises(ImageDecodeError, match="smaller than 8 px"):
        load_image(path)


def test_png_16_bit(tmp_path: Path) -> None:
    values = (np.arange(16 * 12).reshape(16, 12) * 300 + 7).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(image, values / 65535, atol=1e-6)
    assert probe_image(tmp_path / "a.png") == (16, 12)


def test_png_8_bit_gray_and_rgb(tmp_path: Path) -> None:
    gray = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_allclose(load_image(tmp_path / "g.png"), gray / 255, atol=1e-6)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[0, 3] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(load_image(tmp_path / "c.png")[0, :4], [0.299, 0.587, 0.114, 1.0], atol=1e-5)


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert probe_image(path) == (64, 64)  # the header is intact: probing is header-only
    with pytest.raises(ImageDecodeError, match="truncated") as caught:
        load_image(path)
    assert str(path) in caught.value.message and isinstance(caught.value, InputError)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(12_000, 9_000), (40_000, 40_000)])
def test_absurd_size_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    assert width * height > MAX_PIXELS
    path = png_header_only(tmp_path / "huge.png", width, height)
    for read in (probe_image, load_image):
        with pytest.raises(ImageDecodeError, match=r"pixel limit|MP limit"):
            read(path)


def test_tiny_png_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(ImageDecodeError, match="smaller than"):
        load_image(tmp_path / "t.png")


def test_missing_and_non_image_files(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG or DICOM"):
        probe_image(tmp_path / "notes.png")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path / "bad.dcm")


# ----------------------------------------------------------------------------- less common pixel modes


def test_pillow_modes_scale_to_unit_range(tmp_path: Path) -> None:
    """Each Pillow mode a dataset may hold maps to [0, 1] by its own nominal range."""
    bilevel = np.zeros((8, 8), dtype=bool)
    bilevel[0, :3] = True
    Image.fromarray(bilevel).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(load_image(tmp_path / "b.png")[0, :4], [1, 1, 1, 0])

    wide = np.resize(np.array([0, 1000, 65535], dtype=np.int32), (8, 8))  # 32-bit container, 16-bit values
    Image.fromarray(wide, mode="I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(load_image(tmp_path / "i.tif")[0, :3], [0, 1000 / 65535, 1.0], atol=1e-6)

    floats = np.resize(np.array([0.0, 0.25, 1.0], dtype=np.float32), (8, 8))
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(tmp_path / "f.tif")[0, :3], [0.0, 0.25, 1.0], atol=1e-7)

    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    palette.putdata([0, 1, 2] + [0] * 61)
    palette.save(tmp_path / "p.png")
    expected = [0.0, 1.0, round(0.299 * 255) / 255]  # Pillow's own L conversion of pure red
    np.testing.assert_allclose(load_image(tmp_path / "p.png")[0, :3], expected, atol=1 / 255)


@pytest.mark.parametrize(
    ("array", "mode", "message"),
    [
        (np.full((8, 8), 70_000, dtype=np.int32), "I", "32-bit integer"),
        (np.full((8, 8), 2.5, dtype=np.float32), "F", r"outside \[0, 1\]"),
    ],
)
def test_out_of_range_wide_pixels_are_refused(
    tmp_path: Path, array: np.ndarray, mode: str, message: str
) -> None:
    Image.fromarray(array, mode=mode).save(tmp_path / "x.tif")
    with pytest.raises(ImageDecodeError, match=message):
        load_image(tmp_path / "x.tif")


def test_dicom_rgb_is_converted_to_luma(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2], rgb[0, 3] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    path = write_dicom(tmp_path / "rgb.dcm", np.zeros((8, 8)), 8)
    ds = dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(load_image(path)[0, :4], [0.299, 0.587, 0.114, 1.0], atol=1e-5)


def test_dicom_palette_colour_goes_through_its_lut(tmp_path: Path) -> None:
    # Index i -> (red, green, blue) = (i, 0, 0) * 257 in 16-bit entries: luma 0.299 * i / 255.
    path = write_dicom(
        tmp_path / "pal.dcm", tile([0, 100, 255]), 8, PhotometricInterpretation="PALETTE COLOR"
    )
    ds = dcmread(path)
    ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    zeros = np.zeros(256, dtype=np.uint16).tobytes()
    for offset, data in enumerate((ramp, zeros, zeros)):  # red, green, blue
        ds.add_new(0x00281101 + offset, "US", [256, 0, 16])  # (Colour) Palette LUT Descriptor
        ds.add_new(0x00281201 + offset, "OW", data)  # (Colour) Palette LUT Data
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(first_values(load_image(path), 3), [0.0, 0.299 * 100 / 255, 0.299], atol=1e-5)


def test_dicom_multi_frame_reads_the_first_frame(tmp_path: Path) -> None:
    frames = np.stack([tile([0, 51, 255]), tile([255, 255, 255])])
    path = write_dicom(tmp_path / "mf.dcm", frames[0], 8)
    ds = dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(first_values(load_image(path), 3), [0.0, 0.2, 1.0], atol=1e-6)


def test_dicom_without_pixel_data_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "np.dcm", np.zeros((8, 8)), 8)
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        load_image(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom on a cut UID: expected
def test_dicom_cut_anywhere_is_an_image_decode_error(tmp_path: Path) -> None:
    """A half-copied DICOM file fails as ImageDecodeError wherever it ends (pydicom raises struct.error,
    EOFError or ValueError depending on where the cut falls)."""
    whole = write_dicom(tmp_path / "whole.dcm", tile([0, 51, 255]), 8).read_bytes()
    path = tmp_path / "cut.dcm"
    for end in range(132, len(whole) - 1, 3):
        path.write_bytes(whole[:end])
        for read in (probe_image, load_image):
            with contextlib.suppress(ImageDecodeError):  # anything else fails the test
                read(path)


def test_deflated_dicom_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """A deflated file inflates ~1000:1 inside pydicom before any size check: refuse it from its meta."""
    path = write_dicom(tmp_path / "d.dcm", tile([0, 51, 255]), 8)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new(0x00091010, "OB", bytes(4 * 1024 * 1024))  # zeros: 4 MB that deflate to a few KB
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 64 * 1024
    for read in (probe_image, load_image):
        with pytest.raises(ImageDecodeError, match="deflate-compressed DICOM is not supported"):
            read(path)


@pytest.mark.parametrize(
    ("text_values", "message"),
    [
        ({"Rows": "abc"}, "Rows/Columns are not whole numbers"),
        ({"WindowCenter": "abc", "WindowWidth": "10"}, "invalid DICOM pixel module"),
        ({"RescaleSlope": "abc", "RescaleIntercept": "0"}, "invalid DICOM pixel module"),
    ],
)
def test_dicom_text_where_numbers_belong_is_an_image_decode_error(
    tmp_path: Path, text_values: dict[str, str], message: str
) -> None:
    path = write_dicom(tmp_path / "t.dcm", tile([0, 51, 255]), 8)
    ds = dcmread(path)
    for keyword, value in text_values.items():  # a text value (VR LO) where a number belongs
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, "LO", value)
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match=message):
        load_image(path)
