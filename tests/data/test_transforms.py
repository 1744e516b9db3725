"""Resize policies, tensor normalisation and seeded MONAI augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from radlens.core.config import load_config
from radlens.core.errors import InputError
from radlens.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    ResizePolicy,
    default_normalization,
    resize,
    to_tensor,
    train_augmentation,
)


def gradient(height: int, width: int) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    return (0.5 * rows + 0.5 * cols).astype(np.float32)


@pytest.fixture(scope="module")
def augment() -> Augmentation:
    return train_augmentation(rotate_degrees=10, zoom=(0.85, 1.15), gamma=(0.6, 1.6), prob=1.0, seed=0)


@pytest.mark.parametrize("shape", [(300, 200), (90, 500), (224, 224)])
def test_square_policy_gives_size_by_size(shape: tuple[int, int]) -> None:
    out = resize(gradient(*shape), ResizePolicy(mode="square", size=64))
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1000, 800), (480, 384)),  # shorter side 800 -> 384, longer 1000 -> 480 (under the cap)
        ((800, 1000), (384, 480)),
        ((1500, 600), (640, 256)),  # 384 would make the longer side 960 > 640: capped, aspect kept
        ((300, 200), (576, 384)),  # small images are enlarged
    ],
)
def test_shorter_side_policy_keeps_aspect_and_caps_longer(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    policy = ResizePolicy(mode="shorter_side", size=384, max_longer=640)
    assert policy.output_shape(*shape) == expected
    out = resize(gradient(*shape), policy)
    assert out.shape == expected
    assert out.shape[0] * out.shape[1] <= policy.max_pixels
    assert abs(out.shape[0] / out.shape[1] - shape[0] / shape[1]) < 0.01


def test_resize_is_antialiased_and_preserves_mean() -> None:
    rng = np.random.default_rng(0)
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)  # 1-px checkerboard
    out = resize(checker, ResizePolicy(size=64))
    # Antialiasing averages the pattern to 0.5 everywhere; point sampling would keep 0/1 values.
    assert np.abs(out - 0.5).max() < 0.05
    noise = rng.random((400, 300), dtype=np.float32)
    assert abs(resize(noise, ResizePolicy(size=100)).mean() - noise.mean()) < 0.01


def test_policy_validation_and_yaml_round_trip() -> None:
    with pytest.raises(ValidationError):
        ResizePolicy(mode="shorter_side", size=512, max_longer=256)
    with pytest.raises(ValidationError):
        ResizePolicy(mode="crop")  # type: ignore[arg-type]
    policy = ResizePolicy(mode="shorter_side", size=384)
    assert ResizePolicy.from_yaml(policy.to_yaml()) == policy
    assert policy.key() != ResizePolicy(mode="shorter_side", size=384, max_longer=700).key()
    with pytest.raises(InputError, match="size"):
        load_config(ResizePolicy, overrides={"size": 2})


def test_to_tensor_normalisation_values() -> None:
    image = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    mean, std = default_normalization(3)
    tensor = to_tensor(image, channels=3, mean=mean, std=std)
    assert tensor.shape == (3, 2, 2) and tensor.dtype == torch.float32
    for channel in range(3):
        expected = (torch.from_numpy(image) - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(tensor[channel], expected)
    one = to_tensor(image, channels=1, mean=0.5, std=0.5)
    torch.testing.assert_close(one[0], torch.tensor([[-1.0, 0.0], [1.0, -0.5]]))
    torch.testing.assert_close(to_tensor(image), torch.from_numpy(image)[None])


def test_to_tensor_uint8_matches_float() -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    from_uint8 = to_tensor(pixels, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    from_float = to_tensor(pixels.astype(np.float32) / 255, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(from_uint8, from_float)


def test_to_tensor_rejects_bad_arguments() -> None:
    image = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="channels"):
        to_tensor(image, channels=2)
    with pytest.raises(ValueError, match="3 channels"):
        to_tensor(image, channels=3, mean=(0.1, 0.2), std=1.0)
    with pytest.raises(ValueError, match="positive"):
        to_tensor(image, channels=1, std=0.0)


def test_augmentation_is_deterministic_under_a_seed(augment: Augmentation) -> None:
    image = gradient(64, 64)
    first = augment(image, seed=7)
    again = augment(image, seed=7)
    other = augment(image, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.shape == image.shape and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not np.allclose(first, image)  # prob=1: something changed
    from monai.data.meta_obj import get_track_meta

    assert get_track_meta()  # MONAI's global switch is restored after each call


def test_augmentation_streams_repeat_with_construction_seed() -> None:
    image = gradient(48, 48)
    first = train_augmentation(prob=1.0, seed=3)
    second = train_augmentation(prob=1.0, seed=3)
    for _ in range(3):
        np.testing.assert_array_equal(first(image), second(image))


def test_no_horizontal_flip_by_default(augment: Augmentation) -> None:
    # A bright left half must stay mostly on the left: small rotation/zoom never swap sides.
    image = np.zeros((64, 64), dtype=np.float32)
    image[:, :32] = 1.0
    for seed in range(20):
        out = augment(image, seed=seed)
        assert out[:, :32].mean() > out[:, 32:].mean()
    flipping = train_augmentation(prob=0.0, horizontal_flip=True, seed=0)
    flipped = sum(flipping(image, seed=seed)[:, :32].mean() < 0.5 for seed in range(20))
    assert 0 < flipped < 20  # the opt-in flip happens about half of the time


def test_to_tensor_writes_into_out() -> None:
    image = np.full((4, 5), 0.5, dtype=np.float32)
    batch = torch.zeros((2, 3, 4, 5))
    result = to_tensor(image, channels=3, mean=0.25, std=0.5, out=batch[1])
    assert result.data_ptr() == batch[1].data_ptr()
    torch.testing.assert_close(batch[1], torch.full((3, 4, 5), 0.5))
    assert float(batch[0].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="shape"):
        to_tensor(image, channels=1, out=batch[0])
