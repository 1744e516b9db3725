"""CLIP-style dual encoder: an image tower and a text tower projected into one embedding space.

Both embeddings are L2-normalised, so their dot product is a cosine similarity; training uses the
symmetric InfoNCE loss of CLIP with a learnable temperature (the logit scale 1/T is clamped at 100,
as in CLIP, so training cannot make the softmax arbitrarily sharp).

The config is flat (``image_tower: small_cnn``, ``pretrained: true``, ...) so command-line overrides map
one option to one field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from radlens.core import Config, InputError
from radlens.models._staged import eval_mode
from radlens.models.checkpoint import register_model
from radlens.models.image_towers import (
    ImageNormalization,
    ImageTowerConfig,
    ImageTowerName,
    build_image_tower,
    inference_chunk_size,
)
from radlens.models.text_towers import (
    MAX_POSITIONS,
    TextTowerConfig,
    TextTowerName,
    Tokenizer,
    build_text_tower,
)


class DualEncoderConfig(Config):
    """Towers, embedding size, temperature and freezing of a :class:`DualEncoder`.

    ``pretrained`` initialises the towers that have published weights (EfficientNet-Lite0 from
    ImageNet, MiniLM from all-MiniLM-L6-v2); the small towers always start from scratch and are sized
    by ``image_width``/``image_depth``/``image_heads``/``patch_size`` and ``text_hidden_size``/
    ``text_layers``/``text_heads``. ``trainable_image_stages``/``trainable_text_stages`` freeze all but
    the last k stages of a tower (``None``: train all, 0: freeze the tower) — a CPU run fine-tunes only
    the top of the pretrained towers. ``label_set_weight`` > 0 makes the InfoNCE targets label-aware
    (see :func:`contrastive_loss`; batches then need ``label_codes``).
    """

    image_tower: ImageTowerName = "efficientnet_lite0"
    text_tower: TextTowerName = "minilm"
    pretrained: bool = True
    embed_dim: int = Field(256, ge=8)
    image_size: int = Field(224, ge=32)
    in_channels: Literal[1, 3] = 3
    max_length: int = Field(128, ge=2, le=MAX_POSITIONS)
    init_temperature: float = Field(0.07, gt=0.0, le=1.0)
    max_logit_scale: float = Field(100.0, gt=1.0)
    learn_temperature: bool = True
    label_set_weight: float = Field(0.0, ge=0.0, lt=1.0)
    trainable_image_stages: int | None = Field(None, ge=0)
    trainable_text_stages: int | None = Field(None, ge=0)
    image_width: int = 128
    image_depth: int = 4
    image_heads: int = 4
    patch_size: int = 16
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 2
    image_normalization: ImageNormalization = "inception"

    @model_validator(mode="after")
    def _check(self) -> Self:
        self.image_tower_config()  # raises ValueError for inconsistent tower settings
        self.text_tower_config()
        return self

    def image_tower_config(self) -> ImageTowerConfig:
        """The image tower's own config derived from these fields."""
        pretrained = self.image_tower == "efficientnet_lite0" and self.pretrained
        return ImageTowerConfig(
            name=self.image_tower,
            pretrained=pretrained,
            in_channels=3 if self.image_tower == "efficientnet_lite0" else self.in_channels,
            image_size=self.image_size,
            width=self.image_width,
            depth=self.image_depth,
            heads=self.image_heads,
            patch_size=self.patch_size,
            normalization=self.image_normalization,
        )

    def text_tower_config(self) -> TextTowerConfig:
        """The text tower's own config derived from these fields."""
        return TextTowerConfig(
            name=self.text_tower,
            pretrained=self.text_tower == "minilm" and self.pretrained,
            max_length=self.max_length,
            hidden_size=self.text_hidden_size,
            num_layers=self.text_layers,
            num_heads=self.text_heads,
        )


@dataclass
class DualEncoderOutput:
    """``logits_per_image[i, j]`` = scale · cos(image i, text j); ``logits_per_text`` is its transpose."""

    loss: torch.Tensor
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    logit_scale: torch.Tensor


def contrastive_loss(
    logits_per_image: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    label_codes: torch.Tensor | None = None,
    label_set_weight: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE over a B×B logit matrix whose diagonal holds the matching pairs.

    With ``group_ids`` (B ints), every pair whose ids are equal counts as a positive and the target is
    spread evenly over them — so two identical "no acute findings" reports in one batch are not pushed
    apart. Without it (and with ``label_set_weight`` 0) this is CLIP's loss exactly.

    Label-aware targets: with ``label_codes`` (B ints from :func:`radlens.data.dataset.label_set_codes`,
    -1 = unknown) and ``label_set_weight`` w > 0, each row's target keeps 1 - w on its own pair (group)
    and spreads w evenly over the batch's studies with the same CheXpert positive-label set (itself
    included). The embedding then groups studies by findings, which label-aware retrieval scores,
    while the instance term still tells studies apart. Rows with an unknown label set keep the
    instance target only. A soft-target cross-entropy, hand-written: pytorch-metric-learning's
    ``SupConLoss`` is single-modality and has no instance term to mix in.
    """
    size = logits_per_image.shape[0]
    if logits_per_image.shape != (size, size):
        raise ValueError(f"logits must be square, got {tuple(logits_per_image.shape)}")
    if not 0.0 <= label_set_weight < 1.0:
        raise ValueError(f"label_set_weight must be in [0, 1), got {label_set_weight}")
    use_labels = label_codes is not None and label_set_weight > 0.0
    if group_ids is None and not use_labels:
        targets = torch.arange(size, device=logits_per_image.device)
        image_loss = F.cross_entropy(logits_per_image, targets)
        text_loss = F.cross_entropy(logits_per_image.t(), targets)
        return (image_loss + text_loss) / 2
    device, dtype = logits_per_image.device, logits_per_image.dtype
    ids = torch.arange(size, device=device) if group_ids is None else group_ids.to(device)
    soft = _even_rows(ids[:, None] == ids[None, :], dtype)
    if use_labels:
        assert label_codes is not None
        codes = label_codes.to(device)
        known = (codes >= 0)[:, None]
        same_set = _even_rows((codes[:, None] == codes[None, :]) & known, dtype)
        mixed = (1.0 - label_set_weight) * soft + label_set_weight * same_set
        soft = torch.where(known, mixed, soft)
    image_loss = -(soft * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
    text_loss = -(soft * F.log_softmax(logits_per_image.t(), dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


def _even_rows(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean B×B mask as rows that sum to 1 (all-zero rows stay zero)."""
    weights = mask.to(dtype)
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


@register_model("dual_encoder")
class DualEncoder(nn.Module):
    """Image tower + text tower + linear projections to ``embed_dim`` L2-normalised embeddings."""

    config_class = DualEncoderConfig

    def __init__(self, config: DualEncoderConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.image_tower = build_image_tower(config.image_tower_config(), load_pretrained=load_pretrained)
        self.text_tower = build_text_tower(config.text_tower_config(), load_pretrained=load_pretrained)
        # Linear, bias-free projections as in CLIP: the embedding space is a rotation/scaling of the
        # towers' pooled features, nothing more.
        self.image_projection = nn.Linear(self.image_tower.out_dim, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text_tower.out_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.init_temperature)), requires_grad=config.learn_temperature
        )
        self.image_tower.freeze(config.trainable_image_stages)
        self.text_tower.freeze(config.trainable_text_stages)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.text_tower.tokenizer

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> torch.Tensor:
        """The current logit scale 1/T, clamped at ``max_logit_scale``."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().item())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B×C×H×W pixels in [0, 1] → B×E unit-norm embeddings (differentiable)."""
        pooled = self.image_tower(pixel_values).pooled
        return F.normalize(self.image_projection(pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (B×L) → B×E unit-norm embeddings (differentiable)."""
        pooled = self.text_tower(input_ids, attention_mask).pooled
        return F.normalize(self.text_projection(pooled), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with this model's ``max_length``; ``truncated`` says which texts were cut."""
        return self.tokenizer.encode(texts, self.config.max_length)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        group_ids: torch.Tensor | None = None,
        label_codes: torch.Tensor | None = None,
    ) -> DualEncoderOutput:
        """Embed a batch of matching (image, text) pairs and compute the contrastive loss."""
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise InputError(
                f"{pixel_values.shape[0]} images but {input_ids.shape[0]} texts in one batch",
                "pass one text per image",
            )
        image_embeds = self.encode_image(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.scale()
        logits = scale * image_embeds @ text_embeds.t()
        return DualEncoderOutput(
            loss=self.contrastive_loss(logits, group_ids, label_codes),
            logits_per_image=logits,
            logits_per_text=logits.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            logit_scale=scale,
        )

    def contrastive_loss(
        self, logits: torch.Tensor, group_ids: torch.Tensor | None, label_codes: torch.Tensor | None
    ) -> torch.Tensor:
        """:func:`contrastive_loss` with this model's ``label_set_weight``."""
        return contrastive_loss(logits, group_ids, label_codes, self.config.label_set_weight)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The contrastive loss of a batch with ``pixel_values``, ``input_ids``, ``attention_mask``
        (and optionally ``group_ids`` and ``label_codes``); other keys (e.g. ``truncated``) are ignored."""
        return self(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("group_ids"),
            batch.get("label_codes"),
        ).loss

    @torch.no_grad()
    def similarity(
        self, pixel_values: torch.Tensor, texts: Sequence[str] | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Cosine similarities (B_images × B_texts) between images and texts (strings or tokenised)."""
        encoded = self.tokenize(texts) if not isinstance(texts, Mapping) else texts
        images = self.embed_images(pixel_values)
        text_embeds = self._embed_tokens(encoded["input_ids"], encoded["attention_mask"], batch_size=64)
        return images @ text_embeds.t()

    @torch.no_grad()
    def embed_images(self, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of many images in eval mode, ``batch_size`` at a time (at most
        :data:`~radlens.models.image_towers.CPU_IMAGE_CHUNK` on a CPU), N×E on the CPU."""
        chunk = inference_chunk_size(self.device, batch_size)
        with eval_mode(self):
            chunks = [
                self.encode_image(pixel_values[start : start + chunk].to(self.device)).cpu()
                for start in range(0, pixel_values.shape[0], chunk)
            ]
        return torch.cat(chunks) if chunks else torch.empty(0, self.config.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (N×E, CPU) of many texts and which of them were truncated (N, bool)."""
        embeds, truncated = [], []
        for start in range(0, len(texts), batch_size):
            encoded = self.tokenize(texts[start : start + batch_size])
            embeds.append(self._embed_tokens(encoded["input_ids"], encoded["attention_mask"], batch_size))
            truncated.append(encoded["truncated"])
        if not embeds:
            return torch.empty(0, self.config.embed_dim), torch.empty(0, dtype=torch.bool)
        return torch.cat(embeds), torch.cat(truncated)

    def _embed_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
        with eval_mode(self):
            return torch.cat(
                [
                    self.encode_text(
                        input_ids[start : start + batch_size].to(self.device),
                        attention_mask[start : start + batch_size].to(self.device),
                    ).cpu()
                    for start in range(0, input_ids.shape[0], batch_size)
                ]
            )
