"""The web app's explanations of a (text, image) match: word scores that add up, word spans that follow
the text as typed, frozen image towers, and the overlay PNG."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from radlens.data.images import load_image
from radlens.data.transforms import ResizePolicy, resize
from radlens.web._explain import MatchExplainer, _Similarity, heatmap_overlay_png


@pytest.fixture(scope="module")
def pixels(retriever: Any) -> np.ndarray:
    path = retriever.image_path(retriever.index.rows[1]["image_id"])
    return resize(load_image(path), ResizePolicy(mode="square", size=retriever.embedder.image_size))


@pytest.fixture(scope="module")
def explainer(retriever: Any) -> MatchExplainer:
    return MatchExplainer(retriever.embedder)


def test_word_scores_add_up_to_the_similarity_gained_over_the_pad_baseline(
    explainer: MatchExplainer, pixels: np.ndarray
) -> None:
    text = "Large right pleural effusion, no pneumothorax."
    result = explainer.explain(text, pixels, "gradcam_pp")
    tokens, _, _, _ = explainer._encode(text)
    hf = explainer.dual.tokenizer.hf
    ids = tokens["input_ids"]
    keep = (ids == hf.cls_token_id) | (ids == hf.sep_token_id)
    baseline = torch.where(keep, ids, torch.full_like(ids, hf.pad_token_id))
    image = torch.from_numpy(pixels)[None, None]
    with torch.no_grad():
        image_embed = explainer.dual.encode_image(image)
        text_model = _Similarity(explainer.dual, None, "text", image_embed)
        gained = float(
            text_model(ids, tokens["attention_mask"]) - text_model(baseline, tokens["attention_mask"])
        )
    total = sum(score for _, _, score in result.words)
    assert total == pytest.approx(gained, rel=0.05, abs=2e-3)  # integrated gradients' completeness
    with torch.no_grad():
        similarity = float(text_model(ids, tokens["attention_mask"]))
    assert result.score == pytest.approx(similarity, abs=1e-5)


def test_word_spans_are_the_words_as_typed(explainer: MatchExplainer, pixels: np.ndarray) -> None:
    text = "Bilateral  PNEUMOTHORACES;\tcardiomegaly (mild)."
    result = explainer.explain(text, pixels, "gradcam")
    words = [text[start:end] for start, end, _ in result.words]
    # The tokenizer splits punctuation off and lower-cases; the spans keep the original characters.
    assert words == ["Bilateral", "PNEUMOTHORACES", ";", "cardiomegaly", "(", "mild", ")", "."]
    assert all(np.isfinite(score) for _, _, score in result.words)


def test_grad_cam_works_on_a_frozen_image_tower(retriever: Any, pixels: np.ndarray) -> None:
    embedder = copy.copy(retriever.embedder)
    embedder.dual = copy.deepcopy(retriever.embedder.dual)
    embedder.dual.image_tower.requires_grad_(False)  # e.g. trainable_image_stages: 0
    result = MatchExplainer(embedder).explain("left pleural effusion", pixels, "gradcam")
    overlay = np.asarray(Image.open(io.BytesIO(result.heatmap_png)))
    assert overlay.shape == (*pixels.shape, 4)
    assert result.heatmap_max > 0 and overlay[..., 3].max() == 255


def test_overlay_alpha_follows_relevance_and_colours_follow_the_sign() -> None:
    heatmap = np.zeros((8, 8))
    heatmap[1, 1], heatmap[6, 6], heatmap[3, 3] = 2.0, -1.0, 0.5
    png, peak = heatmap_overlay_png(heatmap, signed=True)
    rgba = np.asarray(Image.open(io.BytesIO(png)))
    assert peak == 2.0
    assert rgba[1, 1, 3] == 255 and rgba[0, 0, 3] == 0  # strongest opaque, zero transparent
    assert 0 < rgba[3, 3, 3] < rgba[6, 6, 3] < 255  # |0.5| < |-1| < |2|
    assert rgba[1, 1, 0] > rgba[1, 1, 2]  # positive: red
    assert rgba[6, 6, 2] > rgba[6, 6, 0]  # negative: blue
    flat, flat_peak = heatmap_overlay_png(np.zeros((8, 8)), signed=False)
    assert flat_peak == 0 and np.asarray(Image.open(io.BytesIO(flat)))[..., 3].max() == 0
