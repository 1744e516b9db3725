"""Image → report search and upload safety: content decides (not the name), DICOM through the data layer,
size limits (413), pixel limits and decompression bombs (422), broken files (422)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import radlens.web._images as upload_decoding
from radlens.data.images import load_image
from radlens.web.app import Settings, create_app


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(pixels: np.ndarray, path: Path, **text_values: str) -> bytes:
    """An 8-bit MONOCHROME2 DICOM file of ``pixels``; ``text_values`` put text (VR LO) where the standard
    has numbers (``Rows="abc"``), as a malformed file may."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    for keyword, value in text_values.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, "LO", value)
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb's header)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def _search(client: Any, data: bytes, name: str = "x.png", **form: Any) -> Any:
    return client.post(
        "/api/search/image", files={"file": (name, data, "application/octet-stream")}, data=form
    )


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["study_id"] for hit in response.json()["results"]]


@pytest.fixture(scope="module")
def indexed(retriever: Any) -> tuple[Path, np.ndarray]:
    """An indexed image file and its pixels as uint8."""
    path = retriever.image_path(retriever.index.rows[4]["image_id"])
    return path, np.round(load_image(path) * 255).astype(np.uint8)


def test_image_search_returns_the_retrievers_reports(client: Any, retriever: Any, indexed: Any) -> None:
    path, _ = indexed
    response = _search(client, path.read_bytes(), "film.jpg", k=6)
    expected = retriever.search_image(path, k=6)
    assert _ids(response) == [hit.study_id for hit in expected]
    np.testing.assert_allclose(
        [h["score"] for h in response.json()["results"]], [h.score for h in expected], rtol=1e-5
    )
    assert all(isinstance(hit["impression"], str) for hit in response.json()["results"])


def test_a_waiting_image_query_holds_model_sized_pixels(
    app: Any, client: Any, indexed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload is resized on the image worker, so the search queue never holds a full film."""
    service = app.state.service
    queued: list[tuple[int, ...]] = []
    submit = service.search_queue.submit

    async def spy(query: Any) -> Any:
        queued.append(query.image.shape)
        return await submit(query)

    monkeypatch.setattr(service.search_queue, "submit", spy)
    side = service.retriever.embedder.image_size
    larger = np.kron(indexed[1], np.ones((3, 3), dtype=np.uint8))  # 3× the model's input a side
    assert larger.shape[0] > side
    assert _search(client, _png(larger), "film.png").status_code == 200
    assert queued == [(side, side)]


def test_content_decides_not_the_file_name(client: Any, indexed: Any, tmp_path: Path) -> None:
    path, pixels = indexed
    as_jpeg = _ids(_search(client, path.read_bytes(), "film.jpg"))
    assert _ids(_search(client, _png(pixels), "notes.txt")) == as_jpeg  # a PNG called .txt is a PNG
    assert _ids(_search(client, _dicom(pixels, tmp_path / "a.dcm"), "upload.bin")) == as_jpeg  # DICOM too
    refused = _search(client, b"GIF89a? no, just text pretending to be an image", "film.png")
    assert refused.status_code == 422
    assert "not a usable image" in refused.json()["detail"]


def test_image_search_applies_filters(client: Any, indexed: Any, retriever: Any) -> None:
    path, _ = indexed
    response = _search(client, path.read_bytes(), k=50, labels=["Pleural Effusion"])
    expected = {row["study_id"] for row in retriever.index.rows if row["labels"]["Pleural Effusion"] == 1}
    assert set(_ids(response)) == expected


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, "not a usable image"),  # a JPEG header and nothing else
        (_png(np.zeros((4, 4), np.uint8)), "smaller than 8"),
        (_png_claiming(30_000, 30_000), "limit"),  # 900 MP in a file of a few hundred bytes
    ],
)
def test_broken_tiny_and_bomb_images_are_422(client: Any, data: bytes, words: str) -> None:
    response = _search(client, data)
    assert response.status_code == 422
    assert words in response.json()["detail"]
    assert "/tmp" not in response.text and "radlens-upload" not in response.text  # no server paths


def test_truncated_jpeg_is_422(client: Any, indexed: Any) -> None:
    path, _ = indexed
    data = path.read_bytes()
    response = _search(client, data[: len(data) // 2], "cut.jpg")
    assert response.status_code == 422


@pytest.mark.parametrize(
    "text_values",
    [
        {"Rows": "abc"},
        {"WindowCenter": "abc", "WindowWidth": "400"},
        {"RescaleSlope": "abc", "RescaleIntercept": "0"},
    ],
    ids=["Rows", "WindowCenter", "RescaleSlope"],
)
def test_dicom_with_text_where_numbers_belong_is_422(
    client: Any, indexed: Any, tmp_path: Path, text_values: dict[str, str]
) -> None:
    _, pixels = indexed
    response = _search(client, _dicom(pixels, tmp_path / "film.dcm", **text_values), "film.dcm")
    assert response.status_code == 422, response.text
    assert "not a usable image" in response.json()["detail"]
    assert "/tmp" not in response.text and "radlens-upload" not in response.text


@pytest.mark.parametrize("where", ["probe_image", "load_image"])
@pytest.mark.parametrize("error", [ValueError, TypeError, struct.error, IndexError, RuntimeError])
def test_any_decoder_failure_is_422_without_its_message(
    client: Any, indexed: Any, monkeypatch: pytest.MonkeyPatch, where: str, error: type[Exception]
) -> None:
    """A decoder may fail with an exception the data layer does not translate: still the upload's fault."""

    def failing(path: Any) -> Any:
        raise error(f"cannot parse {path}: QUOKKA")  # a message naming the temporary file

    monkeypatch.setattr(upload_decoding, where, failing)
    path, _ = indexed
    response = _search(client, path.read_bytes(), "film.jpg")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "the upload is not a usable image" and body["hint"]
    assert "QUOKKA" not in response.text and "radlens-upload" not in response.text


def test_pixel_limit_applies_before_decoding(retriever: Any, indexed: Any) -> None:
    _, pixels = indexed
    with TestClient(create_app(retriever, Settings(max_pixels=1000))) as small:
        response = _search(small, _png(pixels))
    assert response.status_code == 422
    assert "MP limit" in response.json()["detail"]


def test_form_fields_are_validated(client: Any, indexed: Any) -> None:
    path, _ = indexed
    response = _search(client, path.read_bytes(), k=0)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "k"
    missing = client.post("/api/search/image", data={"k": "3"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "file"


@pytest.fixture(scope="module")
def limited(retriever: Any) -> Iterator[TestClient]:
    with TestClient(create_app(retriever, Settings(max_upload_mb=0.05))) as test_client:  # 51,200 bytes
        yield test_client


def _noise(size: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_upload_just_over_the_limit_is_413(limited: TestClient) -> None:
    response = _search(limited, _noise(60_000))
    assert response.status_code == 413
    assert "0.05 MB limit" in response.json()["detail"]


def test_declared_huge_upload_is_413_before_reading(limited: TestClient) -> None:
    response = _search(limited, _noise(400_000))
    assert response.status_code == 413
    assert "x-request-id" in response.headers


def test_streamed_upload_without_length_is_cut_off(limited: TestClient) -> None:
    boundary = "radlensboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(50):  # 50 × 16 KB: far past the limit
            yield _noise(16_384)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = limited.post(
        "/api/search/image",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413


def test_uploads_under_the_limit_still_work(limited: TestClient, indexed: Any) -> None:
    path, _ = indexed
    assert len(path.read_bytes()) < 51_200
    assert _search(limited, path.read_bytes(), "film.jpg").status_code == 200
