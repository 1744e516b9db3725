"""Dual encoder: unit-norm embeddings, learnable clamped temperature, InfoNCE that can be minimised."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radlens.core import InputError
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig, contrastive_loss
from tiny_models import tiny_dual_config

TEXTS = [
    "small left pleural effusion",
    "no acute cardiopulmonary process",
    "right upper lobe consolidation",
    "enlarged cardiac silhouette",
]


def _tiny_config(**changes: object) -> DualEncoderConfig:
    return tiny_dual_config(**({"image_size": 32, "max_length": 16} | changes))


def _batch(model: DualEncoder, size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    encoded = model.tokenize(TEXTS[:size])
    return {"pixel_values": torch.rand(size, 1, 32, 32, generator=generator), **encoded}


def test_embeddings_are_unit_norm_and_logits_are_scaled_cosines() -> None:
    torch.manual_seed(0)
    model = DualEncoder(_tiny_config())
    batch = _batch(model)
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert out.image_embeds.shape == out.text_embeds.shape == (4, 16)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(4))
    expected = out.image_embeds @ out.text_embeds.t() / 0.07
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, expected.t())


def test_loss_decreases_when_overfitting_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = DualEncoder(_tiny_config())
    batch = _batch(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():  # still in train mode: BatchNorm running statistics lag after 15 steps
        out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert torch.equal(out.logits_per_image.argmax(dim=1), torch.arange(4))


def test_temperature_is_learnable_and_clamped_at_100() -> None:
    model = DualEncoder(_tiny_config())
    assert model.temperature == pytest.approx(0.07)
    batch = _batch(model)
    model.loss(batch).backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.scale().item() == pytest.approx(100.0)
    assert model.temperature == pytest.approx(0.01)
    fixed = DualEncoder(_tiny_config(learn_temperature=False))
    assert not fixed.logit_scale.requires_grad


def test_group_ids_make_duplicate_reports_positives() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    distinct = torch.arange(5)
    torch.testing.assert_close(contrastive_loss(logits, distinct), contrastive_loss(logits))
    # Items 0 and 1 share a report and the model scores them equally: grouped InfoNCE is at its optimum
    # for that pair (no push apart), plain InfoNCE still pushes image 0 away from text 1.
    logits = (torch.eye(5) * 5).requires_grad_(True)
    with torch.no_grad():
        logits[0, 1] = logits[1, 0] = 5.0
    groups = torch.tensor([7, 7, 1, 2, 3])
    (grouped_grad,) = torch.autograd.grad(contrastive_loss(logits, groups), logits)
    (plain_grad,) = torch.autograd.grad(contrastive_loss(logits), logits)
    assert abs(grouped_grad[0, 1].item()) < 0.01 < plain_grad[0, 1].item()
    row0 = F.log_softmax(logits.detach()[0], 0)
    rows = [-0.5 * (row0[0] + row0[1])] * 2 + [-F.log_softmax(logits.detach()[i], 0)[i] for i in range(2, 5)]
    expected = torch.stack(rows).mean()  # the logits are symmetric, so both directions agree
    torch.testing.assert_close(contrastive_loss(logits.detach(), groups), expected)


def test_label_aware_targets_pull_same_finding_studies_together() -> None:
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    codes = torch.tensor([5, 5, 0, 3, -1, -1])  # 0 and 1 share a label set; 4 and 5 are unlabelled
    # Weight 0 is CLIP's loss, whatever the codes.
    torch.testing.assert_close(contrastive_loss(logits, None, codes, 0.0), contrastive_loss(logits))
    # Reference: the soft-target cross-entropy written out row by row.
    w = 0.4
    target = torch.eye(6)
    target[0] = torch.tensor([1 - w / 2, w / 2, 0, 0, 0, 0])
    target[1] = torch.tensor([w / 2, 1 - w / 2, 0, 0, 0, 0])
    expected = (
        -(target * F.log_softmax(logits, 1)).sum(1).mean()
        - (target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    ) / 2
    torch.testing.assert_close(contrastive_loss(logits, None, codes, w), expected)
    # The gradient on the pair (image 0, text 1): plain InfoNCE pushes it apart, label-aware pulls it in.
    scores = (torch.eye(6) * 4).requires_grad_(True)
    (aware,) = torch.autograd.grad(contrastive_loss(scores, None, codes, 0.5), scores)
    (plain,) = torch.autograd.grad(contrastive_loss(scores), scores)
    assert plain[0, 1] > 0 > aware[0, 1]
    # Unlabelled studies (-1) are not one label set: the pair (4, 5) is pushed apart as in plain InfoNCE.
    torch.testing.assert_close(aware[4, 5], plain[4, 5])
    with pytest.raises(ValueError, match="label_set_weight"):
        contrastive_loss(logits, None, codes, 1.0)


def test_model_loss_uses_its_label_set_weight() -> None:
    plain = DualEncoder(_tiny_config())
    aware = DualEncoder(_tiny_config(label_set_weight=0.5))
    aware.load_state_dict(plain.state_dict())
    batch = {**_batch(plain), "label_codes": torch.zeros(4, dtype=torch.long)}  # one label set
    plain.eval()
    aware.eval()
    with torch.no_grad():
        logits = plain(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).logits_per_image
        torch.testing.assert_close(plain.loss(batch), contrastive_loss(logits))
        torch.testing.assert_close(
            aware.loss(batch), contrastive_loss(logits, None, batch["label_codes"], 0.5)
        )


def test_freezing_leaves_only_the_top_and_projections_trainable() -> None:
    model = DualEncoder(_tiny_config(trainable_image_stages=1, trainable_text_stages=0))
    model.loss(_batch(model)).backward()
    image_stages = model.image_tower.stages()
    assert all(p.grad is None for p in image_stages[0].parameters())
    assert all(p.grad is not None for p in image_stages[-1].parameters())
    assert all(p.grad is None for p in model.text_tower.parameters())
    assert model.text_projection.weight.grad is not None and model.image_projection.weight.grad is not None


def test_batched_embedding_matches_one_pass_and_restores_mode() -> None:
    model = DualEncoder(_tiny_config()).train()
    batch = _batch(model)
    images = model.embed_images(batch["pixel_values"], batch_size=3)
    model.image_tower.eval()  # mixed modes (a frozen tower in eval mode while training): each is kept
    modes = {name: module.training for name, module in model.named_modules()}
    texts, truncated = model.embed_texts([*TEXTS, "x " * 40], batch_size=3)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert model.training and not model.image_tower.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(images, model.encode_image(batch["pixel_values"]))
        torch.testing.assert_close(texts[:4], model.encode_text(batch["input_ids"], batch["attention_mask"]))
    assert truncated.tolist() == [False, False, False, False, True]
    similarity = model.similarity(batch["pixel_values"], TEXTS)
    torch.testing.assert_close(similarity, images @ texts[:4].t())


def test_mismatched_batch_and_config_round_trip() -> None:
    model = DualEncoder(_tiny_config())
    batch = _batch(model)
    with pytest.raises(InputError, match="one text per image"):
        model(batch["pixel_values"][:3], batch["input_ids"], batch["attention_mask"])
    config = _tiny_config(image_tower="small_vit", patch_size=8, image_heads=2)
    assert DualEncoderConfig.from_yaml(config.to_yaml()) == config
    # pretrained applies only to towers with published weights
    assert _tiny_config(pretrained=True).image_tower_config().pretrained is False
    assert DualEncoderConfig().image_tower_config().use_pretrained is True
