"""What the explanation evaluation and the shortcut audit explain: RadPhantom images with masks, and a
model turned into "an image → one score for this finding".

- A classifier (``chexpert_classifier``, ``vgg_classifier``, anything with ``labels``): the finding's
  logit; perturbation curves read its sigmoid.
- A dual encoder: the cosine similarity with the embedding of the prompt ``"there is <finding>."``.
- A fusion model: the ITM "related" logit for that prompt; curves read P(related).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from radlens.core import InputError
from radlens.data.images import load_image
from radlens.data.schema import CHEXPERT_LABELS, POSITIVE, Problem, StudyRecord
from radlens.data.transforms import ResizePolicy, resize
from radlens.explain.targets import ClassTarget, Target

#: Prompt used as the fixed text when a retrieval model is explained for a finding.
FINDING_PROMPT = "there is {finding}."
MARKER_KEY = "anatomy:confounder"
_FRONTAL = ("PA", "AP", None)


@dataclass
class EvalSample:
    """One positive image of a finding: pixels (1×H×W in [0, 1]), its masks (H×W bool) and labels."""

    study_id: str
    image: torch.Tensor
    mask: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, float | None] = field(default_factory=dict)


def load_image_tensor(path: Path, size: int) -> torch.Tensor:
    """A 1×size×size float tensor in [0, 1] (squashed to a square, as the training data loader does)."""
    return torch.from_numpy(resize(load_image(path), ResizePolicy(size=size))).unsqueeze(0)


def load_mask(path: Path, size: int) -> np.ndarray:
    """A mask PNG as a size×size bool array (nearest-neighbour resize)."""
    with Image.open(path) as handle:
        grey = handle.convert("L")
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(grey) > 127


def frontal_image(record: StudyRecord) -> Any:
    """The study's first frontal (or unknown-view) image, or ``None``."""
    for image in record.images:
        view = image.view_position.strip().upper() if image.view_position else None
        if view in _FRONTAL:
            return image
    return None


def read_records(data: Path, split: str) -> tuple[list[StudyRecord], list[Problem]]:
    """RadPhantom / MIMIC-CXR-JPG records of ``split`` (``all``: every split) and the reader's problems."""
    from radlens.data.readers.mimic import read_mimic

    result = read_mimic(data, splits=None if split == "all" else [split])
    if not result.records:
        raise InputError(f"no studies in split {split!r} of {data}", "pass --split all, or another dataset")
    return result.records, list(result.problems)


def default_findings(labels: Sequence[str] | None) -> list[str]:
    """Findings with masks (every CheXpert observation but "No Finding") that the model knows."""
    from radlens.phantom.spec import SPATIAL_FINDINGS

    return [name for name in SPATIAL_FINDINGS if labels is None or name in labels]


def positive_samples(
    records: Sequence[StudyRecord],
    finding: str,
    n: int,
    size: int,
    seed: int,
    problems: list[Problem],
    extra_masks: Sequence[str] = (),
) -> list[EvalSample]:
    """Up to ``n`` images positive for ``finding`` that have its mask (and every one of ``extra_masks``),
    drawn in a seeded order; positives without a mask are recorded in ``problems``."""
    candidates = []
    for record in records:
        image = frontal_image(record)
        if image is None or record.labels.get(finding) != POSITIVE:
            continue
        if finding not in image.masks:
            problems.append(Problem(str(image.path), f"positive for {finding} but has no mask"))
            continue
        if all(key in image.masks for key in extra_masks):
            candidates.append((record, image))
    order = np.random.default_rng([seed, CHEXPERT_LABELS.index(finding)]).permutation(len(candidates))
    samples = []
    for index in order[:n]:
        record, image = candidates[int(index)]
        masks = {key: load_mask(image.masks[key], size) for key in (finding, *extra_masks)}
        if not masks[finding].any():
            problems.append(Problem(str(image.masks[finding]), f"the {finding} mask is empty"))
            continue
        samples.append(
            EvalSample(
                record.study_id,
                load_image_tensor(image.path, size),
                masks[finding],
                masks,
                dict(record.labels),
            )
        )
    return samples


def load_eval_samples(
    data: Path, config: Any, size: int, labels: Sequence[str] | None
) -> tuple[dict[str, list[EvalSample]], list[Problem]]:
    """Per finding, up to ``config.n`` positive images with masks from ``config.split``."""
    findings = list(config.findings) if config.findings else default_findings(labels)
    for name in findings:
        if name not in CHEXPERT_LABELS or name == "No Finding":
            raise InputError(
                f"unknown or mask-less finding {name!r}", f"use: {', '.join(default_findings(None))}"
            )
        if labels is not None and name not in labels:
            raise InputError(f"the model has no output for {name!r}", f"it predicts: {', '.join(labels)}")
    records, problems = read_records(data, config.split)
    samples = {}
    for finding in findings:
        found = positive_samples(records, finding, config.n, size, config.seed, problems)
        if found:
            samples[finding] = found
        else:
            problems.append(Problem(str(data), f"no {finding} image with a mask in split {config.split}"))
    if not samples:
        raise InputError(
            f"no positive image with a finding mask in split {config.split!r} of {data}",
            "pass a RadPhantom folder (it has masks/), another --split or other --findings",
        )
    return samples, problems


@dataclass
class Subject:
    """An image-only model to explain for one finding: its target, the score perturbation curves read,
    and per-method default options (token layouts for transformers)."""

    model: nn.Module
    target: Target | int
    probability: Callable[[torch.Tensor], torch.Tensor]
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def with_model(self, model: nn.Module) -> Subject:
        """The same target on another (e.g. randomised) copy of the model."""
        return dataclasses.replace(self, model=model)


def load_subject_model(path: Path) -> tuple[nn.Module, str, int]:
    """Load a checkpoint (classifier, dual encoder or fusion model): (model in eval mode, type, image size)."""
    from radlens.models import load_checkpoint, read_checkpoint_info

    info = read_checkpoint_info(path)
    model = load_checkpoint(path).eval()
    is_classifier = isinstance(getattr(model, "labels", None), tuple | list)
    if info.model_type not in ("dual_encoder", "fusion") and not is_classifier:
        raise InputError(
            f"cannot explain a {info.model_type} model for findings",
            "pass a classifier, dual encoder or fusion checkpoint",
        )
    size = int(getattr(getattr(model, "config", None), "image_size", 0) or 224)
    return model, info.model_type, size


def subject_for(model: nn.Module, model_type: str, finding: str, size: int) -> Subject:
    """``model`` as "an image → one score for ``finding``" (see the module docstring)."""
    from radlens.explain.retrieval_targets import (
        ITM_RELATED,
        SIMILARITY,
        FixedTextFusion,
        ImageSimilarity,
        embed_text,
    )

    prompt = FINDING_PROMPT.format(finding=finding.lower())
    if model_type == "dual_encoder":
        wrapper: nn.Module = ImageSimilarity(model, embed_text(model, [prompt])[0])  # type: ignore[arg-type]
        return Subject(wrapper, SIMILARITY, lambda x: wrapper(x)[:, 0])
    if model_type == "fusion":
        fusion = FixedTextFusion(model, prompt, size)  # type: ignore[arg-type]
        layout = {"token_layout": fusion.token_layout}
        defaults = {"attention_rollout": layout}
        if model.image_tower is None:
            defaults |= {"gradcam": layout, "gradcam_pp": layout}
        return Subject(fusion, ITM_RELATED, lambda x: fusion(x).itm_logits.softmax(-1)[:, 1], defaults)
    labels = [str(name) for name in getattr(model, "labels", ())]
    index = labels.index(finding)
    return Subject(model, ClassTarget(index, labels), lambda x: torch.sigmoid(model(x)[:, index]))
