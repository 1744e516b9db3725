"""Gradient family: gradient, sensitivity, simple Taylor, SmoothGrad, integrated gradients.

SmoothGrad and integrated gradients come from captum (``NoiseTunnel``, ``IntegratedGradients``,
``LayerIntegratedGradients`` for text through the embedding layer); the one-gradient methods are a single
``torch.autograd.grad`` and need no library.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radlens.core import InputError
from radlens.explain.methods._common import Context, MethodResult, find_module, resolve_baseline


def _input_gradient(ctx: Context, image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂score/∂image, scores) for every batch item (items are independent, so one backward suffices)."""
    index = ctx.image_index
    x = (ctx.image if image is None else image).detach().requires_grad_(True)
    assert index is not None
    with torch.enable_grad():
        scores = ctx.target(ctx.run((index, x)))
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


def run_gradient(ctx: Context) -> MethodResult:
    """Plain gradient saliency ∂f/∂x (signed)."""
    grad, scores = _input_gradient(ctx)
    return MethodResult(attribution=grad, scores=scores)


def run_sensitivity(ctx: Context) -> MethodResult:
    """Sensitivity analysis R_i = (∂f/∂x_i)²: sums to ‖∇f‖² (unsigned; says what changes f, not why)."""
    grad, scores = _input_gradient(ctx)
    sensitivity = grad.pow(2)
    norm2 = grad.flatten(1).pow(2).sum(1)
    return MethodResult(
        attribution=sensitivity, scores=scores, diagnostics={"gradient_norm2": norm2.tolist()}
    )


def run_taylor(ctx: Context) -> MethodResult:
    """Simple Taylor decomposition R = ∇f(x) ⊙ (x − x̃) around the root point x̃ (``root``).

    For a bias-free ReLU network f is positively homogeneous, so at root 0 the relevances sum to f(x).
    """
    image = ctx.image
    root = resolve_baseline(ctx.options["root"], image, ctx.options["blur_sigma"])
    grad, scores = _input_gradient(ctx)
    attribution = grad * (image - root)
    error = (attribution.flatten(1).sum(1) - scores).abs()
    return MethodResult(
        attribution=attribution,
        scores=scores,
        diagnostics={"sum_minus_score": error.tolist()},
    )


def run_smoothgrad(ctx: Context) -> MethodResult:
    """SmoothGrad (Smilkov et al. 2017) via captum: the gradient averaged over noisy copies of the input.

    ``noise`` is the noise standard deviation as a fraction of each image's value range; ``n_samples`` the
    number of copies; ``seed`` makes it reproducible; ``internal_batch_size`` caps the images per forward.
    Each image is smoothed on its own, with its own noise level and the noise drawn from ``seed``, so its
    map does not depend on the other images in the batch. The caller's random state is left as it was.
    """
    from captum.attr import NoiseTunnel, Saliency

    image = ctx.image
    assert ctx.image_index is not None
    index = ctx.image_index
    span = (image.flatten(1).amax(1) - image.flatten(1).amin(1)).clamp(min=1e-12)
    stdevs = [float(ctx.options["noise"]) * float(value) for value in span]
    samples = int(ctx.options["n_samples"])
    per_pass = min(samples, int(ctx.options["internal_batch_size"] or samples))
    forward = ctx.image_score_fn()
    others = ctx.others(index)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    maps = []
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        for item, stdev in enumerate(stdevs):
            torch.manual_seed(int(ctx.options["seed"]))
            maps.append(
                NoiseTunnel(Saliency(forward)).attribute(
                    image[item : item + 1],
                    nt_type="smoothgrad",
                    nt_samples=samples,
                    nt_samples_batch_size=per_pass,
                    stdevs=stdev,
                    abs=False,
                    additional_forward_args=_item_args(others, item, image.shape[0]) or None,
                )
            )
    return MethodResult(attribution=torch.cat(maps).detach(), diagnostics={"noise_std": stdevs})


def _item_args(others: tuple[Any, ...], item: int, batch: int) -> tuple[Any, ...]:
    """The extra inputs for batch item ``item``: per-item tensors (first dimension ``batch``) sliced."""
    return tuple(
        value[item : item + 1]
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch
        else value
        for value in others
    )


def _embedding_layer(ctx: Context) -> tuple[str, nn.Module]:
    name = ctx.options["embedding_layer"]
    if name:
        return name, find_module(ctx.model, name, option="embedding_layer")
    getter = getattr(ctx.model, "get_input_embeddings", None)
    if callable(getter):
        found = getter()
        for module_name, module in ctx.model.named_modules():
            if module is found:
                return module_name, module
    for module_name, module in ctx.model.named_modules():
        if isinstance(module, nn.Embedding):
            return module_name, module
    raise InputError("cannot find the token embedding layer for text attribution", "pass embedding_layer=")


def _pad_baseline(ctx: Context, ids: torch.Tensor) -> torch.Tensor:
    """PAD everywhere, except tokens listed in ``keep_token_ids`` (e.g. CLS/SEP) stay as they are."""
    pad = ctx.options["pad_token_id"]
    if pad is None:
        pad = getattr(getattr(ctx.model, "config", None), "pad_token_id", None)
    baseline = torch.full_like(ids, int(pad or 0))
    for token in ctx.options["keep_token_ids"] or ():
        baseline = torch.where(ids == int(token), ids, baseline)
    return baseline


def _endpoints(
    forward: Any, x: torch.Tensor, baseline: torch.Tensor, others: tuple[Any, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), f(baseline)) from one batched forward pass (the other inputs repeated alongside)."""
    batch = x.shape[0]

    def doubled(item: Any) -> Any:
        is_batch = isinstance(item, torch.Tensor) and item.ndim > 0 and item.shape[0] == batch
        return torch.cat([item, item]) if is_batch else item

    with torch.no_grad():
        try:
            both = forward(torch.cat([x, baseline]), *(doubled(item) for item in others))
        except RuntimeError:  # an extra input was not per item after all: two passes then
            return forward(x, *others), forward(baseline, *others)
    return both[:batch], both[batch:]


def _completeness(attribution: torch.Tensor, scores: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """How far Σ attribution is from f(x) − f(baseline), absolute and relative to that difference."""
    error = (attribution.flatten(1).sum(1) - (scores - reference)).abs()
    span = (scores - reference).abs().clamp(min=1e-12)
    return {"completeness_error": error.tolist(), "completeness_relative": (error / span).tolist()}


def run_integrated_gradients(ctx: Context) -> MethodResult:
    """Integrated gradients (Sundararajan et al. 2017) via captum.

    Images are integrated from ``baseline`` to the input; token ids through the embedding layer
    (``LayerIntegratedGradients``) from a PAD-token sequence. With both inputs, each modality is
    integrated with the other held at its actual value, so each has its own completeness check:
    Σ attribution = f(input) − f(baseline) up to the reported ``completeness_error``.
    """
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    options = ctx.options
    common = {"n_steps": int(options["n_steps"]), "method": options["integration"]}
    if options["internal_batch_size"]:
        common["internal_batch_size"] = int(options["internal_batch_size"])
    result = MethodResult(attribution=None)
    with torch.enable_grad():
        if ctx.image_index is not None:
            image = ctx.image
            others = ctx.others(ctx.image_index)
            baseline = resolve_baseline(options["baseline"], image, options["blur_sigma"])
            forward = ctx.image_score_fn()
            attribution = (
                IntegratedGradients(forward)
                .attribute(image, baselines=baseline, additional_forward_args=others or None, **common)
                .detach()
            )
            scores, reference = _endpoints(forward, image, baseline, others)
            result.attribution = attribution
            result.scores = scores
            result.diagnostics.update(_completeness(attribution, scores, reference))
        if ctx.text_index is not None:
            text_index = ctx.text_index
            ids = ctx.token_ids
            name, layer = _embedding_layer(ctx)
            pad_ids = _pad_baseline(ctx, ids)

            def forward_text(token_ids: torch.Tensor, *others: Any) -> torch.Tensor:
                inputs = list(others)
                inputs.insert(text_index, token_ids)
                return ctx.target(ctx.model(*inputs))

            others = ctx.others(text_index)
            embedding_attr = LayerIntegratedGradients(forward_text, layer).attribute(
                ids, baselines=pad_ids, additional_forward_args=others or None, **common
            )
            scores, reference = _endpoints(forward_text, ids, pad_ids, others)
            embedding_attr = embedding_attr.detach()
            token_scores = embedding_attr.sum(-1) if embedding_attr.ndim == 3 else embedding_attr
            result.token_scores = token_scores
            result.layers[name] = embedding_attr
            text_check = _completeness(token_scores, scores, reference)
            result.diagnostics.update({f"text_{key}": value for key, value in text_check.items()})
            if result.attribution is None:
                result.attribution = token_scores
                result.scores = scores
    return result
