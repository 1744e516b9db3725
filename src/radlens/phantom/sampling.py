"""Draw RadPhantom studies: who the patients are, what they have, and how it is described.

:func:`sample_studies` turns a :class:`PhantomConfig` into a list of :class:`StudySpec`, deterministic
from ``config.seed``. Everything random about a dataset is decided here, in one process, so that
rendering and writing (in any number of worker processes) only read the specs.

Co-occurrence follows what chest radiographs show: pneumonia, consolidation, atelectasis, edema and
lung lesions always come with "Lung Opacity"; edema often comes with cardiomegaly and bilateral
effusions; effusions with basal atelectasis; pneumothorax sometimes with a chest tube. Conditional
probabilities are chosen so that each observation keeps the marginal prevalence given in the config.
"No Finding" follows the CheXpert rule: present only when no pathology is present or uncertain
(support devices allowed).
"""

from __future__ import annotations

import numpy as np

from radlens.core import InputError
from radlens.data.schema import CHEXPERT_LABELS
from radlens.phantom.spec import (
    Anatomy,
    DeviceKind,
    Finding,
    PhantomConfig,
    Severity,
    Side,
    StudySpec,
    View,
    Zone,
)

#: MIMIC-CXR id ranges (inclusive).
SUBJECT_ID_RANGE = (10_000_000, 19_999_999)
STUDY_ID_RANGE = (50_000_000, 59_999_999)

#: Findings that, when present, make "Lung Opacity" present (CheXpert's parent observation).
OPACITY_SOURCES: tuple[str, ...] = ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Pneumonia")
#: Observations that are never hedged: devices are seen or not; "No Finding" is derived.
_NEVER_UNCERTAIN = frozenset({"No Finding", "Support Devices"})
#: Pathologies: everything that blocks "No Finding" when present or uncertain (CheXpert convention).
PATHOLOGIES: tuple[str, ...] = tuple(n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices"))

_SIDES: tuple[Side, ...] = ("right", "left", "bilateral")
_ZONES: tuple[Zone, ...] = ("upper", "middle", "lower")
_SEVERITIES: tuple[Severity, ...] = ("small", "moderate", "large")
_CTR_BY_SEVERITY: dict[str, tuple[float, float]] = {
    "small": (0.53, 0.57),
    "moderate": (0.57, 0.62),
    "large": (0.62, 0.68),
}
_NORMAL_CTR = (0.38, 0.48)


def effective_prevalence(config: PhantomConfig) -> dict[str, float]:
    """Validate ``config`` beyond what pydantic checks and return the prevalence actually used.

    Observations missing from ``config.prevalence`` keep their default prevalence, so a YAML file can
    change just one. Raises :class:`InputError` for unknown names, values outside [0, 1], a derived
    "No Finding" prevalence, a bad ``studies_per_subject`` range or an unknown confounder finding.
    """
    defaults = PhantomConfig.model_fields["prevalence"].get_default(call_default_factory=True)
    known = ", ".join(n for n in CHEXPERT_LABELS if n != "No Finding")
    for name, value in config.prevalence.items():
        if name == "No Finding":
            raise InputError(
                "prevalence of 'No Finding' cannot be set", "it is derived: remove it from prevalence"
            )
        if name not in CHEXPERT_LABELS:
            raise InputError(f"unknown finding {name!r} in prevalence", f"use one of: {known}")
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(f"prevalence of {name!r} is {value}", "use a probability between 0 and 1")
    low, high = config.studies_per_subject
    if not 1 <= low <= high:
        raise InputError(
            f"studies_per_subject {low}..{high} is not a valid range", "use two numbers 1 <= min <= max"
        )
    if config.confounder.finding not in CHEXPERT_LABELS:
        raise InputError(
            f"unknown confounder finding {config.confounder.finding!r}",
            f"use one of: {', '.join(CHEXPERT_LABELS)}",
        )
    merged = {name: float(defaults.get(name, 0.0)) for name in CHEXPERT_LABELS if name != "No Finding"}
    merged.update({name: float(value) for name, value in config.prevalence.items()})
    return merged


def sample_studies(config: PhantomConfig) -> list[StudySpec]:
    """Draw ``config.studies`` study specs, ordered by subject then study id, deterministic from the seed."""
    prevalence = effective_prevalence(config)
    rng = np.random.default_rng(config.seed)
    plan = _subject_plan(rng, config)
    subject_ids = np.sort(_unique_ids(rng, SUBJECT_ID_RANGE, len(plan)))
    study_ids = _unique_ids(rng, STUDY_ID_RANGE, config.studies)
    dicom_ids = _dicom_ids(rng, config.studies)
    seeds = rng.integers(0, 2**31 - 2, size=config.studies)
    specs: list[StudySpec] = []
    for subject_id, n_studies in zip(subject_ids, plan, strict=True):
        body = _Body(rng)
        first = len(specs)
        own_study_ids = np.sort(study_ids[first : first + n_studies])
        for study_id in own_study_ids:
            index = len(specs)
            findings, negated = _sample_findings(rng, prevalence, config)
            specs.append(
                StudySpec(
                    subject_id=int(subject_id),
                    study_id=int(study_id),
                    dicom_id=dicom_ids[index],
                    seed=int(seeds[index]),
                    anatomy=body.study_anatomy(rng, findings, config),
                    findings=findings,
                    style=config.style,
                    confounder=_confounder(rng, findings, config),
                    confounder_kind=config.confounder.kind,
                    negated=negated,
                )
            )
    return specs


def _subject_plan(rng: np.random.Generator, config: PhantomConfig) -> list[int]:
    """Studies per subject, summing to ``config.studies`` (the last subject may get fewer)."""
    low, high = config.studies_per_subject
    counts: list[int] = []
    remaining = config.studies
    while remaining > 0:
        count = min(int(rng.integers(low, high + 1)), remaining)
        counts.append(count)
        remaining -= count
    return counts


def _unique_ids(rng: np.random.Generator, bounds: tuple[int, int], n: int) -> np.ndarray:
    """``n`` distinct integers in the inclusive range ``bounds``, in random order."""
    low, high = bounds
    if n > high - low + 1:
        raise InputError(f"cannot draw {n} distinct ids from {low}..{high}", "generate fewer studies")
    return low + rng.choice(high - low + 1, size=n, replace=False)


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct MIMIC-style DICOM ids: five dash-separated groups of 8 lowercase hex digits."""
    words = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    ids = ["-".join(f"{int(word):08x}" for word in row) for row in words]
    if len(set(ids)) != n:  # 160 random bits: practically never, but ids must be unique
        raise InputError("dicom id collision", "use another --seed")
    return ids


def _conditional(marginal: float, parent_rate: float, wanted: float, parent: bool) -> float:
    """P(child | parent state) with P(child | parent) ~ ``wanted`` and P(child) kept at ``marginal``."""
    if marginal <= 0.0:
        return 0.0
    given = min(wanted, marginal / parent_rate) if parent_rate > 0 else marginal
    if parent:
        return given
    if parent_rate >= 1.0:
        return 0.0
    return _clamp((marginal - parent_rate * given) / (1.0 - parent_rate), 0.0, 1.0)


def _clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to [low, high] (plain Python: np.clip costs 10 us per scalar)."""
    return float(min(max(value, low), high))


def _pick(rng: np.random.Generator, options: tuple[str, ...], weights: tuple[float, ...]) -> str:
    """One of ``options`` with the given (unnormalised) weights (plain Python: 20x faster than choice)."""
    threshold = rng.random() * sum(weights)
    for option, weight in zip(options, weights, strict=True):
        threshold -= weight
        if threshold < 0.0:
            return option
    return next(o for o, w in zip(reversed(options), reversed(weights), strict=True) if w > 0)


def _sample_findings(
    rng: np.random.Generator, p: dict[str, float], config: PhantomConfig
) -> tuple[list[Finding], tuple[str, ...]]:
    """Present, uncertain and negated observations of one study."""
    present: dict[str, Finding] = {}
    edema = rng.random() < p["Edema"]
    if edema:
        present["Edema"] = _attributes(rng, "Edema")
    if rng.random() < _conditional(p["Cardiomegaly"], p["Edema"], 0.55, edema):
        present["Cardiomegaly"] = _attributes(rng, "Cardiomegaly")
    if rng.random() < _conditional(p["Pleural Effusion"], p["Edema"], 0.6, edema):
        present["Pleural Effusion"] = _attributes(rng, "Pleural Effusion", bilateral_bias=edema)
    effusion = "Pleural Effusion" in present
    if rng.random() < _conditional(p["Atelectasis"], p["Pleural Effusion"], 0.35, effusion):
        side = present["Pleural Effusion"].side if effusion else None
        present["Atelectasis"] = _attributes(rng, "Atelectasis", side=side)
    pneumonia = rng.random() < p["Pneumonia"]
    if pneumonia:
        present["Pneumonia"] = _attributes(rng, "Pneumonia")
    if rng.random() < _conditional(p["Consolidation"], p["Pneumonia"], 0.5, pneumonia):
        source = present.get("Pneumonia")
        present["Consolidation"] = _attributes(rng, "Consolidation")
        if source is not None:  # the pneumonia's own consolidation: same place
            present["Consolidation"].side, present["Consolidation"].zone = source.side, source.zone
    cardiomegaly = "Cardiomegaly" in present
    if rng.random() < _conditional(p["Enlarged Cardiomediastinum"], p["Cardiomegaly"], 0.25, cardiomegaly):
        present["Enlarged Cardiomediastinum"] = _attributes(rng, "Enlarged Cardiomediastinum")
    for name in ("Lung Lesion", "Pneumothorax", "Fracture", "Pleural Other"):
        if rng.random() < p[name]:
            present[name] = _attributes(rng, name)
    # A chest tube drains a one-sided effusion or pneumothorax, on that side (the renderer places it
    # on the first of the two, in CheXpert order, that is one-sided; the report names that side).
    drained = [present[n] for n in ("Pleural Effusion", "Pneumothorax") if n in present]
    drained_side = next((f.side for f in drained if f.side in ("right", "left")), None)
    wants_tube = "Pneumothorax" in present and rng.random() < 0.4
    if rng.random() < p["Support Devices"] or (wants_tube and drained_side is not None):
        present["Support Devices"] = _devices(rng, drained_side, wants_tube)
    sources = [present[name] for name in OPACITY_SOURCES if name in present]
    if sources:
        present["Lung Opacity"] = _opacity_from(sources)
    elif rng.random() < p["Lung Opacity"]:
        present["Lung Opacity"] = _attributes(rng, "Lung Opacity")

    uncertain: dict[str, Finding] = {}
    negated: list[str] = []
    for name in CHEXPERT_LABELS:
        if name in present or name == "No Finding":
            continue
        if name not in _NEVER_UNCERTAIN and rng.random() < config.uncertain_rate:
            uncertain[name] = _attributes(rng, name, certainty="uncertain")
        elif rng.random() < config.negation_rate:
            negated.append(name)
    if not any(name in present or name in uncertain for name in PATHOLOGIES):
        present["No Finding"] = Finding("No Finding")
    merged = {**present, **uncertain}
    findings = [merged[name] for name in CHEXPERT_LABELS if name in merged]
    return findings, tuple(negated)


def _attributes(
    rng: np.random.Generator,
    name: str,
    certainty: str = "present",
    side: Side | None = None,
    bilateral_bias: bool = False,
) -> Finding:
    """A finding called ``name`` with side, zone, severity, size or rib drawn as radiographs show them."""
    finding = Finding(name, certainty="uncertain" if certainty == "uncertain" else "present")
    severity: Severity = _pick(rng, _SEVERITIES, (0.5, 0.35, 0.15))  # type: ignore[assignment]
    if name == "Pleural Effusion":
        weights = (0.2, 0.15, 0.65) if bilateral_bias else (0.4, 0.32, 0.28)
        finding.side, finding.zone, finding.severity = _side(rng, weights), "lower", severity
    elif name == "Pneumothorax":
        finding.side, finding.zone = _side(rng, (0.5, 0.5, 0.0)), "upper"
        finding.severity = _pick(rng, _SEVERITIES, (0.6, 0.3, 0.1))  # type: ignore[assignment]
    elif name in ("Consolidation", "Pneumonia", "Lung Opacity"):
        finding.side = _side(rng, (0.45, 0.4, 0.15))
        finding.zone = _zone(rng, (0.15, 0.25, 0.6))
        finding.severity = severity
    elif name == "Atelectasis":
        finding.side = side or _side(rng, (0.4, 0.4, 0.2))
        finding.zone, finding.severity = _zone(rng, (0.0, 0.2, 0.8)), severity
    elif name == "Edema":
        finding.side, finding.severity = "bilateral", severity
    elif name in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
        finding.severity = severity
    elif name == "Lung Lesion":
        finding.side, finding.zone = _side(rng, (0.55, 0.45, 0.0)), _zone(rng, (0.45, 0.35, 0.2))
        is_mass = rng.random() < 0.25
        finding.size_mm = float(round(rng.uniform(30, 60) if is_mass else rng.uniform(8, 29)))
    elif name == "Fracture":
        finding.side, finding.rib = _side(rng, (0.5, 0.5, 0.0)), int(rng.integers(3, 10))
    elif name == "Pleural Other":
        finding.side = _side(rng, (0.4, 0.4, 0.2))
        finding.zone, finding.severity = _zone(rng, (0.7, 0.0, 0.3)), "small"
    elif name == "Support Devices":
        return _devices(rng, None, wants_tube=False)
    if finding.certainty == "uncertain" and finding.severity is not None:
        finding.severity = "small"  # what a radiologist hedges about is subtle: "possible small effusion"
    return finding


def _side(rng: np.random.Generator, weights: tuple[float, float, float]) -> Side:
    return _pick(rng, _SIDES, weights)  # type: ignore[return-value]


def _zone(rng: np.random.Generator, weights: tuple[float, float, float]) -> Zone:
    return _pick(rng, _ZONES, weights)  # type: ignore[return-value]


def _devices(rng: np.random.Generator, drained_side: Side | None, wants_tube: bool) -> Finding:
    """Support devices: an ICU mix of tubes and lines, at least one.

    A chest tube is only placed where there is a one-sided effusion or pneumothorax to drain
    (``drained_side``); the finding's ``side`` is the chest tube's side (``None`` without one). The
    central line is a right subclavian line and the pacemaker sits on the left chest wall, as drawn.
    """
    kinds: list[DeviceKind] = []
    if rng.random() < 0.4:
        kinds.append("et_tube")
        if rng.random() < 0.7:
            kinds.append("ng_tube")
    if rng.random() < 0.45:
        kinds.append("central_line")
    if rng.random() < 0.25:
        kinds.append("pacemaker")
    if drained_side is not None and (wants_tube or rng.random() < 0.3):
        kinds.append("chest_tube")
    if not kinds:
        kinds.append("central_line")
    order: tuple[DeviceKind, ...] = ("et_tube", "ng_tube", "central_line", "pacemaker", "chest_tube")
    side = drained_side if "chest_tube" in kinds else None
    return Finding("Support Devices", side=side, devices=tuple(k for k in order if k in kinds))


def _opacity_from(sources: list[Finding]) -> Finding:
    """The "Lung Opacity" covering the opacities of ``sources``: union of sides, the first source's zone."""
    sides = {finding.side for finding in sources if finding.side is not None}
    side: Side = (
        "bilateral" if "bilateral" in sides or len(sides) > 1 else (sides.pop() if sides else "right")
    )
    zone = next((finding.zone for finding in sources if finding.zone is not None), None)
    ranks = [_SEVERITIES.index(finding.severity) for finding in sources if finding.severity is not None]
    severity = _SEVERITIES[max(ranks)] if ranks else None
    return Finding("Lung Opacity", side=side, zone=zone, severity=severity)


def _confounder(rng: np.random.Generator, findings: list[Finding], config: PhantomConfig) -> bool:
    """Whether the shortcut marker is placed: likely with the chosen finding, rarely without."""
    settings = config.confounder
    if not settings.enabled:
        return False
    with_finding = any(f.name == settings.finding and f.certainty == "present" for f in findings)
    return bool(rng.random() < (settings.probability if with_finding else settings.probability_without))


class _Body:
    """One patient's build; each study of the patient varies it slightly."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.body_width = float(rng.uniform(0.72, 0.88))
        self.thorax_ratio = float(rng.uniform(0.78, 0.85))
        self.ctr = float(rng.uniform(*_NORMAL_CTR))

    def study_anatomy(
        self, rng: np.random.Generator, findings: list[Finding], config: PhantomConfig
    ) -> Anatomy:
        """Anatomy of one study: view, size, heart, pose, inspiration and exposure."""
        names = {f.name for f in findings if f.certainty == "present"}
        sick = bool(names & {"Support Devices", "Edema", "Pneumothorax"})
        view: View = "AP" if rng.random() < (0.6 if sick else 0.15) else "PA"
        body_width = _clamp(self.body_width + rng.normal(0, 0.01), 0.70, 0.90)
        cardiomegaly = next(
            (f for f in findings if f.name == "Cardiomegaly" and f.certainty == "present"), None
        )
        if cardiomegaly is not None:
            ctr = float(rng.uniform(*_CTR_BY_SEVERITY[cardiomegaly.severity or "moderate"]))
        else:
            ctr = _clamp(self.ctr + rng.normal(0, 0.01), *_NORMAL_CTR)
        clinical = config.style == "clinical"
        spread = 0.2 if clinical else 0.08
        return Anatomy(
            view=view,
            body_width=body_width,
            thorax_width=body_width * self.thorax_ratio,
            ctr=ctr,
            rotation_deg=float(rng.uniform(-4.0, 4.0)),
            inspiration=float(rng.uniform(0.15, 0.8) if view == "AP" else rng.uniform(0.35, 1.0)),
            exposure=float(rng.uniform(1 - spread, 1 + spread)),
            contrast=float(rng.uniform(1 - spread, 1 + spread * 1.25)),
            noise_sigma=float(rng.uniform(0.015, 0.04) if clinical else rng.uniform(0.008, 0.02)),
            shift_x=float(rng.uniform(-0.03, 0.03)),
        )
