"""Grad-CAM and Grad-CAM++ on any layer: a conv feature map or a transformer's token sequence.

Hand-written (a forward hook and one gradient) because pytorch-grad-cam needs torchvision; checked in the
tests against Grad-CAM computed by hand on a model whose gradients are known in closed form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radlens.core import InputError
from radlens.explain.methods._common import (
    Context,
    MethodResult,
    TokenLayout,
    declared_layout,
    find_module,
    infer_patch_size,
    layer_output,
    token_grid,
    upsample,
)


def default_layer(model: nn.Module) -> str:
    """The layer Grad-CAM uses when none is given.

    ``model.cam_layer`` or ``model.feature_layer`` if the model names one, else the last Conv2d, else the
    last block of the last ``ModuleList`` (a transformer's final layer).
    """
    for attribute in ("cam_layer", "feature_layer"):
        name = getattr(model, attribute, None)
        if isinstance(name, str) and name:
            return name
    named = list(model.named_modules())
    convs = [name for name, module in named if isinstance(module, nn.Conv2d)]
    lists = [(name, module) for name, module in named if isinstance(module, nn.ModuleList) and len(module)]
    patchify = [name for name in convs if _is_patchify(dict(named)[name])]
    if convs and not (lists and convs == patchify):
        return convs[-1]
    if lists:
        name, blocks = lists[-1]
        return f"{name}.{len(blocks) - 1}"
    raise InputError(
        "cannot choose a Grad-CAM layer: the model has no conv layer or block list", "pass layer="
    )


def _is_patchify(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.kernel_size[0] > 1


def _as_grid(tensor: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """B×T×D tokens → B×D×rows×cols image-patch grid (prefix and text tokens dropped)."""
    assert layout.image is not None and layout.grid is not None
    start, stop = layout.image
    patches = tensor[:, start:stop]
    return patches.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], *layout.grid)


def _cam_weights(activations: torch.Tensor, grads: torch.Tensor, plus: bool) -> torch.Tensor:
    """Channel weights: mean gradient (Grad-CAM) or the Grad-CAM++ weighting of positive gradients."""
    if not plus:
        return grads.mean(dim=(2, 3))
    # Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed form that the reference
    # implementations (pytorch-grad-cam, the authors' code) use.
    grads2 = grads.pow(2)
    grads3 = grads2 * grads
    summed = activations.sum(dim=(2, 3), keepdim=True)
    alpha = grads2 / (2 * grads2 + summed * grads3 + 1e-7)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


def run(ctx: Context, plus: bool = False) -> MethodResult:
    """Grad-CAM (``plus=False``) or Grad-CAM++ of ``ctx.target`` at ``layer`` for every batch item."""
    image = ctx.image
    name = ctx.options["layer"] or default_layer(ctx.model)
    module = find_module(ctx.model, name)
    captured: dict[str, Any] = {}

    def hook(_: nn.Module, __: Any, output: Any) -> Any:
        tensor = layer_output(output)
        # Hand a copy downstream so later in-place ops cannot overwrite what we differentiate against;
        # ∂score/∂copy = ∂score/∂tensor. When everything up to the layer is frozen (a fusion model's
        # aligner) the layer output is outside the graph: the copy then starts the graph there.
        copy = tensor.clone()
        if not copy.requires_grad:
            copy.requires_grad_(True)
        captured["activations"] = copy
        return copy if isinstance(output, torch.Tensor) else (copy, *output[1:])

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            output = ctx.run()
            scores = ctx.target(output)
            if "activations" not in captured:
                raise InputError(f"layer {name!r} was not used in the forward pass", "pass another layer=")
            activations = captured["activations"]
            (grads,) = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
            if grads is None:
                raise InputError(
                    f"the explained score does not depend on layer {name!r}", "pass an earlier layer="
                )
    finally:
        handle.remove()
    diagnostics: dict[str, Any] = {"layer": name}
    if activations.ndim == 3:
        layout = token_grid(
            activations.shape[1],
            (image.shape[2], image.shape[3]),
            ctx.options["patch_size"] or infer_patch_size(ctx.model),
            declared_layout(ctx.options["token_layout"], ctx.model, output),
        )
        activations, grads = _as_grid(activations, layout), _as_grid(grads, layout)
        diagnostics.update(token_grid=layout.grid, image_tokens=layout.image)
    elif activations.ndim != 4:
        raise InputError(
            f"Grad-CAM needs a B×C×h×w or B×T×D layer output, {name!r} gives {tuple(activations.shape)}",
            "pass a conv layer or a transformer block as layer=",
        )
    weights = _cam_weights(activations.detach(), grads.detach(), plus)
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", weights, activations.detach())).unsqueeze(1)
    attribution = upsample(cam, (image.shape[2], image.shape[3]))
    return MethodResult(
        attribution=attribution,
        heatmap=attribution[:, 0],
        layers={name: cam},
        diagnostics=diagnostics,
        scores=scores.detach(),
    )


def run_gradcam(ctx: Context) -> MethodResult:
    """Grad-CAM (Selvaraju et al. 2017)."""
    return run(ctx, plus=False)


def run_gradcam_pp(ctx: Context) -> MethodResult:
    """Grad-CAM++ (Chattopadhay et al. 2018)."""
    return run(ctx, plus=True)
