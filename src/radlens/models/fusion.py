"""ViLT-style fusion model: one transformer over text tokens and image patches, with ITM and MLM heads.

The input sequence is ``[CLS] text tokens [SEP] (padding) [IMG] patch_1 … patch_N``: text embeddings
come from BERT's word + position + segment tables, image patches from a linear patch projection (ViLT)
or from a CNN tower's feature-map cells, each plus a learned grid position embedding (bilinearly
interpolated when the grid size changes) and ``[IMG]`` is ViLT's image CLS token. A modality
(token-type) embedding marks which tokens are text and which image.

The transformer, its embeddings and the pooler are ``transformers.ViltModel``, used as a library: that
makes :meth:`FusionModel.from_vilt` load a Hugging Face ViLT checkpoint exactly, and its eager attention
returns every layer's attention probabilities (for attention rollout). radlens builds the image tokens
itself and passes them as ``image_embeds``: ViltModel's own patch path shuffles the patch order at
random, which would scramble attention maps.

Align before fuse (ALBEF, Li et al. 2021): with ``aligner`` set (``radlens train retrieval --model fusion
--base DUAL_CKPT``), the image tokens are a trained dual encoder's feature-map cells mapped by its
projection into the shared image–text space, and the ITM head adds the dual encoder's scaled cosine
similarity of the pair to the transformer's "related" logit. The dual encoder stays frozen. The
transformer then learns corrections to an already aligned score: trained from scratch, a ViLT-style
transformer stays at chance on ITM for the few thousand pairs a CPU run sees (docs/retrieval.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from transformers import ViltConfig, ViltForMaskedLM, ViltModel
from transformers.models.vilt.modeling_vilt import ViltMLMHead

from radlens.core import Config, InputError
from radlens.models._staged import eval_mode
from radlens.models.checkpoint import register_model
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.models.image_towers import (
    ImageNormalization,
    ImageTowerConfig,
    build_image_tower,
    inference_chunk_size,
    interpolate_grid_embeddings,
)
from radlens.models.text_towers import (
    MAX_POSITIONS,
    TextTower,
    Tokenizer,
    build_text_tower,
    load_tokenizer,
    quiet_transformers,
)

IGNORE_INDEX = -100


class FusionConfig(Config):
    """Size of the fusion transformer and where its image tokens come from.

    ``image_source``: ``patch`` (ViLT's linear projection of ``patch_size`` patches) or a CNN tower whose
    feature-map cells become tokens (``pretrained`` loads ImageNet weights into ``efficientnet_lite0``).
    Position embeddings are learned on an ``image_size // patch_size`` grid; for CNN sources keep
    ``patch_size`` at the CNN's stride (32) so no interpolation is needed. ``max_text_length`` sizes the
    text position table (at most 512). Pixels in [0, 1] are normalised with ``pixel_mean``/``pixel_std``
    in patch mode (ViLT uses 0.5/0.5); CNN towers normalise themselves.

    ``aligner``: the config of a trained dual encoder whose frozen towers and projections give the image
    tokens and the ITM head's similarity term (see the module doc); ``image_source`` and ``image_size``
    must then be the dual encoder's. :func:`aligned_fusion_config` fills these from a dual encoder.
    """

    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(1024, ge=8)
    hidden_act: str = "gelu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    qkv_bias: bool = True
    max_text_length: int = Field(128, ge=2, le=MAX_POSITIONS)
    image_size: int = Field(224, ge=8)
    patch_size: int = Field(32, ge=1)
    in_channels: Literal[1, 3] = 3
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    image_source: Literal["patch", "small_cnn", "efficientnet_lite0"] = "patch"
    pretrained: bool = False
    trainable_image_stages: int | None = Field(None, ge=0)
    cnn_width: int = 128
    cnn_depth: int = 4
    image_normalization: ImageNormalization = "inception"
    aligner: DualEncoderConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.aligner is not None:
            if self.image_source != self.aligner.image_tower or self.image_size != self.aligner.image_size:
                raise ValueError(
                    "an aligned fusion model takes image_source and image_size from its dual encoder "
                    f"({self.aligner.image_tower}, {self.aligner.image_size} px)"
                )
            if self.pretrained or self.trainable_image_stages != 0:
                raise ValueError(
                    "an aligned fusion model keeps its dual encoder frozen (pretrained: false, "
                    "trainable_image_stages: 0)"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.image_size < self.patch_size:
            raise ValueError("image_size must be at least patch_size")
        if self.pretrained and self.image_source != "efficientnet_lite0":
            raise ValueError("pretrained applies to image_source efficientnet_lite0 only")
        return self

    def vilt_config(self, vocab_size: int, pad_token_id: int) -> ViltConfig:
        """The ``transformers.ViltConfig`` of the underlying transformer."""
        return ViltConfig(
            vocab_size=vocab_size,
            type_vocab_size=2,
            modality_type_vocab_size=2,
            max_position_embeddings=self.max_text_length,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.in_channels,
            qkv_bias=self.qkv_bias,
            max_image_length=-1,
            pad_token_id=pad_token_id,
        )


@dataclass
class FusionImageFeatures:
    """The image side of a batch before the fusion transformer's own layers (:meth:`FusionModel.image_features`).

    ``cells``: B×N×C, row-major over ``grid`` (h, w): ViLT's projected patches, a CNN tower's feature-map
    cells or, for an aligned model, those cells mapped into the dual encoder's shared space. An aligned
    model's image tower is frozen, so its features are fixed per image and training can compute them
    once (:mod:`radlens.train.frozen`).
    """

    cells: torch.Tensor
    grid: tuple[int, int]

    def rows(self, index: torch.Tensor) -> FusionImageFeatures:
        """The features of the images at ``index`` (a row index or a boolean mask)."""
        return FusionImageFeatures(self.cells[index], self.grid)

    def pooled(self) -> torch.Tensor:
        """The mean cell (B×C). For an aligned model this is the dual encoder's image embedding before
        normalisation: a CNN pools by averaging its cells, and the aligner's projection is linear."""
        return self.cells.mean(dim=1)


@dataclass
class FusionOutput:
    """What :class:`FusionModel` returns.

    ``itm_logits``: B×2 (not related, related). ``mlm_logits``: B×L×V over the text positions, or M×V
    over the M positions ``mlm_positions`` picks. Each is ``None`` when not asked for (``compute_itm`` /
    ``compute_mlm``). ``attentions``: one B×H×T×T tensor per layer, T = ``text_len`` + 1 + h·w, with
    the image CLS at ``text_len`` and the patches (row-major over ``image_grid``) from
    ``image_start``. ``last_hidden_state``: B×T×D after the final LayerNorm.
    """

    itm_logits: torch.Tensor | None
    mlm_logits: torch.Tensor | None
    attentions: list[torch.Tensor]
    text_len: int
    image_grid: tuple[int, int]
    last_hidden_state: torch.Tensor

    @property
    def image_start(self) -> int:
        """Index of the first image patch token in the sequence."""
        return self.text_len + 1


@register_model("fusion")
class FusionModel(nn.Module):
    """ViLT-style single-stream transformer with an image-text matching head and a tied MLM head."""

    config_class = FusionConfig
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: FusionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.tokenizer: Tokenizer = load_tokenizer()
        vilt_config = config.vilt_config(self.tokenizer.vocab_size, self.tokenizer.pad_token_id)
        self.vilt = ViltModel(vilt_config)
        embeddings = self.vilt.embeddings
        self.aligner_text_tower: TextTower | None = None
        if config.aligner is not None:
            self._build_aligner(config.aligner)
            embeddings.patch_embeddings = nn.Identity()  # type: ignore[assignment]
        elif config.image_source == "patch":
            self.image_tower = None
            self.feature_projection = None
        else:
            tower_config = ImageTowerConfig(
                name=config.image_source,
                pretrained=config.pretrained,
                in_channels=3 if config.image_source == "efficientnet_lite0" else config.in_channels,
                width=config.cnn_width,
                depth=config.cnn_depth,
                normalization=config.image_normalization,
            )
            self.image_tower = build_image_tower(tower_config, load_pretrained=load_pretrained)
            self.image_tower.freeze(config.trainable_image_stages)
            self.feature_projection = nn.Linear(self.image_tower.out_dim, config.hidden_size)
            # CNN cells replace the linear patch projection, which would otherwise sit unused.
            embeddings.patch_embeddings = nn.Identity()  # type: ignore[assignment]
        self.register_buffer(
            "pixel_mean", torch.full((1, config.in_channels, 1, 1), config.pixel_mean), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.full((1, config.in_channels, 1, 1), config.pixel_std), persistent=False
        )
        self.itm_score = nn.Linear(config.hidden_size, 2)
        self.mlm_score = ViltMLMHead(vilt_config)
        self._init_weights()
        self.mlm_score.decoder.weight = embeddings.text_embeddings.word_embeddings.weight  # tied, as in BERT

    def _build_aligner(self, aligner: DualEncoderConfig) -> None:
        """The frozen dual-encoder parts (towers and projections) and the similarity term's two scalars."""
        image_tower = build_image_tower(aligner.image_tower_config(), load_pretrained=False)
        text_tower = build_text_tower(aligner.text_tower_config(), load_pretrained=False)
        image_tower.freeze(0)
        text_tower.freeze(0)
        self.image_tower, self.aligner_text_tower = image_tower, text_tower
        self.aligner_image_projection = nn.Linear(image_tower.out_dim, aligner.embed_dim, bias=False)
        self.aligner_text_projection = nn.Linear(text_tower.out_dim, aligner.embed_dim, bias=False)
        self.aligner_image_projection.requires_grad_(False)
        self.aligner_text_projection.requires_grad_(False)
        self.feature_projection = nn.Linear(aligner.embed_dim, self.config.hidden_size)
        # "related" logit += alignment_scale · (cosine - alignment_threshold); set by calibrate_alignment
        self.alignment_scale = nn.Parameter(torch.tensor(1.0))
        self.alignment_threshold = nn.Parameter(torch.tensor(0.0))

    def load_aligner(self, dual: DualEncoder) -> None:
        """Copy a trained dual encoder's towers and projections into this model's frozen aligner."""
        if self.config.aligner is None or self.aligner_text_tower is None or self.image_tower is None:
            raise InputError("this fusion model has no aligner", "build it from aligned_fusion_config(...)")
        if dual.config != self.config.aligner:
            raise InputError("the dual encoder's config differs from this fusion model's aligner config")
        self.image_tower.load_state_dict(dual.image_tower.state_dict())
        self.aligner_text_tower.load_state_dict(dual.text_tower.state_dict())
        self.aligner_image_projection.load_state_dict(dual.image_projection.state_dict())
        self.aligner_text_projection.load_state_dict(dual.text_projection.state_dict())

    @torch.no_grad()
    def calibrate_alignment(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        """Set the similarity term to the Bayes logit of two equal-variance Gaussians fitted to the
        aligner's cosines of matching (``positive``) and non-matching (``negative``) pairs:
        scale = (μ₊ − μ₋) / σ², threshold = (μ₊ + μ₋) / 2 (σ² the pooled variance), which is
        linear discriminant analysis with equal priors.

        Training starts from this calibrated score instead of learning the two scalars from 1 and 0,
        which AdamW at a transformer's learning rate would take thousands of steps to do.
        """
        if positive.numel() < 2 or negative.numel() < 2:
            raise ValueError("calibration needs at least 2 positive and 2 negative similarities")
        pos, neg = positive.double(), negative.double()
        variance = (((pos - pos.mean()) ** 2).sum() + ((neg - neg.mean()) ** 2).sum()) / (
            pos.numel() + neg.numel()
        )  # the maximum-likelihood pooled variance, as scikit-learn's LinearDiscriminantAnalysis
        self.alignment_scale.fill_(float((pos.mean() - neg.mean()) / variance.clamp(min=1e-8)))
        self.alignment_threshold.fill_(float((pos.mean() + neg.mean()) / 2))

    def aligned_similarity(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """The aligner's cosine similarity of each (text, image) pair (B)."""
        images = self.aligned_image_embeds(pixel_values)
        return (images * self.aligned_text_embeds(input_ids, attention_mask)).sum(dim=-1)

    def aligned_image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The aligner's unit-norm image embeddings (B×E): the dual encoder's ``encode_image``."""
        if self.config.aligner is None:
            raise InputError("this fusion model has no aligner", "train it with --base DUAL_CKPT")
        return F.normalize(self.image_features(pixel_values).pooled(), dim=-1)

    def aligned_text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The aligner's unit-norm text embeddings (B×E): the dual encoder's ``encode_text``."""
        if self.aligner_text_tower is None:
            raise InputError("this fusion model has no aligner", "train it with --base DUAL_CKPT")
        pooled = self.aligner_text_tower(input_ids, attention_mask).pooled
        return F.normalize(self.aligner_text_projection(pooled), dim=-1)

    def _init_weights(self) -> None:
        """Initialise what ``ViltModel`` leaves at zero or PyTorch's defaults: ViT-style truncated normal
        position embeddings and image CLS (zeros would make identical patches indistinguishable at
        the start) and normal(0, initializer_range) heads, as BERT does."""
        std = self.config.initializer_range
        embeddings = self.vilt.embeddings
        nn.init.trunc_normal_(embeddings.position_embeddings, std=std, a=-2 * std, b=2 * std)
        nn.init.trunc_normal_(embeddings.cls_token, std=std, a=-2 * std, b=2 * std)
        modules: list[nn.Module] = [self.itm_score, self.mlm_score]
        if self.feature_projection is not None:
            modules.append(self.feature_projection)
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=std)
                    nn.init.zeros_(layer.bias)

    @classmethod
    def from_vilt(cls, local_dir: str | os.PathLike[str]) -> FusionModel:
        """Initialise from a local Hugging Face ``ViltForMaskedLM`` folder (config.json + weights).

        The transformer, embeddings, pooler and MLM head are copied exactly; the ITM head (absent from
        ``ViltForMaskedLM``) starts untrained. Nothing is downloaded.
        """
        folder = Path(local_dir)
        if not (folder / "config.json").is_file():
            raise InputError(
                f"{folder} is not a Hugging Face model folder (no config.json)", "pass a ViLT folder"
            )
        try:
            vilt_config = ViltConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{folder}/config.json is not a ViLT config ({exc.__class__.__name__})") from exc
        if vilt_config.model_type != "vilt":
            raise InputError(
                f"{folder} holds a {vilt_config.model_type} model, not ViLT", "pass a ViLT folder"
            )
        vocab_size = load_tokenizer().vocab_size
        if vilt_config.vocab_size != vocab_size:
            raise InputError(
                f"the ViLT vocabulary has {vilt_config.vocab_size} tokens, radlens's WordPiece has {vocab_size}",
                "use a ViLT checkpoint with the bert-base-uncased vocabulary",
            )
        image_size, patch_size = vilt_config.image_size, vilt_config.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise InputError("only square ViLT image and patch sizes are supported")
        config = FusionConfig(
            hidden_size=vilt_config.hidden_size,
            num_layers=vilt_config.num_hidden_layers,
            num_heads=vilt_config.num_attention_heads,
            intermediate_size=vilt_config.intermediate_size,
            hidden_act=vilt_config.hidden_act,
            dropout=vilt_config.hidden_dropout_prob,
            attention_dropout=vilt_config.attention_probs_dropout_prob,
            layer_norm_eps=vilt_config.layer_norm_eps,
            initializer_range=vilt_config.initializer_range,
            qkv_bias=vilt_config.qkv_bias,
            max_text_length=vilt_config.max_position_embeddings,
            image_size=image_size,
            patch_size=patch_size,
            in_channels=vilt_config.num_channels,
        )
        model = cls(config, load_pretrained=False)
        try:
            with quiet_transformers():
                source = ViltForMaskedLM.from_pretrained(str(folder), local_files_only=True)
        except OSError as exc:
            raise InputError(
                f"{folder} has no readable ViLT weights", "save it with save_pretrained"
            ) from exc
        model.vilt.load_state_dict(source.vilt.state_dict(), strict=True)
        model.mlm_score.load_state_dict(source.mlm_score.state_dict(), strict=True)
        return model

    @property
    def device(self) -> torch.device:
        return self.itm_score.weight.device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with ``max_text_length``; ``truncated`` says which texts were cut."""
        return self.tokenizer.encode(texts, self.config.max_text_length)

    def _check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise InputError(f"image batch must be B×C×H×W, got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[1] == 1 and self.config.in_channels == 3:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        if pixel_values.shape[1] != self.config.in_channels:
            raise InputError(
                f"image batch has {pixel_values.shape[1]} channels, the model takes {self.config.in_channels}"
            )
        return pixel_values

    def image_features(self, pixel_values: torch.Tensor) -> FusionImageFeatures:
        """The image side up to the fusion transformer's own layers (see :class:`FusionImageFeatures`)."""
        if self.image_tower is None:
            x = (self._check_pixels(pixel_values) - self.pixel_mean) / self.pixel_std
            patches = self.vilt.embeddings.patch_embeddings.projection(x)
            grid = (int(patches.shape[2]), int(patches.shape[3]))
            return FusionImageFeatures(patches.flatten(2).transpose(1, 2), grid)
        tower_out = self.image_tower(pixel_values)
        cells = tower_out.patch_tokens()
        if self.config.aligner is not None:
            cells = self.aligner_image_projection(cells)
        return FusionImageFeatures(cells, tower_out.grid)

    @torch.no_grad()
    def embed_image_features(self, pixel_values: torch.Tensor, batch_size: int = 32) -> FusionImageFeatures:
        """:meth:`image_features` of many images in eval mode, ``batch_size`` at a time (at most
        :data:`~radlens.models.image_towers.CPU_IMAGE_CHUNK` on a CPU), on the model's device."""
        chunk = inference_chunk_size(self.device, batch_size)
        with eval_mode(self):
            parts = [self.image_features(pixels.to(self.device)) for pixels in pixel_values.split(chunk)]
        return FusionImageFeatures(torch.cat([part.cells for part in parts]), parts[0].grid)

    def embed_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image tokens ``[IMG] patch_1 … patch_N`` with position embeddings (B×(1+N)×D) and the grid."""
        features = self.image_features(pixel_values)
        return self._image_tokens(features), features.grid

    def _image_tokens(self, features: FusionImageFeatures) -> torch.Tensor:
        embeddings = self.vilt.embeddings
        cells = features.cells
        tokens = cells if self.feature_projection is None else self.feature_projection(cells)
        positions = embeddings.position_embeddings
        tokens = tokens + interpolate_grid_embeddings(positions[:, 1:], features.grid)
        cls_token = (embeddings.cls_token + positions[:, :1]).expand(tokens.shape[0], -1, -1)
        return embeddings.dropout(torch.cat([cls_token, tokens], dim=1))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        output_attentions: bool = True,
        compute_mlm: bool = True,
        compute_itm: bool = True,
    ) -> FusionOutput:
        """Run the fusion transformer over (text, image) pairs; pixels are B×C×H×W in [0, 1].

        ``compute_itm=False`` (an MLM-only pass over masked text) leaves ``itm_logits`` ``None`` and, for
        an aligned model, skips the aligner's text tower.
        """
        if pixel_values.ndim != 4:
            raise InputError(f"image batch must be B×C×H×W, got shape {tuple(pixel_values.shape)}")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise InputError(
                f"{input_ids.shape[0]} texts but {pixel_values.shape[0]} images in one batch",
                "pass one image per text",
            )
        return self.fuse(
            input_ids,
            attention_mask,
            self.image_features(pixel_values),
            output_attentions=output_attentions,
            compute_mlm=compute_mlm,
            compute_itm=compute_itm,
        )

    def fuse(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image: FusionImageFeatures,
        aligned_text: torch.Tensor | None = None,
        output_attentions: bool = True,
        compute_mlm: bool = True,
        compute_itm: bool = True,
        mlm_positions: torch.Tensor | None = None,
    ) -> FusionOutput:
        """:meth:`forward` from image features (:meth:`image_features`), computed once for several passes
        or precomputed. ``aligned_text``: the aligner's text embeddings of the texts (B×E, as
        :meth:`aligned_text_embeds` gives), when precomputed. ``mlm_positions`` (B×L bool): score only
        those text positions (M×V logits), which spares the vocabulary-sized output of the rest.
        """
        if input_ids.shape[0] != image.cells.shape[0]:
            raise InputError(
                f"{input_ids.shape[0]} texts but {image.cells.shape[0]} images in one batch",
                "pass one image per text",
            )
        if input_ids.shape[1] > self.config.max_text_length:
            raise InputError(
                f"text batch has {input_ids.shape[1]} tokens, the model takes {self.config.max_text_length}",
                "tokenise with the model's max_text_length",
            )
        image_embeds = self._image_tokens(image)
        image_mask = torch.ones(
            image_embeds.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device
        )
        out = self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds,
            pixel_mask=image_mask,
            output_attentions=output_attentions,
            return_dict=True,
        )
        text_len = int(input_ids.shape[1])
        sequence = out.last_hidden_state
        itm_logits = self.itm_score(out.pooler_output) if compute_itm else None
        if itm_logits is not None and self.config.aligner is not None:
            if aligned_text is None:
                aligned_text = self.aligned_text_embeds(input_ids, attention_mask)
            similarity = (F.normalize(image.pooled(), dim=-1) * aligned_text).sum(dim=-1)
            related = self.alignment_scale * (similarity - self.alignment_threshold)
            itm_logits = itm_logits + torch.stack([torch.zeros_like(related), related], dim=-1)
        mlm_logits = None
        if compute_mlm:
            text_states = sequence[:, :text_len]
            if mlm_positions is not None:
                text_states = text_states[mlm_positions.to(text_states.device)]
            mlm_logits = self.mlm_score(text_states)
        return FusionOutput(
            itm_logits=itm_logits,
            mlm_logits=mlm_logits,
            attentions=list(out.attentions or []),
            text_len=text_len,
            image_grid=image.grid,
            last_hidden_state=sequence,
        )

    def itm_probability(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """P(related) for each (text, image) pair (B) — the re-ranking score. Call under no_grad to rank."""
        out = self(input_ids, attention_mask, pixel_values, output_attentions=False, compute_mlm=False)
        assert out.itm_logits is not None
        return out.itm_logits.softmax(dim=-1)[:, 1]


def aligned_fusion_config(fusion: FusionConfig, dual: DualEncoderConfig) -> FusionConfig:
    """``fusion`` set up to fuse on top of a trained dual encoder with config ``dual`` (ALBEF's order).

    The image source and size become the dual encoder's, and the text length its ``max_length`` (the
    aligner then sees reports as it was trained on them); the fusion transformer's own sizes are kept.
    """
    if dual.image_tower not in ("efficientnet_lite0", "small_cnn"):
        raise InputError(
            f"an aligned fusion model needs a dual encoder with a CNN image tower, not {dual.image_tower}",
            "train the dual encoder with image_tower efficientnet_lite0 or small_cnn",
        )
    values = fusion.model_dump()
    values.update(
        aligner=dual.model_dump(),
        image_source=dual.image_tower,
        image_size=dual.image_size,
        in_channels=dual.in_channels if dual.image_tower == "small_cnn" else 3,
        max_text_length=dual.max_length,
        image_normalization=dual.image_normalization,
        pretrained=False,
        trainable_image_stages=0,
    )
    return FusionConfig.model_validate(values)


def itm_loss(itm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the ITM head; ``labels`` are 1 for matching pairs, 0 otherwise."""
    return F.cross_entropy(itm_logits, labels.long().to(itm_logits.device))


def mlm_loss(mlm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked positions (``labels`` != -100); 0 when nothing is masked.

    ``mlm_logits`` is B×L×V with ``labels`` B×L, or M×V with ``labels`` M (logits at chosen positions).
    """
    labels = labels.to(mlm_logits.device)
    if not bool((labels != IGNORE_INDEX).any()):
        return mlm_logits.sum() * 0.0  # keeps the graph connected so a backward pass still works
    vocabulary = mlm_logits.shape[-1]
    return F.cross_entropy(mlm_logits.reshape(-1, vocabulary), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def mask_tokens(
    input_ids: torch.Tensor,
    tokenizer: Tokenizer,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick ``prob`` of the non-special tokens; of those 80% → [MASK], 10% → a random
    word, 10% unchanged. Returns (masked ids, labels) with labels -100 where nothing is to be predicted.

    Special tokens ([CLS], [SEP], [PAD], ...) are never picked. Random words are drawn from the
    non-special vocabulary. Sampling runs on the CPU with ``generator`` for reproducibility.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask probability must be in [0, 1], got {prob}")
    ids = input_ids.detach().to("cpu", torch.long)
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    special = torch.isin(ids, special_ids)
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    draw = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    vocabulary = torch.arange(tokenizer.vocab_size)
    words = vocabulary[~torch.isin(vocabulary, special_ids)]
    random_words = words[torch.randint(len(words), ids.shape, generator=generator)]
    masked = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_token_id), ids)
    masked = torch.where(to_random, random_words, masked)
    return masked.to(input_ids.device), labels.to(input_ids.device)
