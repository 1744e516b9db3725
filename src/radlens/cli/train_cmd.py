"""``radlens train ...``: train models (docs/training.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from radlens.cli._output import check_choice, report_skipped
from radlens.core import (
    InputError,
    check_writable_folder,
    is_quiet,
    prepare_output_dir,
    read_config_file,
    set_quiet,
)
from radlens.data.readers import FORMATS

train_app = typer.Typer(
    help="Train models: retrieval (dual encoder, fusion model, metric stage) and the CheXpert classifier.",
    no_args_is_help=True,
)

_MODELS = ("dual", "fusion", "metric")
# radlens.train imports torch and transformers (~5 s), so the option values are spelled here, equal to
# radlens.train.presets.PRESET_NAMES and radlens.train.negatives.STRATEGIES (a test keeps them so).
_PRESETS = ("cpu-demo", "paper")
_NEGATIVES = ("R", "NE", "NI")


@train_app.command("retrieval")
def retrieval(
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints, logs, and the final model at its root."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset folder (its official train/validate split)."
    ),
    format: str | None = typer.Option(
        None, "--format", help="Dataset layout (default mimic; RadPhantom is mimic)."
    ),
    model: str | None = typer.Option(None, "--model", help="dual, fusion or metric (default dual)."),
    preset: str | None = typer.Option(None, "--preset", help="cpu-demo (default) or paper."),
    config_path: Path | None = typer.Option(
        None, "--config", help="YAML file over the preset (train:, dual_encoder:, ... sections)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out exactly."),
    negatives: str | None = typer.Option(None, "--negatives", help="ITM negatives for fusion: R, NE or NI."),
    base: Path | None = typer.Option(
        None,
        "--base",
        help="Trained checkpoint to build on: a dual encoder to fuse on (--model fusion), "
        "a dual or fusion model (--model metric).",
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (overrides the preset)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Image cache folder (default OUT/image-cache)."
    ),
    reports_root: Path | None = typer.Option(
        None,
        "--reports-root",
        help="MIMIC-CXR: the folder mimic-cxr-reports.zip was unzipped in, when not inside --data (a read-only copy).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it is not empty (only a folder radlens wrote)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and the summary."),
) -> None:
    """Train a retrieval model (dual encoder, fusion model, or metric projection) and validate it."""
    if quiet:
        set_quiet(True)
    # Check the options before importing the training stack (~5 s: torch, transformers), so a mistyped
    # option costs a second, not six.
    check_choice("--model", model, _MODELS)
    check_choice("--preset", preset, _PRESETS)
    check_choice("--negatives", negatives, _NEGATIVES)
    check_choice("--format", format, FORMATS)
    if max_steps is not None and max_steps < 1:
        raise InputError(f"--max-steps must be at least 1 (got {max_steps})")
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other", "pass one of them")
    _check_paths(out, data, config_path, resume, overwrite, base, cache_dir, reports_root)
    from radlens.train.retrieval import resolve_config, train_retrieval

    options = {
        "data": str(data) if data is not None else None,
        "format": format,
        "model": model,
        "preset": preset,
        "negatives": negatives,
        "base": str(base) if base is not None else None,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "reports_root": str(reports_root) if reports_root is not None else None,
        "max_steps": max_steps,
    }
    config = resolve_config(options, config_path, out, resume)
    summary = train_retrieval(config, out, resume=resume, overwrite=overwrite)
    report_skipped(summary.problems, config.data)
    if is_quiet():
        return
    result = summary.result
    loss = result.records[-1]["loss"] if result.records else float("nan")
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    typer.echo(
        f"trained {config.model} ({config.preset}) for {result.step} steps on {summary.train_studies} studies "
        f"in {result.seconds / 60:.1f} min{resumed}: final loss {loss:.4f}"
    )
    for note in summary.notes:
        typer.echo(note)
    if summary.validation:
        shown = ", ".join(
            f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
            for key, value in summary.validation.items()
        )
        typer.echo(f"validation ({summary.validate_studies} studies): {shown}")
    typer.echo(f"wrote {out} (model, metrics.jsonl, loss_curve.png, validation.json)")


def _check_paths(
    out: Path,
    data: Path | None,
    config_path: Path | None,
    resume: bool,
    overwrite: bool,
    base: Path | None,
    cache_dir: Path | None,
    reports_root: Path | None,
) -> None:
    """The path checks of :func:`radlens.train.retrieval.train_retrieval` that need no model code, with
    its messages: a missing dataset, config or base checkpoint, an --out that cannot be the run folder."""
    if data is not None and not data.exists():
        raise InputError(f"dataset {data} not found", "pass the dataset folder with --data")
    if data is None and config_path is None and not resume:
        raise InputError("--data is required", "pass the dataset folder, e.g. --data phantom/")
    if config_path is not None:
        read_config_file(config_path)  # missing, unreadable, not YAML, not a mapping
    if resume:
        if not out.is_dir():
            raise InputError(f"no checkpoint to resume in {out}", "start without --resume (or check --out)")
    else:
        prepare_output_dir(out, overwrite, inputs=(data, base, reports_root))
    if reports_root is not None and not reports_root.is_dir():
        raise InputError(
            f"reports folder {reports_root} not found", "pass the folder the reports were unzipped in"
        )
    if base is not None and not base.is_dir():
        raise InputError(f"checkpoint folder {base} not found", "pass a folder written by radlens")
    if cache_dir is not None:
        try:
            check_writable_folder(cache_dir)
        except InputError as exc:
            raise InputError(
                f"--cache-dir {cache_dir}: {exc.message}", "pass a folder for the image cache"
            ) from exc


def register(app: typer.Typer) -> None:
    """Attach the ``train`` command group."""
    app.add_typer(train_app, name="train")
