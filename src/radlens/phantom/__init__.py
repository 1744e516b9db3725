"""RadPhantom: synthetic chest radiographs with pixel masks, MIMIC-style reports and CheXpert labels.

Pipeline: :func:`sample_studies` draws :class:`StudySpec`s from a :class:`PhantomConfig`;
:func:`render_study` draws pixels and masks; :func:`write_report` / :func:`labels_for` write the
report and labels; :func:`generate_dataset` writes it all in the MIMIC-CXR-JPG layout.
"""

from radlens.phantom.grid import FINDING_COLOURS, write_grid
from radlens.phantom.render import (
    ANATOMY_MASKS,
    RenderedStudy,
    cardiothoracic_ratio,
    mask_slug,
    render_study,
)
from radlens.phantom.report import labels_for, procedure_for, write_report
from radlens.phantom.sampling import effective_prevalence, sample_studies
from radlens.phantom.spec import (
    SPATIAL_FINDINGS,
    Anatomy,
    ConfounderConfig,
    Finding,
    PhantomConfig,
    StudySpec,
)
from radlens.phantom.writer import GENERATOR_VERSION, generate_dataset, study_folder

__all__ = [
    "ANATOMY_MASKS",
    "FINDING_COLOURS",
    "GENERATOR_VERSION",
    "SPATIAL_FINDINGS",
    "Anatomy",
    "ConfounderConfig",
    "Finding",
    "PhantomConfig",
    "RenderedStudy",
    "StudySpec",
    "cardiothoracic_ratio",
    "effective_prevalence",
    "generate_dataset",
    "labels_for",
    "mask_slug",
    "procedure_for",
    "render_study",
    "sample_studies",
    "study_folder",
    "write_grid",
    "write_report",
]
