"""Pieces of the retrieval task: frozen-feature training equals the full model, balanced ITM batches,
and the metric stage on a toy clustered set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import TINY_DUAL, TINY_FUSION

from radlens.data.dataset import ImageReportDataset
from radlens.data.labeler import identical_label_sets
from radlens.data.readers import read_dataset
from radlens.data.transforms import ResizePolicy
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.models.fusion import FusionConfig, FusionModel, aligned_fusion_config
from radlens.models.text_towers import load_tokenizer
from radlens.train.frozen import FrozenFeatureDualEncoder, collate_features, precompute_fusion_features
from radlens.train.loop import TrainConfig, Trainer
from radlens.train.metric import (
    EmbeddingDataset,
    MetricLearner,
    MetricProjection,
    MetricProjectionConfig,
    MetricStageConfig,
    base_embeddings,
    label_precision_at_k,
    label_set_ids,
)
from radlens.train.negatives import NegativeSampler
from radlens.train.retrieval import DualCollator, FusionITM, ITMCollator, ITMPairs, validate_fusion


@pytest.fixture(scope="module")
def studies(phantom: Path) -> ImageReportDataset:
    records = [record for record in read_dataset(phantom, "mimic").records if record.split == "train"]
    return ImageReportDataset(records, ResizePolicy(size=32), channels=1, mean=0.0, std=1.0, seed=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frozen_features_give_the_full_models_loss(studies: ImageReportDataset, mode: str) -> None:
    torch.manual_seed(0)
    config = DualEncoderConfig.model_validate(
        {**TINY_DUAL, "trainable_image_stages": 1, "trainable_text_stages": 1, "label_set_weight": 0.5}
    )
    model = DualEncoder(config)
    wrapper = FrozenFeatureDualEncoder(model)
    assert (wrapper.image_frozen, wrapper.text_frozen) == (2, 2)  # stem + stage 1; embeddings + layer 1
    features = wrapper.precompute(studies, batch_size=5)
    codes = [features[i]["label_code"] for i in range(len(features))]
    twin = next(j for j in range(1, len(codes)) if codes[j] in codes[:j])  # two studies, one label set
    indices = [3, 0, 7, 12, 5, 9]
    indices = [
        *[i for i in indices if i not in (twin, codes.index(codes[twin]))][:4],
        twin,
        codes.index(codes[twin]),
    ]
    full_batch = DualCollator(model.tokenizer, config.max_length)([studies[i] for i in indices])
    cached_batch = collate_features([features[i] for i in indices])
    # Both paths carry the studies' label sets (the label-aware targets), and some of them coincide.
    assert torch.equal(cached_batch["label_codes"], full_batch["label_codes"])
    assert len(set(full_batch["label_codes"].tolist())) < len(indices)
    model.train(mode == "train")
    torch.manual_seed(1)
    full = model.loss(full_batch)
    torch.manual_seed(1)  # same dropout masks in the trainable top layer
    cached = wrapper.loss(cached_batch)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    full.backward()
    tail = model.text_projection.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    wrapper.loss(cached_batch).backward()
    torch.testing.assert_close(model.text_projection.weight.grad, tail, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_precomputed_aligner_outputs_give_the_full_fusion_loss(
    studies: ImageReportDataset, mode: str
) -> None:
    """A fusion step on precomputed aligner outputs is the full model's step: same loss, same gradients."""
    torch.manual_seed(0)
    dual = DualEncoder(DualEncoderConfig.model_validate(TINY_DUAL))
    model = FusionModel(aligned_fusion_config(FusionConfig.model_validate(TINY_FUSION), dual.config))
    model.load_aligner(dual)
    labels = [item.record.labels for item in studies.items]
    texts = [item.record.report_text() for item in studies.items]
    features = precompute_fusion_features(model, studies, texts, batch_size=5)
    assert features.cells.shape[:2] == (len(studies), features.grid[0] * features.grid[1])
    sampler, collator = NegativeSampler(labels, "R"), ITMCollator(model.tokenizer, 48)
    indices = [3, 0, 7, 12, 5, 9]
    full_batch = collator([ITMPairs(studies, texts, sampler, seed=1)[i] for i in indices])
    cached_batch = collator([ITMPairs(features, texts, sampler, seed=1)[i] for i in indices])
    assert "pixel_values" in full_batch and "image_cells" in cached_batch
    torch.testing.assert_close(cached_batch["input_ids"], full_batch["input_ids"])
    full_step, cached_step = FusionITM(model, 0.3), FusionITM(model, 0.3, features)
    model.train(mode == "train")
    results = []
    for step, batch in ((full_step, full_batch), (cached_step, cached_batch)):
        torch.manual_seed(1)  # same masking and dropout draws
        model.zero_grad()
        losses = step.loss(batch)
        losses["loss"].backward()
        results.append((losses, model.feature_projection.weight.grad.clone()))
    (full, full_grad), (cached, cached_grad) = results
    assert full["mlm_loss"] > 0 and full["itm_loss"] > 0
    for key in ("loss", "itm_loss", "mlm_loss", "itm_accuracy"):
        torch.testing.assert_close(cached[key], full[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_fusion_validation_scores_each_study_against_its_report_and_a_seeded_negative(
    studies: ImageReportDataset,
) -> None:
    """validate_fusion's ITM numbers, recomputed pair by pair with the model's plain forward pass."""
    torch.manual_seed(0)
    dual = DualEncoder(DualEncoderConfig.model_validate(TINY_DUAL))
    model = FusionModel(aligned_fusion_config(FusionConfig.model_validate(TINY_FUSION), dual.config))
    model.load_aligner(dual)
    model.train()
    # Batches of 16 cross the CPU image chunk of 8: chunked image features must not change the scores.
    result = validate_fusion(model, studies, "NI", seed=5, batch_size=16, mlm_probability=0.15)
    assert model.training  # the caller's mode is restored
    sampler = NegativeSampler([item.record.labels for item in studies.items], "NI")
    texts = [item.record.report_text() for item in studies.items]
    correct, losses = 0, []
    model.eval()
    with torch.no_grad():
        for i in range(len(studies)):
            negative = sampler.sample(i, np.random.default_rng([5, 0, i]))[0]
            encoded = model.tokenize([texts[i], texts[negative]])
            pixels = studies[i]["image"][None].expand(2, -1, -1, -1)
            logits = model(
                encoded["input_ids"], encoded["attention_mask"], pixels, output_attentions=False
            ).itm_logits
            assert logits is not None
            targets = torch.tensor([1, 0])
            correct += int((logits.argmax(dim=-1) == targets).sum())
            losses.append(float(F.cross_entropy(logits, targets, reduction="sum")))
    assert result["studies"] == len(studies) and result["negatives"] == "NI"
    assert result["itm_accuracy"] == pytest.approx(correct / (2 * len(studies)))
    assert result["itm_loss"] == pytest.approx(sum(losses) / (2 * len(studies)), rel=1e-4)
    assert result["mlm_accuracy"] is not None and 0.0 <= result["mlm_accuracy"] <= 1.0


def test_itm_batches_are_balanced_and_negatives_follow_the_strategy(studies: ImageReportDataset) -> None:
    labels = [item.record.labels for item in studies.items]
    texts = [item.record.report_text() for item in studies.items]
    pairs = ITMPairs(studies, texts, NegativeSampler(labels, "NE"), seed=3)
    collator = ITMCollator(load_tokenizer(), 48)
    for epoch, indices in enumerate(([0, 4, 2, 9, 1, 7], [5, 6, 3, 8, 10, 11, 12, 13])):
        pairs.set_epoch(epoch)
        items = [pairs[i] for i in indices]
        batch = collator(items)
        assert int(batch["itm_labels"].sum()) * 2 == len(indices)  # exactly half matched
        for row, (index, item) in enumerate(zip(indices, items, strict=True)):
            text = item["text"] if batch["itm_labels"][row] == 1 else item["negative_text"]
            expected = collator.tokenizer.encode([text], 48)["input_ids"][0]
            assert torch.equal(batch["input_ids"][row][: len(expected)], expected)
            negative = next(
                j
                for j, other in enumerate(studies.items)
                if other.record.report_text() == item["negative_text"]
            )
            assert not item["negative_fallback"]
            assert not identical_label_sets(labels[index], labels[negative])
            assert texts[int(batch["text_index"][row])] == text  # whose report the row holds
    again = ITMPairs(studies, texts, NegativeSampler(labels, "NE"), seed=3)
    again.set_epoch(1)
    assert again[5]["negative_text"] == pairs[5]["negative_text"]  # deterministic under the seed


def _clustered(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class signal in 4 of 32 dims, swamped by noise in the other 28."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, 4, generator=generator) * 2.0
    signal = centres[labels] + 0.3 * torch.randn(n, 4, generator=generator)
    noise = 2.0 * torch.randn(n, 28, generator=generator)
    return torch.cat([signal, noise], dim=1), labels


def test_metric_stage_learns_the_label_structure(tmp_path: Path) -> None:
    train_x, train_y = _clustered(240, 6, seed=0)
    test_x, test_y = _clustered(120, 6, seed=1)
    stage = MetricStageConfig(out_dim=8)
    torch.manual_seed(0)
    projection = MetricProjection(MetricProjectionConfig(in_dim=32, out_dim=8))
    config = TrainConfig(lr=0.02, weight_decay=0.0, max_steps=80, batch_size=60, warmup_steps=5, seed=0)
    before = label_precision_at_k(projection(test_x).detach(), test_y, 5)
    learner, data = MetricLearner(projection, stage), EmbeddingDataset(train_x, train_y)
    result = Trainer(learner, data, config, tmp_path, save_model=projection).fit()
    after = label_precision_at_k(projection(test_x).detach(), test_y, 5)
    losses = [row["loss"] for row in result.records]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert after > before + 0.3 and after > 0.8, (before, after)
    assert label_precision_at_k(test_x, test_y, 5) < 0.65  # the raw space is really noisy


def test_unlabelled_studies_have_an_unknown_label_set_not_the_empty_one() -> None:
    """All-blank label rows get class -1 (as ``label_set_codes`` gives them), not the class of studies
    with no positive label, and are never counted as queries of label precision."""
    nan = float("nan")
    rows = np.full((4, 14), nan)
    rows[0, 2] = 1.0  # positive for label 2
    rows[1, [0, 8]] = [0.0, -1.0]  # labelled, nothing positive: the empty set
    rows[3, [1, 2]] = 1.0
    assert label_set_ids(rows).tolist() == [4, 0, -1, 6]
    assert label_set_ids(torch.tensor(rows, dtype=torch.float32)).tolist() == [4, 0, -1, 6]
    # two unlabelled studies next to each other: with their own class they would score 1
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    classes = torch.tensor([-1, -1, 5, 7])
    assert np.isnan(label_precision_at_k(embeddings, classes, 1))
    assert label_precision_at_k(embeddings, torch.tensor([-1, -1, 5, 5]), 1) == 1.0
    assert label_precision_at_k(embeddings, torch.tensor([-1, 5, -1, 5]), 1) == 0.0
    assert np.isnan(label_precision_at_k(embeddings[:1], classes[:1], 5))


def test_base_embeddings_are_each_studys_own_eval_mode_embeddings(studies: ImageReportDataset) -> None:
    """The metric stage's inputs: a dual encoder's image and text embeddings, or a fusion model's pooled
    [CLS] of each study's own pair, each recomputed study by study in eval mode, with the caller's mode
    restored (batch 4 over 13+ studies crosses batch boundaries and a partial last batch)."""
    torch.manual_seed(0)
    dual = DualEncoder(DualEncoderConfig.model_validate(TINY_DUAL)).train()
    images, texts, labels = base_embeddings(dual, studies, batch_size=4)
    assert dual.training and all(module.training for module in dual.modules())
    assert texts is not None and len(images) == len(texts) == len(labels) == len(studies)
    dual.eval()
    for i in (0, 5, len(studies) - 1):
        item = studies[i]
        encoded = dual.tokenize([item["text"]])
        with torch.no_grad():
            image = dual.encode_image(item["image"][None])[0]
            text = dual.encode_text(encoded["input_ids"], encoded["attention_mask"])[0]
        torch.testing.assert_close(images[i], image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(texts[i], text, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(labels[i], item["labels"], equal_nan=True)

    fusion = FusionModel(FusionConfig.model_validate(TINY_FUSION)).train()
    cls, no_texts, _ = base_embeddings(fusion, studies, batch_size=4)
    assert no_texts is None and cls.shape == (len(studies), TINY_FUSION["hidden_size"])
    assert fusion.training and all(module.training for module in fusion.modules())
    fusion.eval()
    for i in (1, len(studies) - 1):
        item = studies[i]
        encoded = fusion.tokenize([item["text"]])
        with torch.no_grad():
            out = fusion(encoded["input_ids"], encoded["attention_mask"], item["image"][None])
            expected = fusion.vilt.pooler(out.last_hidden_state)[0]
        torch.testing.assert_close(cls[i], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cls[0], cls[1])  # different pairs, different [CLS]
