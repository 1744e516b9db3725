"""Occlusion (Zeiler & Fergus 2014) via captum: slide a ``window`` over the image with ``stride``, replace it
with the ``baseline`` and record how much the score drops. Signed; model-agnostic; costs one forward per
window position.
"""

from __future__ import annotations

from typing import Any

import torch

from radlens.core import InputError
from radlens.explain.methods._common import Context, MethodResult, resolve_baseline


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def run_occlusion(ctx: Context) -> MethodResult:
    """Score drop when each window is occluded, averaged over the windows covering each pixel."""
    from captum.attr import Occlusion

    image = ctx.image
    assert ctx.image_index is not None
    window, stride = _pair(ctx.options["window"]), _pair(ctx.options["stride"])
    height, width = image.shape[2], image.shape[3]
    if window[0] > height or window[1] > width:
        raise InputError(
            f"occlusion window {window} is larger than the {height}×{width} image",
            f"pass window= at most {min(height, width)}",
        )
    baseline = resolve_baseline(ctx.options["baseline"], image, ctx.options["blur_sigma"])
    channels = image.shape[1]
    score_fn = ctx.image_score_fn()
    first: list[torch.Tensor] = []

    def forward(x: torch.Tensor, *others: Any) -> torch.Tensor:
        scores = score_fn(x, *others)
        if not first:  # captum evaluates the unoccluded input first
            first.append(scores)
        return scores

    with torch.no_grad():
        attribution = Occlusion(forward).attribute(
            image,
            sliding_window_shapes=(channels, *window),
            strides=(channels, *stride),
            baselines=baseline,
            additional_forward_args=ctx.others(ctx.image_index) or None,
            perturbations_per_eval=int(ctx.options["internal_batch_size"] or 16),
        )
    # captum normalises by the window counts in float32 (``.float()``), so float64 inputs get float32 values back.
    attribution = attribution.detach().to(image.dtype)
    diagnostics = {"window": window, "stride": stride}
    return MethodResult(attribution=attribution, diagnostics=diagnostics, scores=first[0] if first else None)
