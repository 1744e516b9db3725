"""The explain() call: bad input, options, targets, provenance, model state."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from explain_models import small_vgg
from torch import nn

from radlens.core import InputError
from radlens.explain import (
    METHODS,
    ClassTarget,
    PixelSetTarget,
    PixelTarget,
    ScoreTarget,
    explain,
)
from radlens.explain._zennit_compat import import_zennit
from radlens.explain.api import _model_fingerprint
from radlens.models import model_fingerprint


def test_target_index_out_of_range(vgg64: nn.Module, images64: torch.Tensor) -> None:
    for method in ("gradcam", "gradient", "lrp_epsilon", "integrated_gradients"):
        with pytest.raises(
            InputError, match="class index 3 is out of range for a model with 3 outputs"
        ) as info:
            explain(vgg64, images64, 3, method)
        assert info.value.hint == "pass an index between 0 and 2"


def test_unknown_method_and_options_name_what_to_pass(vgg64: nn.Module, images64: torch.Tensor) -> None:
    with pytest.raises(InputError, match="unknown explanation method 'gradcamm'") as info:
        explain(vgg64, images64, 0, "gradcamm")
    assert info.value.hint is not None and "did you mean 'gradcam'" in info.value.hint
    with pytest.raises(InputError, match="unknown option 'nsteps'") as info:
        explain(vgg64, images64, 0, "integrated_gradients", nsteps=4)
    assert info.value.hint is not None and "'n_steps'" in info.value.hint
    with pytest.raises(InputError, match="unknown option 'layer' for method 'gradient'") as info:
        explain(vgg64, images64, 0, "gradient", layer="features.conv1_1")
    assert info.value.hint == "valid options: none"
    with pytest.raises(InputError, match="head_fusion='median'") as info:
        explain(vgg64, images64, 0, "attention_rollout", head_fusion="median")
    assert info.value.hint is not None and "'mean', 'max', 'min'" in info.value.hint
    with pytest.raises(InputError, match="n_steps=0"):
        explain(vgg64, images64, 0, "integrated_gradients", n_steps=0)


def test_non_finite_and_shapeless_inputs(vgg64: nn.Module, images64: torch.Tensor) -> None:
    broken = images64.clone()
    broken[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite") as info:
        explain(vgg64, broken, 0, "gradient")
    assert info.value.hint is not None and "nan_to_num" in info.value.hint
    broken[0, 0, 3, 3] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        explain(vgg64, broken, 0, "lrp_epsilon")
    with pytest.raises(InputError, match="no image") as info:
        explain(vgg64, images64[0], 0, "gradient")
    assert info.value.hint is not None and "unsqueeze(0)" in info.value.hint


def test_methods_that_need_an_image_refuse_text_only_inputs() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    ids = torch.tensor([[1, 2, 3]])
    for method in ("gradcam", "lrp_epsilon", "gradient"):
        with pytest.raises(InputError, match="image") as info:
            explain(model, ids, 0, method)
        assert info.value.hint is not None and "integrated_gradients" in info.value.hint


def test_targets_by_label_and_custom_scores(vgg64: nn.Module, images64: torch.Tensor) -> None:
    by_label = explain(vgg64, images64, "c", "gradient")
    by_index = explain(vgg64, images64, ClassTarget(2), "gradient")
    assert by_label.target == "class logit 2 (c)"
    assert by_label.attribution is not None and by_index.attribution is not None
    assert torch.equal(by_label.attribution, by_index.attribution)
    with pytest.raises(InputError, match="unknown class label 'z'"):
        explain(vgg64, images64, "z", "gradient")
    custom = explain(vgg64, images64, ScoreTarget(lambda out: out[:, 2] - out[:, 0], "c minus a"), "gradient")
    assert custom.target == "c minus a" and custom.scores is not None
    assert torch.allclose(custom.scores, (vgg64(images64)[:, 2] - vgg64(images64)[:, 0]).detach())
    with pytest.raises(InputError, match="one score per batch item"):
        explain(vgg64, images64, ScoreTarget(lambda out: out), "gradient")


class EmbedAndScore(nn.Module):
    """Returns its embeddings beside the similarity computed from them (as a dual encoder does)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False, dtype=torch.float64))
        self.query = nn.Parameter(torch.randn(4, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = self.embed(x)
        return {"embeddings": embeddings, "similarity": embeddings @ self.query}


def test_lrp_of_a_similarity_to_a_fixed_query_starts_once_and_conserves() -> None:
    torch.manual_seed(4)
    model = EmbedAndScore()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    result = explain(model, x, ScoreTarget(lambda out: out["similarity"]), "lrp_epsilon", epsilon=1e-12)
    similarity = model(x)["similarity"].detach()
    assert result.diagnostics["explained_relevance"] == pytest.approx(similarity.tolist())
    # relevance starts on the similarity only (not again on the embeddings it was computed from), and
    # embeddings @ query (a constant) gets the ε rule, so it is conserved down to the pixels
    assert max(result.diagnostics["conservation_error"]) < 1e-9
    assert result.diagnostics["constant_products"] == 1


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(("row", "col"), [(-1, 0), (0, -8), (8, 0), (0, 8)])
def test_a_pixel_outside_the_map_is_refused_not_wrapped(row: int, col: int) -> None:
    with pytest.raises(InputError, match=rf"pixel \({row}, {col}\) lies outside the 8×8 output map"):
        PixelTarget(row, col, class_index=0, size=(8, 8))


def test_pixel_targets_for_segmentation_maps() -> None:
    torch.manual_seed(0)
    model = TinySegmenter()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    result = explain(model, x, PixelTarget(4, 5, class_index=1, size=(8, 8)), "gradient")
    assert result.attribution is not None
    nonzero = result.attribution[0, 0].nonzero()
    assert nonzero[:, 0].min() >= 3 and nonzero[:, 0].max() <= 5  # the receptive field of pixel (4, 5)
    assert nonzero[:, 1].min() >= 4 and nonzero[:, 1].max() <= 6
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    for init in ("logits", "probabilities", "ones"):
        lrp = explain(model, x, PixelSetTarget(mask, 2, init=init), "lrp_epsilon", epsilon=1e-12)
        logits = model(x).detach()
        start = {"logits": logits[0, 2], "probabilities": logits.softmax(1)[0, 2], "ones": torch.ones(8, 8)}[
            init
        ]
        assert lrp.diagnostics["explained_relevance"][0] == pytest.approx(float(start[:2, :2].sum()))
    with pytest.raises(InputError, match="mask"):
        explain(model, x, PixelSetTarget(torch.ones(4, 4), 0), "gradient")


def test_provenance_and_fingerprint(vgg64: nn.Module, images64: torch.Tensor) -> None:
    result = explain(
        vgg64, images64, 1, "integrated_gradients", n_steps=4, baseline=torch.zeros(1, 1, 16, 16)
    )
    provenance = result.provenance()
    assert provenance["method"] == "integrated_gradients" and provenance["target"] == "class logit 1 (b)"
    assert (
        provenance["options"]["n_steps"] == 4 and provenance["options"]["baseline"] == "tensor(1, 1, 16, 16)"
    )
    assert provenance["model_fingerprint"] == model_fingerprint(vgg64)  # the checkpoint's fingerprint
    twin = small_vgg()
    assert _model_fingerprint(twin) == _model_fingerprint(vgg64)
    with torch.no_grad():
        twin.head.bias[0] += 1e-3
    assert _model_fingerprint(twin) != _model_fingerprint(vgg64)
    # any other module: a hash of its parameters and buffers, also updated when they change
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    first = explain(plain, torch.rand(1, 1, 1, 3), 0, "gradient").model_fingerprint
    assert first == _model_fingerprint(plain)
    with torch.no_grad():
        plain[1].weight[0, 0] += 1.0
    assert _model_fingerprint(plain) != first


def test_model_state_is_restored(images64: torch.Tensor) -> None:
    model = small_vgg(dropout=0.5).train()
    relu = model.features.relu1_1
    relu.inplace = True
    result = explain(model, images64, 0, "gradient")
    again = explain(model, images64, 0, "gradient")
    assert result.attribution is not None and again.attribution is not None
    assert torch.equal(result.attribution, again.attribution)  # eval mode: no dropout noise
    assert model.training and model.dropout.training and relu.inplace


def test_every_method_returns_heatmaps_with_the_declared_sign(
    vgg64: nn.Module, images64: torch.Tensor
) -> None:
    quick = {
        "smoothgrad": {"n_samples": 2},
        "integrated_gradients": {"n_steps": 4},
        "occlusion": {"window": 8, "stride": 8},
        "activation_maximisation": {"n_steps": 2},
        "attention_rollout": {"attentions": lambda x: [torch.eye(5, dtype=x.dtype).expand(2, 1, 5, 5)]},
    }
    for name, method in METHODS.items():
        result = explain(vgg64, images64, 0, name, **quick.get(name, {}))
        assert result.heatmap is not None and result.heatmap.shape == (2, 16, 16), name
        assert result.signed == method.signed
        if not method.signed:
            assert float(result.heatmap.min()) >= 0, name


def test_zennit_imports_without_torchvision_and_leaves_no_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import_zennit()
    # import zennit afresh (the originals come back afterwards), so the stand-in path really runs
    for name in [name for name in sys.modules if name == "zennit" or name.startswith("zennit.")]:
        monkeypatch.delitem(sys.modules, name)
    fresh = import_zennit()
    assert hasattr(fresh.rules, "Epsilon") and hasattr(fresh.torchvision, "ResNetCanonizer")
    assert importlib.util.find_spec("torchvision") is None  # radlens never depends on torchvision
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
