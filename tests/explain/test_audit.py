"""The shortcut audit: relevance shares, the decision rule on models trained with and without a shortcut,
the accuracy accounting, and `radlens audit shortcut` end to end (tiny)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from radlens.data.schema import CHEXPERT_LABELS
from radlens.explain.audit import audit_model, finding_accuracy, relevance_shares
from radlens.models.classifier import CheXpertClassifier, ClassifierConfig

SIZE = 32
FINDING = "Pleural Effusion"


def test_relevance_shares_split_positive_relevance_between_marker_and_lesion() -> None:
    heatmap = np.zeros((10, 10))
    lesion = np.zeros((10, 10), dtype=bool)
    lesion[4:8, 4:8] = True
    marker = np.zeros((10, 10), dtype=bool)
    marker[0, 0] = True
    heatmap[0, 0] = 2.0  # on the marker
    heatmap[1, 0] = 1.0  # next to it: inside the 1-px tolerance band
    heatmap[5, 5] = 3.0  # on the lesion
    heatmap[9, 9] = 2.0  # elsewhere
    heatmap[6, 6] = -4.0  # negative evidence: not counted
    shares = relevance_shares(heatmap, lesion, marker, tolerance=1)
    assert shares["marker_share"] == pytest.approx(3 / 8)
    assert shares["lesion_share"] == pytest.approx(3 / 8)
    assert shares["marker_area"] == pytest.approx(3 / 100)  # the pixel and its two in-image neighbours
    assert shares["lesion_area"] == pytest.approx(16 / 100)
    # A lesion pixel inside the marker band counts for the marker only.
    lesion[1, 0] = True
    assert relevance_shares(heatmap, lesion, marker, tolerance=1)["lesion_share"] == pytest.approx(3 / 8)
    assert math.isnan(relevance_shares(-np.abs(heatmap), lesion, marker, 1)["marker_share"])


def test_an_audit_without_methods_is_refused_not_flagged(tmp_path: Path) -> None:
    from radlens.core import InputError
    from radlens.explain.audit import ShortcutAuditConfig, run_shortcut_audit

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    )
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    # "At least half of the methods flag it" holds for no methods at all: that must not flag the model.
    with pytest.raises(InputError, match="at least one explanation method"):
        audit_model(model.eval(), torch.rand(1, 1, 8, 8), [mask], [mask], 0, [])
    with pytest.raises(InputError, match="at least one explanation method"):
        run_shortcut_audit(ShortcutAuditConfig(methods=()), tmp_path / "audit")
    assert not (tmp_path / "audit").exists()


def _synthetic(
    n: int, seed: int, both: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images with a bright disc (the lesion) and a corner ring (the marker), each in half of them,
    independently; ``both`` puts both in every image. Returns images, lesion / marker flags and masks."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    images = 0.1 + 0.2 * torch.rand(n, 1, SIZE, SIZE, generator=gen)
    has_lesion = torch.ones(n, dtype=torch.bool) if both else torch.rand(n, generator=gen) < 0.5
    has_marker = torch.ones(n, dtype=torch.bool) if both else torch.rand(n, generator=gen) < 0.5
    centre = torch.randint(10, 22, (n, 2), generator=gen)
    lesion = ((rows - centre[:, :1, None]) ** 2 + (cols - centre[:, 1:, None]) ** 2 <= 16) & has_lesion[
        :, None, None
    ]
    corner = torch.randint(0, 4, (n,), generator=gen)
    r = torch.where(corner < 2, 4, SIZE - 5)[:, None, None]
    c = torch.where(corner % 2 == 0, 4, SIZE - 5)[:, None, None]
    distance = (rows - r) ** 2 + (cols - c) ** 2
    marker = (distance <= 9) & (distance >= 2) & has_marker[:, None, None]
    images[:, 0][lesion] += 0.4
    images[:, 0][marker] = 0.95
    return images, has_lesion, has_marker, torch.stack([lesion, marker], dim=1)


def _train(signal: str) -> CheXpertClassifier:
    """A tiny classifier for "Pleural Effusion" whose label is the lesion (clean) or the marker (confounded)."""
    torch.manual_seed(0)
    model = CheXpertClassifier(
        ClassifierConfig(arch="vgg", image_size=SIZE, vgg_widths=(8, 16), labels=(FINDING,))
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, has_lesion, has_marker, _ = _synthetic(512, seed=1)
    truth = (has_marker if signal == "marker" else has_lesion).float()
    labels = torch.full((512, len(CHEXPERT_LABELS)), math.nan)
    labels[:, CHEXPERT_LABELS.index(FINDING)] = truth
    model.train()
    for step in range(60):
        rows = torch.arange(32) + 32 * (step % 16)
        loss = model.loss({"image": images[rows], "labels": labels[rows]})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> dict[str, CheXpertClassifier]:
    return {"confounded": _train("marker"), "clean": _train("lesion")}


def test_the_audit_flags_the_shortcut_model_and_not_the_clean_one(
    trained: dict[str, CheXpertClassifier],
) -> None:
    images, has_lesion, has_marker, _ = _synthetic(200, seed=2)
    with torch.no_grad():
        confounded = trained["confounded"](images)[:, 0] > 0
        clean = trained["clean"](images)[:, 0] > 0
    # Each model learned its own signal (the premise of the audit).
    assert (confounded == has_marker).float().mean() > 0.9 and (clean == has_lesion).float().mean() > 0.9
    test, _, _, masks = _synthetic(12, seed=3, both=True)
    lesions, markers = list(masks[:, 0].numpy()), list(masks[:, 1].numpy())
    methods = ["gradcam", "integrated_gradients", "lrp_epsilon"]
    shortcut = audit_model(trained["confounded"], test, lesions, markers, FINDING, methods, threshold=5.0)
    honest = audit_model(trained["clean"], test, lesions, markers, FINDING, methods, threshold=5.0)
    assert shortcut.flagged and not honest.flagged
    for method in methods:
        assert shortcut.methods[method].marker_share > honest.methods[method].marker_share
        assert shortcut.methods[method].n == 12
    # A stricter threshold than any enrichment reached flags nothing: the verdict follows the rule.
    highest = max(a.enrichment for a in shortcut.methods.values())
    assert not audit_model(
        trained["confounded"], test, lesions, markers, FINDING, methods, threshold=highest + 1
    ).flagged


class _AlwaysPositive(nn.Module):
    """Says "Pleural Effusion" for every image: recall 1, false-positive rate 1, accuracy = prevalence."""

    labels = CHEXPERT_LABELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], len(CHEXPERT_LABELS)), 10.0)


@pytest.fixture(scope="module")
def marker_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.phantom.spec import ConfounderConfig, PhantomConfig
    from radlens.phantom.writer import generate_dataset

    out = tmp_path_factory.mktemp("audit") / "random_marker"
    confounder = ConfounderConfig(enabled=True, finding=FINDING, probability=0.5, probability_without=0.5)
    generate_dataset(PhantomConfig(studies=40, size=64, seed=7, workers=1, confounder=confounder), out)
    return out


def test_finding_accuracy_counts_the_shortcut_failure_groups(marker_phantom: Path) -> None:
    from radlens.data.readers.mimic import read_mimic

    records = read_mimic(marker_phantom).records
    result = finding_accuracy(_AlwaysPositive(), records, FINDING, 64)
    positives = sum(r.labels.get(FINDING) == 1.0 for r in records)
    marked = sum("anatomy:confounder" in r.images[0].masks for r in records)
    assert result["studies"] == 40 and result["positives"] == positives and result["with_marker"] == marked
    assert 0 < marked < 40
    assert result["accuracy"] == pytest.approx(positives / 40)
    assert result["recall_without_marker"] == 1.0 and result["false_positive_rate_with_marker"] == 1.0
    assert result["auroc"] == pytest.approx(0.5)  # constant scores rank nothing


def test_audit_shortcut_command_end_to_end(tmp_path: Path) -> None:
    from radlens.cli import explain_cmd

    app = typer.Typer()
    explain_cmd.register(app)
    out = tmp_path / "audit"
    args = ["audit", "shortcut", "--out", str(out), "--studies", "20", "--test-studies", "40", "--size", "64"]
    args += ["--max-steps", "2", "--methods", "gradcam,gradient", "--n", "3", "--probability", "1.0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "audit.json").read_text())
    assert set(document["audits"]) == {"confounded", "clean"}
    for audit in document["audits"].values():
        assert set(audit["methods"]) == {"gradcam", "gradient"}
        assert all(m["n"] == 3 for m in audit["methods"].values())
        votes = sum(m["flagged"] for m in audit["methods"].values())
        assert audit["flagged"] == (votes >= 1)  # at least half of two methods
    assert set(document["accuracy"]["confounded"]) == {"confounded_test", "random_marker_test"}
    manifest = json.loads((out / "data" / "confounded" / "manifest.json").read_text())
    clean = json.loads((out / "data" / "clean" / "manifest.json").read_text())
    assert manifest["counts"]["confounder_markers"] > 0 and clean["counts"]["confounder_markers"] == 0
    assert (out / "audit.png").stat().st_size > 10_000 and (out / "audit.md").read_text().count(
        " model: "
    ) == 2
    assert (out / "models" / "clean" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    recorded = (out / "models" / "clean" / "config.yaml").read_text()
    assert str(out / "data" / "clean") in recorded and ".partial" not in recorded
