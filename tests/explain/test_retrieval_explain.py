"""Explaining the dual encoder (image regions, words) and the fusion model (ITM logit, rollout)."""

from __future__ import annotations

import pytest
import torch

from radlens.core import InputError
from radlens.explain.retrieval_targets import (
    FixedTextFusion,
    FusionMatch,
    ImageSimilarity,
    embed_text,
    explain_fusion_match,
    explain_image_match,
    explain_text_match,
)
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import FusionConfig, FusionModel
from tiny_models import tiny_dual_config

TEXTS = ["small left pleural effusion", "no pneumothorax"]


@pytest.fixture(scope="module")
def dual() -> DualEncoder:
    torch.manual_seed(0)
    config = tiny_dual_config(image_size=32, max_length=16)
    return DualEncoder(config).eval()


@pytest.fixture(scope="module")
def fusion() -> FusionModel:
    torch.manual_seed(0)
    config = FusionConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        max_text_length=32,
    )
    return FusionModel(config).eval()


def test_image_similarity_is_the_models_cosine(dual: DualEncoder) -> None:
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    wrapper = ImageSimilarity(dual, embed_text(dual, TEXTS[:1])[0])
    expected = dual.similarity(images, TEXTS[:1])[:, 0]
    torch.testing.assert_close(wrapper(images)[:, 0], expected)
    assert wrapper.cam_layer == "model.image_tower.layers"


def test_image_heatmaps_for_a_text(dual: DualEncoder) -> None:
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    ig = explain_image_match(dual, images, TEXTS[0], method="integrated_gradients", n_steps=128)
    assert ig.heatmap is not None and ig.heatmap.shape == (2, 32, 32)
    # Completeness: the pixel attributions add up to cos(x, t) - cos(black, t).
    assert max(ig.diagnostics["completeness_relative"]) < 0.05
    torch.testing.assert_close(ig.scores, dual.similarity(images, TEXTS[:1])[:, 0])
    cam = explain_image_match(dual, images, TEXTS[0], method="gradcam")
    assert cam.heatmap is not None and cam.diagnostics["layer"] == "model.image_tower.layers"
    assert "effusion" not in cam.target and "effusion" not in str(cam.provenance())  # no text in provenance


def test_word_scores_complete_and_skip_special_tokens(dual: DualEncoder) -> None:
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    result = explain_text_match(dual, image, TEXTS, n_steps=64)
    e = result.explanation
    assert e.token_scores is not None
    assert max(e.diagnostics["text_completeness_relative"]) < 0.05
    first = result.words[0]
    assert first.words == ["small", "left", "pleural", "effusion"]  # pieces joined, [CLS]/[SEP] left out
    assert first.tokens[0] == "[CLS]" and first.token_scores[0] == 0.0  # kept in the baseline: no attribution
    pieces = [
        score
        for token, score in zip(first.tokens, first.token_scores, strict=True)
        if token not in ("[CLS]", "[SEP]", "[PAD]")
    ]
    assert sum(first.scores) == pytest.approx(sum(pieces), abs=1e-6)
    second = result.words[1]
    pads = [s for t, s in zip(second.tokens, second.token_scores, strict=True) if t == "[PAD]"]
    assert pads and all(s == 0.0 for s in pads)
    with pytest.raises(InputError):
        explain_text_match(dual, torch.rand(3, 1, 32, 32), TEXTS)


def test_fusion_integrated_gradients_explains_image_and_text(fusion: FusionModel) -> None:
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    result = explain_fusion_match(fusion, images, TEXTS, method="integrated_gradients", n_steps=48)
    e = result.explanation
    assert e.heatmap is not None and e.heatmap.shape == (2, 64, 64)
    assert e.token_scores is not None and e.token_scores.shape[0] == 2
    assert max(e.diagnostics["completeness_relative"]) < 0.1
    assert max(e.diagnostics["text_completeness_relative"]) < 0.1
    encoded = fusion.tokenize(TEXTS)
    with torch.no_grad():
        itm = fusion(encoded["input_ids"], encoded["attention_mask"], images).itm_logits[:, 1]
    torch.testing.assert_close(e.scores, itm)
    assert result.words[0].words == ["small", "left", "pleural", "effusion"]


def test_fusion_rollout_maps_the_cls_flow_to_patches_and_tokens(fusion: FusionModel) -> None:
    images = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    result = explain_fusion_match(fusion, images, TEXTS, method="attention_rollout")
    e, layout = result.explanation, result.layout
    assert layout.grid == (4, 4) and layout.image is not None and layout.text is not None
    text_len = layout.text[1]
    assert layout.image == (text_len + 1, text_len + 17)
    flow = e.layers["rollout"][:, 0]  # the [CLS] row
    torch.testing.assert_close(flow.sum(-1), torch.ones(2))
    assert e.token_scores is not None and e.heatmap is not None
    torch.testing.assert_close(e.token_scores, flow[:, :text_len])
    torch.testing.assert_close(e.layers["patch_grid"].flatten(1), flow[:, text_len + 1 :])
    # Padding receives no attention, so no flow.
    pad = fusion.tokenize(TEXTS)["attention_mask"][1] == 0
    assert pad.any() and float(e.token_scores[1][pad].abs().max()) < 1e-6


def test_fixed_text_fusion_matches_the_full_model(fusion: FusionModel) -> None:
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    fixed = FixedTextFusion(fusion, TEXTS[0], 64)
    encoded = fusion.tokenize([TEXTS[0]] * 2)
    with torch.no_grad():
        expected = FusionMatch(fusion)(images, encoded["input_ids"], encoded["attention_mask"]).itm_logits
        torch.testing.assert_close(fixed(images).itm_logits, expected)
    assert fixed.token_layout.grid == (4, 4)
    assert fixed.cam_layer == "model.vilt.encoder.layer.1.layernorm_before"


def test_default_gradcam_layer_of_a_patch_fusion_model_sees_the_patches(fusion: FusionModel) -> None:
    from radlens.explain import explain
    from radlens.explain.retrieval_targets import ITM_RELATED

    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(8))
    fixed = FixedTextFusion(fusion, "small left pleural effusion", 64)
    layout = fixed.token_layout
    default = explain(fixed, images, ITM_RELATED, method="gradcam", token_layout=layout).heatmap
    assert default is not None and bool((default.abs().sum(dim=(1, 2)) > 0).all())
    # After the last layer only [CLS] reaches the ITM head: the patches' gradients there are zero.
    last = explain(
        fixed, images, ITM_RELATED, method="gradcam", layer="model.vilt.encoder.layer.1", token_layout=layout
    ).heatmap
    assert last is not None and float(last.abs().max()) == 0.0


def test_dual_encoder_subject_scores_the_finding_prompt(dual: DualEncoder) -> None:
    from radlens.explain._eval_data import subject_for

    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    subject = subject_for(dual, "dual_encoder", "Pleural Effusion", 32)
    expected = dual.similarity(images, ["there is pleural effusion."])[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(subject.probability(images), expected)


def test_rollout_ignores_the_itm_head_so_randomising_the_head_fails_it(fusion: FusionModel) -> None:
    from radlens.explain import explain
    from radlens.explain._eval_data import subject_for
    from radlens.explain.evaluate import cascading_randomisation

    subject = subject_for(fusion, "fusion", "Cardiomegaly", 64)
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(7))

    def maps(model: torch.nn.Module, method: str) -> torch.Tensor:
        options = subject.defaults.get(method, {})
        heatmap = explain(model, images, subject.target, method=method, **options).heatmap
        assert heatmap is not None
        return heatmap

    rollout = cascading_randomisation(subject.model, images, lambda m: maps(m, "attention_rollout"), layers=2)
    assert rollout.layers == ["model.itm_score", "model.vilt.pooler.dense"]
    assert rollout.spearman == pytest.approx([1.0, 1.0]) and not rollout.passed  # class-agnostic by design
    gradient = cascading_randomisation(subject.model, images, lambda m: maps(m, "gradient"), layers=2)
    assert gradient.passed
