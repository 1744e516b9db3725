"""Image towers: the EfficientNet-Lite0 port classifies real photos correctly; shapes and feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from skimage.transform import resize

from radlens.core import InputError
from radlens.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from radlens.models.image_towers import (
    CPU_IMAGE_CHUNK,
    EfficientNetLite0Tower,
    ImageTower,
    ImageTowerConfig,
    _SameConv2d,
    build_image_tower,
    inference_chunk_size,
    load_efficientnet_lite0_state_dict,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="session")
def lite0() -> EfficientNetLite0Tower:
    tower = build_image_tower(ImageTowerConfig(num_classes=1000))
    assert isinstance(tower, EfficientNetLite0Tower)
    return tower.eval()


def _imagenet_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """Standard ImageNet evaluation crop: shorter side to 256, centre 224 crop, [0, 1] floats."""
    height, width = image.shape[:2]
    scale = 256 / min(height, width)
    image = resize(image, (round(height * scale), round(width * scale)), anti_aliasing=True)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = image[top : top + size, left : left + size]
    return torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).float()


def _top5(tower: EfficientNetLite0Tower, image: np.ndarray) -> set[int]:
    with torch.no_grad():
        logits = tower.classify(_imagenet_input(image))
    return set(logits.topk(5, dim=-1).indices[0].tolist())


def test_cat_photo_gets_a_cat_class_in_top5(lite0: EfficientNetLite0Tower) -> None:
    assert _top5(lite0, skimage.data.chelsea()) & CAT_CLASSES


def test_coffee_photo_gets_a_cup_class_in_top5(lite0: EfficientNetLite0Tower) -> None:
    assert _top5(lite0, skimage.data.coffee()) & COFFEE_CLASSES


def test_normalisation_is_the_one_the_published_weights_were_trained_with(
    lite0: EfficientNetLite0Tower,
) -> None:
    """The stem BatchNorm's running variance records the input scale used in training: the tower's own
    normalisation (TF's inception-style 127/128) must land nearer it than ImageNet mean/std does."""
    photos = torch.cat([_imagenet_input(image) for image in (skimage.data.chelsea(), skimage.data.coffee(),
                        skimage.data.rocket(), skimage.data.astronaut())])  # fmt: skip
    conv, norm = lite0.stem[0], lite0.stem[1]

    def log_variance_ratio(x: torch.Tensor) -> float:
        with torch.no_grad():
            ratio = conv(x).var(dim=(0, 2, 3)) / norm.running_var
        return abs(float(ratio.log().median()))

    imagenet = (photos - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    assert log_variance_ratio(lite0.normalize(photos)) < 0.5 * log_variance_ratio(imagenet)
    torch.testing.assert_close(lite0.pixel_mean.flatten(), torch.full((3,), 127 / 255))
    torch.testing.assert_close(lite0.pixel_std.flatten(), torch.full((3,), 128 / 255))


def test_every_published_weight_is_loaded_unchanged(lite0: EfficientNetLite0Tower) -> None:
    published = load_efficientnet_lite0_state_dict()
    ours = lite0.state_dict()
    assert set(published) == set(ours)
    for name, tensor in published.items():
        assert torch.equal(ours[name], tensor), name


def test_feature_map_and_pooled_shapes(lite0: EfficientNetLite0Tower) -> None:
    x = torch.rand(2, 3, 160, 192)
    with torch.no_grad():
        out = lite0(x)
    assert out.feature_map is not None
    assert out.feature_map.shape == (2, 1280, 5, 6)
    assert out.pooled.shape == (2, 1280)
    torch.testing.assert_close(out.pooled, out.feature_map.mean(dim=(2, 3)))
    assert out.grid == (5, 6)
    assert lite0.patch_tokens(x).shape == (2, 30, 1280)


def test_grey_input_is_repeated_to_rgb(lite0: EfficientNetLite0Tower) -> None:
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lite0(grey).pooled, lite0(grey.repeat(1, 3, 1, 1)).pooled)


def test_channels_last_order_computes_the_nchw_function_and_keeps_weights_contiguous(
    lite0: EfficientNetLite0Tower,
) -> None:
    x = torch.rand(2, 3, 96, 96)
    nchw = ImageTower.normalize(lite0, x)  # the base class: the default memory order
    assert nchw.is_contiguous()
    with torch.no_grad():
        reference = nchw
        for stage in lite0.stages():
            reference = stage(reference)
        out = lite0(x)
    assert lite0.normalize(x).is_contiguous(memory_format=torch.channels_last)
    assert out.feature_map is not None
    torch.testing.assert_close(out.feature_map, reference, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in lite0.parameters())  # safetensors saves contiguous tensors only


def test_same_padding_is_tensorflows_asymmetric_rule() -> None:
    conv = _SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 9)
    # TF "SAME" for k=3, s=2: output ceil(n/2); total pad 1 (even n, all bottom/right) or 2 (odd n).
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, stride=2)
    out = conv(x)
    assert out.shape == (1, 1, 4, 5)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "small_cnn", "small_vit"])
def test_feature_layer_output_is_the_spatial_feature(name: str, lite0: EfficientNetLite0Tower) -> None:
    config = ImageTowerConfig(name=name, pretrained=False, width=32, depth=2, heads=2, image_size=64)
    tower = lite0 if name == "efficientnet_lite0" else build_image_tower(config).eval()
    captured: list[torch.Tensor] = []
    handle = tower.get_submodule(tower.feature_layer).register_forward_hook(
        lambda _m, _i, output: captured.append(output)
    )
    with torch.no_grad():
        out = tower(torch.rand(2, 3, 64, 64))
    handle.remove()
    if out.feature_map is not None:  # CNNs: the layer's output is the feature map itself
        assert torch.equal(captured[0], out.feature_map)
    else:  # ViT: the final norm's output holds CLS then the patch tokens
        assert out.tokens is not None and torch.equal(captured[0][:, 1:], out.tokens)


def test_small_cnn_shapes_and_one_channel_input() -> None:
    tower = build_image_tower(ImageTowerConfig(name="small_cnn", in_channels=1, width=64, depth=3)).eval()
    out = tower(torch.rand(3, 1, 64, 64))
    assert out.feature_map is not None and out.feature_map.shape == (3, 64, 4, 4)
    assert out.pooled.shape == (3, tower.out_dim) == (3, 64)
    with pytest.raises(InputError, match="channels"):
        tower(torch.rand(3, 3, 64, 64))


def test_small_vit_tokens_grid_and_position_interpolation() -> None:
    config = ImageTowerConfig(name="small_vit", width=32, depth=2, heads=4, patch_size=16, image_size=64)
    tower = build_image_tower(config).eval()
    out = tower(torch.rand(2, 3, 64, 64))
    assert out.tokens is not None and out.tokens.shape == (2, 16, 32)
    assert out.grid_size == (4, 4) and out.pooled.shape == (2, 32)
    bigger = tower(torch.rand(2, 3, 96, 80))  # positions interpolated from 4×4 to 6×5
    assert bigger.grid == (6, 5) and bigger.patch_tokens().shape == (2, 30, 32)
    # Position embeddings matter: the same patch content at different places gives different tokens.
    flat = torch.full((1, 3, 64, 64), 0.5)
    tokens = tower(flat).patch_tokens()[0]
    assert not torch.allclose(tokens[0], tokens[-1])


def test_freeze_keeps_last_stages_trainable_and_frozen_batchnorm_in_eval() -> None:
    tower = build_image_tower(ImageTowerConfig(name="small_cnn", width=32, depth=3))
    tower.freeze(1)
    stages = tower.stages()
    assert all(not p.requires_grad for stage in stages[:-1] for p in stage.parameters())
    assert all(p.requires_grad for p in stages[-1].parameters())
    tower.train()
    assert not stages[0][1].training  # a frozen BatchNorm keeps its running statistics
    assert stages[-1].training
    tower(torch.rand(2, 3, 32, 32)).pooled.sum().backward()
    assert stages[-1][0][0].weight.grad is not None and stages[0][0].weight.grad is None


def test_config_rejects_pretrained_small_towers_and_round_trips() -> None:
    with pytest.raises(ValidationError, match="no pretrained weights"):
        ImageTowerConfig(name="small_cnn", pretrained=True)
    config = ImageTowerConfig(name="small_vit", width=48, heads=3)
    assert ImageTowerConfig.from_yaml(config.to_yaml()) == config
    assert config.use_pretrained is False and ImageTowerConfig().use_pretrained is True


def test_inference_chunks_are_capped_on_a_cpu_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert inference_chunk_size(cpu, 64) == CPU_IMAGE_CHUNK < 64
    assert inference_chunk_size(cpu, 3) == 3
    assert inference_chunk_size(gpu, 64) == 64
