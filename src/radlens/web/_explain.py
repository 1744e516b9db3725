"""Why does a text match an image? Explanations of a retrieval model's similarity for the web app.

The explained score is the cosine similarity of the text and the image in the retrieval space (after
the metric-stage projection when the model has one) — the very number search ranks by:

- the image heatmap: ``explain(image → similarity with the fixed text embedding, method)``; Grad-CAM
  methods use the image tower's own ``feature_layer``;
- the words: layer integrated gradients through the token embeddings of ``text → similarity with the
  fixed image embedding``, from an all-[PAD] baseline that keeps [CLS] and [SEP], summed per word (word
  pieces are joined back with the fast tokenizer's word ids, and each word keeps its character offsets
  in the original text so the page can shade the text as typed).

The explainer works on its own deep copy of the model: explanation methods register hooks and switch
layer flags, which must never touch the model that concurrent searches are using.
"""

from __future__ import annotations

import base64
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from radlens.explain.api import explain
from radlens.explain.render import colour_mapping
from radlens.explain.targets import ScoreTarget

#: Integration steps for word scores and the integrated_gradients image method (captum's default is 50;
#: 16 Gauss-Legendre steps keep completeness errors small on these models at a third of the cost).
IG_STEPS = 16
#: Method options used by the app (anything not listed keeps the method's default).
_IMAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": IG_STEPS},
    "smoothgrad": {"n_samples": 8},
}


class _Similarity(nn.Module):
    """cos(image, text) of a retrieval model with one side fixed: an input → one score per batch item."""

    fixed: torch.Tensor

    def __init__(self, dual: nn.Module, projection: nn.Module | None, side: str, fixed: torch.Tensor) -> None:
        super().__init__()
        self.dual: Any = dual
        self.projection: Any = projection
        self.side = side  # which input varies: "image" or "text"
        self.register_buffer("fixed", fixed)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.side == "image":
            pixels = inputs[0]
            if not pixels.requires_grad:  # a frozen tower's activations need a graph for Grad-CAM
                pixels = pixels.detach().requires_grad_(True)
            varying = _project(self.projection, "image", self.dual.encode_image(pixels))
        else:
            varying = _project(self.projection, "text", self.dual.encode_text(inputs[0], inputs[1]))
        return (varying * self.fixed).sum(dim=-1)


def _project(projection: nn.Module | None, modality: str, embeds: torch.Tensor) -> torch.Tensor:
    """Embeddings in the retrieval space: through the metric-stage projection when there is one."""
    if projection is None:
        return embeds
    return F.normalize(projection.project(embeds, modality).float(), dim=-1)  # type: ignore[operator]


@dataclass
class Explained:
    """One explanation, ready for the API: heatmap PNG, word spans with scores, the similarity."""

    heatmap_png: bytes
    heatmap_max: float
    signed: bool
    words: list[tuple[int, int, float]]
    truncated: bool
    score: float


class MatchExplainer:
    """Explains (text, image) similarities of one retrieval model, on a private copy of it."""

    def __init__(self, embedder: Any) -> None:
        self.dual: Any = copy.deepcopy(embedder.dual).eval()
        projection = getattr(embedder, "projection", None)
        self.projection: Any = copy.deepcopy(projection).eval() if projection is not None else None
        self.image_size = int(self.dual.config.image_size)
        self.max_length = int(self.dual.config.max_length)
        tower = self.dual.image_tower
        self.cam_layer = f"dual.image_tower.{tower.feature_layer}"
        self.patch_size = (
            int(self.dual.config.patch_size) if self.dual.config.image_tower == "small_vit" else None
        )
        self.embedding_layer = "dual.text_tower.bert.embeddings.word_embeddings"

    def _encode(
        self, text: str
    ) -> tuple[dict[str, torch.Tensor], list[int | None], list[tuple[int, int]], bool]:
        """Token ids, mask, each token's word index and character offsets, and whether text was cut."""
        hf = self.dual.tokenizer.hf
        encoded = hf(
            text,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        full_length = len(hf(text, add_special_tokens=True, truncation=False)["input_ids"])
        offsets = [tuple(int(v) for v in pair) for pair in encoded["offset_mapping"][0].tolist()]
        tensors = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return tensors, encoded.word_ids(0), offsets, full_length > self.max_length  # type: ignore[return-value]

    def explain(self, text: str, pixels: np.ndarray, method: str) -> Explained:
        """Explain the similarity of ``text`` and the grey ``pixels`` (already at the model's size)."""
        tokens, word_ids, offsets, truncated = self._encode(text)
        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
        with torch.no_grad():
            image_embed = _project(self.projection, "image", self.dual.encode_image(image))
            text_embed = _project(
                self.projection, "text", self.dual.encode_text(tokens["input_ids"], tokens["attention_mask"])
            )
        target = ScoreTarget(lambda output: output, "cosine similarity of the text and the image")
        options = dict(_IMAGE_OPTIONS.get(method, {}))
        if method.startswith("gradcam"):
            options["layer"] = self.cam_layer
            if self.patch_size:
                options["patch_size"] = self.patch_size
        image_model = _Similarity(self.dual, self.projection, "image", text_embed)
        image_result = explain(image_model, image, target, method=method, **options)
        text_result = explain(
            _Similarity(self.dual, self.projection, "text", image_embed),
            (tokens["input_ids"], tokens["attention_mask"]),
            target,
            method="integrated_gradients",
            n_steps=IG_STEPS,
            embedding_layer=self.embedding_layer,
            keep_token_ids=[
                int(self.dual.tokenizer.hf.cls_token_id),
                int(self.dual.tokenizer.hf.sep_token_id),
            ],
        )
        assert image_result.heatmap is not None and text_result.token_scores is not None
        heatmap = image_result.heatmap[0].detach().to(torch.float64).numpy()
        png, peak = heatmap_overlay_png(heatmap, image_result.signed)
        token_scores = text_result.token_scores[0].detach().to(torch.float64).numpy()
        score = float((image_embed * text_embed).sum())
        return Explained(
            png, peak, image_result.signed, _word_spans(word_ids, offsets, token_scores), truncated, score
        )


def _word_spans(
    word_ids: list[int | None], offsets: list[tuple[int, int]], scores: np.ndarray
) -> list[tuple[int, int, float]]:
    """(start, end, score) per word of the original text: word pieces summed, special tokens left out."""
    spans: dict[int, list[float]] = {}
    for word, (start, end), score in zip(word_ids, offsets, scores.tolist(), strict=True):
        if word is None or end <= start:
            continue
        if word in spans:
            span = spans[word]
            span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + score
        else:
            spans[word] = [start, end, score]
    return [(int(s), int(e), float(v)) for s, e, v in sorted(spans.values())]


def heatmap_overlay_png(heatmap: np.ndarray, signed: bool) -> tuple[bytes, float]:
    """An RGBA PNG of ``heatmap`` for laying over the image, and the colour scale's end (max |value|).

    Colours as :mod:`radlens.explain.render` (blue–white–red for signed maps, inferno otherwise); the
    alpha channel grows with |relevance|, so irrelevant regions leave the radiograph visible.
    """
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    cmap, norm = colour_mapping(values, signed)
    rgba = np.asarray(cmap(norm(values)), dtype=np.float64)
    peak = float(np.abs(values).max()) if values.size else 0.0
    strength = np.abs(values) / peak if peak > 0 else np.zeros_like(values)
    rgba[..., 3] = np.clip(strength, 0.0, 1.0) ** 0.75
    image = Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), peak


def data_url(png: bytes) -> str:
    """``data:image/png;base64,...`` for a PNG."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
