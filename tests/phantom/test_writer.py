"""RadPhantom dataset writer: MIMIC-CXR-JPG layout, tables, masks, determinism and atomicity."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import radlens.phantom.writer as writer
from radlens.core import InputError
from radlens.data.readers.mimic import read_mimic
from radlens.data.schema import CHEXPERT_LABELS, SPLITS
from radlens.phantom.render import mask_slug
from radlens.phantom.report import labels_for, write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import SPATIAL_FINDINGS, ConfounderConfig, PhantomConfig, StudySpec

SIZE = 64
CONFIG = PhantomConfig(
    studies=30,
    size=SIZE,
    seed=7,
    workers=1,
    confounder=ConfounderConfig(
        enabled=True, finding="Pleural Effusion", probability=1.0, probability_without=0.1
    ),
)
DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "one_worker"
    manifest = writer.generate_dataset(CONFIG, out)
    return out, manifest


@pytest.fixture(scope="module")
def specs() -> list[StudySpec]:
    return sample_studies(CONFIG)


def _table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_mimic_cxr_jpg(dataset: tuple[Path, dict], specs: list[StudySpec]) -> None:
    root, _ = dataset
    expected = {"files", "masks", "manifest.json", "config.yaml", "versions.json"} | {
        f"mimic-cxr-2.0.0-{name}.csv.gz" for name in ("metadata", "split", "chexpert", "negbio")
    }
    assert {p.name for p in root.iterdir()} == expected
    for spec in specs:
        subject_dir = root / "files" / f"p{str(spec.subject_id)[:2]}" / f"p{spec.subject_id}"
        image = subject_dir / f"s{spec.study_id}" / f"{spec.dicom_id}.jpg"
        with Image.open(image) as picture:
            assert picture.format == "JPEG" and picture.mode == "L" and picture.size == (SIZE, SIZE)
        assert (subject_dir / f"s{spec.study_id}.txt").read_text(encoding="utf-8") == write_report(spec)
    images = list((root / "files").rglob("*.jpg"))
    reports = list((root / "files").rglob("*.txt"))
    assert len(images) == len(reports) == len(specs)
    pattern = re.compile(r"^files/p(\d\d)/p(\1\d{6})/s(5\d{7})(/[0-9a-f-]{44}\.jpg|\.txt)$")
    assert all(pattern.match(str(p.relative_to(root))) for p in images + reports)


def test_tables_have_mimic_columns_and_ids(dataset: tuple[Path, dict], specs: list[StudySpec]) -> None:
    root, _ = dataset
    columns, metadata = _table(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert columns == [
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]
    assert [row["dicom_id"] for row in metadata] == [s.dicom_id for s in specs]
    for row, spec in zip(metadata, specs, strict=True):
        assert DICOM_ID.match(row["dicom_id"])
        assert (
            10_000_000 <= int(row["subject_id"]) <= 19_999_999 and int(row["subject_id"]) == spec.subject_id
        )
        assert 50_000_000 <= int(row["study_id"]) <= 59_999_999 and int(row["study_id"]) == spec.study_id
        assert row["ViewPosition"] == spec.anatomy.view and row["Rows"] == row["Columns"] == str(SIZE)
        meaning = {"PA": "postero-anterior", "AP": "antero-posterior"}[spec.anatomy.view]
        assert row["ViewCodeSequence_CodeMeaning"] == meaning
        assert re.fullmatch(r"2[12]\d{6}", row["StudyDate"]) and 0 <= float(row["StudyTime"]) < 240000
    by_subject: dict[str, list[str]] = {}
    for row in metadata:
        by_subject.setdefault(row["subject_id"], []).append(row["StudyDate"])
    assert all(dates == sorted(dates) for dates in by_subject.values())  # a subject's studies in order

    columns, splits = _table(root / "mimic-cxr-2.0.0-split.csv.gz")
    assert columns == ["dicom_id", "study_id", "subject_id", "split"]
    split_of: dict[str, set[str]] = {}
    for row in splits:
        split_of.setdefault(row["subject_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())  # split by subject
    assert {s for group in split_of.values() for s in group} == set(SPLITS)

    for name in ("chexpert", "negbio"):
        columns, labels = _table(root / f"mimic-cxr-2.0.0-{name}.csv.gz")
        assert columns == ["subject_id", "study_id", *CHEXPERT_LABELS]
        for row, spec in zip(labels, specs, strict=True):
            expected = labels_for(spec)
            assert {row[n] for n in CHEXPERT_LABELS} <= {"1.0", "0.0", "-1.0", ""}
            assert [row[n] for n in CHEXPERT_LABELS] == [
                "" if expected[n] is None else str(expected[n]) for n in CHEXPERT_LABELS
            ]


def test_gzip_headers_carry_no_time_or_name(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for path in root.glob("*.csv.gz"):
        header = path.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b" and header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"


def test_label_one_exactly_when_mask_drawn(dataset: tuple[Path, dict], specs: list[StudySpec]) -> None:
    root, _ = dataset
    confounders = 0
    for spec in specs:
        folder = root / "masks" / f"p{str(spec.subject_id)[:2]}" / f"p{spec.subject_id}" / f"s{spec.study_id}"
        files = {p.name for p in (folder / spec.dicom_id).iterdir()}
        positive = {n for n, v in labels_for(spec).items() if v == 1.0 and n in SPATIAL_FINDINGS}
        assert {f[:-4] for f in files if not f.startswith("anatomy_")} == {mask_slug(n) for n in positive}
        anatomy = {
            "anatomy_heart.png",
            "anatomy_right_lung.png",
            "anatomy_left_lung.png",
            "anatomy_thorax.png",
        }
        assert anatomy <= files
        assert ("anatomy_confounder.png" in files) == spec.confounder
        confounders += spec.confounder
        for name in files:
            with Image.open(folder / spec.dicom_id / name) as mask:
                assert mask.mode in ("1", "L") and mask.size == (SIZE, SIZE)
                assert np.asarray(mask).any(), (spec.study_id, name)  # drawn: non-empty
    assert confounders > 0


def test_manifest_counts_match_files(dataset: tuple[Path, dict], specs: list[StudySpec]) -> None:
    root, manifest = dataset
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == CONFIG.seed and manifest["config"]["studies"] == CONFIG.studies
    counts = manifest["counts"]
    assert counts["studies"] == len(specs) and counts["subjects"] == len({s.subject_id for s in specs})
    assert manifest["files"]["masks"] == len(list((root / "masks").rglob("*.png")))
    for name in CHEXPERT_LABELS:
        assert counts["labels"][name]["positive"] == sum(labels_for(s)[name] == 1.0 for s in specs)
    assert sum(v["studies"] for v in counts["splits"].values()) == len(specs)
    assert sum(counts["views"].values()) == len(specs)
    assert (
        "PhantomConfig" not in (root / "config.yaml").read_text()
        and "seed: 7" in (root / "config.yaml").read_text()
    )


def test_reader_reads_it_back(dataset: tuple[Path, dict], specs: list[StudySpec]) -> None:
    root, _ = dataset
    result = read_mimic(root)
    assert not result.problems and len(result.records) == len(specs)
    by_study = {r.study_id: r for r in result.records}
    for spec in specs:
        record = by_study[str(spec.study_id)]
        assert record.labels == labels_for(spec)
        assert record.images[0].image_id == spec.dicom_id
        assert {n for n, v in record.labels.items() if v == 1.0 and n in SPATIAL_FINDINGS} <= set(
            record.images[0].masks
        )


def test_same_bytes_again_and_with_two_workers(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    """A second run, on two worker processes instead of one, writes the very same bytes."""
    root, _ = dataset
    writer.generate_dataset(CONFIG.model_copy(update={"workers": 2}), tmp_path / "two")
    first = _all_files(root)
    assert _all_files(tmp_path / "two") == first
    writer.generate_dataset(CONFIG.model_copy(update={"seed": 8, "studies": 4}), tmp_path / "other")
    other = _all_files(tmp_path / "other")
    assert not set(other) & {name for name in first if name.startswith(("files", "masks"))}  # other ids


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = writer.render_study

    def flaky(spec: StudySpec, size: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if Ctrl-C arrived mid-way
        return real(spec, size)

    monkeypatch.setattr(writer, "render_study", flaky)
    with pytest.raises(KeyboardInterrupt):
        writer.generate_dataset(CONFIG.model_copy(update={"studies": 8}), tmp_path / "out")
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary leftovers

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("old")
    (previous / "versions.json").write_text("{}")  # an earlier run's output: --overwrite may replace it
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        writer.generate_dataset(CONFIG.model_copy(update={"studies": 8}), previous, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]
    assert sorted(p.name for p in previous.iterdir()) == ["keep.txt", "versions.json"]  # untouched


def test_failing_worker_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIG.model_copy(update={"studies": 24, "workers": 2})
    doomed = sample_studies(config)[13].study_id
    real = writer.render_study

    def broken(spec: StudySpec, size: int):  # type: ignore[no-untyped-def]
        if spec.study_id == doomed:
            raise RuntimeError("renderer failed")
        return real(spec, size)

    monkeypatch.setattr(writer, "render_study", broken)  # forked workers inherit the patch
    with pytest.raises(RuntimeError, match="renderer failed"):
        writer.generate_dataset(config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        writer.generate_dataset(CONFIG.model_copy(update={"studies": 2}), tmp_path)
    with pytest.raises(InputError, match="holds files radlens did not write"):
        writer.generate_dataset(CONFIG.model_copy(update={"studies": 2}), tmp_path, overwrite=True)
    writer.generate_dataset(CONFIG.model_copy(update={"studies": 2}), tmp_path / "run")
    writer.generate_dataset(CONFIG.model_copy(update={"studies": 3}), tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["counts"]["studies"] == 3


def test_split_fractions_by_subject() -> None:
    specs = sample_studies(PhantomConfig(studies=2000, studies_per_subject=(1, 1)))
    split_of = writer._assign_splits(specs, seed=0)
    fractions = {s: sum(v == s for v in split_of.values()) / len(split_of) for s in SPLITS}
    assert 0.88 <= fractions["train"] <= 0.92 and 0.04 <= fractions["test"] <= 0.06
    few = sample_studies(PhantomConfig(studies=3, studies_per_subject=(1, 1)))
    assert sorted(writer._assign_splits(few, seed=0).values()) == ["test", "train", "validate"]
    assert set(writer._assign_splits(few[:2], seed=0).values()) == {"train"}


def test_jpeg_is_lossy_but_close() -> None:
    gradient = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    decoded = np.asarray(Image.open(io.BytesIO(writer._jpeg(gradient))))
    assert decoded.shape == gradient.shape and np.abs(decoded.astype(int) - gradient).max() <= 3


@pytest.mark.parametrize("shape", [(64, 64), (13, 37), (1, 9), (256, 256)])
def test_png_encoder_matches_pillow(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.3
    mask[: shape[0] // 2, : shape[1] // 2] = True
    with Image.open(io.BytesIO(writer._png_1bit(mask))) as decoded:
        decoded.load()
        assert decoded.format == "PNG" and decoded.mode == "1" and decoded.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(decoded), mask)
        assert np.array_equal(np.asarray(decoded.convert("L")) > 0, mask)
