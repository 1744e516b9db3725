"""Freezing by stages, shared by the image and the text towers, and a block-scoped eval mode."""

from __future__ import annotations

from typing import Self

from torch import nn


class StagedModule(nn.Module):
    """A module built of stages (input to output) of which only the last k may be trained.

    Frozen stages get no gradients and stay in eval mode whatever ``train()`` is called with: no
    dropout, fixed BatchNorm statistics, so their outputs are fixed features.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frozen: list[nn.Module] = []

    def stages(self) -> list[nn.Module]:
        """The blocks from input to output; freezing counts from the end of this list."""
        raise NotImplementedError

    def freeze(self, trainable_last: int | None) -> None:
        """Freeze all but the last ``trainable_last`` stages (``None``: train everything; 0: nothing)."""
        stages = self.stages()
        keep = len(stages) if trainable_last is None else max(0, min(trainable_last, len(stages)))
        self._frozen = stages[: len(stages) - keep]
        for index, stage in enumerate(stages):
            stage.requires_grad_(index >= len(stages) - keep)
        self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        for stage in self._frozen:
            stage.eval()
        return self


class eval_mode:
    """Put a module and its children in eval mode for a block, then restore each one's own mode.

    Only the modules in training mode are touched (each flag set directly): ``nn.Module.train`` walks
    and re-sets all ~600 submodules of the towers, which cost a third of a short query's time.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.switched: list[nn.Module] = []

    def __enter__(self) -> None:
        self.switched = [module for module in self.module.modules() if module.training]
        for module in self.switched:
            module.training = False

    def __exit__(self, *exc: object) -> None:
        for module in self.switched:
            module.training = True
