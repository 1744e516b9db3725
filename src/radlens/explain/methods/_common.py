"""What every method shares: the call context, the result record and small helpers.

A method is a function ``run(ctx: Context) -> MethodResult``. The context knows the model, the inputs
(one image B×C×H×W and/or one row of token ids, plus anything else the model takes, passed through
untouched), the target and the validated options.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radlens.core import InputError
from radlens.explain.targets import Target


@dataclass(frozen=True)
class TokenLayout:
    """Where things sit in a transformer's token sequence.

    ``cls_index``: the token whose row of the rollout / attention summarises the input (``None``: average
    all rows). ``image``: half-open (start, stop) positions of the image patches, laid out row-major on
    ``grid`` (rows, cols). ``text``: half-open positions of the text tokens.
    """

    cls_index: int | None = 0
    image: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    text: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.image is not None:
            if self.grid is None:
                raise InputError("TokenLayout with image positions needs grid=(rows, cols)")
            if self.image[1] - self.image[0] != self.grid[0] * self.grid[1]:
                raise InputError(
                    f"TokenLayout image positions {self.image} hold {self.image[1] - self.image[0]} tokens "
                    f"but grid {self.grid} needs {self.grid[0] * self.grid[1]}",
                    "make stop - start equal rows * cols",
                )


@dataclass
class MethodResult:
    """What a method returns; the API turns it into an :class:`~radlens.explain.Explanation`."""

    attribution: torch.Tensor | None
    heatmap: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    scores: torch.Tensor | None = None


@dataclass
class Context:
    """One explanation request, already validated by the API."""

    model: nn.Module
    inputs: tuple[Any, ...]
    target: Target
    options: dict[str, Any]
    image_index: int | None
    text_index: int | None

    @property
    def image(self) -> torch.Tensor:
        """The image input (B×C×H×W); an :class:`InputError` if there is none."""
        if self.image_index is None:
            raise InputError(
                "this method needs an image input (a float B×C×H×W tensor)",
                "pass the image among the inputs, or use integrated_gradients / attention_rollout for text",
            )
        image: torch.Tensor = self.inputs[self.image_index]
        return image

    @property
    def token_ids(self) -> torch.Tensor:
        """The token-id input (B×T integers); an :class:`InputError` if there is none."""
        if self.text_index is None:
            raise InputError("this method needs token ids (an integer B×T tensor) among the inputs")
        ids: torch.Tensor = self.inputs[self.text_index]
        return ids

    def replaced(self, index: int, value: Any) -> tuple[Any, ...]:
        """The inputs with position ``index`` replaced by ``value``."""
        return tuple(value if i == index else item for i, item in enumerate(self.inputs))

    def run(self, *replacements: tuple[int, Any]) -> Any:
        """The model output for the inputs with the given (position, value) replacements."""
        inputs = list(self.inputs)
        for index, value in replacements:
            inputs[index] = value
        return self.model(*inputs)

    def image_score_fn(self) -> Callable[..., torch.Tensor]:
        """``f(image, *others) -> scores`` with the other inputs in their original order (for captum)."""
        index = self.image_index
        assert index is not None

        def forward(image: torch.Tensor, *others: Any) -> torch.Tensor:
            inputs = list(others)
            inputs.insert(index, image)
            return self.target(self.model(*inputs))

        return forward

    def others(self, index: int) -> tuple[Any, ...]:
        """All inputs except position ``index``, in order (captum's ``additional_forward_args``)."""
        return tuple(item for i, item in enumerate(self.inputs) if i != index)


def find_module(model: nn.Module, name: str, option: str = "layer") -> nn.Module:
    """The submodule called ``name``; an :class:`InputError` naming close matches if there is none."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"pass one of: {', '.join(names[-8:])}"
    raise InputError(
        f"the model has no module named {name!r} ({option}=)", f"{hint} (see model.named_modules())"
    )


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B×C×H×W batch with reflect padding.

    Hand-written because torchvision (``gaussian_blur``) is not a dependency; 15 lines, tested.
    """
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def resolve_baseline(spec: Any, x: torch.Tensor, blur_sigma: float | None = None) -> torch.Tensor:
    """A reference input like ``x``: "black" (0), "white" (1), "blur" (Gaussian), a number or a tensor."""
    if isinstance(spec, torch.Tensor):
        try:
            return spec.to(dtype=x.dtype, device=x.device).expand_as(x).clone()
        except RuntimeError as exc:
            raise InputError(
                f"baseline of shape {tuple(spec.shape)} does not fit the input {tuple(x.shape)}",
                "pass a tensor that broadcasts to the input",
            ) from exc
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return torch.full_like(x, float(spec))
    if spec == "black":
        return torch.zeros_like(x)
    if spec == "white":
        return torch.ones_like(x)
    if spec == "blur":
        return gaussian_blur(x, blur_sigma or max(1.0, min(x.shape[-2:]) / 16))
    raise InputError(f"unknown baseline {spec!r}", "pass 'black', 'white', 'blur', a number or a tensor")


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with in-place activations switched off; restore both afterwards.

    Explanations must describe inference behaviour (BatchNorm running statistics, no dropout), and
    in-place activations break backward hooks and overwrite tensors that methods read.
    """
    training = {module: module.training for module in model.modules()}
    inplace: dict[Any, bool] = {
        m: bool(getattr(m, "inplace", False))
        for m in model.modules()
        if isinstance(getattr(m, "inplace", None), bool)
    }
    model.eval()
    for module in inplace:
        module.inplace = False
    try:
        yield model
    finally:
        for module, mode in training.items():
            module.training = mode
        for module, flag in inplace.items():
            module.inplace = flag


def layer_output(output: Any) -> torch.Tensor:
    """The tensor a layer produced (transformer layers often return a tuple: the hidden states first)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InputError(f"cannot read a tensor from a layer output of type {type(output).__name__}")


def declared_layout(option: TokenLayout | None, model: nn.Module, output: Any = None) -> TokenLayout | None:
    """The token layout from the option, else ``model.token_layout``, else the model output.

    An output may carry ``token_layout``, or describe an image–text sequence the way radlens's fusion model
    does: ``text_len`` (text tokens first, CLS at 0), ``image_start`` and ``image_grid``.
    """
    for candidate in (option, getattr(model, "token_layout", None), getattr(output, "token_layout", None)):
        if isinstance(candidate, TokenLayout):
            return candidate
    text_len, grid, start = (getattr(output, key, None) for key in ("text_len", "image_grid", "image_start"))
    if (
        isinstance(text_len, int)
        and isinstance(start, int)
        and isinstance(grid, tuple | list)
        and len(grid) == 2
    ):
        rows, cols = int(grid[0]), int(grid[1])
        return TokenLayout(
            cls_index=0, text=(0, text_len), image=(start, start + rows * cols), grid=(rows, cols)
        )
    return None


def infer_patch_size(model: nn.Module) -> int | None:
    """The ViT patch size from ``model.patch_size``, ``model.config.patch_size`` or a patchifying conv."""
    for holder in (model, getattr(model, "config", None)):
        size = getattr(holder, "patch_size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, tuple) and size and isinstance(size[0], int):
            return size[0]
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.kernel_size == module.stride
            and module.kernel_size[0] > 1
        ):
            return int(module.kernel_size[0])
    return None


def token_grid(
    tokens: int, image_size: tuple[int, int], patch_size: int | None, layout: TokenLayout | None
) -> TokenLayout:
    """Where the image patches sit among ``tokens`` tokens: from ``layout``, the patch size, or the shape.

    Without a layout, patches are the last tokens (prefix tokens such as CLS come first) on a grid with
    the image's aspect ratio.
    """
    if layout is not None and layout.image is not None:
        if layout.image[1] > tokens:
            raise InputError(f"token layout image positions {layout.image} exceed the {tokens} tokens")
        return layout
    height, width = image_size
    if patch_size:
        rows, cols = height // patch_size, width // patch_size
        if 0 < rows * cols <= tokens:
            return TokenLayout(
                cls_index=0 if tokens > rows * cols else None,
                image=(tokens - rows * cols, tokens),
                grid=(rows, cols),
            )
    for prefix in (1, 0, 2, 5):
        count = tokens - prefix
        if count <= 0:
            continue
        rows = round(math.sqrt(count * height / width))
        if (
            rows > 0
            and count % rows == 0
            and math.isclose(rows / (count // rows), height / width, rel_tol=0.05)
        ):
            return TokenLayout(
                cls_index=0 if prefix else None, image=(prefix, tokens), grid=(rows, count // rows)
            )
    raise InputError(
        f"cannot lay {tokens} tokens out as image patches of a {height}×{width} image",
        "pass patch_size= or token_layout=TokenLayout(image=(start, stop), grid=(rows, cols))",
    )


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×1×h×w → B×1×H×W, bilinear (how Grad-CAM and rollout maps are laid over the image)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
