"""Resizing, tensor conversion and training augmentation for grayscale radiographs.

The pipeline is ``load_image`` → :func:`resize` (cacheable, see ``radlens.data.cache``) →
optional :class:`Augmentation` → :func:`to_tensor`. Augmentation works on the resized image so it stays
cheap. Horizontal flips are OFF by default: laterality matters in chest X-rays (the heart is on the
patient's left, findings are reported as left/right), so a flipped image no longer matches its report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator

from radlens.core.config import Config

#: ImageNet statistics, for ImageNet-pretrained backbones (e.g. EfficientNet) fed 3-channel input.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ResizePolicy(Config):
    """How images are resized before they reach a model (and how the cache stores them).

    - ``square``: resize to ``size`` x ``size``; the aspect ratio is NOT kept (chest films are close to
      square and squashing keeps the whole field of view, unlike a centre crop).
    - ``shorter_side``: scale so the shorter side is ``size``, keeping the aspect ratio, unless that
      would make the longer side exceed ``max_longer``, in which case the longer side is ``max_longer``.
    """

    mode: Literal["square", "shorter_side"] = "square"
    size: int = Field(224, ge=8, le=4096)
    max_longer: int = Field(640, ge=8, le=8192)

    @model_validator(mode="after")
    def _longer_not_below_size(self) -> ResizePolicy:
        if self.mode == "shorter_side" and self.max_longer < self.size:
            raise ValueError(f"max_longer ({self.max_longer}) must be at least size ({self.size})")
        return self

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of ``height`` x ``width`` is resized to."""
        if self.mode == "square":
            return self.size, self.size
        scale = self.size / min(height, width)
        if max(height, width) * scale > self.max_longer:
            scale = self.max_longer / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    @property
    def max_pixels(self) -> int:
        """An upper bound on ``h * w`` of any output (the cache's slot size)."""
        return self.size * self.size if self.mode == "square" else self.size * self.max_longer

    def key(self) -> str:
        """A short name for this policy, used for cache folder names (e.g. ``square-224``)."""
        if self.mode == "square":
            return f"square-{self.size}"
        return f"shorter_side-{self.size}-max{self.max_longer}"


def resize(image: np.ndarray, policy: ResizePolicy) -> np.ndarray:
    """Resize a float32 ``(h, w)`` image in ``[0, 1]`` according to ``policy``.

    Uses Pillow's antialiased bilinear filter on 32-bit float pixels (no 8-bit rounding, no overshoot, so
    the result stays in ``[0, 1]``).
    """
    if image.ndim != 2:
        raise ValueError(f"resize expects a (height, width) image, got shape {image.shape}")
    height, width = policy.output_shape(*image.shape)
    if (height, width) == image.shape:
        return np.array(image, dtype=np.float32)
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    resized = source.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32).copy()


def default_normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for 3 channels (pretrained backbones); 0.5/0.5 (→ ``[-1, 1]``) for 1 channel."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (0.5,), (0.5,)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def to_tensor(
    image: np.ndarray,
    channels: int = 1,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A ``(channels, h, w)`` float32 tensor ``(image - mean) / std``, per channel.

    ``image`` is float in ``[0, 1]`` or uint8 (divided by 255). A grayscale image is repeated to 3
    channels when ``channels=3`` (for backbones pretrained on RGB). The defaults leave values as they
    are; see :func:`default_normalization` for the usual choices. ``out`` (a contiguous CPU float32
    tensor of the result's shape, e.g. one row of a batch) receives the result instead of a new tensor.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image.ndim != 2:
        raise ValueError(f"to_tensor expects a (height, width) image, got shape {image.shape}")
    mean_c = _per_channel(mean, channels, "mean")
    std_c = _per_channel(std, channels, "std")
    if (std_c <= 0).any():
        raise ValueError("std must be positive")
    shape = (channels, *image.shape)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    unit = 255.0 if image.dtype == np.uint8 else 1.0
    # (x / unit - mean) / std as one multiply and one add per channel, written in place: this runs
    # once per item in DataLoader workers, where temporaries cost as much as the arithmetic.
    scale = (1.0 / (unit * std_c)).astype(np.float32)
    bias = (-mean_c / std_c).astype(np.float32)
    values = out.numpy()
    for channel in range(channels):
        np.multiply(image, scale[channel], out=values[channel])
        values[channel] += bias[channel]
    return out


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> np.ndarray:
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} values for {channels} channels")
    return np.array(values, dtype=np.float64)


class Augmentation:
    """A seeded training augmentation: ``augment(image, seed=None)`` on a float ``(h, w)`` image.

    Wraps a MONAI ``Compose`` of array transforms. With ``seed`` the result depends only on that seed
    (datasets pass a per-item seed so results do not depend on DataLoader worker count or order);
    without it the transforms draw from their own stream, seeded once at construction.
    """

    def __init__(self, transforms: Any, seed: int = 0) -> None:
        self.transforms = transforms
        self.transforms.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Augment ``image`` (float ``(h, w)`` in ``[0, 1]``); the output has the same shape and range."""
        from monai.data.meta_obj import get_track_meta, set_track_meta

        if seed is not None:
            self.transforms.set_random_state(seed=seed % 2**32)
        # MONAI's metadata tracking (MetaTensor affines) costs ~40% of the time here and we discard it.
        # The switch is process-global, so it is restored at once (DataLoader workers are single-threaded).
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            out = self.transforms(np.ascontiguousarray(image, dtype=np.float32)[None])
        finally:
            set_track_meta(tracking)
        if isinstance(out, torch.Tensor):  # MONAI returns tensors from spatial transforms
            out = out.detach().cpu().numpy()
        return np.clip(np.asarray(out, dtype=np.float32)[0], 0.0, 1.0)


def train_augmentation(
    rotate_degrees: float = 10.0,
    zoom: tuple[float, float] = (0.9, 1.1),
    gamma: tuple[float, float] = (0.7, 1.5),
    prob: float = 0.5,
    horizontal_flip: bool = False,
    seed: int = 0,
) -> Augmentation:
    """Training augmentation for radiographs, built from MONAI array transforms.

    Each of these is applied with probability ``prob``: a rotation of up to ``rotate_degrees`` either
    way, a zoom by a factor within ``zoom`` about the centre (the size is kept: zooming in crops the
    border, zooming out pads with edge values), and a gamma contrast change within ``gamma``.
    ``horizontal_flip`` is off by default because it swaps the patient's left and right, which the
    report and labels (e.g. "left pleural effusion") depend on; turn it on only for side-free tasks.
    """
    import monai.transforms as mt  # imported here: MONAI takes seconds to import

    steps: list[Any] = [
        mt.RandRotate(range_x=math.radians(rotate_degrees), prob=prob, keep_size=True, padding_mode="border"),
        mt.RandZoom(prob=prob, min_zoom=zoom[0], max_zoom=zoom[1], mode="bilinear", keep_size=True),
        mt.RandAdjustContrast(prob=prob, gamma=gamma),
    ]
    if horizontal_flip:
        steps.append(mt.RandFlip(prob=0.5, spatial_axis=1))
    return Augmentation(mt.Compose(steps), seed=seed)
