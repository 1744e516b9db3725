"""Negative reports for image–text matching (ITM): which report to pair with an image as "not related".

Strategies (by the image's own CheXpert labels; a label is positive when its value is 1):

- ``R``: any other report, uniformly.
- ``NE``: a report whose positive label set is Not Equal to the image's
  (:func:`radlens.data.labeler.identical_label_sets` is false).
- ``NI``: a report with No positive label In common with the image
  (:func:`radlens.data.labeler.no_positive_in_common` is true). Two reports without any positive
  label qualify, as the labeler's helper says.

Each study's positive set is packed into a 14-bit mask once, and studies are grouped by mask (label-set
id), so a draw costs O(1) for ``R`` and ``NE`` (one uniform draw over the complement of the item's
group) and O(log G) for ``NI`` (G distinct label sets, at most 2^14; the compatible groups of a label
set are computed on first use). The bit operations reproduce the labeler's relation helpers exactly
(the tests check them against each other). An item with no valid negative — e.g. under ``NI`` a study
positive for "No Finding" when every other study is too — falls back to ``R``; such items are counted
(:attr:`NegativeSampler.fallback_items`) and every fallback draw is flagged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np

from radlens.core import InputError
from radlens.data.schema import CHEXPERT_LABELS, POSITIVE, LabelValue

Strategy = Literal["R", "NE", "NI"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def positive_mask(labels: Mapping[str, LabelValue]) -> int:
    """Bit ``i`` set when ``CHEXPERT_LABELS[i]`` is positive (``== 1``) in ``labels``."""
    return sum(1 << bit for bit, name in enumerate(CHEXPERT_LABELS) if labels.get(name) == POSITIVE)


class NegativeSampler:
    """Draw a negative report index for any item, under one strategy; deterministic given the ``rng``."""

    def __init__(self, label_sets: Sequence[Mapping[str, LabelValue]], strategy: Strategy) -> None:
        if strategy not in STRATEGIES:
            raise InputError(f"unknown negative strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
        if len(label_sets) < 2:
            raise InputError("ITM needs at least 2 studies to draw negative reports from")
        self.strategy = strategy
        masks = np.array([positive_mask(labels) for labels in label_sets], dtype=np.int64)
        self.masks = masks
        self.group_masks, self.group_of = np.unique(masks, return_inverse=True)
        # Items sorted by group: group g occupies order[start[g] : start[g] + size[g]].
        self.order = np.argsort(self.group_of, kind="stable")
        self.size = np.bincount(self.group_of, minlength=len(self.group_masks))
        self.start = np.concatenate([[0], np.cumsum(self.size)[:-1]])
        self.rank = np.empty(len(masks), dtype=np.int64)  # position of each item within its group
        self.rank[self.order] = np.arange(len(masks)) - self.start[self.group_of[self.order]]
        self._compatible: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.valid_counts = np.array([self._valid_count(i) for i in range(len(masks))], dtype=np.int64)
        #: How many items have no valid negative under this strategy and always fall back to ``R``.
        self.fallback_items = int((self.valid_counts == 0).sum())

    def __len__(self) -> int:
        return len(self.masks)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[int, bool]:
        """A negative for item ``index`` and whether it fell back to ``R`` (no valid negative exists)."""
        if self.strategy == "R" or self.valid_counts[index] == 0:
            other = int(rng.integers(len(self.masks) - 1))
            return other + (other >= index), self.strategy != "R"
        group = int(self.group_of[index])
        if self.strategy == "NE":  # uniform over every item outside the item's own group
            position = int(rng.integers(len(self.masks) - self.size[group]))
            if position >= self.start[group]:
                position += int(self.size[group])
            return int(self.order[position]), False
        return self._sample_disjoint(index, group, rng), False

    # --- NI -------------------------------------------------------------------------------------------

    def _groups_without_overlap(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """The groups sharing no positive with ``group`` and their cumulative sizes (cached)."""
        if group not in self._compatible:
            ids = np.flatnonzero((self.group_masks & self.group_masks[group]) == 0)
            self._compatible[group] = (ids, np.cumsum(self.size[ids]))
        return self._compatible[group]

    def _valid_count(self, index: int) -> int:
        group = int(self.group_of[index])
        if self.strategy == "R":
            return len(self.masks) - 1
        if self.strategy == "NE":
            return len(self.masks) - int(self.size[group])
        ids, cumulative = self._groups_without_overlap(group)
        total = int(cumulative[-1]) if len(ids) else 0
        return total - int(self.group_masks[group] == 0)  # an empty set is disjoint from itself: skip self

    def _sample_disjoint(self, index: int, group: int, rng: np.random.Generator) -> int:
        ids, cumulative = self._groups_without_overlap(group)
        position = int(rng.integers(self.valid_counts[index]))
        if self.group_masks[group] == 0:  # the item's own group is among the candidates: skip the item
            where = int(np.searchsorted(ids, group))
            before = int(cumulative[where - 1]) if where else 0
            if position >= before + int(self.rank[index]):
                position += 1
        slot = int(np.searchsorted(cumulative, position, side="right"))
        offset = position - (int(cumulative[slot - 1]) if slot else 0)
        return int(self.order[self.start[ids[slot]] + offset])
