"""How good is an explanation? Localisation, faithfulness, sanity and cost, measured on RadPhantom.

RadPhantom draws every finding with a pixel mask, so an explanation of "why Pleural Effusion?" can be
checked against where the effusion is. Per method and finding, over the positive images that have a mask:

- **Localisation.** Pointing game (Zhang et al. 2016): a hit when the heatmap's maximum lies in the
  finding's mask grown by a tolerance band of ``tolerance`` pixels (default 4% of the image side, about
  the 15 px at 224 px of the original protocol scaled down to small lesions); when several pixels share
  the maximum, a hit needs at least half of them inside; a constant map never hits. The chance level
  (the band's share of the image) is reported beside it. Inside fraction: the share of the POSITIVE
  relevance that falls inside the mask (chance level: the mask's share of the image). Mask AUROC: the
  heatmap's values as a detector of mask pixels (``sklearn.metrics.roc_auc_score``; 0.5 is chance).
- **Faithfulness.** Deletion and insertion curves (Petsiuk et al. 2018, RISE), pixels in MoRF order
  (most relevant first; ties by position): deletion replaces the top pixels with 0 (black), insertion
  starts from a Gaussian blur of the image (σ = side / 16) and puts the top pixels back, in ``steps``
  equal steps. The score is the model's probability for the finding (classifier: sigmoid of the logit;
  fusion: P(related)) or the cosine similarity (dual encoder). Areas under the curves by the trapezoid
  rule over the deleted fraction: low deletion and high insertion areas mean a faithful map.
- **Sanity.** Model-parameter randomisation (Adebayo et al. 2018), cascading from the output: the conv
  and linear layers in reverse order of use are re-initialised one more at a time (their own
  ``reset_parameters``, seeded), and each stage's heatmaps are compared with the trained model's by
  Spearman rank correlation (a constant map counts as 0). A method passes when the correlation after
  the last stage is below :data:`RANDOMISATION_PASS`: its maps depend on what the model learned.
- **Cost.** Wall-clock seconds per explanation (batched, this machine).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from radlens.core import (
    Config,
    InputError,
    atomic_directory,
    atomic_write_text,
    prepare_output_dir,
    progress,
    write_run_metadata,
)
from radlens.data.schema import Problem
from radlens.explain._eval_data import EvalSample, Subject, load_eval_samples, load_subject_model, subject_for
from radlens.explain.api import METHODS, explain
from radlens.explain.methods._common import evaluation, gaussian_blur

#: A method passes the randomisation test when the mean Spearman correlation after the last stage is below this.
RANDOMISATION_PASS = 0.5
#: Method options used by the evaluation unless ``--option`` says otherwise (speed; documented).
EVAL_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8},
}


# --- metrics on one heatmap and mask --------------------------------------------------------------


def default_tolerance(size: int) -> int:
    """The pointing-game tolerance band in pixels: 4% of the image side, at least 1."""
    return max(1, round(0.04 * size))


def tolerance_region(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """``mask`` grown by a disk of radius ``tolerance`` pixels (``scipy.ndimage.binary_dilation``)."""
    from scipy.ndimage import binary_dilation

    region = np.asarray(mask, dtype=bool)
    if tolerance <= 0 or not region.any():
        return region
    offsets = np.arange(-tolerance, tolerance + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2
    return np.asarray(binary_dilation(region, structure=disk))


def _check_pair(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(heatmap, dtype=np.float64)
    region = np.asarray(mask, dtype=bool)
    if values.shape != region.shape or values.ndim != 2:
        raise InputError(f"heatmap {values.shape} and mask {region.shape} must be the same H×W shape")
    return np.nan_to_num(values, nan=0.0), region


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the heatmap's maximum lies in ``mask`` grown by ``tolerance`` pixels (ties: half must be in)."""
    values, region = _check_pair(heatmap, mask)
    peak = values.max()
    if peak <= values.min():
        return False
    inside = tolerance_region(region, tolerance)[values == peak]
    return bool(inside.mean() >= 0.5)


def inside_fraction(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance inside ``mask``; NaN when the map has no positive relevance."""
    values, region = _check_pair(heatmap, mask)
    positive = np.clip(values, 0.0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else math.nan


def mask_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of the heatmap values as a detector of mask pixels; NaN for an empty or full mask."""
    from sklearn.metrics import roc_auc_score

    values, region = _check_pair(heatmap, mask)
    if region.all() or not region.any():
        return math.nan
    return float(roc_auc_score(region.ravel(), values.ravel()))


@dataclass
class PerturbationCurves:
    """Deletion and insertion curves over the fraction of pixels perturbed, and their areas."""

    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float


def curve_area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid-rule area under ``values`` over ``fractions``."""
    x, y = np.asarray(fractions, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


@torch.no_grad()
def perturbation_curves(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    heatmap: torch.Tensor,
    steps: int = 32,
    deletion_baseline: torch.Tensor | None = None,
    insertion_baseline: torch.Tensor | None = None,
    batch_size: int = 33,
) -> PerturbationCurves:
    """Deletion and insertion curves of one C×H×W ``image`` in the MoRF order of its H×W ``heatmap``.

    ``score_fn`` maps a B×C×H×W batch to B scores. Baselines default to black (deletion) and a Gaussian
    blur with σ = side / 16 (insertion), as in RISE. Step k perturbs round(k·H·W/steps) pixels.
    """
    if image.ndim != 3 or tuple(heatmap.shape) != tuple(image.shape[1:]):
        raise InputError(f"image {tuple(image.shape)} must be C×H×W and heatmap {tuple(heatmap.shape)} H×W")
    if steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps})")
    height, width = heatmap.shape
    total = height * width
    deleted_value = torch.zeros_like(image) if deletion_baseline is None else deletion_baseline
    if insertion_baseline is None:
        insertion_baseline = gaussian_blur(image.unsqueeze(0), max(1.0, max(height, width) / 16))[0]
    order = torch.argsort(-heatmap.detach().flatten().double().nan_to_num(0.0), stable=True)
    rank = torch.empty(total, dtype=torch.long)
    rank[order.cpu()] = torch.arange(total)
    counts = torch.round(torch.linspace(0, total, steps + 1)).long()
    fractions = (counts.double() / total).tolist()
    deletion: list[float] = []
    insertion: list[float] = []
    for start in range(0, steps + 1, batch_size):
        chunk = counts[start : start + batch_size]
        taken = (rank.view(1, height, width) < chunk.view(-1, 1, 1)).unsqueeze(1).to(image.device)
        deleted = torch.where(taken, deleted_value.unsqueeze(0), image.unsqueeze(0))
        inserted = torch.where(taken, image.unsqueeze(0), insertion_baseline.unsqueeze(0))
        scores = score_fn(torch.cat([deleted, inserted])).detach().double().cpu()
        deletion += scores[: len(chunk)].tolist()
        insertion += scores[len(chunk) :].tolist()
    return PerturbationCurves(
        fractions, deletion, insertion, curve_area(fractions, deletion), curve_area(fractions, insertion)
    )


# --- model-parameter randomisation ---------------------------------------------------------------


def randomisation_order(model: nn.Module, *inputs: Any) -> list[str]:
    """Conv and linear layers with parameters, in reverse order of their first use in a forward pass.

    The pass runs in eval mode (the model's modes are restored afterwards), so the model is left unchanged.
    """
    used: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.Conv1d) and any(True for _ in module.parameters()):

            def hook(_: nn.Module, __: Any, ___: Any, name: str = name) -> None:
                if name not in used:
                    used.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        # In eval mode, as every explanation runs: a forward pass in train mode would update the
        # BatchNorm running statistics of the caller's model (and dropout would change the order).
        with evaluation(model), torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return used[::-1]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (``scipy.stats.spearmanr``); 0 when either is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


@dataclass
class RandomisationResult:
    """Mean Spearman correlation (raw and of absolute maps) after each cascading stage."""

    layers: list[str]
    spearman: list[float]
    spearman_abs: list[float]
    passed: bool


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps_of: Callable[[nn.Module], torch.Tensor],
    layers: int = 4,
    seed: int = 0,
) -> RandomisationResult:
    """Re-initialise the top ``layers`` layers one more at a time (on a copy) and compare the heatmaps.

    ``heatmaps_of(model) -> B×H×W`` explains ``images`` with the method under test.
    """
    original = heatmaps_of(model).detach().cpu().numpy()
    order = randomisation_order(model, images)[:layers]
    if not order:
        raise InputError("the model has no conv or linear layer to randomise")
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    rho, rho_abs = [], []
    for stage, name in enumerate(order):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + stage)
            reset = getattr(modules[name], "reset_parameters", None)
            if reset is None:
                raise InputError(f"layer {name!r} cannot be re-initialised (no reset_parameters)")
            reset()
        maps = heatmaps_of(randomised).detach().cpu().numpy()
        rho.append(float(np.mean([spearman(o, m) for o, m in zip(original, maps, strict=True)])))
        rho_abs.append(
            float(np.mean([spearman(np.abs(o), np.abs(m)) for o, m in zip(original, maps, strict=True)]))
        )
    return RandomisationResult(order, rho, rho_abs, bool(rho[-1] < RANDOMISATION_PASS))


# --- the whole evaluation --------------------------------------------------------------------------


class ExplainEvalConfig(Config):
    """Options of ``radlens eval explain`` (written to ``config.yaml`` beside the results)."""

    model: str
    data: str
    methods: tuple[str, ...] = ("gradcam", "integrated_gradients", "lrp_epsilon")
    findings: tuple[str, ...] | None = None
    n: int = Field(50, ge=1)
    split: str = "test"
    image_size: int | None = Field(None, ge=16)
    tolerance: int | None = Field(None, ge=0)
    steps: int = Field(32, ge=1)
    randomisation_layers: int = Field(4, ge=1)
    randomisation_images: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    examples: int = Field(1, ge=0)
    seed: int = 0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass
class FindingScores:
    """Mean metrics of one method on one finding (NaN-aware means over images)."""

    n: int
    pointing_game: float
    pointing_chance: float
    inside_fraction: float
    area_fraction: float
    mask_auroc: float
    deletion_auc: float
    insertion_auc: float
    seconds_per_explanation: float


@dataclass
class ExplainEvalResult:
    """Everything ``radlens eval explain`` measured (also in ``results.json``)."""

    model_type: str
    image_size: int
    tolerance: int
    scores: dict[str, dict[str, FindingScores]]
    randomisation: dict[str, RandomisationResult]
    problems: list[Problem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _options(subject: Subject, method: str, config: ExplainEvalConfig) -> dict[str, Any]:
    """Subject defaults (token layouts), then :data:`EVAL_OPTIONS`, then the user's ``--option`` values."""
    return subject.defaults.get(method, {}) | EVAL_OPTIONS.get(method, {}) | config.options.get(method, {})


def _explain_batches(
    subject: Subject, images: torch.Tensor, method: str, options: dict[str, Any], batch_size: int
) -> tuple[torch.Tensor, float]:
    """B×H×W heatmaps of ``images`` and the seconds they took."""
    maps = []
    started = time.perf_counter()
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        e = explain(subject.model, batch, subject.target, method=method, **options)
        if e.heatmap is None or tuple(e.heatmap.shape[-2:]) != tuple(batch.shape[-2:]):
            raise InputError(
                f"method {method} gives no image heatmap for this model", "choose an image method"
            )
        maps.append(e.heatmap.detach().float().cpu())
    return torch.cat(maps), time.perf_counter() - started


def evaluate_explanations(config: ExplainEvalConfig, out: Path, overwrite: bool = False) -> ExplainEvalResult:
    """Run the whole evaluation and write ``results.json``, ``results.md``, ``per_image.jsonl``,
    ``examples/`` and the run config into ``out`` (atomically)."""
    unknown = [m for m in config.methods if m not in METHODS or m == "activation_maximisation"]
    if unknown:
        raise InputError(f"unknown or non-attribution method {unknown[0]!r}", f"use: {', '.join(METHODS)}")
    stray = [name for name in config.options if name not in config.methods]
    if stray:
        # Options are only read for the evaluated methods: a misspelt method name would be ignored silently.
        raise InputError(
            f"options given for {stray[0]!r}, which is not among the evaluated methods",
            f"evaluated: {', '.join(config.methods)}",
        )
    prepare_output_dir(out, overwrite, inputs=(config.model, config.data))  # before any work
    model, model_type, native_size = load_subject_model(Path(config.model))
    size = config.image_size or native_size
    tolerance = default_tolerance(size) if config.tolerance is None else config.tolerance
    samples, problems = load_eval_samples(Path(config.data), config, size, getattr(model, "labels", None))
    scores: dict[str, dict[str, FindingScores]] = {m: {} for m in config.methods}
    randomisation: dict[str, RandomisationResult] = {}
    rows: list[dict[str, Any]] = []
    with atomic_directory(out, overwrite) as tmp:
        for finding, batch in progress(list(samples.items()), len(samples), "explaining findings"):
            subject = subject_for(model, model_type, finding, size)
            images = torch.stack([s.image for s in batch])
            for method in config.methods:
                options = _options(subject, method, config)
                maps, seconds = _explain_batches(subject, images, method, options, config.batch_size)
                method_rows = _score_images(subject, batch, maps, tolerance, config.steps)
                for row in method_rows:
                    row.update(method=method, finding=finding)
                rows += method_rows
                scores[method][finding] = _summarise(method_rows, seconds / len(batch))
                if config.examples:
                    _write_examples(
                        tmp / "examples",
                        method,
                        finding,
                        batch,
                        maps,
                        config.examples,
                        METHODS[method].signed,
                    )
        first = next(iter(samples.items()), None)
        if first is not None:
            finding, batch = first
            subject = subject_for(model, model_type, finding, size)
            images = torch.stack([s.image for s in batch[: config.randomisation_images]])
            for method in progress(config.methods, len(config.methods), "randomisation test"):
                options = _options(subject, method, config)

                def heatmaps_of(
                    candidate: nn.Module, method: str = method, options: dict[str, Any] = options
                ) -> torch.Tensor:
                    return _explain_batches(
                        subject.with_model(candidate), images, method, options, config.batch_size
                    )[0]

                randomisation[method] = cascading_randomisation(
                    subject.model, images, heatmaps_of, config.randomisation_layers, config.seed
                )
        result = ExplainEvalResult(model_type, size, tolerance, scores, randomisation, problems)
        _write_results(tmp, config, result, rows)
    result.files = [out / "results.json", out / "results.md"]
    return result


def _score_images(
    subject: Subject, batch: Sequence[EvalSample], maps: torch.Tensor, tolerance: int, steps: int
) -> list[dict[str, Any]]:
    rows = []
    for sample, heatmap in zip(batch, maps, strict=True):
        values, mask = heatmap.numpy(), sample.mask
        curves = perturbation_curves(subject.probability, sample.image, heatmap, steps)
        rows.append(
            {
                "study_id": sample.study_id,
                "pointing_game": float(pointing_game(values, mask, tolerance)),
                "pointing_chance": float(tolerance_region(mask, tolerance).mean()),
                "inside_fraction": inside_fraction(values, mask),
                "area_fraction": float(mask.mean()),
                "mask_auroc": mask_auroc(values, mask),
                "deletion_auc": curves.deletion_auc,
                "insertion_auc": curves.insertion_auc,
            }
        )
    return rows


def _summarise(rows: list[dict[str, Any]], seconds: float) -> FindingScores:
    keys = (
        "pointing_game",
        "pointing_chance",
        "inside_fraction",
        "area_fraction",
        "mask_auroc",
        "deletion_auc",
        "insertion_auc",
    )
    means = {key: _nanmean([row[key] for row in rows]) for key in keys}
    return FindingScores(n=len(rows), seconds_per_explanation=seconds, **means)


def _write_examples(
    folder: Path,
    method: str,
    finding: str,
    batch: Sequence[EvalSample],
    maps: torch.Tensor,
    count: int,
    signed: bool,
) -> None:
    from radlens.explain.render import save_heatmap_png

    folder.mkdir(exist_ok=True)
    slug = finding.lower().replace(" ", "_")
    for index in range(min(count, len(batch))):
        save_heatmap_png(
            folder / f"{method}_{slug}_{index}.png",
            batch[index].image,
            maps[index],
            signed,
            title=f"{method}: {finding}",
        )


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value


def _write_results(
    tmp: Path, config: ExplainEvalConfig, result: ExplainEvalResult, rows: list[dict[str, Any]]
) -> None:
    document = {
        "model": config.model,
        "model_type": result.model_type,
        "data": config.data,
        "split": config.split,
        "image_size": result.image_size,
        "tolerance_px": result.tolerance,
        "steps": config.steps,
        "scores": {m: {f: asdict(s) for f, s in by.items()} for m, by in result.scores.items()},
        "randomisation": {m: asdict(r) for m, r in result.randomisation.items()},
        "randomisation_pass_below": RANDOMISATION_PASS,
        "problems": [asdict(p) for p in result.problems],
    }
    atomic_write_text(tmp / "results.json", json.dumps(_json_value(document), indent=2) + "\n")
    atomic_write_text(tmp / "results.md", to_markdown(result))
    atomic_write_text(tmp / "per_image.jsonl", "".join(json.dumps(_json_value(row)) + "\n" for row in rows))
    write_run_metadata(tmp, config)


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def to_markdown(result: ExplainEvalResult) -> str:
    """The results as Markdown: one table per method (a row per finding), then the randomisation table."""
    lines = [
        f"Model: {result.model_type}, {result.image_size} px; pointing-game tolerance {result.tolerance} px. "
        "Chance levels in brackets.",
        "",
    ]
    for method, by_finding in result.scores.items():
        lines += [
            f"### {method}",
            "",
            "| finding | n | pointing game | inside fraction | mask AUROC | deletion AUC ↓ | insertion AUC ↑ | s / expl. |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for finding, s in by_finding.items():
            lines.append(
                f"| {finding} | {s.n} | {_fmt(s.pointing_game)} ({_fmt(s.pointing_chance)}) | "
                f"{_fmt(s.inside_fraction)} ({_fmt(s.area_fraction)}) | {_fmt(s.mask_auroc)} | "
                f"{_fmt(s.deletion_auc, 3)} | {_fmt(s.insertion_auc, 3)} | {_fmt(s.seconds_per_explanation, 3)} |"
            )
        lines.append("")
    if result.randomisation:
        lines += [
            f"### Model-parameter randomisation (cascading; passes below ρ = {RANDOMISATION_PASS})",
            "",
            "| method | Spearman ρ per stage (top layer first) | ρ of absolute maps, last stage | pass |",
            "|---|---|---|---|",
        ]
        for method, r in result.randomisation.items():
            stages = ", ".join(f"{v:.2f}" for v in r.spearman)
            lines.append(
                f"| {method} | {stages} | {r.spearman_abs[-1]:.2f} | {'yes' if r.passed else 'NO'} |"
            )
        lines.append("")
    if result.problems:
        lines.append(f"{len(result.problems)} items skipped (see results.json).")
    return "\n".join(lines) + "\n"
