"""read_mimic on small MIMIC-CXR-JPG trees built here in the real layout, clean and damaged."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radlens.core import InputError
from radlens.data import CHEXPERT_LABELS
from radlens.data.readers import read_dataset, read_mimic

PREFIX = "mimic-cxr-2.0.0"

# MIMIC reports indent every line and put a lone space on "blank" lines.
REPORT_1 = "\n".join(
    [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        " ",
        " INDICATION:  ___F with cough",
        " ",
        " FINDINGS:",
        " ",
        " There is a small right pleural effusion.  The heart size is normal.",
        " ",
        " IMPRESSION:",
        " ",
        " Small right pleural effusion.",
        "",
    ]
)
REPORT_2 = "FINDINGS: Lungs are clear.\n\nIMPRESSION: No acute cardiopulmonary process.\n"


def jpeg_bytes(size: int = 64, seed: int = 0) -> bytes:
    """A small noisy grayscale JPEG (noise keeps the scan data long enough to truncate mid-way)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def label_row(subject: str, study: str, **values: float) -> dict[str, object]:
    row: dict[str, object] = {"subject_id": subject, "study_id": study}
    row.update({name: values.get(name.replace(" ", "_"), np.nan) for name in CHEXPERT_LABELS})
    return row


# (subject, study, [(dicom, view, rows, cols)], report, labels, split)
STUDIES = [
    (
        "10000032",
        "50414267",
        [("d1", "PA", 64, 64), ("d2", "LATERAL", 64, 64)],
        REPORT_1,
        {"Pleural_Effusion": 1.0, "Cardiomegaly": 0.0, "Edema": -1.0},
        "train",
    ),
    ("10000032", "53189527", [("d3", "AP", 64, 64)], REPORT_2, {"No_Finding": 1.0}, "train"),
    ("10000764", "57375967", [("d4", "PA", 64, 64)], REPORT_2, {"No_Finding": 1.0, "Edema": 0.0}, "validate"),
    ("11000011", "51029426", [("d5", "LATERAL", 64, 64)], REPORT_1, {"Pleural_Effusion": 1.0}, "test"),
]


def build_mimic(root: Path, studies: list = STUDIES, gz: bool = True) -> Path:  # type: ignore[type-arg]
    """Write a MIMIC-CXR-JPG v2.0.0 tree: files/pNN/pSUBJECT/sSTUDY/*.jpg + .txt reports + 4 tables."""
    meta, split, labels = [], [], []
    for n, (subject, study, images, report, values, split_name) in enumerate(studies):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(report, encoding="utf-8")
        for dicom, view, rows, cols in images:
            (folder / f"s{study}" / f"{dicom}.jpg").write_bytes(jpeg_bytes(seed=n))
            meta.append(
                {
                    "dicom_id": dicom,
                    "subject_id": subject,
                    "study_id": study,
                    "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                    "ViewPosition": view,
                    "Rows": rows,
                    "Columns": cols,
                    "StudyDate": 21800506,
                }
            )
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split_name})
        labels.append(label_row(subject, study, **values))
    suffix = ".csv.gz" if gz else ".csv"
    compression = "gzip" if gz else None
    pd.DataFrame(meta).to_csv(root / f"{PREFIX}-metadata{suffix}", index=False, compression=compression)
    pd.DataFrame(split).to_csv(root / f"{PREFIX}-split{suffix}", index=False, compression=compression)
    for name in ("chexpert", "negbio"):
        pd.DataFrame(labels).to_csv(root / f"{PREFIX}-{name}{suffix}", index=False, compression=compression)
    return root


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mimic(tmp_path_factory.mktemp("mimic"))


def by_id(result):  # type: ignore[no-untyped-def]
    return {record.study_id: record for record in result.records}


def test_reads_every_study_with_ids_images_labels_split_and_report(mimic_root: Path) -> None:
    result = read_mimic(mimic_root)
    assert result.problems == []
    studies = by_id(result)
    assert set(studies) == {s[1] for s in STUDIES}
    first = studies["50414267"]
    assert first.subject_id == "10000032" and first.split == "train" and first.source == "mimic-cxr-jpg"
    assert [(i.image_id, i.view_position) for i in first.images] == [("d1", "PA"), ("d2", "LATERAL")]
    assert first.images[0].path == mimic_root / "files/p10/p10000032/s50414267/d1.jpg"
    assert first.images[0].path.is_file()
    assert first.images[0].metadata["height"] == 64 and first.images[0].metadata["StudyDate"] == "21800506"
    assert first.labels["Pleural Effusion"] == 1.0 and first.labels["Cardiomegaly"] == 0.0
    assert first.labels["Edema"] == -1.0 and first.labels["Pneumonia"] is None
    assert set(first.labels) == set(CHEXPERT_LABELS)
    assert first.positive_labels() == {"Pleural Effusion"}
    assert first.sections is not None
    assert first.sections.findings == "There is a small right pleural effusion. The heart size is normal."
    assert first.sections.impression == "Small right pleural effusion."
    assert first.report is not None and "FINAL REPORT" in first.report and "  " not in first.report
    assert studies["57375967"].split == "validate" and studies["51029426"].split == "test"


def test_uncompressed_tables_and_plain_text_under_gz_name_are_read(tmp_path: Path) -> None:
    plain = build_mimic(tmp_path / "plain", gz=False)
    assert len(read_mimic(plain).records) == len(STUDIES)
    mislabelled = build_mimic(tmp_path / "mislabelled")
    table = mislabelled / f"{PREFIX}-metadata.csv.gz"
    table.write_bytes(gzip.decompress(table.read_bytes()))  # plain CSV under the .gz name
    assert len(read_mimic(mislabelled).records) == len(STUDIES)


def test_view_split_and_label_filters(mimic_root: Path) -> None:
    pa = read_mimic(mimic_root, views=["pa"])
    assert {r.study_id for r in pa.records} == {"50414267", "57375967"}
    assert all(i.view_position == "PA" for r in pa.records for i in r.images)
    assert {r.study_id for r in read_mimic(mimic_root, splits=["train"]).records} == {"50414267", "53189527"}
    assert {r.study_id for r in read_mimic(mimic_root, splits=["val"]).records} == {"57375967"}
    effusion = read_mimic(mimic_root, require_labels=["pleural_effusion"])
    assert {r.study_id for r in effusion.records} == {"50414267", "51029426"}
    both = read_mimic(mimic_root, require_labels=["Pleural Effusion", "Edema"])  # Edema is -1: not positive
    assert both.records == [] and both.problems == []
    combined = read_dataset(mimic_root, "mimic", views=["LATERAL"], splits=["test"])
    assert [r.study_id for r in combined.records] == ["51029426"]
    # Every ViewPosition MIMIC-CXR-JPG's metadata uses is a valid filter, the rare LPO too.
    assert read_mimic(mimic_root, views=["lpo", "SWIMMERS", "xtable lateral"]).records == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"views": ["FRONT"]}, "unknown view"),
        ({"splits": ["holdout"]}, "unknown split"),
        ({"require_labels": ["Tumour"]}, "unknown observation"),
        ({"labeler": "radgraph"}, "unknown labeler"),
    ],
)
def test_bad_filter_values_are_input_errors(mimic_root: Path, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=message):
        read_mimic(mimic_root, **kwargs)


def test_negbio_labeler_reads_the_negbio_table(tmp_path: Path) -> None:
    root = build_mimic(tmp_path)
    frame = pd.read_csv(root / f"{PREFIX}-negbio.csv.gz")
    frame["Fracture"] = 1.0
    frame.to_csv(root / f"{PREFIX}-negbio.csv.gz", index=False, compression="gzip")
    assert all(r.labels["Fracture"] == 1.0 for r in read_mimic(root, labeler="negbio").records)
    assert all(r.labels["Fracture"] is None for r in read_mimic(root, labeler="chexpert").records)
    assert all(r.labels == {} for r in read_mimic(root, labeler=None).records)


def test_masks_and_separate_reports_root(tmp_path: Path) -> None:
    root = build_mimic(tmp_path / "data")
    masks = root / "masks/p10/p10000032/s50414267/d1"
    masks.mkdir(parents=True)
    for name in ("pleural_effusion.png", "anatomy_heart.png", "anatomy_left_lung.png", "notes.txt"):
        (masks / name).write_bytes(b"x")
    reports = tmp_path / "reports"
    for txt in (root / "files").rglob("*.txt"):
        target = reports / "files" / txt.relative_to(root / "files")
        target.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(target)
    with pytest.raises(InputError, match="none of the 4 report file") as caught:
        read_mimic(root)  # no report where looked for: the archive was not unpacked there
    assert "mimic-cxr-reports.zip" in (caught.value.hint or "") and str(root) in (caught.value.hint or "")
    studies = by_id(read_mimic(root, reports_root=reports))
    assert len(studies) == len(STUDIES)
    image = studies["50414267"].images[0]
    assert image.masks == {
        "Pleural Effusion": masks / "pleural_effusion.png",
        "anatomy:heart": masks / "anatomy_heart.png",
        "anatomy:left_lung": masks / "anatomy_left_lung.png",
    }
    assert studies["50414267"].images[1].masks == {}
    assert len(read_mimic(root, reports_root=reports / "files").records) == len(STUDIES)


def test_mimic_cxr_dicom_folder_is_named_in_the_error(tmp_path: Path) -> None:
    root = tmp_path / "mimic-cxr/2.0.0"  # MIMIC-CXR (DICOM): files/ tree and record lists, no metadata table
    (root / "files/p10/p10000032/s50414267").mkdir(parents=True)
    (root / "cxr-record-list.csv.gz").write_bytes(gzip.compress(b"subject_id,study_id,dicom_id,path\n"))
    with pytest.raises(InputError, match=r"metadata\.csv\.gz not found") as caught:
        read_mimic(root)
    assert "MIMIC-CXR (DICOM" in (caught.value.hint or "") and "mimic-cxr-jpg" in (caught.value.hint or "")


def damaged_tree(root: Path) -> Path:
    """A tree where every study but the first has exactly one kind of damage."""
    studies = [
        ("10000001", "50000001", [("ok", "PA", 64, 64)], REPORT_2, {"No_Finding": 1.0}, "train"),
        ("10000002", "50000002", [("noreport", "PA", 64, 64)], REPORT_2, {}, "train"),
        ("10000003", "50000003", [("latin1", "PA", 64, 64)], REPORT_2, {}, "train"),
        ("10000004", "50000004", [("empty", "PA", 64, 64)], REPORT_2, {}, "train"),
        ("10000005", "50000005", [("noimage", "PA", 64, 64)], REPORT_2, {}, "train"),
        ("10000006", "50000006", [("huge", "PA", 90000, 90000)], REPORT_2, {}, "train"),
        ("10000007", "50000007", [("truncated", "PA", 64, 64)], REPORT_2, {}, "train"),
        ("10000008", "50000008", [("badlabel", "PA", 64, 64)], REPORT_2, {"Edema": 2.0}, "train"),
    ]
    build_mimic(root, studies)
    folder = root / "files"
    (folder / "p10/p10000002/s50000002.txt").unlink()
    (folder / "p10/p10000003/s50000003.txt").write_bytes(
        "FINDINGS: Pleural effusion, r\xe9solue.".encode("latin-1")
    )
    (folder / "p10/p10000004/s50000004.txt").write_text("  \n\n  ", encoding="utf-8")
    (folder / "p10/p10000005/s50000005/noimage.jpg").unlink()
    jpeg = folder / "p10/p10000007/s50000007/truncated.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) * 2 // 3])
    return root


def test_damaged_items_are_skipped_and_each_recorded_never_silently(tmp_path: Path) -> None:
    root = damaged_tree(tmp_path)
    result = read_mimic(root, check_images="decode")
    assert [r.study_id for r in result.records] == ["50000001"]
    kinds = {Path(p.path).stem: p.reason.split(":")[0] for p in result.problems}
    assert kinds == {
        "s50000002": "report file missing",
        "s50000003": "report not UTF-8",
        "s50000004": "report empty",
        "noimage": "image file missing",
        "huge": "image size absurd",
        "truncated": "image unreadable",
        f"{PREFIX}-chexpert.csv": "label value invalid",
        # the studies whose only image failed are skipped as studies too
        "s50000005": "study skipped",
        "s50000006": "study skipped",
        "s50000007": "study skipped",
    }
    # every study of the tree is either read or named by a problem
    for n in range(1, 9):
        study = f"5000000{n}"
        assert study in {r.study_id for r in result.records} or any(
            study in p.path or study in p.reason for p in result.problems
        )


def test_header_check_misses_truncation_that_decode_catches(tmp_path: Path) -> None:
    root = damaged_tree(tmp_path)
    header = read_mimic(root, check_images="header")
    assert "50000007" in {r.study_id for r in header.records}  # the header of a cut JPEG is intact
    tiny = root / "files/p10/p10000001/s50000001/ok.jpg"
    tiny.write_bytes(tiny.read_bytes()[:40])
    kinds = {Path(p.path).name: p.reason for p in read_mimic(root, check_images="header").problems}
    assert kinds["ok.jpg"].startswith("image unreadable")


def test_image_of_absurd_size_on_disk_is_caught_by_the_header_check(tmp_path: Path) -> None:
    root = build_mimic(tmp_path)
    image = root / "files/p10/p10000764/s57375967/d4.jpg"
    Image.new("L", (4, 400)).save(image, "JPEG")
    assert len(read_mimic(root).records) == len(STUDIES)  # metadata says 64x64: not opened by default
    result = read_mimic(root, check_images="header")
    assert [(Path(p.path).name, p.reason.split(":")[0]) for p in result.problems] == [
        ("d4.jpg", "image unreadable"),
        ("s57375967", "study skipped"),
    ]


def test_strict_raises_at_the_first_problem_naming_the_file(tmp_path: Path) -> None:
    root = damaged_tree(tmp_path)
    with pytest.raises(InputError) as caught:
        read_mimic(root, strict=True)
    assert "label value invalid" in caught.value.message and "chexpert" in caught.value.message
    assert len(read_mimic(build_mimic(tmp_path / "clean"), strict=True).records) == len(STUDIES)


def test_corrupt_or_incomplete_tables(tmp_path: Path) -> None:
    root = build_mimic(tmp_path)
    labels = root / f"{PREFIX}-chexpert.csv.gz"
    labels.write_bytes(labels.read_bytes()[:30])  # truncated gzip stream
    result = read_mimic(root)
    assert len(result.records) == len(STUDIES) and all(r.labels == {} for r in result.records)
    assert [p.reason.split(":")[0] for p in result.problems] == ["table unreadable"]
    assert "damaged gzip" in result.problems[0].reason
    with pytest.raises(InputError, match="damaged gzip"):
        read_mimic(root, strict=True)
    with pytest.raises(InputError, match="damaged gzip"):
        read_mimic(root, require_labels=["Edema"])  # a filter that needs the table makes it required
    (root / f"{PREFIX}-split.csv.gz").unlink()
    kinds = [p.reason for p in read_mimic(root).problems]
    assert "table missing: studies get no split" in kinds
    with pytest.raises(InputError, match=r"split\.csv\.gz not found"):
        read_mimic(root, splits=["train"])


def test_metadata_problems_and_wrong_roots_are_input_errors(tmp_path: Path) -> None:
    root = build_mimic(tmp_path / "physionet.org/files/mimic-cxr-jpg/2.0.0")
    with pytest.raises(InputError, match=r"metadata\.csv\.gz not found") as caught:
        read_mimic(tmp_path)
    assert "did you mean" in (caught.value.hint or "") and "2.0.0" in (caught.value.hint or "")
    with pytest.raises(InputError, match="not found"):
        read_mimic(tmp_path / "nope")
    assert len(read_mimic(root).records) == len(STUDIES)
    (root / "files").rename(root / "elsewhere")
    (root / "files").mkdir()
    with pytest.raises(InputError, match="none of the 5 image"):
        read_mimic(root)
    metadata = root / f"{PREFIX}-metadata.csv.gz"
    frame = pd.read_csv(metadata).drop(columns=["study_id"])
    frame.to_csv(metadata, index=False, compression="gzip")
    with pytest.raises(InputError, match="lacks the column"):
        read_mimic(root)
    metadata.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match="damaged gzip"):
        read_mimic(root)


def test_many_studies_take_the_threaded_read_path_in_order(tmp_path: Path) -> None:
    studies = [
        (f"1{n:07d}", f"5{n:07d}", [(f"d{n}", "PA", 64, 64)], REPORT_1 if n % 2 else REPORT_2, {}, "train")
        for n in range(150)
    ]  # more than one chunk of listings and reports: prefetching threads are used
    root = build_mimic(tmp_path, studies)
    (root / "files/p10/p10000077/s50000077.txt").unlink()
    (root / "files/p10/p10000120/s50000120/d120.jpg").unlink()
    result = read_mimic(root)
    assert [r.study_id for r in result.records] == [
        s[1] for s in studies if s[1] not in {"50000077", "50000120"}
    ]
    assert [(Path(p.path).name, p.reason.split(":")[0]) for p in result.problems] == [
        ("d120.jpg", "image file missing"),
        ("s50000120", "study skipped"),
        ("s50000077.txt", "report file missing"),
    ]
    for record in result.records:  # each record got its own report back, not a neighbour's
        odd = int(record.study_id) % 2 == 1
        assert record.sections is not None
        assert (record.sections.findings == "Lungs are clear.") is not odd


def test_prefetch_keeps_order_and_returns_errors() -> None:
    from radlens.data.readers._common import prefetch, read_bytes

    assert list(prefetch(lambda x: x * x, list(range(1000)), chunk=7, ahead=3)) == [
        x * x for x in range(1000)
    ]
    assert list(prefetch(str, [], chunk=4)) == []
    (missing,) = prefetch(read_bytes, ["/nonexistent/radlens/report.txt"])
    assert isinstance(missing, FileNotFoundError)


def test_invalid_and_duplicate_index_rows_are_reported(tmp_path: Path) -> None:
    root = build_mimic(tmp_path / "m")
    table = root / f"{PREFIX}-metadata.csv.gz"
    frame = pd.read_csv(table, dtype=str)
    bad_id = {**frame.iloc[0].to_dict(), "dicom_id": "dx", "subject_id": "abc"}
    blank = {**frame.iloc[0].to_dict(), "dicom_id": "dy", "study_id": ""}
    duplicate = frame.iloc[2].to_dict()
    pd.DataFrame([*frame.to_dict("records"), bad_id, blank, duplicate]).to_csv(
        table, index=False, compression="gzip"
    )
    result = read_mimic(root)
    assert len(result.records) == len(STUDIES)  # the valid rows still make every study
    reasons = [p.reason for p in result.problems]
    count = len(frame)
    assert reasons == [
        f"index row invalid: data row {count + 1} has a blank or non-numeric id",
        f"index row invalid: data row {count + 2} has a blank or non-numeric id",
        f"index row duplicate: dicom_id d3 listed again in data row {count + 3}",
    ]
    assert all(Path(p.path) == table for p in result.problems)


def test_conflicting_label_rows_are_reported_and_the_first_is_used(tmp_path: Path) -> None:
    root = build_mimic(tmp_path / "m")
    table = root / f"{PREFIX}-chexpert.csv.gz"
    frame = pd.read_csv(table, dtype=str)
    first = frame[frame["study_id"] == "53189527"].iloc[0].to_dict()
    same, other = dict(first), {**first, "Edema": "1.0", "No Finding": ""}
    pd.DataFrame([*frame.to_dict("records"), same, other]).to_csv(table, index=False, compression="gzip")
    result = read_mimic(root)
    assert by_id(result)["53189527"].labels["No Finding"] == 1.0  # the first row's
    assert by_id(result)["53189527"].labels["Edema"] is None
    reasons = [p.reason for p in result.problems]
    assert reasons == [  # the identical repeat is harmless; the conflicting one is named
        f"label row conflicts: study 53189527 listed again in data row {len(frame) + 2}; the first row is used"
    ]
