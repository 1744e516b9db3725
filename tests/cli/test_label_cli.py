"""``radlens label``: CheXpert-labeler file conventions, one-line errors, atomic output, no report text shown."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from radlens.cli import main
from radlens.cli.label_cmd import CHEXPERT_OUTPUT_ORDER
from radlens.data.labeler import label_report
from radlens.data.schema import CHEXPERT_LABELS

REPORTS = [
    "No pneumothorax, but there is a small left effusion, unusualword.",
    "No acute cardiopulmonary process.",
    "FINDINGS: Moderate cardiomegaly.\nIMPRESSION: Mild pulmonary edema; possible pneumonia.",
]


def _write_csv(path: Path, reports: list[str], blank_line: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for index, report in enumerate(reports):
            writer.writerow([report])
            if blank_line and index == 0:
                handle.write("\n")
    return path


def _cell(value: float | None) -> str:
    return "" if value is None else str(value)


def test_csv_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_csv(tmp_path / "reports.csv", REPORTS, blank_line=True)
    out = tmp_path / "labels" / "labeled.csv"
    assert main(["label", "--in", str(source), "--out", str(out)]) == 0
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Reports", *CHEXPERT_OUTPUT_ORDER]
    assert sorted(CHEXPERT_OUTPUT_ORDER) == sorted(CHEXPERT_LABELS)
    assert [row[0] for row in rows[1:]] == REPORTS  # commas and newlines survive quoting
    for row in rows[1:]:
        expected = label_report(row[0])
        assert row[1:] == [_cell(expected[name]) for name in CHEXPERT_OUTPUT_ORDER]
    assert rows[1][1 + CHEXPERT_OUTPUT_ORDER.index("Pleural Effusion")] == "1.0"
    assert rows[1][1 + CHEXPERT_OUTPUT_ORDER.index("Pneumothorax")] == "0.0"
    assert rows[3][1 + CHEXPERT_OUTPUT_ORDER.index("Pneumonia")] == "-1.0"
    config = yaml.safe_load((out.parent / "labeled_config.yaml").read_text())
    assert config["format"] == "csv" and config["input"] == str(source)
    assert "python" in json.loads((out.parent / "versions.json").read_text())
    captured = capsys.readouterr()
    assert "labelled 3 reports" in captured.out and "skipped 1 blank" in captured.out
    assert "unusualword" not in captured.out + captured.err  # report text is never shown


def test_csv_header_row_is_skipped(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "reports.csv", ["Reports", "No effusion."])
    out = tmp_path / "out.csv"
    assert main(["-q", "label", "--in", str(source), "--out", str(out)]) == 0
    assert [row[0] for row in csv.reader(out.open(encoding="utf-8"))] == ["Reports", "No effusion."]


def test_jsonl_round_trip_keeps_other_keys(tmp_path: Path) -> None:
    source = tmp_path / "reports.jsonl"
    lines = [{"id": 1, "text": REPORTS[0]}, {"id": "b", "report": REPORTS[2], "labels": "old"}]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    out = tmp_path / "labeled.jsonl"
    assert main(["-q", "label", "--in", str(source), "--out", str(out)]) == 0  # format from the suffix
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [record["id"] for record in written] == [1, "b"]
    for record, report in zip(written, (REPORTS[0], REPORTS[2]), strict=True):
        assert list(record["labels"]) == list(CHEXPERT_OUTPUT_ORDER)
        assert record["labels"] == {name: label_report(report)[name] for name in CHEXPERT_OUTPUT_ORDER}
    assert yaml.safe_load((tmp_path / "labeled_config.yaml").read_text())["format"] == "jsonl"


def test_format_option_overrides_the_suffix(tmp_path: Path) -> None:
    source = tmp_path / "reports.txt"
    source.write_text(json.dumps({"text": "Small effusion."}) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["-q", "label", "--in", str(source), "--out", str(out), "--format", "jsonl"]) == 0
    assert json.loads(out.read_text())["labels"]["Pleural Effusion"] == 1.0


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out.csv")
    assert "not found" in _error(capsys, ["label", "--in", str(tmp_path / "nope.csv"), "--out", out])
    empty = tmp_path / "empty.csv"
    empty.write_text(" \n", encoding="utf-8")
    assert "is empty" in _error(capsys, ["label", "--in", str(empty), "--out", out])
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("Épanchement pleural.\n".encode("latin-1"))
    assert "not UTF-8" in _error(capsys, ["label", "--in", str(latin1), "--out", out])
    two_columns = tmp_path / "two.csv"
    two_columns.write_text("No effusion.\nsecret, two columns\n", encoding="utf-8")
    message = _error(capsys, ["label", "--in", str(two_columns), "--out", out])
    assert "line 2 has 2 columns" in message and "secret" not in message
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "No effusion."}\n{"text": secret}\n', encoding="utf-8")
    message = _error(capsys, ["label", "--in", str(bad_json), "--out", out])
    assert "line 2 is not valid JSON" in message and "secret" not in message
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"id": 3}\n', encoding="utf-8")
    assert 'no "text"' in _error(capsys, ["label", "--in", str(no_text), "--out", out])
    assert not Path(out).exists()  # nothing half-written
    assert list(tmp_path.glob("*config.yaml")) == []


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_csv(tmp_path / "reports.csv", REPORTS)
    out = tmp_path / "out.csv"
    out.write_text("keep me", encoding="utf-8")
    assert "exists" in _error(capsys, ["label", "--in", str(source), "--out", str(out)])
    assert out.read_text() == "keep me"
    assert "input file" in _error(capsys, ["label", "--in", str(source), "--out", str(source), "--overwrite"])
    assert "is a folder" in _error(capsys, ["label", "--in", str(source), "--out", str(tmp_path)])
    assert main(["-q", "label", "--in", str(source), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("Reports,")


def test_output_under_a_file_is_refused_before_labelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out notes.txt/labels.csv`` is one line and exit 2 before any report is labelled (it was an
    internal error, exit 1, after labelling them all)."""
    source = _write_csv(tmp_path / "reports.csv", REPORTS)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me", encoding="utf-8")

    def _no_labelling(text: str) -> None:
        raise AssertionError("reports were labelled before --out was checked")

    monkeypatch.setattr("radlens.cli.label_cmd.label_report", _no_labelling)
    message = _error(capsys, ["label", "--in", str(source), "--out", str(a_file / "labels.csv")])
    assert f"output path {a_file} is a file" in message
    assert a_file.read_text(encoding="utf-8") == "keep me"
