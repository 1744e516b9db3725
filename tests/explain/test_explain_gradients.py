"""Gradient family: sensitivity, Taylor, SmoothGrad, integrated gradients (images and text) vs captum."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from explain_models import ImageTextModel, TextClassifier, small_vgg
from torch import nn

from radlens.explain import explain
from radlens.explain.methods._common import gaussian_blur, resolve_baseline


def _grad(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad


def test_gradient_and_sensitivity_sum_to_the_squared_gradient_norm(
    vgg64: nn.Module, images64: torch.Tensor
) -> None:
    grad = _grad(vgg64, images64, 1)
    plain = explain(vgg64, images64, 1, "gradient")
    assert plain.attribution is not None and torch.allclose(plain.attribution, grad)
    sensitivity = explain(vgg64, images64, 1, "sensitivity")
    assert sensitivity.attribution is not None and not sensitivity.signed
    expected = grad.flatten(1).norm(dim=1) ** 2
    assert torch.allclose(sensitivity.attribution.flatten(1).sum(1), expected, rtol=1e-10)
    assert float(sensitivity.attribution.min()) >= 0


def test_taylor_of_bias_free_relu_network_at_zero_sums_to_output() -> None:
    model = small_vgg(seed=2, batch_norm=False, bias=False)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = explain(model, x, 2, "taylor", root=0.0)
    assert result.attribution is not None
    assert torch.allclose(result.attribution.flatten(1).sum(1), model(x)[:, 2], rtol=1e-9, atol=1e-12)
    # a root other than zero gives a different (first-order) decomposition
    shifted = explain(model, x, 2, "taylor", root="white")
    assert shifted.attribution is not None
    assert not torch.allclose(shifted.attribution, result.attribution)


def test_smoothgrad_of_a_linear_model_is_its_weights() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    result = explain(model, x, 1, "smoothgrad", n_samples=4, noise=0.5)
    assert result.attribution is not None
    assert torch.allclose(result.attribution, model[1].weight[1].view(1, 1, 4, 4).expand(2, -1, -1, -1))


def test_smoothgrad_is_reproducible_and_differs_from_the_gradient(
    vgg64: nn.Module, images64: torch.Tensor
) -> None:
    first = explain(vgg64, images64, 0, "smoothgrad", n_samples=4, seed=3)
    again = explain(vgg64, images64, 0, "smoothgrad", n_samples=4, seed=3)
    assert first.attribution is not None and again.attribution is not None
    assert torch.equal(first.attribution, again.attribution)
    assert not torch.allclose(first.attribution, _grad(vgg64, images64, 0))


class _Cube(nn.Module):
    """f(x) = Σ x³: its SmoothGrad, 3·mean((x + σz)²), grows with the noise level σ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(3).flatten(1).sum(1, keepdim=True)


def test_smoothgrad_noise_follows_each_images_own_range(vgg64: nn.Module, images64: torch.Tensor) -> None:
    # Noise is a fraction of each image's value range: an image scaled by c gets c times the noise,
    # so for f = Σ x³ its SmoothGrad is c² times the original's, whatever else is in the batch.
    x = torch.rand(1, 1, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pair = explain(_Cube(), torch.cat([x, 4 * x]), 0, "smoothgrad", n_samples=6, noise=0.5)
    assert pair.attribution is not None
    spans = [float(x.max() - x.min()), 4 * float(x.max() - x.min())]
    assert pair.diagnostics["noise_std"] == pytest.approx([0.5 * span for span in spans])
    torch.testing.assert_close(pair.attribution[1], 16 * pair.attribution[0], rtol=1e-9, atol=1e-12)
    # An image's map does not depend on the batch it comes in.
    images = torch.cat([images64, 0.2 * images64[:1]])
    batch = explain(vgg64, images, 0, "smoothgrad", n_samples=5, internal_batch_size=3, seed=7)
    assert batch.attribution is not None
    for item in range(images.shape[0]):
        alone = explain(
            vgg64, images[item : item + 1], 0, "smoothgrad", n_samples=5, internal_batch_size=3, seed=7
        )
        assert alone.attribution is not None
        torch.testing.assert_close(batch.attribution[item], alone.attribution[0], rtol=1e-9, atol=1e-12)


def test_smoothgrad_leaves_the_global_random_state_alone(vgg64: nn.Module, images64: torch.Tensor) -> None:
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    explain(vgg64, images64, 0, "smoothgrad", n_samples=3, seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_integrated_gradients_agrees_with_captum(vgg64: nn.Module, images64: torch.Tensor) -> None:
    baseline = torch.full_like(images64, 0.25)
    reference = IntegratedGradients(lambda x: vgg64(x)[:, 1]).attribute(
        images64, baselines=baseline, n_steps=24, method="riemann_trapezoid"
    )
    ours = explain(
        vgg64, images64, 1, "integrated_gradients", baseline=0.25, n_steps=24, integration="riemann_trapezoid"
    )
    assert ours.attribution is not None
    assert float((ours.attribution - reference).abs().max() / reference.abs().max()) <= 1e-4


def test_integrated_gradients_completeness_improves_with_steps(
    vgg64: nn.Module, images64: torch.Tensor
) -> None:
    errors = []
    for steps in (2, 8, 64):
        result = explain(
            vgg64, images64, 0, "integrated_gradients", n_steps=steps, integration="riemann_trapezoid"
        )
        assert result.attribution is not None
        with torch.no_grad():
            difference = vgg64(images64)[:, 0] - vgg64(torch.zeros_like(images64))[:, 0]
        gap = result.attribution.flatten(1).sum(1) - difference
        assert torch.allclose(
            gap.abs(), torch.tensor(result.diagnostics["completeness_error"], dtype=gap.dtype)
        )
        errors.append(float(gap.abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * errors[0]


def test_baselines_black_white_blur(images64: torch.Tensor) -> None:
    assert torch.equal(resolve_baseline("black", images64), torch.zeros_like(images64))
    assert torch.equal(resolve_baseline("white", images64), torch.ones_like(images64))
    blurred = resolve_baseline("blur", images64, blur_sigma=2.0)
    assert blurred.shape == images64.shape
    assert torch.allclose(blurred.mean(dim=(2, 3)), images64.mean(dim=(2, 3)), atol=0.05)
    assert float(blurred.std()) < 0.6 * float(images64.std())
    constant = torch.full((1, 1, 9, 9), 0.7, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(constant, 1.5), constant)


def test_text_integrated_gradients_through_the_embedding_layer() -> None:
    torch.manual_seed(0)
    model = TextClassifier().double().eval()
    ids = torch.tensor([[3, 7, 9, 2], [5, 5, 11, 0]])
    mask = (ids != 0).long()
    result = explain(model, (ids, mask), 1, "integrated_gradients", n_steps=64, pad_token_id=0)
    assert result.token_scores is not None and result.token_scores.shape == (2, 4)
    reference = LayerIntegratedGradients(lambda i, m: model(i, m)[:, 1], model.embed).attribute(
        ids, baselines=torch.zeros_like(ids), additional_forward_args=(mask,), n_steps=64
    )
    assert torch.allclose(result.layers["embed"], reference, rtol=1e-6, atol=1e-10)
    # completeness: token scores sum to f(ids) − f(PAD…PAD)
    with torch.no_grad():
        difference = model(ids, mask)[:, 1] - model(torch.zeros_like(ids), mask)[:, 1]
    gap = result.token_scores.sum(1) - difference
    assert float(gap.abs().max()) < 1e-3
    assert float(result.token_scores[1, 3]) == 0.0  # a PAD token equals its baseline: no attribution


def test_image_and_text_attributed_together() -> None:
    torch.manual_seed(1)
    model = ImageTextModel().double().eval()
    image = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    ids = torch.tensor([[4, 6, 8], [1, 2, 3]])
    result = explain(model, (image, ids), 0, "integrated_gradients", n_steps=48, keep_token_ids=[4])
    assert result.attribution is not None and result.attribution.shape == image.shape
    assert result.token_scores is not None and result.token_scores.shape == (2, 3)
    assert float(result.token_scores[0, 0]) == 0.0  # kept in the baseline, so it explains nothing
    assert max(result.diagnostics["completeness_error"]) < 1e-3
    assert max(result.diagnostics["text_completeness_error"]) < 1e-3


@pytest.mark.parametrize("method", ["gradient", "sensitivity", "smoothgrad", "occlusion"])
def test_image_methods_leave_text_inputs_alone(method: str) -> None:
    torch.manual_seed(2)
    model = ImageTextModel().double().eval()
    image = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    ids = torch.tensor([[4, 6, 8]])
    options = {"window": 4, "stride": 4} if method == "occlusion" else {}
    result = explain(model, (image, ids), 1, method, **options)
    assert result.attribution is not None and result.attribution.shape == image.shape
    assert result.heatmap is not None and result.heatmap.shape == (1, 8, 8)
