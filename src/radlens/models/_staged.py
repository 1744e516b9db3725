"""Freezing by stages, shared by the image and the text towers."""

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
