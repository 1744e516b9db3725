"""read_table (CSV / JSONL of images and texts) and read_slices (folders of PNG / DICOM slices)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from radlens.core import InputError
from radlens.data.readers import read_dataset, read_slices, read_table


def png(path: Path, size: tuple[int, int] = (32, 24), value: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=value).save(path)
    return path


def dicom(path: Path, instance: int, series_uid: str, value: int = 100) -> Path:
    """A tiny uncompressed CT slice written with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series_uid, instance
    ds.SliceLocation = float(instance) * 2.5
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.full((16, 16), value, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


CSV = """image,text,study_id,subject_id,split,view,Pleural Effusion,edema,age
img/a1.png,"FINDINGS: Small left effusion.
IMPRESSION: Effusion.",s1,p1,train,PA,1,0,70
img/a2.png,"FINDINGS: Small left effusion.
IMPRESSION: Effusion.",s1,p1,train,LATERAL,1,0,70
img/b.png,Lungs are clear.,s2,p2,validation,AP,,-1,55
"""


def test_csv_rows_group_into_studies_with_labels_sections_and_metadata(tmp_path: Path) -> None:
    for name in ("a1", "a2", "b"):
        png(tmp_path / "img" / f"{name}.png")
    (tmp_path / "table.csv").write_text(CSV, encoding="utf-8")
    result = read_table(tmp_path / "table.csv")
    assert result.problems == []
    first, second = result.records
    assert (first.study_id, first.subject_id, first.split, first.source) == ("s1", "p1", "train", "table")
    assert [(i.image_id, i.view_position) for i in first.images] == [("a1", "PA"), ("a2", "LATERAL")]
    assert first.images[0].path == tmp_path / "img/a1.png"
    assert first.labels == {"Pleural Effusion": 1.0, "Edema": 0.0}
    assert first.sections is not None and first.sections.findings == "Small left effusion."
    assert first.sections.impression == "Effusion." and first.metadata == {"age": "70"}
    assert second.split == "validate" and second.labels == {"Pleural Effusion": None, "Edema": -1.0}
    assert second.report_text() == "Lungs are clear."
    assert [r.study_id for r in read_dataset(tmp_path / "table.csv", "csv", views=["AP"]).records] == ["s2"]
    assert [
        r.study_id for r in read_table(tmp_path / "table.csv", require_labels=["Pleural Effusion"]).records
    ] == ["s1"]


def test_jsonl_with_other_column_names_and_no_study_id(tmp_path: Path) -> None:
    image = png(tmp_path / "images" / "x.png")
    rows = [{"path": "images/x.png", "report": "No acute process.", "pleural_effusion": 0},
            {"path": str(image), "report": "Right effusion.", "Pleural Effusion": 1}]  # fmt: skip
    table = tmp_path / "data.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    result = read_table(table)
    assert result.problems == []
    assert [r.study_id for r in result.records] == ["images/x.png", str(image)]  # the image path as id
    assert [r.labels["Pleural Effusion"] for r in result.records] == [0.0, 1.0]
    assert all(r.subject_id == r.study_id and r.images[0].path == image for r in result.records)


def test_jsonl_with_a_byte_order_mark_keeps_its_first_row(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    rows = [
        {"image": "a.png", "text": "Clear.", "study_id": "s1"},
        {"image": "b.png", "text": "Clear.", "study_id": "s2"},
    ]
    (tmp_path / "t.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode())
    result = read_table(tmp_path / "t.jsonl")
    assert [r.study_id for r in result.records] == ["s1", "s2"] and result.problems == []


def test_table_without_text_column_reads_images_only(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("filename,Cardiomegaly\na.png,1\n", encoding="utf-8")
    (record,) = read_table(tmp_path / "t.csv").records
    assert record.report is None and record.labels == {"Cardiomegaly": 1.0}


def test_bad_rows_are_skipped_and_recorded(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    png(tmp_path / "small.png", size=(4, 4))
    lines = [
        json.dumps({"image": "ok.png", "text": "Clear lungs.", "study_id": "s1"}),
        json.dumps({"image": "missing.png", "text": "Clear lungs.", "study_id": "s2"}),
        json.dumps({"image": "ok.png", "text": "   ", "study_id": "s3"}),
        json.dumps({"image": "ok.png", "text": "Clear.", "study_id": "s4", "Edema": "maybe"}),
        '{"image": "ok.png", "text": ',
        json.dumps({"image": "ok.png", "text": "Different text.", "study_id": "s1"}),
        json.dumps({"text": "no image", "image": ""}),
        json.dumps({"image": "small.png", "text": "Tiny.", "study_id": "s5"}),
        json.dumps({"image": "ok.png", "text": "Clear.", "study_id": "s6", "Edema": [1]}),
    ]
    table = tmp_path / "t.jsonl"
    table.write_bytes("\n".join(lines).encode() + b'\n{"image": "ok.png", "text": "caf\xe9"}\n')
    result = read_table(table, check_images="header")
    assert [r.study_id for r in result.records] == ["s1"]
    kinds = [(p.path.rsplit(":", 1)[-1] if ".jsonl:" in p.path else Path(p.path).name, p.reason.split(":")[0])
             for p in result.problems]  # fmt: skip
    assert sorted(kinds) == sorted([
        ("5", "row malformed"), ("10", "row not UTF-8"), ("missing.png", "image file missing"),
        ("3", "report empty"), ("4", "label value invalid"), ("6", "row conflicts"),
        ("7", "row without image path"), ("small.png", "image unreadable"), ("9", "label value invalid"),
    ])  # fmt: skip
    with pytest.raises(InputError, match="row malformed"):
        read_table(table, strict=True)


def test_table_level_errors(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("picture,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(InputError, match="no image column"):
        read_table(tmp_path / "t.csv")
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match="unknown table type"):
        read_table(tmp_path / "t.parquet")
    (tmp_path / "latin.csv").write_bytes(b"image,text\na.png,caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_table(tmp_path / "latin.csv")
    packed = bytearray(gzip.compress(b'{"image": "a.png", "text": "x"}\n' * 50))
    packed[10] ^= 0xFF  # a bad byte in the deflate stream: zlib.error, where a short file gives EOFError
    (tmp_path / "bad.jsonl.gz").write_bytes(packed)
    with pytest.raises(InputError, match="damaged gzip file"):
        read_table(tmp_path / "bad.jsonl.gz")
    (tmp_path / "gone.csv").write_text("image,text\nnope/a.png,x\nnope/b.png,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="none of the 2 image"):
        read_table(tmp_path / "gone.csv")


def test_slices_one_record_per_slice_grouped_and_ordered(tmp_path: Path) -> None:
    root = tmp_path / "slices"
    for name in ("10.png", "2.png", "1.png"):
        png(root / "series_a" / name, value=int(name.split(".")[0]))
    uid = generate_uid()
    dicom(root / "ct" / "b" / "x.dcm", instance=3, series_uid=uid)  # names disagree with instance order
    dicom(root / "ct" / "b" / "y.dcm", instance=1, series_uid=uid)
    dicom(root / "ct" / "b" / "z.dcm", instance=2, series_uid=uid)
    png(root / "top.png")
    (root / "notes.txt").write_text("not a slice")
    result = read_dataset(root, "slices")
    assert result.problems == []
    order = [(r.subject_id, r.images[0].image_id, r.metadata["slice_index"]) for r in result.records]
    assert order == [(".", "top", 0), ("ct/b", "y", 0), ("ct/b", "z", 1), ("ct/b", "x", 2),
                     ("series_a", "1", 0), ("series_a", "2", 1), ("series_a", "10", 2)]  # fmt: skip
    ct = [r for r in result.records if r.subject_id == "ct/b"]
    assert [r.metadata["InstanceNumber"] for r in ct] == [1, 2, 3] and ct[0].metadata["Modality"] == "CT"
    assert ct[0].metadata["SeriesInstanceUID"] == uid and ct[0].metadata["num_slices"] == 3
    assert ct[0].study_id == "ct/b/y" and ct[0].report is None and ct[0].images[0].path.is_file()


def test_bad_slices_are_skipped_and_recorded(tmp_path: Path) -> None:
    png(tmp_path / "s" / "1.png")
    bad = png(tmp_path / "s" / "2.png")
    bad.write_bytes(bad.read_bytes()[:50])
    (tmp_path / "s" / "3.dcm").write_bytes(b"this is not dicom at all" * 10)
    whole = dicom(tmp_path / "s" / "5.dcm", instance=5, series_uid=generate_uid()).read_bytes()
    (tmp_path / "s" / "5.dcm").write_bytes(whole[:154])  # cut inside the header: an interrupted copy
    deflated = dcmread(dicom(tmp_path / "s" / "6.dcm", instance=6, series_uid=generate_uid()))
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # refused before inflating
    deflated.save_as(tmp_path / "s" / "6.dcm", enforce_file_format=True)
    dicom(tmp_path / "s" / "4.dcm", instance=4, series_uid=generate_uid())
    result = read_slices(tmp_path, check_images="decode")
    assert [r.images[0].image_id for r in result.records] == ["1", "4"]
    assert [(Path(p.path).name, p.reason.split(":")[0]) for p in result.problems] == [
        ("2.png", "image unreadable"),
        ("3.dcm", "image unreadable"),
        ("5.dcm", "image unreadable"),
        ("6.dcm", "image unreadable"),
    ]
    assert "deflate-compressed DICOM is not supported" in result.problems[-1].reason
    header_only = read_slices(tmp_path)  # no image check: the header read itself refuses to inflate
    assert [Path(p.path).name for p in header_only.problems] == ["3.dcm", "5.dcm", "6.dcm"]
    assert [r.metadata["slice_index"] for r in result.records] == [0, 1]
    with pytest.raises(InputError, match=r"2\.png: image unreadable"):
        read_slices(tmp_path, check_images="decode", strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG or DICOM slices"):
        read_slices(tmp_path / "empty")


def test_read_dataset_rejects_unknown_formats_and_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset format"):
        read_dataset(tmp_path, "nifti")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no option views"):
        read_dataset(tmp_path, "slices", views=["PA"])
