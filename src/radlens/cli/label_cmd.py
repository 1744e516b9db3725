"""``radlens label``: CheXpert labels for free-text reports, with the rule labeler (docs/labeler.md).

Same conventions as Stanford's CheXpert labeler: the input CSV holds one report per row in one column,
with NO header (quote reports that contain commas or newlines); the output CSV has a ``Reports``
column followed by the 14 observations in CheXpert's output order, valued 1.0 / 0.0 / -1.0 or empty.
``--format jsonl`` reads one JSON object per line with the report under ``"text"`` (or ``"report"``)
and writes each object back with a ``"labels"`` mapping added (numbers or null; an existing
``"labels"`` key is replaced). The format defaults to jsonl for ``.jsonl``/``.ndjson`` inputs.

The output is written atomically. Beside it go ``<out stem>_config.yaml`` (the resolved options) and
``versions.json``, as ``radlens phantom show`` does for its single-file output. Report text is never
printed: messages give counts and line numbers only.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

import typer

from radlens.core import (
    Config,
    InputError,
    atomic_write_text,
    check_writable_folder,
    is_quiet,
    progress,
    write_run_metadata,
)
from radlens.data.labeler import label_report
from radlens.data.schema import LabelValue

#: Column order of the CheXpert labeler's output (and of the CheXpert dataset CSVs).
CHEXPERT_OUTPUT_ORDER: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_HEADER_WORDS = frozenset({"reports", "report", "text"})
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


class LabelConfig(Config):
    """Options of ``radlens label``, written beside its output."""

    input: str
    out: str
    format: Literal["csv", "jsonl"]
    labeler: str = "radlens.data.labeler (rule-based, CheXpert conventions)"


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"input file {path} not found", "pass the path of a reports file with --in")
    if not path.is_file():
        raise InputError(f"input {path} is not a file", "pass the path of a reports file with --in")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"input file {path} is not UTF-8 text (byte {exc.start})", "re-save it as UTF-8"
        ) from exc
    if not text.strip():
        raise InputError(f"input file {path} is empty", "put one report per row")
    return text


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, Any]], int]:
    """Reports of a header-less one-column CSV; also returns the count of skipped blank/header rows."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    reports: list[str] = []
    skipped = 0
    try:
        for row in reader:
            if not row:  # a blank line is not a report
                skipped += 1
                continue
            if len(row) != 1:
                raise InputError(
                    f"{path} line {reader.line_num} has {len(row)} columns",
                    "put one report per row in a single column, quoted if it contains commas",
                )
            if not reports and not skipped and row[0].strip().lower() in _HEADER_WORDS:
                skipped += 1  # a "Reports" header row (the CheXpert labeler expects none)
                continue
            reports.append(row[0])
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num} is not valid CSV ({exc})") from exc
    if not reports:
        raise InputError(f"input file {path} has no reports", "put one report per row")
    return reports, [], skipped


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]], int]:
    """Reports and their objects from JSON lines with a ``text`` (or ``report``) string."""
    reports: list[str] = []
    objects: list[dict[str, Any]] = []
    skipped = 0
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            skipped += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number} is not a JSON object", 'write {"text": "..."} lines')
        text = record.get("text", record.get("report"))
        if not isinstance(text, str):
            raise InputError(
                f'{path} line {number} has no "text" (or "report") string', 'write {"text": "..."} lines'
            )
        reports.append(text)
        objects.append(record)
    if not reports:
        raise InputError(f"input file {path} has no reports", 'write one {"text": "..."} object per line')
    return reports, objects, skipped


def _csv_value(value: LabelValue) -> str:
    return "" if value is None else str(float(value))


def _render_csv(reports: list[str], labels: list[dict[str, LabelValue]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Reports", *CHEXPERT_OUTPUT_ORDER])
    for report, row in zip(reports, labels, strict=True):
        writer.writerow([report, *(_csv_value(row[name]) for name in CHEXPERT_OUTPUT_ORDER)])
    return buffer.getvalue()


def _render_jsonl(objects: list[dict[str, Any]], labels: list[dict[str, LabelValue]]) -> str:
    lines = []
    for record, row in zip(objects, labels, strict=True):
        ordered = {name: row[name] for name in CHEXPERT_OUTPUT_ORDER}
        lines.append(json.dumps({**record, "labels": ordered}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _check_output(input_path: Path, out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise InputError(f"--out {out} is a folder", "pass the path of the file to write")
    check_writable_folder(out.parent)  # e.g. --out notes.txt/labels.csv: refused before any labelling
    if out.exists() and out.resolve() == input_path.resolve():
        raise InputError("--out is the input file", "write the labels to another file")
    if out.exists() and not overwrite:
        raise InputError(f"output file {out} exists", "choose another path or pass --overwrite")


def label(
    input_path: Path = typer.Option(
        ..., "--in", help="Reports: a CSV with one report per row and no header, or JSON lines."
    ),
    out: Path = typer.Option(..., "--out", help="Labelled output file (same format as the input)."),
    file_format: Literal["csv", "jsonl"] | None = typer.Option(
        None, "--format", help="csv or jsonl (default: jsonl for .jsonl/.ndjson inputs, else csv)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Label reports with the 14 CheXpert observations (1 positive, 0 negative, -1 uncertain, blank)."""
    fmt = file_format or ("jsonl" if input_path.suffix.lower() in _JSONL_SUFFIXES else "csv")
    _check_output(input_path, out, overwrite)
    reports, objects, skipped = (_read_jsonl if fmt == "jsonl" else _read_csv)(input_path)
    labels = [label_report(text) for text in progress(reports, len(reports), "labelling reports")]
    rendered = _render_jsonl(objects, labels) if fmt == "jsonl" else _render_csv(reports, labels)
    atomic_write_text(out, rendered)
    config = LabelConfig(input=str(input_path), out=str(out), format=fmt)
    write_run_metadata(out.parent, config, name=f"{out.stem}_config")
    if not is_quiet():
        counts = {name: sum(row[name] == 1.0 for row in labels) for name in CHEXPERT_OUTPUT_ORDER}
        common = ", ".join(
            f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4] if n
        )
        note = f"; skipped {skipped} blank or header lines" if skipped else ""
        typer.echo(f"labelled {len(reports)} reports to {out} (positive: {common or 'none'}){note}")


def register(app: typer.Typer) -> None:
    """Attach ``radlens label``."""
    app.command("label")(label)
