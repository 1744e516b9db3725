"""read_roco on small ROCO trees built here (captions.txt + dlinks.txt, and the id,name,caption CSV)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from radlens.core import InputError
from radlens.data.readers import is_chest_radiograph, read_dataset, read_roco

# split folder -> [(roco id, PMC id, image name, caption)]
ENTRIES = {
    "train": [
        (
            "ROCO_00002",
            "PMC4083729",
            "AMJCaseRep-15-255-g002.jpg",
            "Chest x-ray showing a left pleural effusion.",
        ),
        ("ROCO_00003", "PMC4083729", "AMJCaseRep-15-255-g003.jpg", "Axial CT of the abdomen showing a mass."),
    ],
    "validation": [("ROCO_00264", "PMC3160360", "1749-7922-6-23-1.jpg", "Initial CXR with pneumothorax.")],
    "test": [("ROCO_00319", "PMC5107664", "fig-4.jpg", "Postoperative day 1 chest radiograph.")],
}


def save_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 32), color=90).save(path)


def build_roco(root: Path, csv: bool = False) -> Path:
    """The razorx89/roco-dataset layout after fetch.py (or, with ``csv``, the id,name,caption variant)."""
    for split, entries in ENTRIES.items():
        folder = root / "data" / split / "radiology"
        folder.mkdir(parents=True)
        for _, pmc, name, _ in entries:
            save_image(folder / "images" / f"{pmc}_{name}")
        if csv:
            lines = ["id,name,caption"] + [f'{r},{p}_{n},"{c}"' for r, p, n, c in entries]
            (folder / f"radiology{split}data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
            continue
        (folder / "captions.txt").write_text(
            "".join(f"{r}\t {c}\n" for r, _, _, c in entries), encoding="utf-8"
        )
        links = "".join(
            f"{r}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/8d/34/{p}.tar.gz -P /path/to/Dir\t{n}\n"
            for r, p, n, _ in entries
        )
        (folder / "dlinks.txt").write_text(links, encoding="utf-8")
    return root


@pytest.mark.parametrize("csv", [False, True])
def test_reads_captions_images_splits_and_subjects(tmp_path: Path, csv: bool) -> None:
    root = build_roco(tmp_path, csv=csv)
    result = read_roco(root)
    assert result.problems == []
    records = {r.study_id: r for r in result.records}
    assert set(records) == {e[0] for entries in ENTRIES.values() for e in entries}
    first = records["ROCO_00002"]
    assert first.split == "train" and first.subject_id == "PMC4083729" and first.source == "roco"
    assert first.report == "Chest x-ray showing a left pleural effusion."
    assert first.report_text() == first.report and first.labels == {}
    assert first.images[0].path == root / "data/train/radiology/images/PMC4083729_AMJCaseRep-15-255-g002.jpg"
    assert first.images[0].view_position is None
    assert records["ROCO_00264"].split == "validate" and records["ROCO_00319"].split == "test"
    assert len(read_roco(root / "data").records) == 4  # the data/ folder itself works too


def test_chest_only_rule_and_split_filter(tmp_path: Path) -> None:
    root = build_roco(tmp_path)
    chest = read_roco(root, chest_only=True)
    assert [r.study_id for r in chest.records] == ["ROCO_00002", "ROCO_00264", "ROCO_00319"]
    assert [r.study_id for r in read_dataset(root, "roco", splits=["test"]).records] == ["ROCO_00319"]
    with pytest.raises(InputError, match="no option require_labels"):
        read_dataset(root, "roco", require_labels=["Edema"])


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Chest X-ray showing bilateral infiltrates.", True),
        ("PA radiograph of the thorax.", True),
        ("Follow-up CXR.", True),
        ("Plain film of the lungs after drainage.", True),
        ("Chest CT showing a nodule.", False),  # cross-sectional modality
        ("Chest x-ray and CT scan of the same patient.", False),  # compound figure
        ("Radiograph of the left knee.", False),  # radiograph, not chest
        ("Lung ultrasound with B-lines.", False),
        ("Pulmonary embolism on CT angiography.", False),
        ("Axial MRI of the brain.", False),
    ],
)
def test_chest_radiograph_caption_rule(caption: str, expected: bool) -> None:
    assert is_chest_radiograph(caption) is expected


def test_bad_lines_missing_images_and_empty_captions_are_recorded(tmp_path: Path) -> None:
    root = build_roco(tmp_path)
    train = root / "data/train/radiology"
    with open(train / "captions.txt", "ab") as handle:
        handle.write(b"ROCO_00009 no tab on this line\n")
        handle.write(b"ROCO_00010\t R\xe9sultat radiographique\n")  # latin-1, not UTF-8
        handle.write(b"ROCO_00011\t   \n")
    (train / "images/PMC4083729_AMJCaseRep-15-255-g003.jpg").unlink()
    broken = root / "data/test/radiology/images/PMC5107664_fig-4.jpg"
    broken.write_bytes(broken.read_bytes()[:30])
    result = read_roco(root, check_images="header")
    assert {r.study_id for r in result.records} == {"ROCO_00002", "ROCO_00264"}
    kinds = sorted(p.reason.split(":")[0] for p in result.problems)
    assert kinds == [
        "caption empty",
        "caption line malformed",
        "caption not UTF-8",
        "image file missing",
        "image unreadable",
    ]
    lines = {
        p.reason.split(":")[0]: p.path.rsplit(":", 1)[1] for p in result.problems if "caption" in p.reason
    }
    assert lines == {"caption line malformed": "3", "caption not UTF-8": "4", "caption empty": "5"}
    with pytest.raises(InputError, match="caption line malformed"):
        read_roco(root, strict=True)


def test_images_named_by_roco_id_without_dlinks(tmp_path: Path) -> None:
    root = build_roco(tmp_path)
    for folder in (root / "data").glob("*/radiology"):
        (folder / "dlinks.txt").unlink()
        for image in (folder / "images").iterdir():
            image.unlink()
    save_image(root / "data/train/radiology/images/ROCO_00002.png")
    result = read_roco(root)
    assert [r.study_id for r in result.records] == ["ROCO_00002"]
    assert result.records[0].subject_id == "ROCO_00002"
    assert sorted(p.reason for p in result.problems) == ["image file missing"] * 3


def test_wrong_root_and_missing_captions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a ROCO folder"):
        read_roco(tmp_path)
    (tmp_path / "data/train/radiology").mkdir(parents=True)
    with pytest.raises(InputError, match=r"neither captions\.txt nor a CSV"):
        read_roco(tmp_path)
