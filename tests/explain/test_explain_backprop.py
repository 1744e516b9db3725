"""Guided backprop and deconvnet (captum) against zennit's independent implementation; occlusion; actmax."""

from __future__ import annotations

import pytest
import torch
from explain_models import TinyMBConvNet, randomise_batchnorm, small_vgg
from torch import nn

from radlens.core import InputError
from radlens.explain import explain
from radlens.explain._zennit_compat import import_zennit


@pytest.mark.parametrize(
    ("method", "composite"), [("guided_backprop", "GuidedBackprop"), ("deconvnet", "DeconvNet")]
)
def test_modified_backprop_agrees_with_zennit(
    vgg64: nn.Module, images64: torch.Tensor, method: str, composite: str
) -> None:
    zennit = import_zennit()
    onehot = torch.zeros(2, 3, dtype=torch.float64)
    onehot[:, 1] = 1
    with zennit.attribution.Gradient(vgg64, getattr(zennit.composites, composite)()) as attributor:
        _, reference = attributor(images64.clone(), onehot)
    result = explain(vgg64, images64, 1, method)
    assert result.attribution is not None
    assert torch.allclose(result.attribution, reference, rtol=1e-9, atol=1e-14)
    plain = explain(vgg64, images64, 1, "gradient").attribution
    assert plain is not None and not torch.allclose(result.attribution, plain)


@pytest.mark.parametrize(
    ("method", "rule"), [("guided_backprop", "ReLUGuidedBackprop"), ("deconvnet", "ReLUDeconvNet")]
)
def test_modified_backprop_also_handles_relu6(method: str, rule: str) -> None:
    zennit = import_zennit()
    torch.manual_seed(3)
    model = randomise_batchnorm(TinyMBConvNet(), seed=3).double().eval()
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    onehot = torch.zeros(2, 3, dtype=torch.float64)
    onehot[:, 0] = 1
    composite = zennit.composites.LayerMapComposite(layer_map=[(nn.ReLU6, getattr(zennit.rules, rule)())])
    with zennit.attribution.Gradient(model, composite) as attributor:
        _, reference = attributor(x.clone(), onehot)
    result = explain(model, x, 0, method)
    assert result.attribution is not None
    assert torch.allclose(result.attribution, reference, rtol=1e-9, atol=1e-14)
    assert model.stem[2].inplace  # restored after the in-place ReLU6 was switched off


def test_modified_backprop_needs_relu_modules() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2), nn.Tanh()).double()
    with pytest.raises(InputError, match=r"nn\.ReLU / nn\.ReLU6"):
        explain(model, torch.rand(1, 1, 4, 4, dtype=torch.float64), 0, "guided_backprop")


def test_occlusion_of_a_linear_model_is_weight_times_input() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).double()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    weights = model[1].weight[0].detach().view(1, 1, 6, 6)
    single = explain(model, x, 0, "occlusion", window=1, stride=1)
    assert single.attribution is not None and torch.allclose(single.attribution, weights * x)
    blocks = explain(model, x, 0, "occlusion", window=3, stride=3)
    assert blocks.attribution is not None
    per_block = (weights * x).unfold(2, 3, 3).unfold(3, 3, 3).sum(dim=(-1, -2))
    expected = per_block.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)
    assert torch.allclose(blocks.attribution, expected)
    with pytest.raises(InputError, match="larger than"):
        explain(model, x, 0, "occlusion", window=7)


def test_activation_maximisation_raises_the_class_log_probability(vgg64: nn.Module) -> None:
    shape = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    result = explain(vgg64, shape, 2, "activation_maximisation", n_steps=30, lr=0.1, l2=1e-3)
    assert result.attribution is not None and result.attribution.shape == shape.shape
    start, end = result.diagnostics["log_p_start"][0], result.diagnostics["log_p_end"][0]
    assert end > start + 0.1
    logits = vgg64(result.attribution)
    assert torch.allclose(
        torch.nn.functional.logsigmoid(logits[:, 2]), torch.tensor([end], dtype=torch.float64)
    )
    # a larger weight on ‖x‖² yields a smaller image
    small = explain(vgg64, shape, 2, "activation_maximisation", n_steps=30, lr=0.1, l2=1.0)
    assert small.attribution is not None and small.attribution.norm() < result.attribution.norm()


def test_activation_maximisation_leaves_the_models_gradients_alone() -> None:
    # A model mid-training: some parameters hold gradients of the user's loss, others none yet.
    model = small_vgg()
    held = {name: torch.full_like(p, 0.25) for name, p in model.named_parameters() if "head" in name}
    for name, param in model.named_parameters():
        param.grad = held[name].clone() if name in held else None
    shape = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    result = explain(model, shape, 1, "activation_maximisation", n_steps=5, lr=0.1)
    assert result.diagnostics["log_p_end"][0] > result.diagnostics["log_p_start"][0]
    for name, param in model.named_parameters():
        if name in held:
            assert param.grad is not None and torch.equal(param.grad, held[name]), name
        else:
            assert param.grad is None, name
