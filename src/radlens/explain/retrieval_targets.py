"""Explaining the retrieval models: why does an image match a text, and which words match an image?

- **Dual encoder, image side**: :class:`ImageSimilarity` wraps a :class:`~radlens.models.DualEncoder` as
  ``pixels → cos(image, fixed text embedding)``, so every image method applies (Grad-CAM uses the image
  tower's ``feature_layer``). :func:`explain_image_match` does it in one call.
- **Dual encoder, text side**: :class:`TextSimilarity` is ``(token ids, mask) → cos(text, fixed image
  embedding)``; :func:`explain_text_match` runs layer integrated gradients through the text tower's word
  embeddings from an all-[PAD] baseline that keeps [CLS] and [SEP], and joins word pieces into words.
- **Fusion model**: :class:`FusionMatch` reorders the inputs to ``(pixels, token ids, mask)`` and the
  target is the ITM "related" logit (:data:`ITM_RELATED`). :func:`explain_fusion_match` gives image and
  text attributions together: integrated gradients integrates each modality with the other held fixed;
  attention rollout maps the [CLS] row of the rolled-out attentions back onto the patch grid and the
  text tokens (:func:`fusion_token_layout`).

Texts are never logged or stored in provenance: targets are described without the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radlens.core import InputError
from radlens.explain.api import Explanation, explain
from radlens.explain.methods._common import TokenLayout
from radlens.explain.render import merge_word_pieces
from radlens.explain.targets import ScoreTarget
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import FusionModel, FusionOutput

#: Special tokens left out of word lists (their scores are still in ``token_scores``).
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]")


def _first_score(output: torch.Tensor) -> torch.Tensor:
    return output[:, 0]


def _itm_related(output: FusionOutput) -> torch.Tensor:
    assert output.itm_logits is not None, "the fusion model was run without its ITM head"
    return output.itm_logits[:, 1]


#: The score the similarity wrappers return (their B×1 output as B scores).
SIMILARITY = ScoreTarget(_first_score, "cosine similarity with a fixed embedding")
#: The fusion model's image-text-matching "related" logit.
ITM_RELATED = ScoreTarget(_itm_related, "ITM related logit")


def _batch_embedding(embedding: torch.Tensor, batch: int) -> torch.Tensor:
    """A unit-norm E, 1×E or B×E embedding broadcast to B×E."""
    if embedding.ndim == 1:
        embedding = embedding.unsqueeze(0)
    if embedding.ndim != 2 or embedding.shape[0] not in (1, batch):
        raise InputError(
            f"fixed embedding must be E, 1×E or {batch}×E, got {tuple(embedding.shape)}",
            "pass one embedding, or one per batch item",
        )
    return embedding.expand(batch, -1)


class ImageSimilarity(nn.Module):
    """``pixels (B×C×H×W) → B×1`` cosine similarity of each image with a fixed text embedding."""

    def __init__(self, model: DualEncoder, text_embedding: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_embedding", F.normalize(text_embedding.detach().float(), dim=-1))
        self.cam_layer = f"model.image_tower.{model.image_tower.feature_layer}"

    text_embedding: torch.Tensor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.model.encode_image(pixel_values)
        fixed = _batch_embedding(self.text_embedding, image.shape[0]).to(image.dtype)
        return (image * fixed).sum(dim=-1, keepdim=True)


class TextSimilarity(nn.Module):
    """``(token ids, attention mask) → B×1`` cosine similarity of each text with a fixed image embedding."""

    embedding_layer = "model.text_tower.bert.embeddings.word_embeddings"

    def __init__(self, model: DualEncoder, image_embedding: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("image_embedding", F.normalize(image_embedding.detach().float(), dim=-1))

    image_embedding: torch.Tensor

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        text = self.model.encode_text(input_ids, attention_mask)
        fixed = _batch_embedding(self.image_embedding, text.shape[0]).to(text.dtype)
        return (text * fixed).sum(dim=-1, keepdim=True)


class FusionMatch(nn.Module):
    """The fusion model with the image first: ``(pixels, token ids, mask) → FusionOutput`` (attentions on).

    ``cam_layer`` is the CNN tower's feature map when the image tokens come from a CNN, else the input
    of the last transformer layer's attention (its ``layernorm_before``; then pass
    :func:`fusion_token_layout` as ``token_layout``). Not the last layer's output: the ITM head reads
    only the [CLS] token there, so the patch tokens' gradients are exactly zero and Grad-CAM would be
    blank — the choice pytorch-grad-cam recommends for ViTs (``blocks[-1].norm1``) for the same reason.
    """

    embedding_layer = "model.vilt.embeddings.text_embeddings.word_embeddings"

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model
        if model.image_tower is not None:
            self.cam_layer = f"model.image_tower.{model.image_tower.feature_layer}"
        else:
            self.cam_layer = f"model.vilt.encoder.layer.{model.config.num_layers - 1}.layernorm_before"

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> FusionOutput:
        return self.model(input_ids, attention_mask, pixel_values, output_attentions=True, compute_mlm=False)


class FixedTextFusion(nn.Module):
    """``pixels → FusionOutput`` of the fusion model with one fixed text (an image-only model to explain).

    ``token_layout`` (for attention rollout and Grad-CAM on the transformer) is laid out for images of
    ``image_size`` pixels.
    """

    def __init__(self, model: FusionModel, text: str, image_size: int) -> None:
        super().__init__()
        self.model = model
        encoded = model.tokenize([text])
        device = next(model.parameters()).device
        self.register_buffer("input_ids", encoded["input_ids"].to(device))
        self.register_buffer("attention_mask", encoded["attention_mask"].to(device))
        channels = model.config.in_channels
        with torch.no_grad():
            _, grid = model.embed_image(torch.zeros(1, channels, image_size, image_size, device=device))
        self.token_layout = fusion_token_layout(int(self.input_ids.shape[1]), grid)
        self.cam_layer = FusionMatch(model).cam_layer

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def forward(self, pixel_values: torch.Tensor) -> FusionOutput:
        batch = pixel_values.shape[0]
        return self.model(
            self.input_ids.expand(batch, -1),
            self.attention_mask.expand(batch, -1),
            pixel_values,
            output_attentions=True,
            compute_mlm=False,
        )


def fusion_token_layout(text_len: int, grid: tuple[int, int]) -> TokenLayout:
    """Where things sit in the fusion sequence ``[CLS] text [SEP] pad… [IMG] patches``: the pooler (and
    the ITM head) reads position 0; text tokens are ``0…text_len``; patches follow the image CLS."""
    start = text_len + 1
    return TokenLayout(cls_index=0, text=(0, text_len), image=(start, start + grid[0] * grid[1]), grid=grid)


@torch.no_grad()
def embed_text(model: DualEncoder, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm embeddings (N×E) of ``texts`` in eval mode."""
    embeddings, _ = model.embed_texts(list(texts))
    return embeddings


@torch.no_grad()
def embed_image(model: DualEncoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """Unit-norm embeddings (N×E) of images in eval mode."""
    return model.embed_images(pixel_values)


def _special_ids(tokenizer: Any) -> tuple[int, ...]:
    hf = tokenizer.hf
    return tuple(int(i) for i in (hf.cls_token_id, hf.sep_token_id) if i is not None)


@dataclass
class WordAttribution:
    """Per-word scores of one text: word pieces joined (scores summed), special tokens and padding left out."""

    words: list[str]
    scores: list[float]
    tokens: list[str]
    token_scores: list[float]


def word_attributions(
    tokenizer: Any, input_ids: torch.Tensor, token_scores: torch.Tensor
) -> list[WordAttribution]:
    """One :class:`WordAttribution` per row of B×T ids and scores."""
    rows = []
    for ids, scores in zip(input_ids.tolist(), token_scores.detach().float().tolist(), strict=True):
        tokens = tokenizer.hf.convert_ids_to_tokens(ids)
        words, totals = merge_word_pieces(tokens, scores, drop=SPECIAL_TOKENS)
        rows.append(WordAttribution(words, totals, list(tokens), list(scores)))
    return rows


def explain_image_match(
    model: DualEncoder,
    pixel_values: torch.Tensor,
    text: str | torch.Tensor,
    method: str = "gradcam",
    **options: Any,
) -> Explanation:
    """Which image regions make the dual encoder match ``text`` (a string or a fixed text embedding)?

    The explained score is the cosine similarity of each image with the text (one text for the batch, or
    a B×E embedding, one per image).
    """
    fixed = embed_text(model, [text])[0] if isinstance(text, str) else text
    wrapper = ImageSimilarity(model, fixed.to(pixel_values.device))
    return explain(wrapper, pixel_values, SIMILARITY, method=method, **options)


@dataclass
class TextExplanation:
    """Word scores for each text, with the explanation they came from."""

    explanation: Explanation
    words: list[WordAttribution]


def explain_text_match(
    model: DualEncoder, pixel_values: torch.Tensor, texts: Sequence[str], n_steps: int = 32
) -> TextExplanation:
    """Which words make each text match the image? Layer integrated gradients through the word embeddings.

    ``pixel_values`` holds one image (matched against every text) or one per text. The baseline is all
    [PAD] except [CLS] and [SEP]; ``explanation.diagnostics["text_completeness_error"]`` checks it.
    """
    if isinstance(texts, str) or not texts:
        raise InputError("explain_text_match takes a non-empty list of texts", "wrap one text in a list")
    images = embed_image(model, pixel_values)
    if images.shape[0] not in (1, len(texts)):
        raise InputError(
            f"{images.shape[0]} images for {len(texts)} texts", "pass one image, or one per text"
        )
    encoded = model.tokenize(list(texts))
    ids, mask = encoded["input_ids"].to(model.device), encoded["attention_mask"].to(model.device)
    wrapper = TextSimilarity(model, images.to(model.device))
    tokenizer = model.tokenizer
    explanation = explain(
        wrapper,
        (ids, mask),
        SIMILARITY,
        method="integrated_gradients",
        n_steps=n_steps,
        embedding_layer=TextSimilarity.embedding_layer,
        pad_token_id=tokenizer.pad_token_id,
        keep_token_ids=_special_ids(tokenizer),
    )
    assert explanation.token_scores is not None
    return TextExplanation(explanation, word_attributions(tokenizer, ids, explanation.token_scores))


@dataclass
class FusionExplanation:
    """Image heatmap and word scores of the fusion model's ITM "related" logit for each pair."""

    explanation: Explanation
    words: list[WordAttribution]
    layout: TokenLayout


def explain_fusion_match(
    model: FusionModel,
    pixel_values: torch.Tensor,
    texts: Sequence[str],
    method: str = "integrated_gradients",
    **options: Any,
) -> FusionExplanation:
    """Why does the fusion model relate each (image, text) pair? Image and text attributions together.

    ``integrated_gradients`` (defaults: PAD baseline keeping [CLS]/[SEP], the word embeddings as the
    text layer) and ``attention_rollout`` (the [CLS] row over patches and tokens) give both; image-only
    methods (``gradcam``, ``lrp_epsilon``, ...) give the heatmap only.
    """
    if isinstance(texts, str) or not texts:
        raise InputError("explain_fusion_match takes a non-empty list of texts", "wrap one text in a list")
    if pixel_values.shape[0] == 1 and len(texts) > 1:
        pixel_values = pixel_values.expand(len(texts), -1, -1, -1)
    if pixel_values.shape[0] != len(texts):
        raise InputError(f"{pixel_values.shape[0]} images for {len(texts)} texts", "pass one image per text")
    device = next(model.parameters()).device
    encoded = model.tokenize(list(texts))
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    pixel_values = pixel_values.to(device)
    wrapper = FusionMatch(model)
    with torch.no_grad():
        _, grid = model.embed_image(pixel_values[:1])
    layout = fusion_token_layout(int(ids.shape[1]), grid)
    tokenizer = model.tokenizer
    defaults: dict[str, Any] = {}
    if method == "integrated_gradients":
        defaults = {
            "embedding_layer": FusionMatch.embedding_layer,
            "pad_token_id": tokenizer.pad_token_id,
            "keep_token_ids": _special_ids(tokenizer),
        }
    elif method == "attention_rollout" or (method in ("gradcam", "gradcam_pp") and model.image_tower is None):
        defaults = {"token_layout": layout}
    explanation = explain(
        wrapper, (pixel_values, ids, mask), ITM_RELATED, method=method, **(defaults | options)
    )
    words = (
        word_attributions(tokenizer, ids, explanation.token_scores)
        if explanation.token_scores is not None
        else []
    )
    return FusionExplanation(explanation, words, layout)


__all__ = [
    "ITM_RELATED",
    "SIMILARITY",
    "FixedTextFusion",
    "FusionExplanation",
    "FusionMatch",
    "ImageSimilarity",
    "TextExplanation",
    "TextSimilarity",
    "WordAttribution",
    "embed_image",
    "embed_text",
    "explain_fusion_match",
    "explain_image_match",
    "explain_text_match",
    "fusion_token_layout",
    "word_attributions",
]
