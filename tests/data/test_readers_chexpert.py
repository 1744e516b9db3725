"""read_chexpert_csv on a small CheXpert-v1.0-small tree built here (train.csv / valid.csv + JPEGs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from radlens.core import InputError
from radlens.data import CHEXPERT_LABELS
from radlens.data.readers import read_chexpert_csv, read_dataset

# CheXpert's own column order (not MIMIC's).
CHEXPERT_COLUMNS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]  # fmt: skip
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_COLUMNS)


def row(path: str, sex: str, age: int, fl: str, appa: str, **labels: str) -> str:
    values = [labels.get(name.replace(" ", "_"), "") for name in CHEXPERT_COLUMNS]
    return ",".join([path, sex, str(age), fl, appa, *values])


ROWS = [
    row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
        No_Finding="1.0"),
    row("CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg", "Female", 87, "Frontal", "AP",
        Cardiomegaly="-1.0", Pleural_Effusion="1.0", Edema="0.0"),
    row("CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg", "Female", 87, "Lateral", "",
        Cardiomegaly="-1.0", Pleural_Effusion="1.0", Edema="0.0"),
    row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Female", 83, "Frontal", "PA",
        Fracture="1.0"),
]  # fmt: skip
VALID = [
    row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP",
        Support_Devices="1.0"),
]  # fmt: skip


def build_chexpert(root: Path, rows: list[str] = ROWS, valid: list[str] = VALID) -> Path:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` with images under the same folder."""
    folder = root / "CheXpert-v1.0-small"
    for name, lines in (("train.csv", rows), ("valid.csv", valid)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
        for line in lines:
            image = root / line.split(",")[0]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (32, 40), color=100).save(image)
    return folder / "train.csv"


def test_groups_views_into_studies_with_labels_views_and_split(tmp_path: Path) -> None:
    train = build_chexpert(tmp_path)
    result = read_chexpert_csv(train)
    assert result.problems == []
    studies = {r.study_id: r for r in result.records}
    assert list(studies) == ["patient00001_study1", "patient00002_study2", "patient00002_study1"]
    two = studies["patient00002_study2"]
    assert two.subject_id == "patient00002" and two.split == "train" and two.source == "chexpert"
    assert [(i.image_id, i.view_position) for i in two.images] == [
        ("view1_frontal", "AP"),
        ("view2_lateral", "LATERAL"),
    ]
    assert two.images[0].path == tmp_path / "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg"
    assert two.labels["Pleural Effusion"] == 1.0 and two.labels["Cardiomegaly"] == -1.0
    assert (
        two.labels["Edema"] == 0.0
        and two.labels["Pneumonia"] is None
        and set(two.labels) == set(CHEXPERT_LABELS)
    )
    assert two.metadata == {"Sex": "Female", "Age": "87"} and two.report is None and two.sections is None
    assert studies["patient00002_study1"].images[0].view_position == "PA"
    valid = read_chexpert_csv(train.parent / "valid.csv")
    assert [(r.study_id, r.split) for r in valid.records] == [("patient64541_study1", "validate")]


def test_filters_and_explicit_image_root(tmp_path: Path) -> None:
    train = build_chexpert(tmp_path)
    lateral = read_dataset(train, "chexpert", views=["LATERAL"])
    assert [(r.study_id, len(r.images)) for r in lateral.records] == [("patient00002_study2", 1)]
    positive = read_chexpert_csv(train, require_labels=["Fracture"])
    assert [r.study_id for r in positive.records] == ["patient00002_study1"]
    assert read_chexpert_csv(train, splits=["test"]).records == []
    train.rename(tmp_path / "train.csv")  # now the Path column is relative to the CSV's own folder
    assert len(read_chexpert_csv(tmp_path / "train.csv").records) == 3
    assert len(read_chexpert_csv(tmp_path / "train.csv", image_root=tmp_path).records) == 3
    with pytest.raises(InputError, match="none of the 4 image") as caught:
        read_chexpert_csv(tmp_path / "train.csv", image_root=tmp_path / "CheXpert-v1.0-small")
    assert "--images-root" not in (caught.value.hint or "")  # no command has that option


def test_bad_rows_are_skipped_and_recorded(tmp_path: Path) -> None:
    rows = [
        *ROWS,
        row("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA",
            Edema="2.0"),
        row("CheXpert-v1.0-small/train/not-a-patient/view1.jpg", "Male", 50, "Frontal", "PA"),
        row("CheXpert-v1.0-small/train/patient00002/study2/view3_frontal.jpg", "Female", 87, "Frontal", "AP",
            Pleural_Effusion="0.0"),
    ]  # fmt: skip
    train = build_chexpert(tmp_path, rows)
    (tmp_path / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg").unlink()
    result = read_chexpert_csv(train)
    assert [r.study_id for r in result.records] == ["patient00002_study2", "patient00002_study1"]
    assert len(result.records[0].images) == 2  # the conflicting third view was skipped
    problems = sorted((p.path.rsplit(":", 1)[-1] if ".csv:" in p.path else "image", p.reason.split(":")[0])
                      for p in result.problems)  # fmt: skip
    assert problems == [("6", "label value invalid"), ("7", "row path malformed"), ("8", "labels conflict"),
                        ("image", "image file missing")]  # fmt: skip
    with pytest.raises(InputError, match="image file missing"):
        read_chexpert_csv(train, strict=True)


def test_missing_columns_and_wrong_paths_are_input_errors(tmp_path: Path) -> None:
    train = build_chexpert(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_chexpert_csv(tmp_path / "nope.csv")
    text = train.read_text().replace(",Pleural Effusion,", ",Effusion,")
    train.write_text(text)
    with pytest.raises(InputError, match=r"lacks the column.*Pleural Effusion"):
        read_chexpert_csv(train)
