"""Attention rollout (Abnar & Zuidema 2020) for transformers, after Jacob Gildenblat's vit-explain.

Each layer's attention (B×H×T×T) is fused over heads (mean/max/min), the lowest ``discard_ratio`` of its
entries are zeroed (never those in the CLS row or column), the residual path is added and rows are
renormalised, ``Â = (A + I) / 2`` then ``Â / Â.sum(-1)``, and the layers are multiplied from the first to
the last. The CLS row of the product says how much each input token flows into the CLS output; it is
mapped back onto the image patch grid and onto the text tokens.

Deliberate differences from vit-explain: rows are renormalised per row (vit-explain divides by a
broadcast row-sum vector, i.e. column-wise), discarding works per batch item (vit-explain only touches
item 0), and the whole CLS row/column is protected (vit-explain protects only the CLS→CLS entry).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from radlens.core import InputError
from radlens.explain.methods._common import (
    Context,
    MethodResult,
    TokenLayout,
    declared_layout,
    token_grid,
    upsample,
)


def rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    cls_index: int | None = 0,
) -> torch.Tensor:
    """The B×T×T rollout of per-layer B×H×T×T attentions (first layer first)."""
    result: torch.Tensor | None = None
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        elif head_fusion == "max":
            fused = attention.amax(dim=1)
        else:
            fused = attention.amin(dim=1)
        batch, tokens, _ = fused.shape
        if discard_ratio > 0:
            fused = fused.clone()
            flat = fused.view(batch, -1)
            ranking = flat.clone()
            if cls_index is not None:
                protected = torch.zeros(tokens, tokens, dtype=torch.bool, device=fused.device)
                protected[cls_index, :] = True
                protected[:, cls_index] = True
                ranking[:, protected.view(-1)] = torch.inf
            count = min(int(flat.shape[1] * discard_ratio), int(torch.isfinite(ranking[0]).sum()))
            if count:
                lowest = ranking.topk(count, dim=-1, largest=False).indices
                flat.scatter_(1, lowest, 0.0)
        eye = torch.eye(tokens, dtype=fused.dtype, device=fused.device)
        mixed = (fused + eye) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise InputError(
            "attention rollout got no attention matrices", "return at least one layer's attentions"
        )
    return result


def _attentions_from_output(output: Any) -> Any:
    if isinstance(output, Mapping):
        return output.get("attentions")
    return getattr(output, "attentions", None)


def _collect_attentions(ctx: Context) -> tuple[list[torch.Tensor], Any]:
    """The per-layer attentions, and the model output if it was computed on the way (else ``None``)."""
    provider = ctx.options["attentions"]
    output = None
    with torch.no_grad():
        if provider is not None:
            found = provider(*ctx.inputs)
        else:
            output = ctx.run()
            found = _attentions_from_output(output)
            accepts = "output_attentions" in inspect.signature(ctx.model.forward).parameters
            if found is None and accepts:
                found = _attentions_from_output(ctx.model(*ctx.inputs, output_attentions=True))
    if not found:
        raise InputError(
            "attention_rollout needs attention matrices and the model returned none (is it a CNN?)",
            "pass attentions=fn(*inputs) -> [B×H×T×T per layer], return .attentions from the model, "
            "or use gradcam / lrp_epsilon for CNNs",
        )
    attentions = list(found)
    for layer, attention in enumerate(attentions):
        if (
            not isinstance(attention, torch.Tensor)
            or attention.ndim != 4
            or attention.shape[-1] != attention.shape[-2]
        ):
            shape = (
                tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
            )
            raise InputError(f"attention of layer {layer} must be B×H×T×T, got {shape}")
    return attentions, output


def run_attention_rollout(ctx: Context) -> MethodResult:
    """Rollout mapped to the image (B×1×H×W, from the patch grid) and the text tokens (B×T_text)."""
    attentions, output = _collect_attentions(ctx)
    tokens = attentions[0].shape[-1]
    layout = declared_layout(ctx.options["token_layout"], ctx.model, output)
    if ctx.image_index is not None and (layout is None or layout.image is None):
        image = ctx.image
        layout = token_grid(tokens, (image.shape[2], image.shape[3]), ctx.options["patch_size"], layout)
    if layout is None:
        layout = TokenLayout(cls_index=0, text=(0, tokens))
    matrix = rollout(
        attentions, ctx.options["head_fusion"], float(ctx.options["discard_ratio"]), layout.cls_index
    )
    flow = matrix[:, layout.cls_index] if layout.cls_index is not None else matrix.mean(dim=1)
    result = MethodResult(
        attribution=None, layers={"rollout": matrix}, diagnostics={"layers": len(attentions)}
    )
    if output is not None:
        with torch.no_grad():
            result.scores = ctx.target(output)
    if layout.image is not None and layout.grid is not None:
        start, stop = layout.image
        grid = flow[:, start:stop].reshape(flow.shape[0], 1, *layout.grid)
        size = (ctx.image.shape[2], ctx.image.shape[3]) if ctx.image_index is not None else layout.grid
        result.attribution = upsample(grid, size)
        result.heatmap = result.attribution[:, 0]
        result.layers["patch_grid"] = grid
    if layout.text is not None:
        start, stop = layout.text
        result.token_scores = flow[:, start:stop]
        if result.attribution is None:
            result.attribution = result.token_scores
    return result
