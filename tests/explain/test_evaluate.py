"""Explanation metrics on hand-built maps and toy models, the randomisation test, and `eval explain`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from explain_models import vgg_classifier_checkpoint
from torch import nn

from radlens.core import InputError
from radlens.explain.evaluate import (
    ExplainEvalConfig,
    cascading_randomisation,
    curve_area,
    evaluate_explanations,
    inside_fraction,
    mask_auroc,
    perturbation_curves,
    pointing_game,
    randomisation_order,
    spearman,
    tolerance_region,
)


def _square_mask(size: int = 16, top: int = 4, left: int = 4, side: int = 4) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_tolerance_region_grows_by_a_disk() -> None:
    point = np.zeros((9, 9), dtype=bool)
    point[4, 4] = True
    assert tolerance_region(point, 0).sum() == 1
    assert tolerance_region(point, 1).sum() == 5  # the 4-neighbourhood
    assert tolerance_region(point, 2).sum() == 13  # x² + y² ≤ 4
    assert not tolerance_region(np.zeros((5, 5), dtype=bool), 3).any()


def test_pointing_game_hits_misses_tolerance_and_ties() -> None:
    mask = _square_mask()
    heatmap = np.zeros((16, 16))
    heatmap[5, 5] = 1.0
    assert pointing_game(heatmap, mask)
    heatmap = np.zeros((16, 16))
    heatmap[5, 10] = 1.0  # two columns right of the mask's last column (7)
    assert not pointing_game(heatmap, mask, tolerance=2)
    assert pointing_game(heatmap, mask, tolerance=3)
    assert not pointing_game(np.full((16, 16), 0.3), mask)  # a constant map points nowhere
    ties = np.zeros((16, 16))
    ties[5, 5] = ties[12, 12] = 1.0  # one of two maxima inside: half counts as a hit
    assert pointing_game(ties, mask)
    ties[13, 13] = 1.0  # one of three
    assert not pointing_game(ties, mask)
    with pytest.raises(InputError):
        pointing_game(np.zeros((4, 4)), mask)


def test_inside_fraction_counts_positive_relevance_only() -> None:
    mask = _square_mask()
    heatmap = np.zeros((16, 16))
    heatmap[5, 5] = 3.0  # inside
    heatmap[0, 0] = 1.0  # outside
    heatmap[6, 6] = -5.0  # negative evidence inside: ignored
    assert inside_fraction(heatmap, mask) == pytest.approx(0.75)
    assert math.isnan(inside_fraction(-np.abs(heatmap), mask))


def _auroc_by_counting(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a mask pixel > score of a background pixel) + ½ P(equal): the Mann–Whitney form."""
    positive, negative = scores[labels], scores[~labels]
    greater = (positive[:, None] > negative[None, :]).mean()
    equal = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * equal)


def test_mask_auroc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(0)
    mask = _square_mask()
    heatmap = rng.normal(size=(16, 16)) + 1.5 * mask
    heatmap[0, :4] = heatmap[5, 5]  # ties across the two groups
    assert mask_auroc(heatmap, mask) == pytest.approx(_auroc_by_counting(heatmap.ravel(), mask.ravel()))
    assert mask_auroc(mask.astype(float), mask) == 1.0
    assert mask_auroc(-mask.astype(float), mask) == 0.0
    assert math.isnan(mask_auroc(heatmap, np.zeros((16, 16), dtype=bool)))


class _RegionMean(nn.Module):
    """f(x) = mean of x over a fixed region: deleting region pixels lowers f linearly, others do nothing."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(mask).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * self.mask).flatten(1).sum(1) / self.mask.sum()


def test_deletion_and_insertion_areas_match_the_closed_form() -> None:
    mask = _square_mask(side=8)  # 64 of 256 pixels; 32 steps of 8 pixels, so the region ends on a step
    model = _RegionMean(mask)
    image = torch.ones(1, 16, 16)
    perfect = torch.from_numpy(mask.astype(np.float32))
    curves = perturbation_curves(model, image, perfect, steps=32, insertion_baseline=torch.zeros(1, 16, 16))
    share = mask.mean()
    assert curves.deletion[0] == pytest.approx(1.0) and curves.deletion[-1] == pytest.approx(0.0)
    assert curves.deletion_auc == pytest.approx(share / 2)  # linear drop to 0 over the region's share
    assert curves.insertion_auc == pytest.approx(1 - share / 2)
    assert len(curves.fractions) == 33 and curves.fractions[-1] == 1.0
    # The reversed map deletes the region last: a much larger deletion area.
    worst = perturbation_curves(model, image, -perfect, steps=32, insertion_baseline=torch.zeros(1, 16, 16))
    assert worst.deletion_auc == pytest.approx(1 - share / 2)
    # The default insertion baseline is a blur, not black: its first point is the blurred image's score.
    blurred = perturbation_curves(model, image, perfect, steps=32)
    assert blurred.insertion[0] == pytest.approx(1.0, abs=1e-5)  # blurring a constant image changes nothing


def test_curve_area_is_the_trapezoid_rule() -> None:
    x = np.linspace(0, 1, 11)
    y = x**2
    assert curve_area(x, y) == pytest.approx(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2)))
    assert curve_area([0, 1], [1, 1]) == 1.0


def test_spearman_handles_constant_maps() -> None:
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # ranks only
    assert spearman(a, np.zeros((4, 4))) == 0.0


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


def _gradient_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    from radlens.explain import explain

    heatmap = explain(model, images, target=1, method="gradient").heatmap
    assert heatmap is not None
    return heatmap


def test_randomisation_order_is_reverse_use_order() -> None:
    assert randomisation_order(_tiny_cnn(), torch.rand(1, 1, 8, 8)) == ["6", "2", "0"]


def test_cascading_randomisation_drops_similarity_and_leaves_the_model_alone() -> None:
    model = _tiny_cnn()
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    result = cascading_randomisation(model, images, lambda m: _gradient_maps(m, images), layers=3)
    assert result.layers == ["6", "2", "0"]
    assert len(result.spearman) == 3 and result.spearman[-1] < 0.5 and result.passed
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name])
    # A "method" that ignores the model (the image itself, an edge detector's answer) must fail.
    blind = cascading_randomisation(model, images, lambda m: images[:, 0], layers=3)
    assert blind.spearman == pytest.approx([1.0, 1.0, 1.0]) and not blind.passed


def test_randomisation_leaves_a_model_in_training_mode_untouched() -> None:
    # A model mid-training: a forward pass in train mode would move its BatchNorm running statistics.
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)
    ).train()
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert randomisation_order(model, images) == ["4", "0"]
    cascading_randomisation(model, images, lambda m: _gradient_maps(m, images), layers=2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(module.training for module in model.modules())


# --- `eval explain` on RadPhantom ------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.phantom.spec import PhantomConfig
    from radlens.phantom.writer import generate_dataset

    out = tmp_path_factory.mktemp("explain_eval") / "phantom"
    generate_dataset(PhantomConfig(studies=40, size=64, seed=3, workers=1), out)
    return out


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vgg_classifier_checkpoint(tmp_path_factory.mktemp("explain_eval") / "classifier")


def test_eval_explain_writes_consistent_results(
    phantom: Path, classifier_checkpoint: Path, tmp_path: Path
) -> None:
    from radlens.data.readers.mimic import read_mimic
    from radlens.explain._eval_data import load_mask

    findings = ("Pleural Effusion", "Cardiomegaly")
    config = ExplainEvalConfig(
        model=str(classifier_checkpoint),
        data=str(phantom),
        split="all",
        findings=findings,
        methods=("gradcam", "gradient"),
        n=4,
        randomisation_layers=2,
        randomisation_images=2,
    )
    out = tmp_path / "eval"
    result = evaluate_explanations(config, out)
    document = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    records = read_mimic(phantom).records
    tolerance = document["tolerance_px"]
    assert tolerance == 3  # 4% of 64 px
    for finding in findings:
        positives = [r for r in records if r.labels.get(finding) == 1.0]
        expected = min(4, len(positives))
        for method in ("gradcam", "gradient"):
            scores = document["scores"][method][finding]
            assert scores["n"] == expected
            chosen = [row for row in rows if row["method"] == method and row["finding"] == finding]
            assert len(chosen) == expected
            assert scores["pointing_game"] == pytest.approx(np.mean([row["pointing_game"] for row in chosen]))
            # Chance levels recomputed from the mask files themselves.
            by_id = {r.study_id: r for r in positives}
            masks = [load_mask(by_id[row["study_id"]].images[0].masks[finding], 64) for row in chosen]
            assert scores["area_fraction"] == pytest.approx(np.mean([m.mean() for m in masks]))
            band = [tolerance_region(m, tolerance).mean() for m in masks]
            assert scores["pointing_chance"] == pytest.approx(np.mean(band))
            assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1
    assert set(document["randomisation"]) == {"gradcam", "gradient"}
    assert len(document["randomisation"]["gradient"]["spearman"]) == 2
    assert (out / "results.md").read_text().count("| Pleural Effusion |") == 2
    assert (out / "config.yaml").is_file() and len(list((out / "examples").glob("*.png"))) == 4
    assert result.files[0] == out / "results.json"


def test_eval_explain_refuses_bad_input_and_leaves_nothing(
    phantom: Path, classifier_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    base = {"model": str(classifier_checkpoint), "data": str(phantom), "split": "all", "n": 2}
    with pytest.raises(InputError, match="method"):
        evaluate_explanations(ExplainEvalConfig(**base, methods=("gradcam", "gradcamm")), out)
    with pytest.raises(InputError, match="finding"):
        evaluate_explanations(ExplainEvalConfig(**base, findings=("No Finding",)), out)
    with pytest.raises(InputError, match="split"):
        evaluate_explanations(ExplainEvalConfig(**{**base, "split": "nosuchsplit"}), out)
    # An option for a misspelt method would otherwise be dropped without a word.
    misspelt = {"integrated_gradient": {"n_steps": 4}}
    with pytest.raises(InputError, match="'integrated_gradient', which is not among the evaluated methods"):
        evaluate_explanations(ExplainEvalConfig(**base, options=misspelt), out)
    assert not out.exists()
    # Its model or data as the output folder: refused before any work, not replaced by the results.
    for given in (classifier_checkpoint, phantom):
        with pytest.raises(InputError, match="is the input"):
            evaluate_explanations(ExplainEvalConfig(**base), given, overwrite=True)
