"""Optimiser and learning-rate schedule: AdamW with decoupled weight decay, linear warm-up, cosine decay.

Both come from libraries (``torch.optim.AdamW`` and ``transformers.get_cosine_schedule_with_warmup``);
this module only decides which parameters are decayed and checks the step counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group (matrices, conv kernels, embeddings) and an
    undecayed one (biases, norm scales, scalars such as the logit scale), as in nanoGPT / BERT.

    Frozen parameters (``requires_grad=False``) are left out, so AdamW keeps no state for them.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (see :func:`param_groups`)."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the base lr over ``warmup_steps``, then a half cosine to 0 at ``max_steps``.

    The scheduler is stepped once per optimiser step (not per micro-batch or per process).
    """
    if max_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need max_steps >= 1 and warmup_steps >= 0, got {max_steps} and {warmup_steps}")
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)
