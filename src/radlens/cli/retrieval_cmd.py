"""``radlens index build``, ``radlens search`` and ``radlens eval retrieval`` (docs/retrieval.md).

Query text is never printed back: ``search`` shows the hits (the user's own indexed reports) and any
notice about the query (e.g. that it was truncated), not the query itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.console import Console
from rich.table import Table

from radlens.cli.eval_group import eval_app
from radlens.cli.eval_group import register as register_eval_group
from radlens.core import InputError, is_quiet, prepare_output_dir
from radlens.core.progress import stderr_console
from radlens.data.readers import FORMATS, DatasetFormat
from radlens.data.schema import CHEXPERT_LABELS

if TYPE_CHECKING:
    from radlens.retrieval.retriever import SearchResults

index_app = typer.Typer(help="Build retrieval indexes of images and reports.", no_args_is_help=True)

_MODEL_HELP = "Retrieval checkpoint (dual encoder or metric stage) from `radlens train retrieval`."


def check_folders(index: Path | None, checkpoints: Sequence[Path]) -> None:
    """InputError, with the message opening them would give, for an index folder or checkpoint folder
    that is not there: checked before the retrieval stack is imported (~5 s: torch, transformers)."""
    if index is not None and not index.is_dir():
        raise InputError(f"index folder {index} not found", "build one with `radlens index build`")
    for checkpoint in checkpoints:
        if not checkpoint.is_dir():
            raise InputError(f"checkpoint folder {checkpoint} not found", "pass a folder written by radlens")


def _label_name(name: str) -> str:
    """A CheXpert label name matched case-insensitively ('pleural effusion' → 'Pleural Effusion')."""
    for label in CHEXPERT_LABELS:
        if label.lower() == name.strip().lower():
            return label
    raise InputError(f"unknown label {name!r} for --label", f"use one of: {', '.join(CHEXPERT_LABELS)}")


@index_app.command("build")
def build(
    model: Path = typer.Option(..., "--model", help=_MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="Dataset folder (e.g. RadPhantom or MIMIC-CXR-JPG)."),
    out: Path = typer.Option(..., "--out", help="Index folder to write (must be empty unless --overwrite)."),
    data_format: DatasetFormat = typer.Option(
        "mimic", "--format", help=f"Dataset layout: {', '.join(FORMATS)}."
    ),
    kind: Literal["flat", "ivf", "hnsw"] = typer.Option(
        "flat", "--kind", help="flat: exact (up to ~100k studies); ivf / hnsw: approximate, for more."
    ),
    splits: list[str] | None = typer.Option(None, "--split", help="Index only this split (repeatable)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images / reports embedded at a time."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Decoded-image cache (default: DATA/.radlens-cache when writable)."
    ),
    workers: int = typer.Option(0, "--workers", help="Image-loading worker processes (0: in process)."),
    reports_root: Path | None = typer.Option(
        None,
        "--reports-root",
        help="MIMIC-CXR: the folder mimic-cxr-reports.zip was unzipped in, when not inside --data (a read-only copy).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
) -> None:
    """Embed every study (first frontal image + report) and write a searchable index."""
    if batch_size < 1 or workers < 0:
        raise InputError("--batch-size must be at least 1 and --workers at least 0")
    prepare_output_dir(out, overwrite, inputs=(model, data, reports_root))
    check_folders(None, [model])
    if not data.exists():
        raise InputError(f"dataset {data} not found", "pass the dataset folder with --data")
    from radlens.retrieval.build import PROBLEMS_FILE, build_index

    summary = build_index(
        model,
        data,
        out,
        format=data_format,
        kind=kind,
        splits=splits or None,
        batch_size=batch_size,
        overwrite=overwrite,
        cache_dir=cache_dir,
        num_workers=workers,
        reports_root=reports_root,
    )
    if is_quiet():
        return
    typer.echo(f"indexed {summary.count} studies into {out} ({summary.model_type}, {summary.kind} index)")
    if summary.truncated:
        typer.echo(
            f"note: {summary.truncated} reports are longer than the model's {summary.max_length} tokens; "
            "only their beginning was embedded"
        )
    if summary.problems:
        typer.echo(f"skipped {len(summary.problems)} items; see {out / PROBLEMS_FILE}")


def search(
    index: Path = typer.Option(..., "--index", help="Index folder from `radlens index build`."),
    model: Path = typer.Option(..., "--model", help="The checkpoint the index was built with."),
    text: str | None = typer.Option(None, "--text", help="Find images matching this report or phrase."),
    image: Path | None = typer.Option(None, "--image", help="Find reports matching this image file."),
    k: int = typer.Option(10, "--k", help="Number of results."),
    rerank: int | None = typer.Option(
        None, "--rerank", help="Re-score the best N with the fusion model (default with --fusion: k)."
    ),
    fusion: Path | None = typer.Option(None, "--fusion", help="Fusion checkpoint for --rerank."),
    labels: list[str] | None = typer.Option(None, "--label", help="Only studies positive for this label."),
    views: list[str] | None = typer.Option(None, "--view", help="Only images of this view, e.g. PA."),
    splits: list[str] | None = typer.Option(None, "--split", help="Only studies of this split."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
) -> None:
    """Search the index with a report text or an image; prints a table (or JSON) of the best studies."""
    # Check the options before importing the retrieval stack (~5 s: torch, transformers), so a mistyped
    # option costs a second, not six.
    if (text is None) == (image is None):
        raise InputError("pass exactly one of --text and --image")
    if k < 1:
        raise InputError(f"--k must be a positive number of results (got {k})")
    if rerank is not None and rerank < 0:
        raise InputError(f"--rerank must be a positive number of candidates (got {rerank})")
    if rerank and fusion is None:
        raise InputError("--rerank needs a fusion model", "pass --fusion CKPT")
    if text is not None and not text.strip():
        raise InputError("the query text is empty", "type a few words, e.g. --text 'left pleural effusion'")
    if image is not None and image.is_dir():
        raise InputError(f"--image {image} is a folder", "pass one image file")
    if image is not None and not image.is_file():
        raise InputError(f"image file {image} not found")
    positive = tuple(_label_name(name) for name in labels or ())
    check_folders(index, [model, *([fusion] if fusion is not None else [])])
    from radlens.retrieval.index import SearchFilter
    from radlens.retrieval.retriever import Retriever

    filters = SearchFilter(
        positive=positive,
        views=tuple(views or ()),
        splits=tuple(splits or ()),
    )
    retriever = Retriever.load(index, model, rerank_model_dir=fusion)
    # A view or split that no row has is most likely a typo: say what the index holds rather than
    # "no study matches the filters".
    index_in_use = retriever.index
    checks = [("--view", view, SearchFilter(views=(view,)), index_in_use.views) for view in filters.views]
    checks += [
        ("--split", split, SearchFilter(splits=(split,)), index_in_use.splits) for split in filters.splits
    ]
    for option, value, only_this, present in checks:
        if not index_in_use.matching_rows(only_this).size:
            raise InputError(
                f"{option} {value} matches no indexed study",
                f"use one of {', '.join(present)}" if present else f"the index records no {option[2:]}",
            )
    depth = (rerank if rerank is not None else k) if fusion is not None else 0
    if text is not None:
        hits = retriever.search_text(text, k=k, filters=filters, rerank=depth)
    else:
        assert image is not None
        hits = retriever.search_image(image, k=k, filters=filters, rerank=depth)
    if as_json:
        document = {"notices": list(hits.notices), "hits": [hit.to_dict() for hit in hits]}
        typer.echo(json.dumps(document, indent=2))
        return
    for notice in hits.notices:
        stderr_console.print(f"note: {notice}", highlight=False, markup=False)
    _print_table(hits, reranked=bool(depth))


def _print_table(hits: SearchResults, reranked: bool) -> None:
    # One line per hit: the impression is cut to the terminal's width (--json has all of it).
    table = Table(show_lines=False, expand=True)
    for column in ("rank", "score", *(["ITM"] if reranked else []), "study", "view", "split"):
        table.add_column(column, no_wrap=True)
    table.add_column("positive", overflow="fold", ratio=1, min_width=16)
    table.add_column("impression", no_wrap=True, overflow="ellipsis", ratio=1, min_width=16)
    for hit in hits:
        itm = [f"{hit.rerank_score:.3f}" if hit.rerank_score is not None else "-"] if reranked else []
        table.add_row(
            str(hit.rank),
            f"{hit.score:.3f}",
            *itm,
            hit.study_id,
            hit.view or "-",
            hit.split or "-",
            ", ".join(hit.positive_labels) or "-",
            hit.impression,
        )
    if not hits:
        typer.echo("no study matches the filters")
        return
    Console(soft_wrap=False).print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    index: Path = typer.Option(..., "--index", help="Index folder from `radlens index build`."),
    model: Path = typer.Option(..., "--model", help="The checkpoint the index was built with."),
    out: Path = typer.Option(..., "--out", help="results.json to write (results.md is written beside it)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on, or 'all'."),
    pool: int | None = typer.Option(None, "--pool", help="Evaluate a seeded random pool of N studies."),
    fusion: list[Path] | None = typer.Option(
        None, "--fusion", help="Fusion checkpoint (repeatable: one per negative strategy R / NE / NI)."
    ),
    fusion_split: str = typer.Option(
        "validate", "--fusion-split", help="Split the fusion models are scored on, or 'all'."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the pool and of the fusion negatives and masks."),
) -> None:
    """Recall@k, median rank, MRR and label-aware precision / mAP; the fusion models' ITM / MLM table."""
    # The checks of evaluate_retrieval that need no model code, with its messages, come before the
    # retrieval stack is imported (~5 s: torch, transformers).
    if out.suffix.lower() != ".json" or out.is_dir():
        raise InputError(f"--out {out} is not a .json file path", "pass e.g. --out results.json")
    if pool is not None and pool < 2:
        raise InputError(f"the pool must hold at least 2 studies, got {pool}")
    check_folders(index, [model, *(fusion or ())])
    from radlens.retrieval.evaluate import evaluate_retrieval, to_markdown

    result = evaluate_retrieval(
        index,
        model,
        split=None if split.lower() == "all" else split,
        out=out,
        fusion=fusion or (),
        pool=pool,
        fusion_split=fusion_split,
        seed=seed,
    )
    if not is_quiet():
        typer.echo(to_markdown(result.report, result.count, result.split, result.fusion, fusion_split))
        typer.echo(f"wrote {', '.join(str(path) for path in result.files)}")


def register(app: typer.Typer) -> None:
    """Attach ``index build``, ``search`` and ``eval retrieval`` (the shared ``eval`` group)."""
    app.add_typer(index_app, name="index")
    app.command("search")(search)
    register_eval_group(app)


__all__ = ["check_folders", "eval_retrieval", "index_app", "register", "search"]
