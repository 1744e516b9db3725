"""The rule labeler recovers RadPhantom's labels from RadPhantom's report text.

Score: for each observation, the four values 1 / 0 / -1 / blank are the classes of a multi-class
problem and its F1 is the macro average over the values that occur (in the phantom labels or ours);
the reported number is the mean of the 14 per-observation F1s. It must be >= 0.98.
"""

from __future__ import annotations

import pytest
from sklearn.metrics import f1_score

from radlens.data.labeler import label_reports
from radlens.data.schema import CHEXPERT_LABELS
from radlens.phantom.report import labels_for, write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import PhantomConfig


def _value(value: float | None) -> str:
    return "blank" if value is None else str(value)


@pytest.fixture(scope="module")
def phantom_agreement() -> dict[str, float]:
    specs = sample_studies(PhantomConfig(studies=1000, seed=7, uncertain_rate=0.15))
    ours = label_reports(write_report(spec) for spec in specs)
    theirs = [labels_for(spec) for spec in specs]
    scores: dict[str, float] = {}
    for name in CHEXPERT_LABELS:
        truth = [_value(labels[name]) for labels in theirs]
        predicted = [_value(labels[name]) for labels in ours]
        classes = sorted(set(truth) | set(predicted))
        scores[name] = float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0))
    return scores


def test_phantom_macro_f1(phantom_agreement: dict[str, float]) -> None:
    macro = sum(phantom_agreement.values()) / len(phantom_agreement)
    table = "\n".join(f"  {name:<28} {score:.3f}" for name, score in phantom_agreement.items())
    assert macro >= 0.98, f"macro F1 {macro:.4f} over 1,000 RadPhantom reports; per class:\n{table}"
