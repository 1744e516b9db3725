"""RadPhantom sampling: MIMIC ids, co-occurrence rules, CheXpert conventions, config validation."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from radlens.core import InputError
from radlens.data.schema import CHEXPERT_LABELS
from radlens.phantom.sampling import OPACITY_SOURCES, PATHOLOGIES, effective_prevalence, sample_studies
from radlens.phantom.spec import ConfounderConfig, PhantomConfig, StudySpec

DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


@pytest.fixture(scope="module")
def many() -> list[StudySpec]:
    return sample_studies(PhantomConfig(studies=4000, seed=11))


def _present(spec: StudySpec) -> set[str]:
    return {f.name for f in spec.present()}


def _uncertain(spec: StudySpec) -> set[str]:
    return {f.name for f in spec.findings if f.certainty == "uncertain"}


def test_deterministic_from_seed() -> None:
    config = PhantomConfig(studies=60, seed=5)
    assert sample_studies(config) == sample_studies(config)
    assert sample_studies(config) != sample_studies(PhantomConfig(studies=60, seed=6))


def test_ids_follow_mimic(many: list[StudySpec]) -> None:
    assert len(many) == 4000
    subjects = [s.subject_id for s in many]
    assert all(10_000_000 <= s <= 19_999_999 for s in subjects)
    assert all(50_000_000 <= s.study_id <= 59_999_999 for s in many)
    assert len({s.study_id for s in many}) == len(many)
    assert all(DICOM_ID.match(s.dicom_id) for s in many)
    assert len({s.dicom_id for s in many}) == len(many)
    assert subjects == sorted(subjects)  # grouped by subject, subjects in order
    per_subject = Counter(subjects)
    assert max(per_subject.values()) <= 4 and min(per_subject.values()) >= 1
    assert sum(1 for n in per_subject.values() if n > 1) > len(per_subject) / 2  # several studies each
    assert len({s.seed for s in many}) > 3990


def test_studies_per_subject_respected() -> None:
    specs = sample_studies(PhantomConfig(studies=50, studies_per_subject=(2, 2)))
    assert set(Counter(s.subject_id for s in specs).values()) == {2}


def test_opacity_and_no_finding_rules(many: list[StudySpec]) -> None:
    for spec in many:
        present, uncertain = _present(spec), _uncertain(spec)
        if present & set(OPACITY_SOURCES):
            assert "Lung Opacity" in present
        no_pathology = not (present | uncertain) & set(PATHOLOGIES)
        assert ("No Finding" in present) == no_pathology
        assert not present & uncertain
        assert not set(spec.negated) & (present | uncertain)
        assert "No Finding" not in spec.negated and "No Finding" not in uncertain
        assert "Support Devices" not in uncertain
        assert [f.name for f in spec.findings] == [n for n in CHEXPERT_LABELS if n in present | uncertain]
    # Devices alone do not make a study abnormal (CheXpert): some "No Finding" studies have devices.
    assert any({"No Finding", "Support Devices"} <= _present(s) for s in many)


def test_marginal_prevalence_kept(many: list[StudySpec]) -> None:
    prevalence = effective_prevalence(PhantomConfig())
    counts = Counter(name for spec in many for name in _present(spec))
    n = len(many)
    for name, p in prevalence.items():
        if name in ("Lung Opacity", "Support Devices"):  # implied by other findings / chest tubes
            continue
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(counts[name] / n - p) < 4 * sigma + 1e-9, name


def test_realistic_co_occurrence(many: list[StudySpec]) -> None:
    edema = [s for s in many if "Edema" in _present(s)]
    dry = [s for s in many if "Edema" not in _present(s)]

    def rate(specs: list[StudySpec], name: str) -> float:
        return sum(name in _present(s) for s in specs) / len(specs)

    assert rate(edema, "Cardiomegaly") > 2 * rate(dry, "Cardiomegaly")
    assert rate(edema, "Pleural Effusion") > 2 * rate(dry, "Pleural Effusion")
    pneumonia = [s for s in many if "Pneumonia" in _present(s)]
    assert rate(pneumonia, "Consolidation") > 2 * rate(many, "Consolidation") / 1.5


def test_finding_attributes(many: list[StudySpec]) -> None:
    for spec in many:
        for f in spec.findings:
            if f.name in ("Pleural Effusion", "Pneumothorax", "Lung Opacity", "Consolidation", "Pneumonia"):
                assert f.side in ("right", "left", "bilateral")
                diffuse = f.name == "Lung Opacity" and spec.has("Edema")  # edema: perihilar, no zone
                assert f.zone in ("upper", "middle", "lower") or (diffuse and f.zone is None)
            if f.name in ("Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Edema"):
                assert f.severity in ("small", "moderate", "large")
            if f.certainty == "uncertain":
                assert f.severity in (None, "small")  # hedges are about subtle findings
            if f.name == "Fracture":
                assert f.side in ("right", "left") and 3 <= (f.rib or 0) <= 9
            if f.name == "Lung Lesion":
                assert f.side in ("right", "left") and 8 <= (f.size_mm or 0) <= 60
            if f.name == "Support Devices":
                assert f.devices and set(f.devices) <= {
                    "et_tube",
                    "ng_tube",
                    "central_line",
                    "pacemaker",
                    "chest_tube",
                }
        devices = next((f for f in spec.present() if f.name == "Support Devices"), None)
        if devices is not None and "chest_tube" in devices.devices:  # drains a one-sided collection
            drained = [f.side for f in spec.present() if f.name in ("Pleural Effusion", "Pneumothorax")]
            assert devices.side == next(side for side in drained if side in ("right", "left"))
        elif devices is not None:
            assert devices.side is None
    sizes = [f.size_mm for s in many for f in s.present() if f.name == "Lung Lesion"]
    assert any(size < 30 for size in sizes) and any(size >= 30 for size in sizes)  # nodules and masses


def test_anatomy_ranges(many: list[StudySpec]) -> None:
    views = Counter(s.anatomy.view for s in many)
    assert views["PA"] > views["AP"] > 0.1 * len(many)
    for spec in many:
        a = spec.anatomy
        if spec.has("Cardiomegaly"):
            assert 0.53 <= a.ctr <= 0.68
        else:
            assert 0.38 <= a.ctr <= 0.48
        assert -4 <= a.rotation_deg <= 4 and 0 <= a.inspiration <= 1
        assert a.thorax_width < a.body_width
    # A patient's build is stable across studies: body width varies far less within than between.
    by_subject: dict[int, list[float]] = {}
    for spec in many:
        by_subject.setdefault(spec.subject_id, []).append(spec.anatomy.body_width)
    within = np.mean([np.std(w) for w in by_subject.values() if len(w) > 1])
    between = np.std([w[0] for w in by_subject.values()])
    assert within < between / 2


def test_uncertain_and_negation_rates() -> None:
    plain = sample_studies(PhantomConfig(studies=300, uncertain_rate=0.0, negation_rate=0.0))
    assert all(not s.negated and not _uncertain(s) for s in plain)
    hedged = sample_studies(PhantomConfig(studies=300, uncertain_rate=1.0))
    for spec in hedged:
        absent = set(CHEXPERT_LABELS) - _present(spec) - {"No Finding", "Support Devices"}
        assert _uncertain(spec) == absent
    half = sample_studies(PhantomConfig(studies=500, uncertain_rate=0.0, negation_rate=0.5))
    absent_total = sum(len(set(CHEXPERT_LABELS) - _present(s) - {"No Finding"}) for s in half)
    negated_total = sum(len(s.negated) for s in half)
    assert abs(negated_total / absent_total - 0.5) < 0.03


def test_confounder_flag_follows_config() -> None:
    config = PhantomConfig(
        studies=400,
        confounder=ConfounderConfig(
            enabled=True, finding="Pneumothorax", probability=1.0, probability_without=0.0
        ),
    )
    specs = sample_studies(config)
    assert any(s.confounder for s in specs)
    assert all(s.confounder == s.has("Pneumothorax") for s in specs)
    assert not any(s.confounder for s in sample_studies(PhantomConfig(studies=100)))
    assert {s.confounder_kind for s in specs} == {"marker"}
    text = config.model_copy(update={"confounder": config.confounder.model_copy(update={"kind": "text"})})
    assert {s.confounder_kind for s in sample_studies(text)} == {"text"}


def test_style_passes_through() -> None:
    assert {s.style for s in sample_studies(PhantomConfig(studies=10, style="clinical"))} == {"clinical"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prevalence": {"Pneumothorax ": 0.1}}, "unknown finding"),
        ({"prevalence": {"No Finding": 0.3}}, "derived"),
        ({"prevalence": {"Edema": 1.5}}, "between 0 and 1"),
        ({"studies_per_subject": (3, 2)}, "studies_per_subject"),
        ({"confounder": ConfounderConfig(finding="Effusion")}, "confounder"),
    ],
)
def test_bad_config_is_input_error(changes: dict[str, object], message: str) -> None:
    config = PhantomConfig(studies=5).model_copy(update=changes)
    with pytest.raises(InputError, match=message):
        sample_studies(config)


def test_partial_prevalence_keeps_defaults() -> None:
    prevalence = effective_prevalence(PhantomConfig(prevalence={"Pneumothorax": 0.5}))
    assert prevalence["Pneumothorax"] == 0.5
    assert prevalence["Edema"] == effective_prevalence(PhantomConfig())["Edema"]
    specs = sample_studies(PhantomConfig(studies=300, prevalence={"Edema": 0.0, "Pneumothorax": 0.0}))
    assert not any(s.has("Edema") or s.has("Pneumothorax") for s in specs)
