"""``radlens train ...``: train models (docs/training.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from radlens.cli._output import report_skipped
from radlens.core import InputError, is_quiet, set_quiet

train_app = typer.Typer(
    help="Train models: retrieval (dual encoder, fusion model, metric stage) and the CheXpert classifier.",
    no_args_is_help=True,
)

_MODELS = ("dual", "fusion", "metric")


def _check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InputError(f"unknown {option} {value!r}", f"use one of {', '.join(choices)}")


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it is not empty."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and the summary."),
) -> None:
    """Train a retrieval model (dual encoder, fusion model, or metric projection) and validate it."""
    from radlens.data.readers import FORMATS
    from radlens.train.negatives import STRATEGIES
    from radlens.train.presets import PRESET_NAMES
    from radlens.train.retrieval import resolve_config, train_retrieval

    if quiet:
        set_quiet(True)
    _check_choice("--model", model, _MODELS)
    _check_choice("--preset", preset, PRESET_NAMES)
    _check_choice("--negatives", negatives, STRATEGIES)
    _check_choice("--format", format, FORMATS)
    if max_steps is not None and max_steps < 1:
        raise InputError(f"--max-steps must be at least 1 (got {max_steps})")
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other", "pass one of them")
    options = {
        "data": str(data) if data is not None else None,
        "format": format,
        "model": model,
        "preset": preset,
        "negatives": negatives,
        "base": str(base) if base is not None else None,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
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


def register(app: typer.Typer) -> None:
    """Attach the ``train`` command group."""
    app.add_typer(train_app, name="train")
