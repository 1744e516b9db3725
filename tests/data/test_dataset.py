"""Datasets: item selection, item contents, label NaNs, error policy, cache and DataLoader use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from radlens.data.cache import ImageCache
from radlens.data.dataset import ImageDataset, ImageReportDataset, collate, label_set_codes, label_tensor
from radlens.data.images import ImageDecodeError, load_image
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, ReportSections, StudyRecord
from radlens.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizePolicy,
    resize,
    to_tensor,
    train_augmentation,
)

POLICY = ResizePolicy(mode="square", size=32)


def _png(path: Path, seed: int, shape: tuple[int, int] = (48, 40)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[StudyRecord]:
    folder = tmp_path_factory.mktemp("images")
    studies = []
    for number in range(5):
        images = [
            ImageRecord(f"i{number}-lat", _png(folder / f"{number}-lat.png", 100 + number), "LATERAL"),
            ImageRecord(f"i{number}-pa", _png(folder / f"{number}-pa.png", number), "PA"),
            ImageRecord(f"i{number}-ap", _png(folder / f"{number}-ap.png", 50 + number), "AP"),
        ]
        labels = {"Cardiomegaly": 1.0, "Edema": -1.0, "Pleural Effusion": 0.0, "Atelectasis": None}
        sections = ReportSections(findings=f"Findings {number}.", impression=f"Impression {number}.")
        studies.append(StudyRecord(f"s{number}", f"p{number}", images, sections=sections, labels=labels))
    unknown = ImageRecord("u-none", _png(folder / "unknown.png", 7), None)
    studies.append(StudyRecord("s-unknown", "p9", [unknown], report="Raw report."))
    only_lateral = ImageRecord("l-only", _png(folder / "lateral-only.png", 8), "LATERAL")
    studies.append(StudyRecord("s-lateral", "p10", [only_lateral], report="Lateral only."))
    return studies


def test_one_item_per_study_with_first_frontal_image(records: list[StudyRecord]) -> None:
    dataset = ImageReportDataset(records, POLICY)
    assert [item.image.image_id for item in dataset.items] == [*(f"i{n}-pa" for n in range(5)), "u-none"]
    assert [problem.path for problem in dataset.problems] == ["study s-lateral"]
    assert dataset.problems[0].reason == "no image with a view in: AP, PA, unknown"
    per_image = ImageReportDataset(records, POLICY, per_image=True)
    assert len(per_image) == 11  # 5 studies x (PA, AP) + the unknown-view image
    only_ap = ImageReportDataset(records, POLICY, view_filter=["ap"])
    assert [item.image.image_id for item in only_ap.items] == [f"i{n}-ap" for n in range(5)]
    assert [problem.reason for problem in only_ap.problems] == ["no image with a view in: AP"] * 2


def test_item_contents(records: list[StudyRecord]) -> None:
    dataset = ImageReportDataset(records, POLICY)
    item = dataset[2]
    assert item is not None
    assert set(item) == {"image", "text", "labels", "study_id", "image_id", "index"}
    assert (item["study_id"], item["image_id"], item["index"]) == ("s2", "i2-pa", 2)
    assert item["text"] == "Findings 2.\nImpression 2."
    expected = to_tensor(
        resize(load_image(records[2].images[1].path), POLICY), 3, IMAGENET_MEAN, IMAGENET_STD
    )
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], expected)
    raw = dataset[5]
    assert raw is not None and raw["text"] == "Raw report."
    shouted = ImageReportDataset(records, POLICY, text_fn=lambda record: record.study_id.upper())
    assert shouted[0] is not None and shouted[0]["text"] == "S0"


def test_labels_in_chexpert_order_with_nan_for_blank(records: list[StudyRecord]) -> None:
    labels = label_tensor(records[0])
    assert labels.shape == (len(CHEXPERT_LABELS),) and labels.dtype == torch.float32
    for position, name in enumerate(CHEXPERT_LABELS):
        value = records[0].labels.get(name)
        if value is None:  # blank, whether stored as None or absent
            assert math.isnan(labels[position])
        else:
            assert labels[position] == value
    assert labels[CHEXPERT_LABELS.index("Edema")] == -1.0
    assert torch.isnan(label_tensor(records[5])).all()


def test_dataloader_with_and_without_workers_gives_the_same_batches(records: list[StudyRecord]) -> None:
    augment = train_augmentation(prob=1.0)
    dataset = ImageReportDataset(records, POLICY, augment=augment, seed=11)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate)
        batches[workers] = list(loader)
    for serial, parallel in zip(batches[0], batches[2], strict=True):
        torch.testing.assert_close(serial["image"], parallel["image"])
        assert serial["text"] == parallel["text"] and serial["skipped"] == 0
        torch.testing.assert_close(serial["labels"], parallel["labels"], equal_nan=True)
    first = batches[0][0]
    assert first["image"].shape == (4, 3, 32, 32) and first["labels"].shape == (4, 14)
    assert first["study_id"] == ["s0", "s1", "s2", "s3"]
    dataset.set_epoch(1)
    assert not torch.allclose(next(iter(DataLoader(dataset, batch_size=4)))["image"], first["image"])


def test_cached_dataset_matches_uncached_to_8_bits(records: list[StudyRecord], tmp_path: Path) -> None:
    plain = ImageReportDataset(records, POLICY, channels=1)
    cache = ImageCache(tmp_path / "cache", POLICY)
    assert cache.build(plain.paths()) == []
    cached = ImageReportDataset(records, POLICY, channels=1, cache=cache)
    for index in range(len(plain)):
        fast, slow = cached[index], plain[index]
        assert fast is not None and slow is not None
        torch.testing.assert_close(fast["image"], slow["image"], atol=0.5 / 255 / 0.5 + 1e-6, rtol=0)
    assert cache.stats["hits"] == len(plain)
    with pytest.raises(ValueError, match="policy"):
        ImageReportDataset(records, ResizePolicy(size=64), cache=cache)


def test_unreadable_images_validate_raise_or_skip(records: list[StudyRecord], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.png"
    data = (records[0].images[1].path).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    missing = tmp_path / "missing.png"
    broken = [
        StudyRecord("bad1", "p", [ImageRecord("t", truncated, "PA")]),
        StudyRecord("bad2", "p", [ImageRecord("m", missing, "PA")]),
    ]
    mixed = [records[0], *broken]
    validated = ImageReportDataset(mixed, POLICY, validate=True)
    assert [problem.path for problem in validated.problems] == [str(missing)]
    assert len(validated) == 2  # the header-valid truncated file passes validation...
    with pytest.raises(ImageDecodeError, match=r"truncated\.png"):
        validated[1]  # ...and names itself when loaded
    skipping = ImageReportDataset(mixed, POLICY, validate=True, on_error="skip")
    assert skipping[1] is None
    batch = collate([skipping[0], skipping[1]])
    assert batch["skipped"] == 1 and batch["image"].shape == (1, 3, 32, 32)
    assert collate([None]) == {"skipped": 1}


def test_image_dataset(records: list[StudyRecord]) -> None:
    dataset = ImageDataset.from_records(records, POLICY)
    assert len(dataset) == 11
    item = dataset[0]
    assert item is not None and set(item) == {"image", "path", "index"}
    assert item["image"].shape == (1, 32, 32)
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    expected = resize(load_image(records[0].images[1].path), POLICY) * 2 - 1
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 1, 32, 32) and len(batch["path"]) == 3


def test_batched_fetch_fills_one_tensor_that_collate_passes_on(records: list[StudyRecord]) -> None:
    dataset = ImageReportDataset(records, POLICY)
    items = dataset.__getitems__([4, 0, 2])
    batch = collate(items)
    expected = torch.stack(
        [item["image"] for item in (dataset[4], dataset[0], dataset[2]) if item is not None]
    )
    torch.testing.assert_close(batch["image"], expected)
    assert batch["image"].data_ptr() == items[0]["image"].data_ptr()  # no copy
    assert batch["index"].tolist() == [4, 0, 2] and batch["study_id"] == ["s4", "s0", "s2"]
    gap = collate([items[0], None, items[2]])  # not in storage order: stacked (copied) instead
    torch.testing.assert_close(gap["image"], expected[[0, 2]])
    assert gap["skipped"] == 1 and gap["image"].data_ptr() != items[0]["image"].data_ptr()
    shorter = ImageReportDataset(records, ResizePolicy(mode="shorter_side", size=24, max_longer=40))
    assert [item["image"].shape for item in shorter.__getitems__([0, 1]) if item] == [(3, 29, 24)] * 2


def test_label_set_codes_name_positive_sets_and_mark_unlabelled_studies() -> None:
    nan = math.nan
    labels = torch.tensor(
        [
            [1, 0, -1, nan] + [nan] * 10,  # label 0 positive, an uncertain and a negative one
            [1, 0, 0, 0] + [0] * 10,  # the same positive set
            [0, 1, 1, nan] + [nan] * 10,  # labels 1 and 2
            [0, 0, -1, 0] + [0] * 10,  # nothing positive: the empty set, not unknown
            [nan] * 14,  # no labels at all: unknown
        ]
    )
    assert label_set_codes(labels).tolist() == [1, 1, 6, 0, -1]
    with pytest.raises(ValueError, match="labels"):
        label_set_codes(torch.zeros(14))
