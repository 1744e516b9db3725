"""Shortcut audit: does a classifier look at the lesion, or at a marker that happens to go with it?

RadPhantom can place a marker (a radiopaque ring in an image corner, mask ``anatomy_confounder.png``)
mostly in studies with a chosen finding. :func:`run_shortcut_audit` generates a confounded training set
(marker with probability ``probability`` with the finding, ``probability_without`` without it), a clean
one (no marker) and two test sets (confounded like training; marker at random, ``random_probability``
whatever the finding), trains the classifier on each training set with the same preset, and then:

- **Relevance.** On test images that have both the finding and the marker (random-marker set), each
  method explains the finding's logit for both models. Per image, the marker share is the share of the
  positive relevance inside the marker's mask grown by ``tolerance`` pixels; the lesion share the share
  inside the finding's mask (the marker region excluded); the marker area the region's share of the
  image. Enrichment = mean marker share / mean marker area: 1 means the marker gets the relevance its
  size deserves, no more.
- **Decision rule.** A method flags a model when the marker enrichment exceeds ``k``
  (``enrichment_threshold``, default 5: five times more relevance on the marker than its area). The
  model is FLAGGED when at least half of the methods flag it.
- **Symptom.** Accuracy and AUROC for the finding on the confounded and the random-marker test sets,
  with the errors the shortcut predicts: positives without the marker missed, negatives with the
  marker called positive. Ground truth is RadPhantom's: positive iff the finding is drawn (label 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from radlens.core import Config, InputError, atomic_directory, atomic_write_text, progress, write_run_metadata
from radlens.data.schema import CHEXPERT_LABELS, POSITIVE, Problem, StudyRecord
from radlens.explain._eval_data import (
    MARKER_KEY,
    EvalSample,
    frontal_image,
    load_image_tensor,
    positive_samples,
)
from radlens.explain.api import METHODS, explain
from radlens.explain.evaluate import EVAL_OPTIONS, default_tolerance, tolerance_region

MODELS = ("confounded", "clean")


class ShortcutAuditConfig(Config):
    """Options of ``radlens audit shortcut`` (written to ``config.yaml`` beside the report)."""

    finding: str = "Pleural Effusion"
    studies: int = Field(800, ge=20)
    test_studies: int = Field(300, ge=20)
    size: int = Field(128, ge=64, le=1024)
    probability: float = Field(0.9, ge=0.0, le=1.0)
    probability_without: float = Field(0.05, ge=0.0, le=1.0)
    random_probability: float = Field(0.5, gt=0.0, lt=1.0)
    arch: str = "vgg"
    preset: str = "cpu-demo"
    max_steps: int | None = Field(None, ge=1)
    methods: tuple[str, ...] = ("gradcam", "integrated_gradients", "lrp_epsilon")
    n: int = Field(40, ge=1)
    enrichment_threshold: float = Field(5.0, gt=1.0)
    tolerance: int | None = Field(None, ge=0)
    seed: int = 0


@dataclass
class MethodAudit:
    """Mean shares of the positive relevance for one method and model, and whether it flags the model."""

    n: int
    marker_share: float
    lesion_share: float
    marker_area: float
    lesion_area: float
    enrichment: float
    flagged: bool


@dataclass
class ModelAudit:
    """Per-method audits of one model and the verdict (flagged when at least half of the methods flag)."""

    methods: dict[str, MethodAudit]
    flagged: bool


def relevance_shares(
    heatmap: np.ndarray, lesion: np.ndarray, marker: np.ndarray, tolerance: int
) -> dict[str, float]:
    """Shares of the positive relevance on the marker region (mask grown by ``tolerance``) and on the
    lesion (outside the marker region), and the two regions' shares of the image."""
    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, None)
    marker_region = tolerance_region(marker, tolerance)
    lesion_region = np.asarray(lesion, dtype=bool) & ~marker_region
    total = values.sum()
    return {
        "marker_share": float(values[marker_region].sum() / total) if total > 0 else math.nan,
        "lesion_share": float(values[lesion_region].sum() / total) if total > 0 else math.nan,
        "marker_area": float(marker_region.mean()),
        "lesion_area": float(lesion_region.mean()),
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def audit_model(
    model: nn.Module,
    images: torch.Tensor,
    lesion_masks: Sequence[np.ndarray],
    marker_masks: Sequence[np.ndarray],
    target: Any,
    methods: Sequence[str],
    threshold: float = 5.0,
    tolerance: int = 1,
    options: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 8,
) -> ModelAudit:
    """Explain ``target`` on ``images`` (B×C×H×W, all showing lesion and marker) with each method and
    apply the decision rule (module docstring)."""
    if not len(images) == len(lesion_masks) == len(marker_masks) or not len(images):
        raise InputError("need the same positive number of images, lesion masks and marker masks")
    if not methods:
        # "at least half of the methods flag it" holds vacuously for none: every model would be flagged.
        raise InputError("the audit needs at least one explanation method", "pass e.g. gradcam,lrp_epsilon")
    audits: dict[str, MethodAudit] = {}
    for method in methods:
        chosen = EVAL_OPTIONS.get(method, {}) | (options or {}).get(method, {})
        rows = []
        for start in range(0, len(images), batch_size):
            e = explain(model, images[start : start + batch_size], target, method=method, **chosen)
            if e.heatmap is None:
                raise InputError(f"method {method} gives no image heatmap", "choose an image method")
            for offset, heatmap in enumerate(e.heatmap.detach().float().cpu().numpy()):
                index = start + offset
                rows.append(relevance_shares(heatmap, lesion_masks[index], marker_masks[index], tolerance))
        means = {key: _mean([row[key] for row in rows]) for key in rows[0]}
        enrichment = means["marker_share"] / means["marker_area"] if means["marker_area"] > 0 else math.nan
        audits[method] = MethodAudit(
            n=len(rows), enrichment=enrichment, flagged=bool(enrichment > threshold), **means
        )
    flagged = sum(a.flagged for a in audits.values()) * 2 >= len(audits)
    return ModelAudit(audits, flagged)


# --- the whole audit on RadPhantom -----------------------------------------------------------------


def _generate(
    out: Path, config: ShortcutAuditConfig, studies: int, seed: int, marker: tuple[float, float] | None
) -> Path:
    from radlens.phantom.spec import ConfounderConfig, PhantomConfig
    from radlens.phantom.writer import generate_dataset

    confounder = ConfounderConfig(enabled=False, finding=config.finding)
    if marker is not None:
        confounder = ConfounderConfig(
            enabled=True, finding=config.finding, probability=marker[0], probability_without=marker[1]
        )
    generate_dataset(PhantomConfig(studies=studies, size=config.size, seed=seed, confounder=confounder), out)
    return out


def _records(folder: Path) -> list[StudyRecord]:
    from radlens.data.readers.mimic import read_mimic

    return read_mimic(folder).records


@torch.no_grad()
def finding_accuracy(
    model: nn.Module, records: Sequence[StudyRecord], finding: str, size: int
) -> dict[str, Any]:
    """AUROC and accuracy at 0.5 for ``finding`` (truth: label 1), overall and in the shortcut's failure
    groups: positives without the marker (recall) and negatives with it (false-positive rate)."""
    from sklearn.metrics import roc_auc_score

    index = list(model.labels).index(finding)  # type: ignore[arg-type]
    truth, marked, scores = [], [], []
    chosen = [(record, frontal_image(record)) for record in records]
    chosen = [(record, image) for record, image in chosen if image is not None]
    for start in range(0, len(chosen), 32):
        part = chosen[start : start + 32]
        pixels = torch.stack([load_image_tensor(image.path, size) for _, image in part])
        scores += torch.sigmoid(model.eval()(pixels)[:, index]).tolist()
        truth += [record.labels.get(finding) == POSITIVE for record, _ in part]
        marked += [MARKER_KEY in image.masks for _, image in part]
    y, m, p = np.array(truth), np.array(marked), np.array(scores)
    predicted = p >= 0.5

    def rate(selection: np.ndarray) -> float | None:
        return float(predicted[selection].mean()) if selection.any() else None

    return {
        "studies": len(y),
        "positives": int(y.sum()),
        "with_marker": int(m.sum()),
        "auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "accuracy": float((predicted == y).mean()) if len(y) else None,
        "recall_without_marker": rate(y & ~m),
        "false_positive_rate_with_marker": rate(~y & m),
    }


@dataclass
class ShortcutAuditResult:
    """What the audit found (also in ``audit.json``)."""

    audits: dict[str, ModelAudit]
    accuracy: dict[str, dict[str, dict[str, Any]]]
    tolerance: int
    problems: list[Problem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _check(config: ShortcutAuditConfig) -> None:
    if config.finding not in CHEXPERT_LABELS or config.finding == "No Finding":
        raise InputError(
            f"unknown finding {config.finding!r}", f"use one of: {', '.join(CHEXPERT_LABELS[:8])}, ..."
        )
    if not config.methods:
        raise InputError("the audit needs at least one explanation method", "pass e.g. gradcam,lrp_epsilon")
    bad = [m for m in config.methods if m not in METHODS or m == "activation_maximisation"]
    if bad:
        raise InputError(f"unknown or non-attribution method {bad[0]!r}", f"use: {', '.join(METHODS)}")


def run_shortcut_audit(
    config: ShortcutAuditConfig, out: Path, overwrite: bool = False
) -> ShortcutAuditResult:
    """Generate the data, train both models, audit them and write ``audit.json``, ``audit.md`` and
    ``audit.png`` (plus ``data/`` and ``models/``) into ``out``, atomically."""
    from radlens.models.checkpoint import load_checkpoint
    from radlens.train.classifier import build_run_config, train_classifier

    _check(config)
    tolerance = default_tolerance(config.size) if config.tolerance is None else config.tolerance
    seed = config.seed
    problems: list[Problem] = []
    with atomic_directory(out, overwrite) as tmp:
        data = tmp / "data"
        confounding = (config.probability, config.probability_without)
        train_sets = {
            "confounded": _generate(data / "confounded", config, config.studies, seed, confounding),
            "clean": _generate(data / "clean", config, config.studies, seed, None),
        }
        tests = {
            "confounded_test": _generate(
                data / "test_confounded", config, config.test_studies, seed + 1, confounding
            ),
            "random_marker_test": _generate(
                data / "test_random_marker",
                config,
                config.test_studies,
                seed + 2,
                (config.random_probability,) * 2,
            ),
        }
        models = {}
        train = {} if config.max_steps is None else {"max_steps": config.max_steps}
        for name, folder in train_sets.items():
            overrides = {
                "model": {"image_size": config.size},
                "train": train,
                "split": "train",
                "eval_split": "test",
            }
            run = build_run_config(folder, config.preset, config.arch, overrides)  # type: ignore[arg-type]
            train_classifier(run, tmp / "models" / name)
            # Record where the data will be once the output folder is in place, not the temporary name.
            write_run_metadata(
                tmp / "models" / name, run.model_copy(update={"data": str(out / "data" / folder.name)})
            )
            models[name] = load_checkpoint(tmp / "models" / name).eval()
        test_records = {name: _records(folder) for name, folder in tests.items()}
        samples = positive_samples(
            test_records["random_marker_test"],
            config.finding,
            config.n,
            config.size,
            seed,
            problems,
            (MARKER_KEY,),
        )
        if not samples:
            raise InputError(
                f"no test image shows both {config.finding} and the marker", "raise --test-studies"
            )
        images = torch.stack([s.image for s in samples])
        audits, accuracy = {}, {}
        for name, model in progress(list(models.items()), len(models), "auditing"):
            audits[name] = audit_model(
                model,
                images,
                [s.mask for s in samples],
                [s.masks[MARKER_KEY] for s in samples],
                config.finding,
                config.methods,
                config.enrichment_threshold,
                tolerance,
            )
            accuracy[name] = {
                test: finding_accuracy(model, records, config.finding, config.size)
                for test, records in test_records.items()
            }
        result = ShortcutAuditResult(audits, accuracy, tolerance, problems)
        _write(tmp, config, result, models, samples)
    result.files = [out / "audit.json", out / "audit.md", out / "audit.png"]
    return result


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    return value


def _write(
    tmp: Path,
    config: ShortcutAuditConfig,
    result: ShortcutAuditResult,
    models: dict[str, nn.Module],
    samples: Sequence[EvalSample],
) -> None:
    document = {
        "finding": config.finding,
        "decision_rule": f"a method flags a model when marker enrichment > {config.enrichment_threshold}; "
        "the model is flagged when at least half of the methods flag it",
        "tolerance_px": result.tolerance,
        "audits": {name: asdict(audit) for name, audit in result.audits.items()},
        "accuracy": result.accuracy,
        "problems": [asdict(p) for p in result.problems],
    }
    atomic_write_text(tmp / "audit.json", json.dumps(_json(document), indent=2) + "\n")
    atomic_write_text(tmp / "audit.md", to_markdown(config, result))
    audit_figure(tmp / "audit.png", config, result, models, samples[0])
    write_run_metadata(tmp, config)


def audit_figure(
    path: Path,
    config: ShortcutAuditConfig,
    result: ShortcutAuditResult,
    models: dict[str, nn.Module],
    sample: EvalSample,
) -> None:
    """Top: marker and lesion shares per method for both models (dashed: the marker's area share).
    Below: one test image with the lesion (green) and marker (cyan) outlined, and each model's maps
    (signed maps: blue–white–red, saturated at the 99th percentile of |relevance|)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from radlens.core import atomic_write_bytes
    from radlens.explain.render import colour_mapping

    methods = list(config.methods)
    figure = Figure(figsize=(2.4 * (len(methods) + 1), 7.6), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, len(methods) + 1, height_ratios=[1.1, 1, 1])
    bars = figure.add_subplot(grid[0, :])
    width = 0.2
    x = np.arange(len(methods))
    for offset, (name, audit) in enumerate(result.audits.items()):
        shares = [audit.methods[m].marker_share for m in methods]
        lesions = [audit.methods[m].lesion_share for m in methods]
        verdict = "FLAGGED" if audit.flagged else "not flagged"
        bars.bar(x + (2 * offset - 1.5) * width, shares, width, label=f"{name} ({verdict}): marker")
        bars.bar(x + (2 * offset - 0.5) * width, lesions, width, label=f"{name}: lesion", alpha=0.6)
    area = float(np.mean([a.marker_area for a in result.audits["clean"].methods.values()]))
    bars.axhline(area, color="black", linestyle="--", linewidth=1, label="marker area share")
    bars.set_xticks(x, methods)
    bars.set_ylabel("share of positive relevance")
    bars.set_title(f"shortcut audit: {config.finding}", fontsize=10)
    bars.legend(fontsize=7, ncol=3)
    image = sample.image[0].numpy()
    for row, (name, model) in enumerate(models.items(), start=1):
        axis = figure.add_subplot(grid[row, 0])
        axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        axis.contour(sample.mask, levels=[0.5], colors="lime", linewidths=0.8)
        axis.contour(sample.masks[MARKER_KEY], levels=[0.5], colors="cyan", linewidths=0.8)
        axis.set_title(f"{name} model", fontsize=9)
        axis.set_axis_off()
        for column, method in enumerate(methods, start=1):
            options = EVAL_OPTIONS.get(method, {})
            e = explain(model, sample.image.unsqueeze(0), config.finding, method=method, **options)
            assert e.heatmap is not None
            heat = e.heatmap[0].detach().float().numpy()
            axis = figure.add_subplot(grid[row, column])
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            if e.signed:
                # Pixel maps are spiky: the colour scale ends at the 99th percentile of |relevance| (the
                # few pixels above it saturate), and colour fades in with |relevance| (zero: the image).
                limit = float(np.percentile(np.abs(heat), 99)) or 1.0
                alpha = np.clip(np.abs(heat) / limit, 0.0, 1.0) * 0.9
                axis.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=alpha)
            else:
                cmap, norm = colour_mapping(heat, False)
                axis.imshow(heat, cmap=cmap, norm=norm, alpha=0.6)
            axis.contour(sample.masks[MARKER_KEY], levels=[0.5], colors="cyan", linewidths=0.6)
            axis.set_title(method, fontsize=8)
            axis.set_axis_off()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def to_markdown(config: ShortcutAuditConfig, result: ShortcutAuditResult) -> str:
    """The audit as Markdown: verdicts, the relevance table, the accuracy table."""
    lines = [
        f"Shortcut audit for **{config.finding}** (marker enrichment threshold k = {config.enrichment_threshold}).",
        "",
    ]
    for name, audit in result.audits.items():
        lines.append(f"- {name} model: {'**FLAGGED**' if audit.flagged else 'not flagged'}")
    lines += [
        "",
        "| model | method | n | marker share | marker area | enrichment | lesion share | lesion area | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, audit in result.audits.items():
        for method, a in audit.methods.items():
            lines.append(
                f"| {name} | {method} | {a.n} | {_fmt(a.marker_share, 3)} | {_fmt(a.marker_area, 3)} | "
                f"{_fmt(a.enrichment, 1)} | {_fmt(a.lesion_share)} | {_fmt(a.lesion_area)} | {'yes' if a.flagged else 'no'} |"
            )
    lines += [
        "",
        "| model | test set | AUROC | accuracy | recall, positives without marker | FPR, negatives with marker |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_test in result.accuracy.items():
        for test, s in by_test.items():
            lines.append(
                f"| {name} | {test} | {_fmt(s['auroc'], 3)} | {_fmt(s['accuracy'], 3)} | "
                f"{_fmt(s['recall_without_marker'])} | {_fmt(s['false_positive_rate_with_marker'])} |"
            )
    return "\n".join(lines) + "\n"
