"""What retrieval needs from a model: images and texts embedded into one space, plus its identity.

Index building, searching and evaluation all go through :func:`load_embedder`, so the three agree on
how pixels are prepared (grey, square resize to the model's ``image_size``, values in [0, 1] — each
model normalises itself) and on which fingerprint identifies the embedding space.

Two checkpoint kinds embed for retrieval:

- a ``dual_encoder`` checkpoint: its own image and text embeddings;
- a metric-stage checkpoint (``metric_projection``, written by ``radlens train retrieval --model
  metric``): one projection learnt on top of a base dual encoder's frozen image and text embeddings.
  The base checkpoint is the one the metric checkpoint records (``extra["base"]``, or ``base:`` in the
  run's ``config.yaml``) or the one passed as ``base_model_dir``; its fingerprint must equal the one
  the projection recorded, so a projection is never applied to embeddings it was not trained on. The
  index records the projection's own fingerprint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from radlens.core import InputError
from radlens.data.transforms import ResizePolicy, resize

if TYPE_CHECKING:
    from radlens.models.checkpoint import CheckpointInfo

DUAL_TYPE = "dual_encoder"
METRIC_TYPE = "metric_projection"
# Model types whose checkpoints embed images and texts; anything else is refused with one line.
_RETRIEVAL_HINT = "pass a dual-encoder or metric-stage checkpoint from `radlens train retrieval`"


class Embedder:
    """A loaded retrieval model: ``embed_images`` / ``embed_texts`` give unit-norm rows in one space.

    ``fingerprint`` identifies the embedding space (the checkpoint's :func:`model_fingerprint`);
    ``model_type`` is the checkpoint's type; ``image_size`` and ``max_length`` are the model's input
    sizes. Embedding runs under ``torch.inference_mode`` in eval mode, ``batch_size`` at a time.
    """

    def __init__(
        self, dual: nn.Module, fingerprint: str, model_type: str, projection: nn.Module | None = None
    ) -> None:
        self.dual: Any = dual.eval()  # a DualEncoder (Any: radlens.models is imported lazily)
        self.projection: Any = projection.eval() if projection is not None else None
        self.fingerprint = fingerprint
        self.model_type = model_type

    @property
    def image_size(self) -> int:
        return int(self.dual.config.image_size)

    @property
    def max_length(self) -> int:
        return int(self.dual.config.max_length)

    @property
    def device(self) -> torch.device:
        return torch.device(self.dual.device)

    def policy(self) -> ResizePolicy:
        """How images are resized for this model (square, the model's ``image_size``)."""
        return ResizePolicy(mode="square", size=self.image_size)

    def to(self, device: str | torch.device) -> Embedder:
        """Move the model (and projection) to ``device``; an unknown device is an InputError."""
        try:
            target = torch.device(device)
            self.dual.to(target)
            if self.projection is not None:
                self.projection.to(target)
        except (RuntimeError, AssertionError) as exc:  # torch's words for "no such device here"
            raise InputError(f"device {device!r} is not available", "use --device cpu") from exc
        return self

    def _project(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return embeddings
        # One projection for both modalities keeps image and text embeddings in one space.
        projected = self.projection(embeddings.to(self.device))
        return F.normalize(projected.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_images(self, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """B×C×H×W pixels in [0, 1] → B×E unit-norm float32 embeddings on the CPU."""
        return self._project(self.dual.embed_images(pixel_values, batch_size=batch_size))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts → (B×E unit-norm embeddings, B bools saying which texts were cut to ``max_length``)."""
        embeds, truncated = self.dual.embed_texts(list(texts), batch_size=batch_size)
        return self._project(embeds), truncated

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """A grey float image in [0, 1] (h, w) → the 1×1×S×S tensor this model takes."""
        resized = resize(np.asarray(image, dtype=np.float32), self.policy())
        return torch.from_numpy(np.ascontiguousarray(resized))[None, None]


def load_embedder(
    model_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    base_model_dir: str | os.PathLike[str] | None = None,
) -> Embedder:
    """Load a retrieval checkpoint (dual encoder or metric stage) as an :class:`Embedder` on ``device``.

    ``base_model_dir`` names a metric stage's base dual encoder when its checkpoint does not record
    where it is. Any other checkpoint (a fusion model, a classifier) or a damaged one is one
    :class:`InputError`.
    """
    from radlens.models.checkpoint import load_checkpoint, model_fingerprint, read_checkpoint_info

    info = read_checkpoint_info(model_dir)
    if info.model_type == DUAL_TYPE:
        model = load_checkpoint(model_dir, expected_type=DUAL_TYPE)
        embedder = Embedder(model, model_fingerprint(model), DUAL_TYPE)
    elif info.model_type == METRIC_TYPE:
        embedder = _load_metric(info, base_model_dir)
    else:
        raise InputError(
            f"checkpoint {info.folder} holds a {info.model_type} model, which cannot embed images and "
            "reports for retrieval",
            _RETRIEVAL_HINT,
        )
    return embedder.to(device)


def _base_location(info: CheckpointInfo) -> Path | None:
    """Where a metric checkpoint says its base model is: ``extra["base"]`` (or the run's config.yaml)."""
    for key in ("base", "base_dir", "base_model", "base_path"):
        if isinstance(info.extra.get(key), str):
            return _resolve(info.folder, info.extra[key])
    run_config = info.folder / "config.yaml"
    if run_config.is_file():
        try:
            document = yaml.safe_load(run_config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            return None
        if isinstance(document, dict) and isinstance(document.get("base"), str):
            return _resolve(info.folder, document["base"])
    return None


def _resolve(folder: Path, path: str) -> Path:
    """``path`` as written; if it is relative and missing from here, relative to the checkpoint."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return folder / candidate


def _load_metric(info: CheckpointInfo, base_model_dir: str | os.PathLike[str] | None) -> Embedder:
    """A metric-stage projection on top of its base dual encoder (see module docstring)."""
    from radlens.models.checkpoint import load_checkpoint, model_fingerprint

    projection: Any = load_checkpoint(info.folder, expected_type=METRIC_TYPE)
    config = projection.config
    if config.source != DUAL_TYPE or config.base_model_type not in ("", DUAL_TYPE):
        raise InputError(
            f"metric checkpoint {info.folder} projects {config.source} embeddings; retrieval needs a "
            "projection trained on a dual encoder's image and text embeddings",
            "train the metric stage with --base pointing to a dual-encoder checkpoint",
        )
    base_dir = Path(base_model_dir) if base_model_dir is not None else _base_location(info)
    if base_dir is None:
        raise InputError(
            f"metric checkpoint {info.folder} does not record where its base dual encoder is",
            "its run's config.yaml must name it (base: PATH), as `radlens train retrieval --model metric` writes",
        )
    base = load_checkpoint(base_dir, expected_type=DUAL_TYPE)
    if config.base_fingerprint and model_fingerprint(base) != config.base_fingerprint:
        raise InputError(
            f"metric checkpoint {info.folder} was trained on another model than {base_dir}",
            "pass the dual encoder the metric stage was trained on",
        )
    return Embedder(base, model_fingerprint(projection), METRIC_TYPE, projection)
