"""Grad-CAM / Grad-CAM++ against closed-form hand computation, localisation, and transformer token grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from explain_models import QuadrantNet
from torch import nn

from radlens.core import InputError
from radlens.explain import TokenLayout, explain
from radlens.explain.methods.cam import default_layer


class ConvPoolLinear(nn.Module):
    """conv → ReLU → global average pool → linear: ∂score/∂A_k is w_ck / (h·w) at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_gradcam_matches_closed_form() -> None:
    torch.manual_seed(0)
    model = ConvPoolLinear().double()
    x = torch.rand(2, 1, 6, 10, dtype=torch.float64)
    activations = model.relu(model.conv(x)).detach()
    area = activations.shape[2] * activations.shape[3]
    grads = model.head.weight[1].detach().view(1, 5, 1, 1).expand_as(activations) / area

    weights = grads.mean(dim=(2, 3))  # Grad-CAM: = w_1k / area
    expected = torch.relu((weights[:, :, None, None] * activations).sum(1))
    result = explain(model, x, 1, "gradcam", layer="relu")
    assert torch.allclose(result.layers["relu"][:, 0], expected, rtol=1e-10)
    assert result.heatmap is not None and result.heatmap.shape == (2, 6, 10)

    # Grad-CAM++ with constant gradients g_k: α = g² / (2g² + ΣA·g³), weight_k = Σ_ij α·relu(g_k)
    g = grads[:, :, 0, 0]
    summed = activations.sum(dim=(2, 3))
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + summed * g**3 + 1e-7), torch.zeros_like(g))
    plus_weights = area * alpha * torch.relu(g)
    expected_pp = torch.relu((plus_weights[:, :, None, None] * activations).sum(1))
    result_pp = explain(model, x, 1, "gradcam_pp", layer="relu")
    assert torch.allclose(result_pp.layers["relu"][:, 0], expected_pp, rtol=1e-8)

    # The same maps when the layers up to "relu" are frozen (no graph reaches the activations).
    model.conv.requires_grad_(False)
    frozen = explain(model, x, 1, "gradcam", layer="relu")
    assert torch.allclose(frozen.layers["relu"][:, 0], expected, rtol=1e-10)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp"])
def test_gradcam_finds_the_only_quadrant_the_model_sees(method: str) -> None:
    torch.manual_seed(1)
    model = QuadrantNet(height=12, width=20).double()
    x = torch.rand(3, 1, 12, 20, dtype=torch.float64)
    result = explain(model, x, 0, method, layer="relu2")
    assert result.heatmap is not None
    for heatmap in result.heatmap:
        row, col = divmod(int(heatmap.argmax()), heatmap.shape[1])
        assert row < 6 and col >= 10, (row, col)
        assert float(heatmap[8:, :8].max()) == 0.0  # far from the quadrant nothing lights up


class TinyViT(nn.Module):
    """Patchify (4×4) → CLS + position → one encoder block; the head reads a single patch token."""

    def __init__(self, focus: int) -> None:
        super().__init__()
        self.focus = focus
        self.patch_embed = nn.Conv2d(1, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList(
            [nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True) for _ in range(2)]
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens[:, self.focus])


def test_gradcam_on_transformer_tokens_drops_cls_and_keeps_grid_order() -> None:
    torch.manual_seed(2)
    model = TinyViT(focus=1 + 6).double().eval()  # patch (row 1, col 2) of a 2×4 grid
    x = torch.rand(2, 1, 8, 16, dtype=torch.float64)
    assert default_layer(model) == "blocks.1"
    captured = {}
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    score = model(x)[:, 0]
    handle.remove()
    tokens = captured["tokens"]
    (grads,) = torch.autograd.grad(score.sum(), tokens)
    # by hand: token 1 + r·4 + c is patch (r, c); the CLS token (0) is not a patch
    cam = torch.zeros(2, 2, 4, dtype=torch.float64)
    for b in range(2):
        weights = grads[b, 1:].mean(0)
        for r in range(2):
            for c in range(4):
                cam[b, r, c] = torch.relu((weights * tokens[b, 1 + r * 4 + c]).sum())
    result = explain(model, x, 0, "gradcam", layer="blocks.0")
    assert result.diagnostics["token_grid"] == (2, 4)
    assert torch.allclose(result.layers["blocks.0"][:, 0], cam.detach(), rtol=1e-9)
    upsampled = F.interpolate(cam.detach().unsqueeze(1), size=(8, 16), mode="bilinear", align_corners=False)
    assert result.attribution is not None and torch.allclose(result.attribution, upsampled, rtol=1e-9)
    # an explicit layout gives the same answer
    layout = TokenLayout(cls_index=0, image=(1, 9), grid=(2, 4))
    again = explain(model, x, 0, "gradcam", layer="blocks.0", token_layout=layout)
    assert torch.allclose(again.layers["blocks.0"], result.layers["blocks.0"])


def test_default_layer_and_bad_layer_names(vgg64: nn.Module, images64: torch.Tensor) -> None:
    result = explain(vgg64, images64, 0)  # gradcam at the model's cam_layer
    assert result.diagnostics["layer"] == "features.relu2_1"
    assert default_layer(QuadrantNet()) == "conv2"
    with pytest.raises(InputError, match=r"no module named 'features\.relu9'") as info:
        explain(vgg64, images64, 0, "gradcam", layer="features.relu9")
    assert info.value.hint is not None and "features.relu" in info.value.hint

    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.left, self.right = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.right(x)  # computed but unused, e.g. an auxiliary branch
            return self.left(x).mean(dim=(2, 3))

    with pytest.raises(InputError, match="does not depend on layer 'right'"):
        explain(TwoBranch(), torch.rand(1, 1, 8, 8), 0, "gradcam", layer="right")
