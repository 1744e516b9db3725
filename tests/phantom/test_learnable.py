"""RadPhantom findings are learnable: a linear model on 32x32 pixels detects pleural effusion on
held-out phantoms of random anatomy (all severities and sides), well above chance."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from radlens.phantom.render import render_study
from radlens.phantom.spec import Anatomy, Finding, StudySpec


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible patient (same ranges as test_render)."""
    return Anatomy(
        view=str(rng.choice(["PA", "AP"])),  # type: ignore[arg-type]
        body_width=rng.uniform(0.72, 0.9),
        thorax_width=rng.uniform(0.58, 0.74),
        ctr=rng.uniform(0.35, 0.65),
        rotation_deg=rng.uniform(-4, 4),
        inspiration=rng.uniform(0.2, 1.0),
        exposure=rng.uniform(0.85, 1.15),
        contrast=rng.uniform(0.85, 1.2),
        noise_sigma=rng.uniform(0.01, 0.03),
        shift_x=rng.uniform(-0.03, 0.03),
    )


def _dataset(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` phantoms at 64 px, 2x2-averaged to 32x32 features, about half with an effusion."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for i in range(count):
        label = int(rng.random() < 0.5)
        findings = []
        if label:
            side, severity = (
                rng.choice(["right", "left", "bilateral"]),
                rng.choice(["small", "moderate", "large"]),
            )
            findings.append(Finding("Pleural Effusion", side=str(side), severity=str(severity)))  # type: ignore[arg-type]
        spec = StudySpec(1, i, f"d{i}", seed * 100_000 + i, random_anatomy(rng), findings)
        image = render_study(spec, 64).image.astype(np.float32) / 255
        features.append(image.reshape(32, 2, 32, 2).mean(axis=(1, 3)).ravel())
        labels.append(label)
    return np.stack(features), np.array(labels)


def test_logistic_regression_detects_effusion() -> None:
    x_train, y_train = _dataset(300, seed=1)
    x_test, y_test = _dataset(150, seed=2)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(x_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    assert auc >= 0.9, auc
    # The signal is the finding, not an artefact: shuffled labels give a chance-level model.
    shuffled = np.random.default_rng(3).permutation(y_train)
    chance = roc_auc_score(y_test, model.fit(x_train, shuffled).predict_proba(x_test)[:, 1])
    assert abs(chance - 0.5) < 0.15, chance
