"""Fusion model: output shapes, attentions for rollout, BERT 80/10/10 masking statistics, ViLT loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, ViltConfig, ViltForMaskedLM

from radlens.core import InputError
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import (
    FusionConfig,
    FusionModel,
    aligned_fusion_config,
    itm_loss,
    mask_tokens,
    mlm_loss,
)
from radlens.models.text_towers import load_tokenizer
from tiny_models import tiny_dual_config

TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process seen today"]


def _tiny(**changes: object) -> FusionModel:
    values: dict[str, object] = {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
        "max_text_length": 32,
    }
    values.update(changes)
    return FusionModel(FusionConfig.model_validate(values))


def test_output_shapes_and_sequence_layout() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    encoded = model.tokenize(TEXTS)
    out = model(encoded["input_ids"], encoded["attention_mask"], torch.rand(2, 1, 64, 96))
    length = encoded["input_ids"].shape[1]
    assert out.itm_logits.shape == (2, 2)
    assert out.mlm_logits is not None and out.mlm_logits.shape == (2, length, 30522)
    assert out.text_len == length and out.image_grid == (4, 6) and out.image_start == length + 1
    total = length + 1 + 4 * 6
    assert len(out.attentions) == 2 and out.last_hidden_state.shape == (2, total, 32)
    for attention in out.attentions:
        assert attention.shape == (2, 2, total, total)
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 2, total))
    # The shorter text is padded: no query may attend to its padding tokens.
    pad = encoded["attention_mask"][0] == 0
    assert pad.any() and out.attentions[0][0][..., :length][..., pad].max() < 1e-6
    with pytest.raises(InputError, match=r"image batch must be B×C×H×W, got shape \(1, 64, 96\)"):
        model(encoded["input_ids"][:1], encoded["attention_mask"][:1], torch.rand(1, 64, 96))


def test_itm_probability_and_skipping_mlm() -> None:
    model = _tiny().eval()
    encoded = model.tokenize(TEXTS)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        probability = model.itm_probability(encoded["input_ids"], encoded["attention_mask"], pixels)
        full = model(encoded["input_ids"], encoded["attention_mask"], pixels)
    torch.testing.assert_close(probability, full.itm_logits.softmax(-1)[:, 1])
    lean = model(
        encoded["input_ids"], encoded["attention_mask"], pixels, output_attentions=False, compute_mlm=False
    )
    assert lean.mlm_logits is None and lean.attentions == []
    mlm_only = model(encoded["input_ids"], encoded["attention_mask"], pixels, compute_itm=False)
    assert mlm_only.itm_logits is None and mlm_only.mlm_logits is not None


def test_fuse_on_image_features_and_mlm_at_chosen_positions_match_the_full_pass() -> None:
    torch.manual_seed(0)
    model = _tiny(image_source="small_cnn", cnn_width=32, cnn_depth=2, patch_size=8, in_channels=1).eval()
    encoded = model.tokenize(TEXTS)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    pixels = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 1], positions[1, 2], positions[1, 4] = True, True, True
    with torch.no_grad():
        full = model(ids, mask, pixels)
        image = model.image_features(pixels)
        fused = model.fuse(ids, mask, image)
        # one image reused for both texts (rows), and logits at 3 chosen positions only
        reused = model.fuse(ids, mask, image.rows(torch.tensor([1, 1])), mlm_positions=positions)
        alone = model(ids, mask, pixels[[1, 1]])
    assert image.cells.shape == (2, 8 * 8, 32) and image.grid == (8, 8)
    torch.testing.assert_close(fused.itm_logits, full.itm_logits)
    torch.testing.assert_close(fused.mlm_logits, full.mlm_logits)
    assert reused.mlm_logits is not None and alone.mlm_logits is not None
    assert reused.mlm_logits.shape == (3, 30522)
    torch.testing.assert_close(reused.mlm_logits, alone.mlm_logits[positions])
    torch.testing.assert_close(reused.itm_logits, alone.itm_logits)
    labels = torch.full_like(ids, -100)
    labels[positions] = torch.tensor([5, 6, 7])
    torch.testing.assert_close(
        mlm_loss(reused.mlm_logits, labels[positions]), mlm_loss(alone.mlm_logits, labels)
    )
    with pytest.raises(InputError, match="2 texts but 1 images"):
        model.fuse(ids, mask, image.rows(torch.tensor([0])))


def test_cnn_image_source_and_tied_decoder() -> None:
    model = _tiny(image_source="small_cnn", cnn_width=32, cnn_depth=2, patch_size=8, in_channels=1).eval()
    encoded = model.tokenize(TEXTS)
    out = model(encoded["input_ids"], encoded["attention_mask"], torch.rand(2, 1, 64, 64))
    assert out.image_grid == (8, 8)  # small_cnn with depth 2 has stride 8
    assert out.attentions[-1].shape[-1] == encoded["input_ids"].shape[1] + 1 + 64
    word_embeddings = model.vilt.embeddings.text_embeddings.word_embeddings.weight
    assert model.mlm_score.decoder.weight is word_embeddings


def test_embedding_image_features_in_chunks_matches_one_eval_pass_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = _tiny(image_source="small_cnn", cnn_width=32, cnn_depth=2, patch_size=8, in_channels=1)
    pixels = torch.rand(11, 1, 64, 64)  # more than the CPU chunk of 8: two chunks
    model.train()
    chunked = model.embed_image_features(pixels, batch_size=16)
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    with torch.no_grad():
        whole = model.image_features(pixels)
    assert chunked.grid == whole.grid == (8, 8)
    torch.testing.assert_close(chunked.cells, whole.cells, rtol=1e-5, atol=1e-6)


def test_position_embeddings_are_interpolated_for_other_grids() -> None:
    model = _tiny().eval()
    encoded = model.tokenize(TEXTS[:1])
    with torch.no_grad():
        out = model(encoded["input_ids"], encoded["attention_mask"], torch.full((1, 3, 128, 128), 0.5))
    assert out.image_grid == (8, 8)
    # Identical patches get different states because their (interpolated) positions differ.
    patches = out.last_hidden_state[0, out.image_start :]
    assert not torch.allclose(patches[0], patches[-1])


def test_mask_tokens_follows_bert_80_10_10() -> None:
    tokenizer = load_tokenizer()
    generator = torch.Generator().manual_seed(0)
    rows, length = 400, 100
    ids = torch.randint(1000, 30000, (rows, length), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.hf.cls_token_id, tokenizer.hf.sep_token_id
    ids[:, 80:-1] = tokenizer.pad_token_id
    masked, labels = mask_tokens(ids, tokenizer, prob=0.15, generator=generator)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = labels != -100
    assert not (chosen & special).any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    eligible = int((~special).sum())
    n = int(chosen.sum())
    assert abs(n / eligible - 0.15) < 4 * (0.15 * 0.85 / eligible) ** 0.5
    as_mask = (masked[chosen] == tokenizer.mask_token_id).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    replaced = 1.0 - as_mask - unchanged
    tolerance = 4 * (0.8 * 0.2 / n) ** 0.5
    assert abs(as_mask - 0.8) < tolerance
    assert abs(replaced - 0.1) < tolerance and abs(unchanged - 0.1) < tolerance
    random_words = masked[chosen & (masked != tokenizer.mask_token_id) & (masked != ids)]
    assert not torch.isin(random_words, torch.tensor(tokenizer.all_special_ids)).any()
    again, _ = mask_tokens(ids, tokenizer, generator=torch.Generator().manual_seed(5))
    same, _ = mask_tokens(ids, tokenizer, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, same)


def test_losses_match_cross_entropy_and_training_reduces_them() -> None:
    torch.manual_seed(0)
    model = _tiny(dropout=0.0, attention_dropout=0.0)
    tokenizer = model.tokenizer
    encoded = model.tokenize(TEXTS * 2)
    pixels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masked, labels = mask_tokens(
        encoded["input_ids"], tokenizer, prob=0.3, generator=torch.Generator().manual_seed(1)
    )
    match = torch.tensor([1, 1, 0, 0])
    out = model(masked, encoded["attention_mask"], pixels)
    assert out.mlm_logits is not None
    keep = labels != -100
    torch.testing.assert_close(
        mlm_loss(out.mlm_logits, labels), F.cross_entropy(out.mlm_logits[keep], labels[keep])
    )
    torch.testing.assert_close(itm_loss(out.itm_logits, match), F.cross_entropy(out.itm_logits, match))
    nothing = mlm_loss(out.mlm_logits, torch.full_like(labels, -100))
    assert nothing.item() == 0.0 and nothing.requires_grad
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        out = model(masked, encoded["attention_mask"], pixels, output_attentions=False)
        assert out.mlm_logits is not None
        losses = itm_loss(out.itm_logits, match), mlm_loss(out.mlm_logits, labels)
        optimizer.zero_grad()
        (losses[0] + losses[1]).backward()
        optimizer.step()
        history.append([value.item() for value in losses])
    assert history[-1][0] < 0.5 * history[0][0]  # ITM learns which pairs match
    assert history[-1][1] < 0.5 * history[0][1]  # MLM learns the masked words


def _save_tiny_vilt(folder: Path) -> ViltForMaskedLM:
    config = ViltConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        max_position_embeddings=40,
    )
    torch.manual_seed(0)
    source = ViltForMaskedLM(config).eval()
    source.save_pretrained(folder)
    return source


def test_from_vilt_reproduces_the_hugging_face_model(tmp_path: Path) -> None:
    source = _save_tiny_vilt(tmp_path / "vilt")
    model = FusionModel.from_vilt(tmp_path / "vilt").eval()
    assert model.config.hidden_size == 32 and model.config.max_text_length == 40
    encoded = model.tokenize(TEXTS)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        # ViLT's processor normalises pixels with mean 0.5, std 0.5; FusionModel takes [0, 1] pixels.
        expected = source(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            pixel_values=pixels * 2 - 1,
            output_attentions=True,
        )
        ours = model(encoded["input_ids"], encoded["attention_mask"], pixels)
    assert ours.mlm_logits is not None
    torch.testing.assert_close(ours.mlm_logits, expected.logits, atol=1e-5, rtol=1e-5)
    text = encoded["input_ids"].shape[1]
    # ViLT shuffles its patches, so only the text-to-text block of its attention is comparable.
    torch.testing.assert_close(
        ours.attentions[-1][..., :text, :text],
        expected.attentions[-1][..., :text, :text],
        atol=1e-5,
        rtol=1e-5,
    )


def test_from_vilt_refuses_other_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no config\.json"):
        FusionModel.from_vilt(tmp_path)
    (tmp_path / "bert").mkdir()
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match="not ViLT"):
        FusionModel.from_vilt(tmp_path / "bert")
    (tmp_path / "small").mkdir()
    ViltConfig(vocab_size=100).save_pretrained(tmp_path / "small")
    with pytest.raises(InputError, match="vocabulary"):
        FusionModel.from_vilt(tmp_path / "small")
    assert json.loads((tmp_path / "small" / "config.json").read_text())["model_type"] == "vilt"


def _tiny_dual() -> DualEncoder:
    torch.manual_seed(3)
    config = tiny_dual_config()
    return DualEncoder(config).eval()


def _aligned(dual: DualEncoder) -> FusionModel:
    fusion = FusionConfig.model_validate(
        {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "patch_size": 8}
    )
    model = FusionModel(aligned_fusion_config(fusion, dual.config))
    model.load_aligner(dual)
    return model


def test_aligned_fusion_adds_the_dual_encoders_cosine_to_the_related_logit() -> None:
    dual = _tiny_dual()
    model = _aligned(dual).eval()
    assert model.config.image_source == "small_cnn" and model.config.max_text_length == 32
    with torch.no_grad():
        model.alignment_scale.fill_(7.0)
        model.alignment_threshold.fill_(0.25)
    pixels = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    encoded = model.tokenize(TEXTS)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        expected = dual.similarity(pixels, {"input_ids": ids, "attention_mask": mask}).diagonal()
        similarity = model.aligned_similarity(ids, mask, pixels)
        out = model(ids, mask, pixels, output_attentions=False, compute_mlm=False)
        head = model.itm_score(
            out.last_hidden_state[:, 0].new_tensor(0) + model.vilt.pooler(out.last_hidden_state)
        )
    torch.testing.assert_close(similarity, expected)  # the aligner is the dual encoder, exactly
    assert out.itm_logits is not None
    torch.testing.assert_close(out.itm_logits[:, 0], head[:, 0])
    torch.testing.assert_close(out.itm_logits[:, 1], head[:, 1] + 7.0 * (expected - 0.25))


def test_calibration_is_the_equal_variance_gaussian_logit() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    model = _aligned(_tiny_dual())
    rng = torch.Generator().manual_seed(1)
    positive = 0.45 + 0.1 * torch.randn(200, generator=rng)
    negative = 0.15 + 0.1 * torch.randn(300, generator=rng)
    model.calibrate_alignment(positive, negative)
    values = torch.cat([positive, negative]).double()
    classes = torch.cat([torch.ones(200), torch.zeros(300)]).numpy()
    lda = LinearDiscriminantAnalysis(priors=[0.5, 0.5]).fit(values[:, None].numpy(), classes)
    ours = model.alignment_scale.detach().double() * (values - model.alignment_threshold.detach().double())
    np.testing.assert_allclose(
        ours.numpy(), lda.decision_function(values[:, None].numpy()), rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="at least 2"):
        model.calibrate_alignment(positive[:1], negative)


def test_training_an_aligned_model_leaves_the_dual_encoder_frozen() -> None:
    dual = _tiny_dual()
    model = _aligned(dual)
    frozen = {
        name: value.clone()
        for name, value in model.state_dict().items()
        if name.startswith(
            ("image_tower.", "aligner_text_tower.", "aligner_image_projection.", "aligner_text_projection.")
        )
    }
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = model.alignment_scale.item(), model.feature_projection.weight.clone()
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    encoded = model.tokenize(TEXTS)
    pixels = torch.rand(2, 1, 64, 64)
    model.train()
    for _ in range(3):
        out = model(encoded["input_ids"], encoded["attention_mask"], pixels, output_attentions=False)
        assert out.itm_logits is not None
        optimizer.zero_grad()
        itm_loss(out.itm_logits, torch.tensor([1, 0])).backward()
        optimizer.step()
    for name, value in model.state_dict().items():
        if name in frozen:
            torch.testing.assert_close(value, frozen[name], msg=name)
    assert not any(stage.training for stage in model.image_tower.stages())  # fixed BatchNorm statistics
    assert model.alignment_scale.item() != before[0]
    assert not torch.equal(model.feature_projection.weight, before[1])


def test_aligned_fusion_refuses_mismatched_configs() -> None:
    dual = _tiny_dual()
    fusion = FusionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="takes image_source and image_size from its dual encoder"):
        FusionConfig.model_validate({**fusion.model_dump(), "aligner": dual.config.model_dump()})
    other = DualEncoder(dual.config.model_copy(update={"embed_dim": 8}))
    with pytest.raises(InputError, match="differs"):
        _aligned(dual).load_aligner(other)
    vit = dual.config.model_copy(update={"image_tower": "small_vit", "patch_size": 16})
    with pytest.raises(InputError, match="CNN image tower"):
        aligned_fusion_config(fusion, vit)
    with pytest.raises(InputError, match="no aligner"):
        _tiny().load_aligner(dual)
