"""read_mimic reads RadPhantom output unchanged: labels, splits, views and masks round-trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from radlens.data import CHEXPERT_LABELS
from radlens.data.images import load_image
from radlens.data.readers import read_mimic
from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset

PREFIX = "mimic-cxr-2.0.0"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "data"
    generate_dataset(PhantomConfig(studies=12, size=64, seed=3, workers=1), root)
    return root


def table(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{PREFIX}-{name}.csv.gz", dtype={"subject_id": str, "study_id": str})


def test_every_study_round_trips_against_the_tables(phantom: Path) -> None:
    result = read_mimic(phantom, check_images="decode")
    assert result.problems == []
    records = {r.study_id: r for r in result.records}
    labels = table(phantom, "chexpert").set_index("study_id")
    assert set(records) == set(labels.index) and len(records) == 12
    for study_id, row in labels.iterrows():
        expected = {name: None if math.isnan(row[name]) else float(row[name]) for name in CHEXPERT_LABELS}
        assert records[str(study_id)].labels == expected
        assert records[str(study_id)].subject_id == row["subject_id"]
    splits = table(phantom, "split")
    assert {(s, sp) for s, sp in zip(splits["study_id"], splits["split"], strict=True)} == {
        (r.study_id, r.split) for r in records.values()
    }
    metadata = table(phantom, "metadata").set_index("dicom_id")
    images = [image for record in records.values() for image in record.images]
    assert {image.image_id for image in images} == set(metadata.index)
    for image in images:
        assert image.view_position == metadata.loc[image.image_id, "ViewPosition"]
        assert load_image(image.path).shape == (image.metadata["height"], image.metadata["width"]) == (64, 64)
    for record in records.values():
        assert record.sections is not None and record.report_text()


def test_counts_match_the_manifest_and_masks_match_the_files(phantom: Path) -> None:
    manifest = json.loads((phantom / "manifest.json").read_text())["counts"]
    result = read_mimic(phantom)
    assert len(result.records) == manifest["studies"]
    views: dict[str, int] = {}
    for record in result.records:
        for image in record.images:
            views[image.view_position or "none"] = views.get(image.view_position or "none", 0) + 1
    assert views == manifest["views"]
    for split, counts in manifest["splits"].items():
        assert sum(1 for r in result.records if r.split == split) == counts["studies"]
    for name, counts in manifest["labels"].items():
        assert sum(1 for r in result.records if r.labels[name] == 1.0) == counts["positive"]
    for record in result.records:
        for image in record.images:
            folder = phantom / "masks" / image.path.parent.relative_to(phantom / "files") / image.image_id
            assert sorted(path.name for path in image.masks.values()) == sorted(
                p.name for p in folder.glob("*.png")
            )
            assert {"anatomy:heart", "anatomy:left_lung", "anatomy:right_lung"} <= set(image.masks)
            for key in image.masks:  # a finding mask exists only for a finding labelled present
                assert key.startswith("anatomy:") or record.labels[key] == 1.0
    findings = {k for r in result.records for i in r.images for k in i.masks if not k.startswith("anatomy:")}
    assert findings and findings <= set(CHEXPERT_LABELS)  # finding masks were read, under CheXpert names
