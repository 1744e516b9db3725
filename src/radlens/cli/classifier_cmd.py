"""``radlens train classifier``: train the 14-label CheXpert classifier (docs/explain.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from radlens.cli._output import check_choice, report_skipped
from radlens.core import InputError, is_quiet, prepare_output_dir, read_config_file, set_quiet

# radlens.train.classifier imports torch (~5 s), so the option values are spelled here, equal to the
# keys of radlens.train.classifier.PRESETS and radlens.models.classifier's Arch and UncertainPolicy
# (a test keeps them so).
_PRESETS = ("cpu-demo", "paper")
_ARCHS = ("efficientnet", "vgg")
_UNCERTAIN = ("ignore", "positive", "negative")


def train_classifier_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder (MIMIC-CXR-JPG layout, e.g. RadPhantom)."),
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints, logs, the final model and eval.json."
    ),
    preset: str = typer.Option("cpu-demo", "--preset", help="cpu-demo (minutes on 2 cores) or paper."),
    arch: str = typer.Option("efficientnet", "--arch", help="efficientnet (ImageNet-initialised) or vgg."),
    config_path: Path | None = typer.Option(
        None, "--config", help="YAML over the preset (split, eval_split, model:, train: sections)."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (overrides the preset)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    image_size: int | None = typer.Option(None, "--image-size", help="Square input side in pixels."),
    uncertain: str | None = typer.Option(
        None, "--uncertain", help="Uncertain (-1) labels: ignore (U-Ignore, default), positive or negative."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Training split (default train; 'all' for every split)."
    ),
    eval_split: str | None = typer.Option(
        None, "--eval-split", help="Split scored at the end (default test)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out exactly."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it is not empty (only a folder radlens wrote)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and the summary."),
) -> None:
    """Train the CheXpert classifier (masked BCE over the 14 labels) and score it per label."""
    if quiet:
        set_quiet(True)
    # Check the options before importing the training stack (~5 s: torch), so a mistyped option costs a
    # second, not six.
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other", "pass one of them")
    check_choice("--preset", preset, _PRESETS)
    check_choice("--arch", arch, _ARCHS)
    check_choice("--uncertain", uncertain, _UNCERTAIN)
    for option, number in (("--max-steps", max_steps), ("--batch-size", batch_size)):
        if number is not None and number < 1:
            raise InputError(f"{option} must be at least 1 (got {number})")
    if lr is not None and not lr > 0:
        raise InputError(f"--lr must be above 0 (got {lr})")
    if not data.is_dir():
        raise InputError(f"dataset folder {data} not found", "pass a RadPhantom or MIMIC-CXR-JPG folder")
    if resume:
        if not out.is_dir():
            raise InputError(f"no checkpoint to resume in {out}", "start without --resume (or check --out)")
    else:
        prepare_output_dir(out, overwrite, inputs=(data,))
    overrides: dict[str, Any] = _yaml_overrides(config_path)
    for section, key, value in (
        ("train", "max_steps", max_steps),
        ("train", "batch_size", batch_size),
        ("train", "lr", lr),
        ("model", "image_size", image_size),
        ("model", "uncertain", uncertain),
        (None, "split", split),
        (None, "eval_split", eval_split),
    ):
        if value is not None:
            (overrides.setdefault(section, {}) if section else overrides)[key] = value
    from radlens.train.classifier import build_run_config, train_classifier

    run = build_run_config(data, preset, arch, overrides)  # type: ignore[arg-type]
    summary = train_classifier(run, out, resume=resume, overwrite=overwrite)
    report_skipped(summary.problems, data)
    if is_quiet():
        return
    result, evaluation = summary.train, summary.evaluation
    loss = result.records[-1]["loss"] if result.records else float("nan")
    typer.echo(
        f"trained the {arch} classifier ({preset}) for {result.step} steps in {result.seconds / 60:.1f} min: "
        f"final loss {loss:.4f}"
    )
    mean = evaluation.get("mean_auroc")
    if mean is not None:
        typer.echo(f"{run.eval_split} split ({evaluation['studies']} studies): mean AUROC {mean:.3f}")
    typer.echo(f"wrote {out} (model, metrics.jsonl, loss_curve.png, eval.json)")


def _yaml_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = read_config_file(path)
    if "data" in loaded:
        raise InputError(f"config file {path} sets data", "remove it and pass the dataset with --data")
    return loaded


def register(app: typer.Typer) -> None:
    """Add ``classifier`` to the ``train`` group (created and attached by ``radlens.cli.train_cmd``)."""
    from radlens.cli.train_cmd import train_app

    if not any(command.name == "classifier" for command in train_app.registered_commands):
        train_app.command("classifier")(train_classifier_command)


__all__ = ["register", "train_classifier_command"]
