"""Activation maximisation: the input a model finds most typical of a class.

Not an attribution of a given input: starting from small Gaussian noise shaped like the input image, Adam
ascends ``log p(class | x) − λ‖x‖²`` (``l2`` = λ) for ``n_steps``. ``log_prob`` says how the class logit
becomes a log-probability: ``sigmoid`` (multi-label models such as the CheXpert classifier),
``softmax`` (single-label) or ``none`` (maximise the target score itself, for any target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radlens.core import InputError
from radlens.explain.methods._common import Context, MethodResult
from radlens.explain.targets import ClassTarget


def _objective(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """Per-item log p(class | x) (or the raw target score with ``log_prob="none"``)."""
    assert ctx.image_index is not None
    output = ctx.run((ctx.image_index, x))
    mode = ctx.options["log_prob"]
    if mode == "none":
        return ctx.target(output)
    if not isinstance(ctx.target, ClassTarget):
        raise InputError(
            f"log_prob={mode!r} needs a ClassTarget", "pass a class index as target or log_prob='none'"
        )
    logits = ctx.target.logits(output)
    if mode == "sigmoid":
        return F.logsigmoid(logits[:, ctx.target.index])
    return F.log_softmax(logits, dim=1)[:, ctx.target.index]


def run_activation_maximisation(ctx: Context) -> MethodResult:
    """Gradient ascent from noise; returns the synthesised B×C×H×W images as the attribution."""
    image = ctx.image
    generator = torch.Generator().manual_seed(int(ctx.options["seed"]))
    start = torch.randn(image.shape, generator=generator, dtype=image.dtype) * float(
        ctx.options["init_scale"]
    )
    x = start.clone().to(image.device).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=float(ctx.options["lr"]))
    l2 = float(ctx.options["l2"])
    history: list[float] = []
    with torch.enable_grad():
        for _ in range(int(ctx.options["n_steps"])):
            log_p = _objective(ctx, x)
            objective = log_p - l2 * x.flatten(1).pow(2).sum(1)
            history.append(float(objective.detach().mean()))
            # Differentiate with respect to the image only: ``.backward()`` would also accumulate
            # gradients into the model's parameters (the user's ``.grad``, e.g. mid-training).
            (x.grad,) = torch.autograd.grad(-objective.sum(), x)
            optimiser.step()
        with torch.no_grad():
            final_log_p = _objective(ctx, x)
            start_log_p = _objective(ctx, start.to(image.device))
    diagnostics = {
        "log_p_start": start_log_p.tolist(),
        "log_p_end": final_log_p.tolist(),
        "objective_first_step": history[0] if history else None,
        "objective_last_step": history[-1] if history else None,
    }
    return MethodResult(attribution=x.detach(), scores=final_log_p.detach(), diagnostics=diagnostics)
