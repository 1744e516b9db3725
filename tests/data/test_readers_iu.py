"""read_iu on small IU X-ray (Open-i) trees built here: ecgen-radiology/*.xml + NLMCXR_png/."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from radlens.core import InputError
from radlens.data.labeler import label_report
from radlens.data.readers import read_dataset, read_iu

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="CXR{n}"/>
  <pmcId id="{n}"/>
  <docSource>CXR</docSource>
  <IUXRId id="{n}"/>
  <licenseType>open-access</licenseType>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      <Abstract>
        <AbstractText Label="COMPARISON">{comparison}</AbstractText>
        <AbstractText Label="INDICATION">{indication}</AbstractText>
        <AbstractText Label="FINDINGS">{findings}</AbstractText>
        <AbstractText Label="IMPRESSION">{impression}</AbstractText>
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH>
    {mesh}
  </MeSH>
  {images}
</eCitation>
"""
IMAGE = """<parentImage id="{image_id}">
    <figureId>F1</figureId>
    <caption>Xray Chest PA and Lateral</caption>
    <panel type="single"><url>/hadoop/storage/radiology/extract/{image_id}.jpg</url></panel>
  </parentImage>"""

# n -> (findings, impression, mesh, image ids)
REPORTS = {
    1: (
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pleural effusion.",
        "Normal chest x-XXXX.",
        "<major>normal</major>",
        ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    ),
    2: (
        "Large right pleural effusion. Heart size is enlarged.",
        "Right pleural effusion. Cardiomegaly.",
        "<major>Pleural Effusion/right/large</major><automatic>Cardiomegaly</automatic>",
        ["CXR2_IM-0652-1001"],
    ),
    10: ("", "No acute disease.", "<major>normal</major>", ["CXR10_IM-0002-1001"]),
}


def write_report(
    folder: Path, n: int, findings: str, impression: str, mesh: str, image_ids: list[str]
) -> Path:
    images = "\n  ".join(IMAGE.format(image_id=i) for i in image_ids)
    text = XML.format(
        n=n,
        comparison="None.",
        indication="XXXX-year-old male with cough.",
        findings=findings,
        impression=impression,
        mesh=mesh,
        images=images,
    )
    path = folder / f"{n}.xml"
    path.write_text(text, encoding="utf-8")
    return path


def build_iu(root: Path, reports: dict = REPORTS, images_folder: str = "NLMCXR_png") -> Path:  # type: ignore[type-arg]
    (root / "ecgen-radiology").mkdir(parents=True)
    (root / images_folder).mkdir()
    for n, (findings, impression, mesh, image_ids) in reports.items():
        write_report(root / "ecgen-radiology", n, findings, impression, mesh, image_ids)
        for image_id in image_ids:
            Image.new("L", (48, 40), color=n * 10).save(root / images_folder / f"{image_id}.png")
    return root


@pytest.fixture(scope="module")
def iu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_iu(tmp_path_factory.mktemp("iu"))


def test_reads_reports_sections_images_mesh_and_labels(iu_root: Path) -> None:
    result = read_iu(iu_root)
    assert result.problems == []
    assert [r.study_id for r in result.records] == ["CXR1", "CXR2", "CXR10"]  # natural order of 1, 2, 10
    first = result.records[0]
    assert first.subject_id == "CXR1" and first.split is None and first.source == "iu-xray"
    assert [i.image_id for i in first.images] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert all(i.view_position is None and i.path.is_file() for i in first.images)
    assert first.images[0].metadata["caption"] == "Xray Chest PA and Lateral"
    assert first.sections is not None
    assert first.sections.findings == REPORTS[1][0]
    assert first.sections.impression == "Normal chest x-___."  # IU's XXXX becomes the neutral de-id token
    assert (
        first.sections.comparison == "None." and first.sections.indication == "___-year-old male with cough."
    )
    assert first.report is not None and first.report.startswith("COMPARISON: None.")
    second = result.records[1]
    assert second.metadata["mesh_major"] == ["Pleural Effusion/right/large"]
    assert second.metadata["mesh_automatic"] == ["Cardiomegaly"]
    assert result.records[2].sections is not None and result.records[2].sections.findings is None
    for record in result.records:  # labels come from the CheXpert-style labeller on the report text
        assert record.labels == dict(label_report(record.report_text()))


def test_labeler_off_and_label_filter(iu_root: Path) -> None:
    assert all(r.labels == {} for r in read_iu(iu_root, labeler=False).records)
    effusion = read_dataset(iu_root, "iu", require_labels=["Pleural Effusion"])
    expected = [r.study_id for r in read_iu(iu_root).records if r.labels.get("Pleural Effusion") == 1.0]
    assert [r.study_id for r in effusion.records] == expected
    with pytest.raises(InputError, match="no option views"):
        read_dataset(iu_root, "iu", views=["PA"])


def test_other_image_folder_names_and_images_root(tmp_path: Path) -> None:
    root = build_iu(tmp_path / "a", images_folder="images")
    assert len(read_iu(root).records) == 3
    moved = tmp_path / "pngs"
    (root / "images").rename(moved)
    with pytest.raises(InputError, match="no image folder") as caught:
        read_iu(root)
    assert "--images-root" not in (caught.value.hint or "")  # no command has that option
    assert "NLMCXR_png/" in (caught.value.hint or "")
    assert len(read_iu(root / "ecgen-radiology", images_root=moved).records) == 3


def test_damaged_reports_and_images_are_skipped_and_recorded(tmp_path: Path) -> None:
    root = build_iu(tmp_path)
    reports, images = root / "ecgen-radiology", root / "NLMCXR_png"
    write_report(reports, 3, "", "", "<major>normal</major>", ["CXR3_IM-1"])  # empty report
    Image.new("L", (48, 40)).save(images / "CXR3_IM-1.png")
    (reports / "4.xml").write_bytes(b"<eCitation><uId id='CXR4'/><Abstract>")  # truncated XML
    latin = XML.format(
        n=5,
        comparison="",
        indication="",
        findings="Epanchement pleural r\xe9solu.",
        impression="",
        mesh="",
        images=IMAGE.format(image_id="CXR5_IM-1"),
    )
    (reports / "5.xml").write_bytes(latin.encode("latin-1"))  # declares utf-8, is latin-1
    Image.new("L", (48, 40)).save(images / "CXR5_IM-1.png")
    (images / "CXR2_IM-0652-1001.png").unlink()  # CXR2's only image
    png = images / "CXR1_1_IM-0001-4001.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated PNG: one of CXR1's two images
    (images / "CXR10_IM-0002-1001.png").unlink()
    Image.new("L", (3, 3)).save(images / "CXR10_IM-0002-1001.png")  # absurdly small
    result = read_iu(root, check_images="decode")
    assert [r.study_id for r in result.records] == ["CXR1"]
    assert [i.image_id for i in result.records[0].images] == ["CXR1_1_IM-0001-3001"]
    kinds = sorted((Path(p.path).name, p.reason.split(":")[0]) for p in result.problems)
    assert kinds == [
        ("10.xml", "study skipped"),
        ("2.xml", "study skipped"),
        ("3.xml", "report empty"),
        ("4.xml", "report XML malformed"),
        ("5.xml", "report XML malformed"),
        ("CXR10_IM-0002-1001.png", "image unreadable"),
        ("CXR1_1_IM-0001-4001.png", "image unreadable"),
        ("CXR2_IM-0652-1001.png", "image file missing"),
    ]
    with pytest.raises(InputError, match=r"CXR1_1_IM-0001-4001\.png: image unreadable"):
        read_iu(root, check_images="decode", strict=True)


def test_wrong_roots(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ecgen-radiology/ not found"):
        read_iu(tmp_path)
    root = build_iu(tmp_path / "iu")
    for png in (root / "NLMCXR_png").iterdir():
        png.rename(root / png.name)
    with pytest.raises(InputError, match="none of the 4 image"):
        read_iu(root)
