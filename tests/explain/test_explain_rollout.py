"""Attention rollout: identity, hand computation, discarding, mapping to patches and tokens, CNN refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from radlens.core import InputError
from radlens.explain import TokenLayout, explain
from radlens.explain.methods.rollout import rollout


class GivenAttention(nn.Module):
    """Returns fixed attention matrices beside its logits (stands in for a transformer's attentions)."""

    def __init__(self, attentions: list[torch.Tensor]) -> None:
        super().__init__()
        self.attentions = attentions
        self.head = nn.Linear(1, 2, dtype=torch.float64)

    def forward(self, image: torch.Tensor, *others: Any) -> dict[str, Any]:
        return {"logits": self.head(image.mean(dim=(1, 2, 3)).unsqueeze(1)), "attentions": self.attentions}


def _random_attention(batch: int, heads: int, tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).softmax(-1)


def test_identity_attention_rolls_out_to_identity() -> None:
    eye = torch.eye(5, dtype=torch.float64).expand(2, 3, 5, 5)
    model = GivenAttention([eye, eye, eye])
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for fusion in ("mean", "max", "min"):
        result = explain(model, x, 0, "attention_rollout", head_fusion=fusion, discard_ratio=0.5)
        assert torch.equal(result.layers["rollout"], torch.eye(5, dtype=torch.float64).expand(2, 5, 5))
        assert result.heatmap is not None and result.heatmap.shape == (2, 8, 8)
        assert float(result.heatmap.abs().max()) == 0.0  # CLS only attends to itself


def _hand_rollout(layers: list[np.ndarray], fusion: str) -> np.ndarray:
    result = np.eye(layers[0].shape[-1])
    for attention in layers:
        fused = {"mean": attention.mean(0), "max": attention.max(0), "min": attention.min(0)}[fusion]
        mixed = 0.5 * fused + 0.5 * np.eye(len(fused))
        for row in range(len(mixed)):
            mixed[row] = mixed[row] / mixed[row].sum()
        result = mixed @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_hand_computation(fusion: str) -> None:
    layers = [_random_attention(1, 3, 5, seed) for seed in range(3)]
    expected = _hand_rollout([layer[0].numpy() for layer in layers], fusion)
    got = rollout(layers, head_fusion=fusion)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(got[0].sum(-1).numpy(), np.ones(5), rtol=1e-12)


def test_discard_zeroes_the_lowest_but_never_the_cls_row_or_column() -> None:
    attention = _random_attention(2, 1, 4, seed=4)
    got = rollout([attention], head_fusion="mean", discard_ratio=0.25, cls_index=0)
    for b in range(2):
        fused = attention[b, 0].clone()
        candidates = [(float(fused[i, j]), i, j) for i in range(1, 4) for j in range(1, 4)]
        for _, i, j in sorted(candidates)[:4]:  # int(16 · 0.25) = 4 lowest outside the CLS row/column
            fused[i, j] = 0
        mixed = (fused + torch.eye(4, dtype=fused.dtype)) / 2
        assert torch.allclose(got[b], mixed / mixed.sum(-1, keepdim=True))


def test_rollout_maps_to_image_patches_and_text_tokens() -> None:
    # layout: [CLS, 3 text tokens, 2×2 image patches]; CLS attends mostly to patch (row 1, col 0) and word 2
    attention = torch.full((1, 1, 8, 8), 0.01, dtype=torch.float64)
    attention[0, 0, 0, 1 + 3 + 2] = 1.0
    attention[0, 0, 0, 2] = 0.5
    attention = attention / attention.sum(-1, keepdim=True)
    layout = TokenLayout(cls_index=0, text=(1, 4), image=(4, 8), grid=(2, 2))
    model = GivenAttention([attention])
    image, ids = torch.rand(1, 1, 16, 16, dtype=torch.float64), torch.tensor([[5, 6, 7]])
    result = explain(model, (image, ids), 0, "attention_rollout", token_layout=layout)
    assert result.token_scores is not None and int(result.token_scores[0].argmax()) == 1
    assert result.heatmap is not None
    row, col = divmod(int(result.layers["patch_grid"][0, 0].argmax()), 2)
    assert (row, col) == (1, 0)
    assert float(result.heatmap[0, 12, 2]) > float(result.heatmap[0, 2, 12])  # bottom-left is hot


@dataclass
class FusionLikeOutput:
    """Describes its sequence like radlens's fusion model: text first, then image CLS, then patches."""

    logits: torch.Tensor
    attentions: list[torch.Tensor]
    text_len: int
    image_grid: tuple[int, int]

    @property
    def image_start(self) -> int:
        return self.text_len + 1


def test_layout_is_read_from_the_model_output() -> None:
    # sequence: 3 text tokens (CLS first), image CLS, 1×4 patches; CLS attends to text 2 and patch (0, 3)
    attention = torch.full((1, 1, 8, 8), 0.01, dtype=torch.float64)
    attention[0, 0, 0, 2] = 0.6
    attention[0, 0, 0, 4 + 3] = 1.0
    attention = attention / attention.sum(-1, keepdim=True)

    class Fusion(nn.Module):
        def forward(self, ids: torch.Tensor, image: torch.Tensor) -> FusionLikeOutput:
            return FusionLikeOutput(image.mean(dim=(1, 2)), [attention], text_len=3, image_grid=(1, 4))

    ids, image = torch.tensor([[1, 5, 6]]), torch.rand(1, 1, 4, 16, dtype=torch.float64)
    result = explain(Fusion(), (ids, image), 0, "attention_rollout")
    assert result.token_scores is not None and result.token_scores.shape == (1, 3)
    assert int(result.token_scores[0, 1:].argmax()) == 1  # text position 2, aligned with the ids
    assert int(result.layers["patch_grid"][0, 0, 0].argmax()) == 3
    assert result.heatmap is not None and int(result.heatmap[0, 2].argmax()) >= 12


def test_attentions_can_come_from_a_callable() -> None:
    layers = [_random_attention(1, 2, 5, seed) for seed in (7, 8)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).double()
    result = explain(
        model,
        torch.rand(1, 1, 8, 8, dtype=torch.float64),
        0,
        "attention_rollout",
        attentions=lambda x: layers,
    )
    assert torch.allclose(result.layers["rollout"], rollout(layers))


def test_rollout_on_a_cnn_is_a_clear_error(vgg64: nn.Module, images64: torch.Tensor) -> None:
    with pytest.raises(InputError, match="attention matrices") as info:
        explain(vgg64, images64, 0, "attention_rollout")
    assert info.value.hint is not None and "gradcam" in info.value.hint
