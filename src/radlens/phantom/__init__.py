"""RadPhantom: synthetic chest radiographs with pixel masks, MIMIC-style reports and CheXpert labels."""

from radlens.phantom.spec import (
    SPATIAL_FINDINGS,
    Anatomy,
    ConfounderConfig,
    Finding,
    PhantomConfig,
    StudySpec,
)

__all__ = ["SPATIAL_FINDINGS", "Anatomy", "ConfounderConfig", "Finding", "PhantomConfig", "StudySpec"]
