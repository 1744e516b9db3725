"""``radlens explain``, ``radlens eval explain`` and ``radlens audit shortcut`` (docs/explain.md).

Texts given with ``--text`` are never printed or written to the run config (only whether one was given);
the HTML page of word scores is the one place they appear, because it is the requested output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

from radlens.cli.eval_group import eval_app
from radlens.cli.eval_group import register as register_eval_group
from radlens.core import (
    Config,
    InputError,
    check_writable_folder,
    is_quiet,
    prepare_output_dir,
    write_run_metadata,
)

C = TypeVar("C", bound=Config)

audit_app = typer.Typer(
    help="Audit models for shortcuts with RadPhantom's planted confounders.", no_args_is_help=True
)


def _split_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(part.strip() for part in value.split(",") if part.strip())
    if not items:
        raise InputError(f"empty list {value!r}", "pass comma-separated names, e.g. gradcam,lrp_epsilon")
    return items


def _config(cls: type[C], **values: Any) -> C:
    """Build a config; a bad value is a one-line InputError naming the option."""
    try:
        return cls(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(
            f"invalid option --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", "see --help"
        ) from exc


def _parse_options(values: list[str] | None) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` strings → ``{method: {key: value}}``; values are JSON when they parse, else strings."""
    options: dict[str, dict[str, Any]] = {}
    for item in values or ():
        name, equals, raw = item.partition("=")
        method, dot, key = name.partition(".")
        if not equals or not dot or not method or not key:
            raise InputError(
                f"bad --option {item!r}", "write METHOD.KEY=VALUE, e.g. lrp_epsilon.rules=epsilon_plus"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(method, {})[key] = value
    return options


@eval_app.command("explain")
def eval_explain(
    model: Path = typer.Option(..., "--model", help="Classifier, dual encoder or fusion checkpoint."),
    data: Path = typer.Option(..., "--data", help="RadPhantom folder (it has the finding masks)."),
    out: Path = typer.Option(
        ..., "--out", help="Folder for results.json, results.md, per_image.jsonl, examples/."
    ),
    methods: str = typer.Option(
        "gradcam,integrated_gradients,lrp_epsilon", "--methods", help="Comma-separated explanation methods."
    ),
    findings: str | None = typer.Option(
        None,
        "--findings",
        help="Comma-separated findings (default: every finding with masks the model knows).",
    ),
    n: int = typer.Option(50, "--n", help="Positive images per finding (at most)."),
    split: str = typer.Option(
        "test", "--split", help="Split to explain, or 'all' (a separately generated set)."
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Input side (default: the model's)."),
    tolerance: int | None = typer.Option(
        None, "--tolerance", help="Pointing-game band in px (default 4% of side)."
    ),
    steps: int = typer.Option(32, "--steps", help="Steps of the deletion / insertion curves."),
    randomisation_layers: int = typer.Option(
        4, "--randomisation-layers", help="Top layers randomised in cascade."
    ),
    randomisation_images: int = typer.Option(
        8, "--randomisation-images", help="Images in the randomisation test."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Images explained at a time."),
    examples: int = typer.Option(1, "--examples", help="Overlay PNGs written per method and finding."),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        help="Method option METHOD.KEY=VALUE (repeatable), e.g. lrp_epsilon.rules=epsilon_plus.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the image draw and of the randomisation."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it is not empty (only a folder radlens wrote)."
    ),
) -> None:
    """Localisation (pointing game, inside fraction, mask AUROC), faithfulness (deletion / insertion),
    sanity (parameter randomisation) and cost of explanation methods, against RadPhantom's masks."""
    from radlens.explain.evaluate import ExplainEvalConfig, evaluate_explanations, to_markdown

    for name, value in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        if value < 1:
            raise InputError(f"{name} must be at least 1 (got {value})")
    if not data.is_dir():
        raise InputError(f"dataset folder {data} not found", "pass a RadPhantom folder")
    prepare_output_dir(out, overwrite, inputs=(data, model))
    config = _config(
        ExplainEvalConfig,
        model=str(model),
        data=str(data),
        methods=_split_list(methods) or (),
        findings=_split_list(findings),
        n=n,
        split=split,
        image_size=image_size,
        tolerance=tolerance,
        steps=steps,
        randomisation_layers=max(1, randomisation_layers),
        randomisation_images=max(1, randomisation_images),
        batch_size=batch_size,
        examples=max(0, examples),
        seed=seed,
        options=_parse_options(option),
    )
    result = evaluate_explanations(config, out, overwrite=overwrite)
    if result.problems:
        typer.echo(f"skipped {len(result.problems)} items (listed in {out / 'results.json'})", err=True)
    if not is_quiet():
        typer.echo(to_markdown(result))
        typer.echo(f"wrote {', '.join(str(path) for path in result.files)}")


class ExplainImageConfig(Config):
    """Options of ``radlens explain`` written beside the picture (the text itself is not recorded)."""

    model: str
    image: str
    method: str
    label: str | None
    text_given: bool
    image_size: int
    out: str


def explain_image(
    model: Path = typer.Option(..., "--model", help="Classifier, dual encoder or fusion checkpoint."),
    image: Path = typer.Option(..., "--image", help="Image file (PNG, JPEG or DICOM)."),
    out: Path = typer.Option(
        ..., "--out", help="Overlay PNG to write (word scores go to the .html beside it)."
    ),
    method: str = typer.Option("gradcam", "--method", help="Explanation method, e.g. gradcam, lrp_epsilon."),
    text: str | None = typer.Option(
        None, "--text", help="Report text or phrase (dual encoder / fusion model)."
    ),
    label: str | None = typer.Option(
        None, "--label", help="Classifier label to explain (default: the most likely)."
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Input side (default: the model's)."),
) -> None:
    """Explain one picture: a heatmap overlay with a colour bar (and word scores as HTML for a text)."""
    import torch

    from radlens.explain._eval_data import load_image_tensor, load_subject_model
    from radlens.explain.api import METHODS, explain
    from radlens.explain.render import save_heatmap_png, save_tokens_html

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}", f"use one of: {', '.join(METHODS)}")
    if method == "activation_maximisation":
        raise InputError(
            "activation_maximisation synthesises an image of its own, it does not explain --image",
            "call radlens.explain.explain(..., method='activation_maximisation') from Python, "
            "or choose an attribution method",
        )
    if image_size is not None and image_size < 16:
        raise InputError(f"--image-size must be at least 16 (got {image_size})", "omit it to use the model's")
    if out.suffix.lower() != ".png" or out.is_dir():
        raise InputError(f"--out {out} is not a .png file path", "pass a path ending in .png")
    if not image.is_file():
        raise InputError(f"image file {image} not found")
    if text is not None and not text.strip():
        raise InputError("--text is empty", "type a phrase, e.g. --text 'left pleural effusion'")
    check_writable_folder(out.parent)
    loaded, model_type, native = load_subject_model(model)
    size = image_size or native
    pixels = load_image_tensor(image, size).unsqueeze(0)
    html_path = out.with_suffix(".html")
    wrote = [out]
    if model_type in ("dual_encoder", "fusion"):
        if text is None:
            raise InputError(f"a {model_type} explains how an image matches a text", "pass --text")
        if label is not None:
            raise InputError(f"--label is for classifiers, a {model_type} explains a text", "drop --label")
        title, heatmap, signed, words = _explain_retrieval(loaded, model_type, pixels, text, method)
        if words is not None:
            save_tokens_html(html_path, words.tokens, words.token_scores, title="word relevance")
            wrote.append(html_path)
    else:
        if text is not None:
            raise InputError(
                "--text is for a dual encoder or fusion model, a classifier explains a label", "use --label"
            )
        labels = list(loaded.labels)  # type: ignore[arg-type]
        with torch.no_grad():
            probabilities = torch.sigmoid(loaded(pixels))[0]
        if label is None:
            label = labels[int(probabilities.argmax())]
        if label not in labels:
            raise InputError(f"unknown --label {label!r}", f"use one of: {', '.join(labels)}")
        e = explain(loaded, pixels, label, method=method)
        if e.heatmap is None:
            raise InputError(f"method {method} gives no image heatmap", "choose an attribution method")
        probability = float(probabilities[labels.index(label)])
        title, heatmap, signed = f"{method}: {label} (p = {probability:.2f})", e.heatmap[0], e.signed
    save_heatmap_png(out, pixels[0], heatmap, signed, title=title)
    settings = ExplainImageConfig(
        model=str(model), image=str(image), method=method, label=label, text_given=text is not None,
        image_size=size, out=str(out),
    )  # fmt: skip
    write_run_metadata(out.parent, settings, name=f"{out.stem}_config")
    if not is_quiet():
        typer.echo(f"wrote {', '.join(str(path) for path in wrote)}")


def _explain_retrieval(
    model: Any, model_type: str, pixels: Any, text: str, method: str
) -> tuple[str, Any, bool, Any]:
    """(title, heatmap, signed, word scores or None) for a dual encoder or fusion model."""
    from radlens.explain.api import METHODS
    from radlens.explain.retrieval_targets import (
        WordAttribution,
        explain_fusion_match,
        explain_image_match,
        explain_text_match,
    )

    words: WordAttribution | None
    if model_type == "dual_encoder":
        e = explain_image_match(model, pixels, text, method=method)
        words = explain_text_match(model, pixels, [text]).words[0]
        score = f"cos = {float(e.scores[0]):.3f}" if e.scores is not None else ""
    else:
        fused = explain_fusion_match(model, pixels, [text], method=method)
        e, words = fused.explanation, (fused.words[0] if fused.words else None)
        score = f"ITM logit = {float(e.scores[0]):.2f}" if e.scores is not None else ""
    if e.heatmap is None:
        raise InputError(
            f"method {method} gives no image heatmap for a {model_type}", "choose an image method"
        )
    return f"{method}: image-text match ({score})", e.heatmap[0], METHODS[method].signed, words


@audit_app.command("shortcut")
def audit_shortcut(
    out: Path = typer.Option(
        ..., "--out", help="Folder for audit.json, audit.md, audit.png, data/ and models/."
    ),
    finding: str = typer.Option("Pleural Effusion", "--finding", help="Finding the marker goes with."),
    studies: int = typer.Option(800, "--studies", help="Studies in each training set."),
    test_studies: int = typer.Option(300, "--test-studies", help="Studies in each test set."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (data and model)."),
    probability: float = typer.Option(0.9, "--probability", help="Marker probability with the finding."),
    probability_without: float = typer.Option(0.05, "--probability-without", help="... and without it."),
    arch: str = typer.Option("vgg", "--arch", help="Classifier tower: vgg or efficientnet."),
    preset: str = typer.Option("cpu-demo", "--preset", help="Training preset of both models."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (overrides the preset)."),
    methods: str = typer.Option(
        "gradcam,integrated_gradients,lrp_epsilon", "--methods", help="Comma-separated."
    ),
    n: int = typer.Option(40, "--n", help="Test images (finding + marker) explained per model."),
    threshold: float = typer.Option(5.0, "--threshold", help="Marker enrichment above which a method flags."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the image draw."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it is not empty (only a folder radlens wrote)."
    ),
) -> None:
    """Train a classifier on confounded and on clean RadPhantom data and flag the one that uses the marker."""
    from radlens.explain.audit import ShortcutAuditConfig, run_shortcut_audit, to_markdown

    if arch not in ("vgg", "efficientnet"):
        raise InputError(f"unknown --arch {arch!r}", "use vgg or efficientnet")
    prepare_output_dir(out, overwrite)
    config = _config(
        ShortcutAuditConfig, finding=finding, studies=studies, test_studies=test_studies, size=size,
        probability=probability, probability_without=probability_without, arch=arch, preset=preset,
        max_steps=max_steps, methods=_split_list(methods) or (), n=n, enrichment_threshold=threshold, seed=seed,
    )  # fmt: skip
    result = run_shortcut_audit(config, out, overwrite=overwrite)
    if result.problems:
        typer.echo(f"skipped {len(result.problems)} items (listed in {out / 'audit.json'})", err=True)
    if not is_quiet():
        typer.echo(to_markdown(config, result))
        typer.echo(f"wrote {', '.join(str(path) for path in result.files)}")


def register(app: typer.Typer) -> None:
    """Attach ``explain``, ``audit shortcut`` and ``eval explain`` (on the shared ``eval`` group)."""
    app.command("explain")(explain_image)
    app.add_typer(audit_app, name="audit")
    register_eval_group(app)


__all__ = ["audit_app", "audit_shortcut", "eval_explain", "explain_image", "register"]
