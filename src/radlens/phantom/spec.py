"""What one RadPhantom study *is*, before it is drawn or written about.

The sampler (``radlens.phantom.sampling``) draws a :class:`StudySpec` from a :class:`PhantomConfig`;
the renderer (``radlens.phantom.render``) turns it into pixels and masks; the reporter
(``radlens.phantom.report``) turns it into a MIMIC-style report and CheXpert labels. Both read the
same spec, so the words always agree with the image.

Conventions (documented in docs/phantom.md):
- Images are displayed as radiographs are read: the patient's RIGHT is on the image LEFT.
- ``side`` is the patient's side: "right", "left" or "bilateral".
- ``zone`` is "upper", "middle" or "lower" lung zone.
- A finding listed in :attr:`StudySpec.findings` with ``certainty="present"`` is drawn, has a mask
  (if spatial), and gets label 1. ``certainty="uncertain"`` findings are NOT drawn; the report hedges
  ("cannot exclude pneumonia") and the label is -1. Findings absent from the list are either negated
  in the report (label 0) or not mentioned (blank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from radlens.core import Config
from radlens.data import CHEXPERT_LABELS

Side = Literal["right", "left", "bilateral"]
Zone = Literal["upper", "middle", "lower"]
Severity = Literal["small", "moderate", "large"]
Certainty = Literal["present", "uncertain"]
Style = Literal["clean", "clinical"]
View = Literal["PA", "AP"]

#: Findings that have a pixel mask when present. "No Finding" has none; "Enlarged Cardiomediastinum"
#: masks the widened mediastinum; "Pneumonia" masks its opacity; "Lung Opacity" masks the union of
#: opacities (consolidation, atelectasis, edema, pneumonia, lesion).
SPATIAL_FINDINGS: tuple[str, ...] = tuple(name for name in CHEXPERT_LABELS if name != "No Finding")

#: Kinds of support device RadPhantom draws.
DeviceKind = Literal["et_tube", "ng_tube", "central_line", "pacemaker", "chest_tube"]


@dataclass(slots=True)
class Anatomy:
    """Per-patient geometry and exposure. Fractions are of the image width/height."""

    view: View = "PA"
    body_width: float = 0.80  # soft-tissue outline width / image width
    thorax_width: float = 0.66  # inner rib-cage width / image width (denominator of the CTR)
    ctr: float = 0.45  # cardiothoracic ratio: max heart width / thorax_width
    rotation_deg: float = 0.0  # in-plane rotation of the whole patient, a few degrees
    inspiration: float = 0.5  # 0 shallow .. 1 deep: lower diaphragm, longer lungs
    exposure: float = 1.0  # global brightness gain
    contrast: float = 1.0  # gamma-like contrast
    noise_sigma: float = 0.02  # quantum noise std on [0, 1] intensities
    shift_x: float = 0.0  # patient off-centre, fraction of width


@dataclass(slots=True)
class Finding:
    """One finding of a study. ``name`` is a CheXpert observation (see module docstring)."""

    name: str
    certainty: Certainty = "present"
    side: Side | None = None
    zone: Zone | None = None
    severity: Severity | None = None
    size_mm: float | None = None  # lesions: nodule < 30 mm <= mass
    devices: tuple[DeviceKind, ...] = ()  # Support Devices only
    rib: int | None = None  # Fracture only: posterior rib number 3..9


@dataclass(slots=True)
class StudySpec:
    """Everything needed to render and report one study, deterministically."""

    subject_id: int
    study_id: int
    dicom_id: str
    seed: int
    anatomy: Anatomy
    findings: list[Finding] = field(default_factory=list)
    style: Style = "clean"
    confounder: bool = False  # a marker / burned-in text is placed (see PhantomConfig.confounder)
    confounder_kind: Literal["marker", "text"] = "marker"  # which, when placed
    negated: tuple[str, ...] = ()  # findings the report explicitly negates (label 0)

    def present(self) -> list[Finding]:
        """Findings that are drawn (label 1)."""
        return [finding for finding in self.findings if finding.certainty == "present"]

    def has(self, name: str) -> bool:
        """Whether ``name`` is present (drawn)."""
        return any(finding.name == name for finding in self.present())


class ConfounderConfig(Config):
    """A shortcut to test models against: a token placed with ``probability`` in studies with ``finding``.

    ``kind``: ``marker``, a bright ring token; ``text``, burned-in text ("STAT"), as a department stamp
    would be. Either goes in a random image corner, never over the lungs, with its own mask.
    """

    enabled: bool = False
    finding: str = "Pleural Effusion"
    probability: float = Field(0.9, ge=0.0, le=1.0)
    probability_without: float = Field(0.05, ge=0.0, le=1.0)  # marker in studies without the finding
    kind: Literal["marker", "text"] = "marker"


class PhantomConfig(Config):
    """RadPhantom generation options. Round-trips through YAML (``--config phantom.yaml``)."""

    studies: int = Field(100, gt=0, le=1_000_000)
    size: int = Field(256, ge=64, le=1024)
    seed: int = Field(0, ge=0)
    style: Style = "clean"
    studies_per_subject: tuple[int, int] = (1, 4)  # min, max studies per subject
    #: Marginal prevalence of each observation (before co-occurrence rules); "No Finding" is derived.
    prevalence: dict[str, float] = Field(
        default_factory=lambda: {
            "Atelectasis": 0.15,
            "Cardiomegaly": 0.18,
            "Consolidation": 0.08,
            "Edema": 0.10,
            "Enlarged Cardiomediastinum": 0.06,
            "Fracture": 0.05,
            "Lung Lesion": 0.06,
            "Lung Opacity": 0.0,  # implied by consolidation/atelectasis/edema/pneumonia/lesion
            "Pleural Effusion": 0.22,
            "Pleural Other": 0.03,
            "Pneumonia": 0.08,
            "Pneumothorax": 0.06,
            "Support Devices": 0.15,
        }
    )
    uncertain_rate: float = Field(0.08, ge=0.0, le=1.0)  # chance an absent finding is hedged (-1)
    negation_rate: float = Field(0.5, ge=0.0, le=1.0)  # chance an absent finding is explicitly negated
    confounder: ConfounderConfig = Field(default_factory=ConfounderConfig)
    workers: int = Field(0, ge=0)  # 0: all cores
