"""LRP: agreement with zennit and with hand computation, conservation, bias absorption, linearity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_models import TinyMBConvNet, randomise_batchnorm, small_vgg
from torch import nn

from radlens.core import InputError
from radlens.explain import ClassTarget, ScoreTarget, explain
from radlens.explain._zennit_compat import import_zennit
from radlens.explain.methods.lrp import fold_batchnorm, model_structure

TIGHT = {"epsilon": 1e-12, "stabilizer": 1e-12}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_epsilon_agrees_with_zennit_epsilon_composite(vgg64: nn.Module, images64: torch.Tensor) -> None:
    zennit = import_zennit()
    rules, types = zennit.rules, zennit.types
    composite = zennit.composites.LayerMapComposite(
        layer_map=[
            (types.Activation, rules.Pass()),
            (types.AvgPool, rules.Norm()),
            (types.BatchNorm, rules.Pass()),
            (types.Convolution, rules.Epsilon(epsilon=1e-3)),
            (nn.Linear, rules.Epsilon(epsilon=1e-3)),
        ],
        canonizers=[zennit.canonizers.SequentialMergeBatchNorm()],
    )
    onehot = torch.zeros(2, 3, dtype=torch.float64)
    onehot[:, 2] = 1
    with zennit.attribution.Gradient(vgg64, composite) as attributor:
        _, reference = attributor(images64.clone(), lambda out: out * onehot)
    ours = explain(vgg64, images64, 2, "lrp_epsilon", epsilon=1e-3)
    assert ours.attribution is not None
    assert _relative(ours.attribution, reference) <= 1e-4
    # zennit leaves its hooks off afterwards and so do we: the plain gradient is unchanged
    x = images64.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(vgg64(x)[:, 2].sum(), x)
    assert _relative(grad, explain(vgg64, images64, 2, "gradient").attribution) < 1e-12  # type: ignore[arg-type]


def _two_layer(w1: np.ndarray, w2: np.ndarray) -> nn.Module:
    first = nn.Linear(w1.shape[1], w1.shape[0], bias=False, dtype=torch.float64)
    second = nn.Linear(w2.shape[1], w2.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(w1))
        second.weight.copy_(torch.from_numpy(w2))
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)


def _hand_epsilon(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, target: int, eps: float) -> np.ndarray:
    """LRP-ε written out neuron by neuron: R_i = Σ_j x_i w_ji / (z_j + ε sign z_j) R_j."""
    h = np.maximum(w1 @ x, 0)
    z_out = w2 @ h
    r_out = np.zeros_like(z_out)
    r_out[target] = z_out[target]
    r_hidden = np.zeros_like(h)
    for j in range(len(h)):
        for k in range(len(z_out)):
            r_hidden[j] += h[j] * w2[k, j] / (z_out[k] + eps * np.sign(z_out[k])) * r_out[k]
    z_hidden = w1 @ x
    r_in = np.zeros_like(x)
    for i in range(len(x)):
        for j in range(len(h)):
            denominator = z_hidden[j] + eps * (1.0 if z_hidden[j] >= 0 else -1.0)
            r_in[i] += x[i] * w1[j, i] / denominator * r_hidden[j]
    return r_in


def test_epsilon_matches_hand_computation() -> None:
    # Worked by hand: h = relu([-1, 4, 1]) = [0, 4, 1], y = 4·2 − 1 = 7;
    # R_h = [0, 8, −1]; R_x = 8·(2/4, 2/4) + (−1)·(−1/1, 2/1) = (5, 2), and 5 + 2 = 7.
    w1 = np.array([[1.0, -1.0], [2.0, 1.0], [-1.0, 1.0]])
    w2 = np.array([[1.0, 2.0, -1.0]])
    model = _two_layer(w1, w2)
    result = explain(model, torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64), 0, "lrp_epsilon", **TIGHT)
    assert result.attribution is not None
    np.testing.assert_allclose(result.attribution.reshape(-1).numpy(), [5.0, 2.0], atol=1e-9)
    # and random weights against the neuron-by-neuron formula with a real ε
    rng = np.random.default_rng(0)
    w1, w2, x = rng.normal(size=(5, 4)), rng.normal(size=(3, 5)), rng.normal(size=4)
    result = explain(_two_layer(w1, w2), torch.from_numpy(x).view(1, 1, 1, 4), 1, "lrp_epsilon", epsilon=0.1)
    assert result.attribution is not None
    np.testing.assert_allclose(
        result.attribution.reshape(-1).numpy(), _hand_epsilon(x, w1, w2, 1, 0.1), rtol=1e-9
    )


def test_zplus_relevance_is_non_negative(vgg64: nn.Module, images64: torch.Tensor) -> None:
    logits = vgg64(images64)
    target = int(logits.min(0).values.argmax())
    assert bool((logits[:, target] > 0).all())
    result = explain(vgg64, images64, target, "lrp_zplus")
    assert result.attribution is not None
    assert float(result.attribution.min()) >= 0.0 and float(result.attribution.max()) > 0.0
    assert all(float(r.min()) >= 0 for r in result.layers.values())
    # α=1, β=0 is z⁺ by definition; α=2, β=1 is not and produces negative relevance
    same = explain(vgg64, images64, target, "lrp_alphabeta", alpha=1.0, beta=0.0)
    assert same.attribution is not None and torch.allclose(same.attribution, result.attribution, rtol=1e-10)
    signed = explain(vgg64, images64, target, "lrp_alphabeta", alpha=2.0, beta=1.0)
    assert signed.attribution is not None and float(signed.attribution.min()) < 0


def test_batchnorm_folding_leaves_outputs_unchanged() -> None:
    model = small_vgg(dtype=torch.float32, seed=3, widths=(8, 16, 16), convs_per_stage=2)
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(2))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
        structure = model_structure(model, (x,), 0)
        assert len(structure.pairs) == 6 and not structure.unpaired
        with fold_batchnorm(model, structure.pairs):
            folded = model(x)
            norm = model.features.bn1_1
            assert torch.equal(norm(x.expand(-1, 8, -1, -1)), x.expand(-1, 8, -1, -1))  # BN is now identity
        assert float((folded - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_batchnorm_after_a_branching_layer_is_not_folded() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.norm = nn.BatchNorm2d(2)
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x)
            return self.head((self.norm(features) + features).mean(dim=(2, 3)))

    model = randomise_batchnorm(Branching()).eval()
    structure = model_structure(model, (torch.rand(1, 1, 8, 8),), 0)
    assert structure.pairs == [] and structure.unpaired == ["norm"]


def test_conservation_is_exact_without_biases() -> None:
    model = small_vgg(seed=4, bias=False)
    randomise_batchnorm(model, seed=4, zero_shift=True)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = explain(model, x, 1, "lrp_epsilon", **TIGHT)
    assert result.attribution is not None and result.scores is not None
    error = (result.attribution.flatten(1).sum(1) - result.scores).abs() / result.scores.abs()
    assert float(error.max()) < 1e-5
    assert max(result.diagnostics["conservation_error"]) < 1e-5


def test_residual_network_conserves_relevance() -> None:
    torch.manual_seed(6)
    model = randomise_batchnorm(TinyMBConvNet(), seed=6, zero_shift=True).double().eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = model(x)
    result = explain(model, x, 0, "lrp_epsilon", **TIGHT)
    assert result.attribution is not None and result.scores is not None
    assert torch.allclose(result.scores, expected[:, 0])
    error = (result.attribution.flatten(1).sum(1) - result.scores).abs() / result.scores.abs()
    assert float(error.max()) < 1e-5
    assert result.diagnostics["residual_additions"] == 2
    assert result.diagnostics["sum_reductions"] == 1
    assert len(result.diagnostics["folded_batchnorm"]) == 7
    # the model's in-place ReLU6 and eval/train state are restored
    assert model.stem[2].inplace and not model.training


def test_bias_absorption_is_reported_per_layer(vgg64: nn.Module, images64: torch.Tensor) -> None:
    result = explain(vgg64, images64, 0, "lrp_epsilon", **TIGHT)
    assert result.attribution is not None
    absorbed = result.diagnostics["absorbed"]
    assert {"head", "features.conv1_1", "features.conv2_1"} <= set(absorbed)
    leak = np.array(result.diagnostics["explained_relevance"]) - result.attribution.flatten(1).sum(1).numpy()
    np.testing.assert_allclose(
        np.sum([absorbed[name] for name in absorbed], axis=0), leak, rtol=1e-6, atol=1e-12
    )
    assert np.abs(leak).max() > 1e-3  # the folded BatchNorm shifts are real biases
    # at the top layer, LRP-ε loses exactly R_c · b_c / z_c = b_c for the explained class c
    head_bias = float(vgg64.head.bias.detach()[0])
    np.testing.assert_allclose(absorbed["head"], [head_bias, head_bias], rtol=1e-6)


def test_lrp_is_linear_in_the_initial_relevance(vgg64: nn.Module, images64: torch.Tensor) -> None:
    first = explain(vgg64, images64, 0, "lrp_epsilon").attribution
    second = explain(vgg64, images64, 1, "lrp_epsilon").attribution
    both = explain(vgg64, images64, ScoreTarget(lambda out: out[:, 0] + out[:, 1]), "lrp_epsilon").attribution
    doubled = explain(vgg64, images64, ScoreTarget(lambda out: 2 * out[:, 1]), "lrp_epsilon").attribution
    assert first is not None and second is not None and both is not None and doubled is not None
    assert torch.allclose(both, first + second, rtol=1e-9, atol=1e-15)
    assert torch.allclose(doubled, 2 * second, rtol=1e-9, atol=1e-15)


def test_layerwise_rules_and_per_layer_relevance(vgg64: nn.Module, images64: torch.Tensor) -> None:
    result = explain(
        vgg64, images64, ClassTarget(2), "lrp_epsilon", rules={"features.*": "zplus"}, input_rule="flat"
    )
    assert result.diagnostics["rules"] == {
        "features.conv1_1": "flat",
        "features.conv2_1": "zplus",
        "head": "epsilon",
    }
    preset = explain(vgg64, images64, 2, "lrp_epsilon", rules="epsilon_plus_flat")
    assert preset.attribution is not None and result.attribution is not None
    assert torch.allclose(preset.attribution, result.attribution)
    # relevance per layer has the layer's output shape
    features = vgg64.features(images64)
    assert result.layers["features.conv2_1"].shape == (2, 8, 8, 8)
    assert result.layers["head"].shape == (2, 3) and features.shape[1] == 8


def test_lrp_rejects_bad_alpha_beta_and_rules(vgg64: nn.Module, images64: torch.Tensor) -> None:
    with pytest.raises(InputError, match="alpha - beta = 1"):
        explain(vgg64, images64, 0, "lrp_alphabeta", alpha=2.0, beta=0.5)
    with pytest.raises(InputError, match="unknown LRP rule"):
        explain(vgg64, images64, 0, "lrp_epsilon", rules={"head": "magic"})
    with pytest.raises(InputError, match="preset"):
        explain(vgg64, images64, 0, "lrp_epsilon", rules="nonsense")
