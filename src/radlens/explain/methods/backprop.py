"""Modified backpropagation: guided backprop and deconvnet, via captum.

Both replace the backward pass of every ``nn.ReLU`` module: guided backprop keeps the forward ReLU mask
and also zeroes negative gradients; deconvnet (Zeiler & Fergus 2014) ignores the forward mask and only
rectifies the backward signal. Max-pooling routes the signal to the forward winner (the "switches") and
convolutions backpropagate through their transposed filters, which is exactly the gradient, so captum's
ReLU hooks implement deconvnet completely. ReLUs called functionally are not modified.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from radlens.core import InputError
from radlens.explain.methods._common import Context, MethodResult
from radlens.explain.targets import Target


class _Scored(nn.Module):
    """``target(model(*inputs))`` as a module, so captum hooks the model's ReLUs and sees B scores."""

    def __init__(self, model: nn.Module, target: Target, index: int, inputs: tuple[Any, ...]) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.index = index
        self.inputs = inputs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        inputs = list(self.inputs)
        inputs[self.index] = image
        scores = self.target(self.model(*inputs))
        self.scores = scores.detach()
        return scores


def _with_relu6(base: type) -> type:
    """A captum ReLU-modifying attribution that also hooks ``nn.ReLU6`` (same rule, same hook)."""
    from captum._utils.common import _register_backward_hook

    class WithReLU6(base):
        def _register_hooks(self, module: nn.Module) -> None:
            if isinstance(module, nn.ReLU6):
                self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))
            else:
                super()._register_hooks(module)

    return WithReLU6


def _run(ctx: Context, kind: str) -> MethodResult:
    from captum.attr import Deconvolution, GuidedBackprop

    image = ctx.image
    assert ctx.image_index is not None
    if not any(isinstance(module, nn.ReLU | nn.ReLU6) for module in ctx.model.modules()):
        raise InputError(
            f"{kind} modifies nn.ReLU / nn.ReLU6 modules and the model has none",
            "use gradient, integrated_gradients or an lrp_* method for this model",
        )
    scored = _Scored(ctx.model, ctx.target, ctx.image_index, ctx.inputs)
    algorithm = _with_relu6(GuidedBackprop if kind == "guided_backprop" else Deconvolution)(scored)
    with torch.enable_grad(), warnings.catch_warnings():
        # captum announces every time that it hooks ReLUs and that it made the input require grad.
        warnings.filterwarnings("ignore", message=".*(backward hooks on ReLU|did not already require).*")
        attribution = algorithm.attribute(image.detach().requires_grad_(True))
    return MethodResult(attribution=attribution.detach(), scores=scored.scores)


def run_guided_backprop(ctx: Context) -> MethodResult:
    """Guided backpropagation (Springenberg et al. 2015), signed."""
    return _run(ctx, "guided_backprop")


def run_deconvnet(ctx: Context) -> MethodResult:
    """Deconvnet (Zeiler & Fergus 2014), signed."""
    return _run(ctx, "deconvnet")
