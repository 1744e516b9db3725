"""Checkpoints: exact round trips (tied weights included), clear refusals, atomic saves, fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import radlens
import radlens.models.checkpoint as checkpoint
from radlens.core import Config, InputError
from radlens.models import CheXpertClassifier, ClassifierConfig
from radlens.models.checkpoint import (
    load_checkpoint,
    model_fingerprint,
    read_checkpoint_info,
    register_model,
    save_checkpoint,
)
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.models.fusion import FusionConfig, FusionModel, aligned_fusion_config

TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process"]


def _dual(seed: int = 0, **changes: object) -> DualEncoder:
    torch.manual_seed(seed)
    values: dict[str, object] = {
        "image_tower": "small_vit",
        "text_tower": "small_bert",
        "pretrained": False,
        "embed_dim": 16,
        "image_size": 32,
        "patch_size": 8,
        "image_width": 32,
        "image_depth": 1,
        "image_heads": 2,
        "text_hidden_size": 32,
        "text_layers": 1,
    }
    values.update(changes)
    return DualEncoder(DualEncoderConfig.model_validate(values)).eval()


def _fusion() -> FusionModel:
    torch.manual_seed(0)
    config = FusionConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        image_source="small_cnn",
        cnn_width=16,
        cnn_depth=2,
        max_text_length=16,
    )
    return FusionModel(config).eval()


def test_dual_encoder_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _dual()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # a non-default value must survive too
    save_checkpoint(model, tmp_path / "ckpt", extra={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt", expected_type="dual_encoder")
    assert isinstance(loaded, DualEncoder) and not loaded.training
    assert loaded.config == model.config
    pixels = torch.rand(2, 3, 32, 32)
    encoded = model.tokenize(TEXTS)
    with torch.no_grad():
        expected = model(pixels, encoded["input_ids"], encoded["attention_mask"])
        got = loaded(pixels, encoded["input_ids"], encoded["attention_mask"])
    assert torch.equal(expected.logits_per_image, got.logits_per_image)
    info = read_checkpoint_info(tmp_path / "ckpt")
    assert info.extra == {"step": 7} and info.radlens_version == radlens.__version__
    assert info.model_type == "dual_encoder" and info.config["embed_dim"] == 16


def test_fusion_round_trip_keeps_tied_weights_stored_once(tmp_path: Path) -> None:
    model = _fusion()
    save_checkpoint(model, tmp_path / "fusion")
    with safe_open(str(tmp_path / "fusion" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        tied = json.loads(handle.metadata()["tied"])
    word = "vilt.embeddings.text_embeddings.word_embeddings.weight"
    assert "mlm_score.decoder.weight" in tied and tied["mlm_score.decoder.weight"] == word
    assert "mlm_score.decoder.weight" not in keys and word in keys
    loaded = load_checkpoint(tmp_path / "fusion")
    assert isinstance(loaded, FusionModel)
    assert loaded.mlm_score.decoder.weight is loaded.vilt.embeddings.text_embeddings.word_embeddings.weight
    encoded = model.tokenize(TEXTS)
    pixels = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = model(encoded["input_ids"], encoded["attention_mask"], pixels)
        got = loaded(encoded["input_ids"], encoded["attention_mask"], pixels)
    assert expected.mlm_logits is not None and got.mlm_logits is not None
    assert torch.equal(expected.itm_logits, got.itm_logits) and torch.equal(
        expected.mlm_logits, got.mlm_logits
    )


def test_loading_does_not_read_published_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _dual(image_tower="efficientnet_lite0", pretrained=True, image_size=64)
    save_checkpoint(model, tmp_path / "ckpt")

    def _fail() -> None:
        raise AssertionError("published weights were read")

    monkeypatch.setattr("radlens.models.image_towers.load_efficientnet_lite0_state_dict", _fail)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert model_fingerprint(loaded) == model_fingerprint(model)


def test_wrong_type_and_missing_or_damaged_checkpoints_are_refused(tmp_path: Path) -> None:
    save_checkpoint(_dual(), tmp_path / "ckpt")
    with pytest.raises(InputError, match="holds a dual_encoder model, not a fusion"):
        load_checkpoint(tmp_path / "ckpt", expected_type="fusion")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"lacks config\.json and model\.safetensors"):
        load_checkpoint(tmp_path / "empty")
    config_path = tmp_path / "ckpt" / "config.json"
    document = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**document, "model_type": "mystery"}))
    with pytest.raises(InputError, match="unknown model type 'mystery'"):
        load_checkpoint(tmp_path / "ckpt")
    config_path.write_text(json.dumps({**document, "embed_dim": 24}))
    with pytest.raises(InputError, match=r"has shape \(16, 32\) but the model expects \(24, 32\)"):
        load_checkpoint(tmp_path / "ckpt")
    config_path.write_text(json.dumps({**document, "embed_dim": "wide"}))
    with pytest.raises(InputError, match="invalid dual_encoder config: embed_dim"):
        load_checkpoint(tmp_path / "ckpt")
    config_path.write_text(json.dumps(document))
    weights = tmp_path / "ckpt" / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"tied": "{oops"})
    for read in (load_checkpoint, model_fingerprint):
        with pytest.raises(InputError, match="damaged tied-weight metadata"):
            read(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a tensor file")
    config_path.write_text(json.dumps(document))
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "ckpt")


def test_save_is_atomic_and_never_overwrites_by_accident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _dual()
    target = tmp_path / "ckpt"
    save_checkpoint(model, target)
    with pytest.raises(InputError, match="not empty"):
        save_checkpoint(model, target)
    other = _dual(seed=1)
    save_checkpoint(other, target, overwrite=True)
    assert model_fingerprint(target) == model_fingerprint(other)

    def _crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", _crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path / "fresh")
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, target, overwrite=True)
    assert not (tmp_path / "fresh").exists()
    assert model_fingerprint(target) == model_fingerprint(other)  # the old checkpoint is intact
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_fingerprint_is_stable_and_tracks_weights_and_config(tmp_path: Path) -> None:
    model = _dual()
    first = model_fingerprint(model)
    assert first == model_fingerprint(model) and len(first) == 64
    save_checkpoint(model, tmp_path / "ckpt")
    assert model_fingerprint(tmp_path / "ckpt") == first
    assert model_fingerprint(load_checkpoint(tmp_path / "ckpt")) == first
    with torch.no_grad():
        model.image_projection.weight[0, 0] += 1e-3
    assert model_fingerprint(model) != first
    with torch.no_grad():
        model.image_projection.weight[0, 0] -= 1e-3
    assert model_fingerprint(model) == first
    same_weights = DualEncoder(model.config.model_copy(update={"max_length": 64}))
    same_weights.load_state_dict(model.state_dict())
    assert model_fingerprint(same_weights) != first


def test_registry_rejects_unregistered_models_and_missing_config_class(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not a registered radlens model"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(TypeError, match="config_class"):

        @register_model("broken")
        class _Broken(nn.Module):
            pass

    class _TinyConfig(Config):
        size: int = 3

    @register_model("test_tiny")
    class _Tiny(nn.Module):
        config_class = _TinyConfig

        def __init__(self, config: _TinyConfig, load_pretrained: bool = True) -> None:
            super().__init__()
            self.config = config
            self.layer = nn.Linear(config.size, 1)

    tiny = _Tiny(_TinyConfig(size=5))
    save_checkpoint(tiny, tmp_path / "tiny")
    loaded = load_checkpoint(tmp_path / "tiny", expected_type="test_tiny")
    assert isinstance(loaded, _Tiny) and torch.equal(loaded.layer.weight, tiny.layer.weight)
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_tiny")(DualEncoder)


def test_a_classifier_checkpoint_loads_through_radlens_models_alone(tmp_path: Path) -> None:
    """A fresh interpreter that imports only ``radlens.models`` loads a CheXpert classifier checkpoint
    (as `radlens train classifier` writes it) and gets the saved model's outputs back."""
    config = ClassifierConfig(arch="vgg", image_size=16, vgg_widths=(4, 8), vgg_convs_per_stage=1)
    torch.manual_seed(0)
    model = CheXpertClassifier(config).eval()
    save_checkpoint(model, tmp_path / "classifier")
    pixels = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        save_file({"pixels": pixels, "expected": model(pixels)}, tmp_path / "io.safetensors")
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from radlens.models import load_checkpoint\n"
        "model = load_checkpoint(sys.argv[1]).eval()\n"
        "io = load_file(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    out = model(io['pixels'])\n"
        "torch.testing.assert_close(out, io['expected'])\n"
        "print(type(model).__name__)\n"
    )
    folder, io_file = str(tmp_path / "classifier"), str(tmp_path / "io.safetensors")
    done = subprocess.run([sys.executable, "-c", script, folder, io_file], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CheXpertClassifier"


def _strip_normalization(folder: Path) -> None:
    """Make ``folder``'s config.json look as radlens 0.1 wrote it: no ``image_normalization`` anywhere."""
    path = folder / "config.json"
    document = json.loads(path.read_text())
    document.pop("image_normalization")
    if isinstance(document.get("aligner"), dict):
        document["aligner"].pop("image_normalization")
    path.write_text(json.dumps(document))


def test_checkpoints_from_before_the_normalisation_fix_load_unchanged(tmp_path: Path) -> None:
    """radlens 0.1 fed the pretrained EfficientNet-Lite0 ImageNet mean/std; its checkpoints keep that."""
    torch.manual_seed(0)
    old = CheXpertClassifier(ClassifierConfig(image_size=64, image_normalization="imagenet")).eval()
    save_checkpoint(old, tmp_path / "classifier")
    _strip_normalization(tmp_path / "classifier")
    loaded = load_checkpoint(tmp_path / "classifier")
    assert loaded.config.image_normalization == "imagenet"
    # Its fingerprint is computed as radlens 0.1 computed it (no such field), so its indexes still open.
    legacy = json.loads((tmp_path / "classifier" / "config.json").read_text())
    legacy = {key: value for key, value in legacy.items() if key not in ("radlens_version", "extra")}
    assert checkpoint._canonical_config("chexpert_classifier", loaded.config) == json.dumps(
        legacy, sort_keys=True
    )
    assert "image_normalization" in checkpoint._canonical_config("chexpert_classifier", ClassifierConfig())
    pixels = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), old(pixels))
        new = CheXpertClassifier(ClassifierConfig(image_size=64), load_pretrained=False).eval()
        new.load_state_dict(old.state_dict())
        assert not torch.allclose(new(pixels), old(pixels))  # the new default really differs

    dual = _dual(
        image_tower="efficientnet_lite0", pretrained=True, image_normalization="imagenet", image_size=64
    )
    fusion = FusionModel(aligned_fusion_config(_fusion().config, dual.config))
    fusion.load_aligner(dual)
    save_checkpoint(fusion.eval(), tmp_path / "fusion")
    _strip_normalization(tmp_path / "fusion")
    loaded_fusion = load_checkpoint(tmp_path / "fusion")
    assert loaded_fusion.config.aligner.image_normalization == "imagenet"
    texts = loaded_fusion.tokenize(TEXTS)
    with torch.no_grad():
        expected = fusion(texts["input_ids"], texts["attention_mask"], pixels, compute_mlm=False).itm_logits
        got = loaded_fusion(texts["input_ids"], texts["attention_mask"], pixels, compute_mlm=False).itm_logits
    torch.testing.assert_close(got, expected)
