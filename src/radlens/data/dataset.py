"""PyTorch datasets over :class:`StudyRecord` s (image + report + labels) and over plain image paths.

Items:
- :class:`ImageReportDataset` has one item per study, using the study's first image (in record
  order) whose view is in ``view_filter``; ``per_image=True`` gives one item per such image instead.
  The default filter is the frontal views PA and AP plus images whose view is unknown (``None``;
  readers that cannot tell the view leave it unset, and dropping those would silently empty such
  datasets). Studies with no matching image are left out and recorded in ``dataset.problems``.
- :class:`ImageDataset` has one item per image path (image-only work: diffusion, slices).

Unreadable images: ``__init__`` does no I/O by default. With ``validate=True`` it reads every image
header (:func:`probe_image`) and leaves out, and records as a :class:`Problem`, any that fail. A file
that still fails when loaded (e.g. a truncated JPEG has a valid header) raises
:class:`ImageDecodeError` naming it (``on_error="raise"``, the default), or with ``on_error="skip"``
is logged as a warning and returned as ``None``, which :func:`collate` drops (counting it in the
batch's ``"skipped"``), so a long epoch is not lost to one bad file.

Augmentation seeds: with ``seed=None`` each item draws its augmentation seed from torch's RNG, which
PyTorch seeds per DataLoader worker and per epoch (so ``torch.manual_seed`` makes a run reproducible
for a given ``num_workers``). With an integer ``seed`` an item's augmentation depends only on
``(seed, epoch, index)`` — independent of workers — and :meth:`set_epoch` must be called every epoch
(before the DataLoader's iterator is created; not with ``persistent_workers``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from radlens.data.cache import ImageCache
from radlens.data.images import ImageDecodeError, load_image, probe_image
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, Problem, StudyRecord
from radlens.data.transforms import Augmentation, ResizePolicy, default_normalization, resize, to_tensor

#: Views kept by default: frontal (PA, AP) and unknown.
DEFAULT_VIEWS: tuple[str | None, ...] = ("PA", "AP", None)

OnError = Literal["raise", "skip"]
_log = logging.getLogger("radlens.data")


class _ImageLoader:
    """Path → normalised tensor: cache or decode, resize, augment, to_tensor. Shared by both datasets."""

    def __init__(
        self,
        policy: ResizePolicy,
        channels: int,
        augment: Augmentation | None,
        cache: ImageCache | None,
        mean: float | Sequence[float] | None,
        std: float | Sequence[float] | None,
        seed: int | None,
        on_error: OnError,
    ) -> None:
        if cache is not None and cache.policy != policy:
            raise ValueError(f"cache policy {cache.policy.key()} differs from dataset policy {policy.key()}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        default_mean, default_std = default_normalization(channels)
        self.policy, self.channels, self.augment, self.cache = policy, channels, augment, cache
        self.mean = default_mean if mean is None else mean
        self.std = default_std if std is None else std
        self.seed, self.on_error, self.epoch = seed, on_error, 0

    def batch_buffer(self, count: int) -> torch.Tensor | None:
        """One ``(count, C, size, size)`` tensor for a batch's images (square policies only).

        In a DataLoader worker it lives in shared memory from the start, so items are written straight
        into what the main process receives: no per-item tensors, no stacking copy, no copy into
        shared memory. Moving 3-channel float batches is most of the cached loader's cost at 224 px.
        """
        if self.policy.mode != "square":
            return None
        shape = (count, self.channels, self.policy.size, self.policy.size)
        if get_worker_info() is None:
            return torch.empty(shape, dtype=torch.float32)
        # Allocate straight in shared memory, as default_collate does; share_memory_() on a fresh
        # tensor would also work but first copies it (~20% slower per batch).
        new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
        if new_shared is None:
            return torch.empty(shape, dtype=torch.float32).share_memory_()
        storage = new_shared(math.prod(shape) * 4)
        strides = (math.prod(shape[1:]), shape[2] * shape[3], shape[3], 1)
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)

    def load(self, path: Path, index: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        try:
            # Uncached images keep full precision; the cache holds uint8 (a difference < 0.5/255),
            # which to_tensor converts directly.
            image = self.cache.get(path) if self.cache is not None else resize(load_image(path), self.policy)
        except ImageDecodeError as exc:
            if self.on_error == "raise":
                raise
            _log.warning("skipping unreadable image %s: %s", exc.path, exc.reason)
            return None
        if self.augment is not None:
            if image.dtype == np.uint8:
                image = image.astype(np.float32) / np.float32(255)
            image = self.augment(image, seed=self._item_seed(index))
        return to_tensor(image, self.channels, self.mean, self.std, out=out)

    def _item_seed(self, index: int) -> int:
        if self.seed is None:
            return int(torch.randint(0, 2**31 - 1, ()).item())
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


def _validate(paths: Sequence[Path]) -> list[Problem]:
    problems = []
    for path in paths:
        try:
            probe_image(path)
        except ImageDecodeError as exc:
            problems.append(Problem(str(path), exc.reason))
    return problems


@dataclass(frozen=True, slots=True)
class _Item:
    record: StudyRecord
    image: ImageRecord


class _BatchedItems(Dataset[dict[str, Any] | None]):
    """Items built by ``_item(index, out)``; a DataLoader batch decodes its images into one tensor."""

    loader: _ImageLoader

    def _item(self, index: int, out: torch.Tensor | None = None) -> dict[str, Any] | None:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return self._item(index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any] | None]:
        """A batch of items whose images share one tensor (used by DataLoader; see :func:`collate`)."""
        buffer = self.loader.batch_buffer(len(indices))
        return [
            self._item(index, None if buffer is None else buffer[row]) for row, index in enumerate(indices)
        ]


class ImageReportDataset(_BatchedItems):
    """Items ``{"image", "text", "labels", "study_id", "image_id", "index"}`` for image–report models.

    ``image`` is a float ``(channels, h, w)`` tensor normalised with ``mean``/``std`` (default: ImageNet
    statistics for 3 channels, 0.5/0.5 for 1 channel); ``text`` is ``text_fn(record)`` (default
    :meth:`StudyRecord.report_text`); ``labels`` is a float tensor of the 14 :data:`CHEXPERT_LABELS` in
    order, 1/0/-1 with NaN for blank.
    """

    def __init__(
        self,
        records: Sequence[StudyRecord],
        policy: ResizePolicy,
        channels: int = 3,
        augment: Augmentation | None = None,
        cache: ImageCache | None = None,
        text_fn: Callable[[StudyRecord], str] | None = None,
        view_filter: Collection[str | None] | None = None,
        *,
        per_image: bool = False,
        validate: bool = False,
        on_error: OnError = "raise",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.loader = _ImageLoader(policy, channels, augment, cache, mean, std, seed, on_error)
        self.text_fn = text_fn
        self.problems: list[Problem] = []
        views = _views(view_filter)
        items: list[_Item] = []
        for record in records:
            chosen = [image for image in record.images if _view(image) in views]
            if not chosen:
                named = sorted(view for view in views if view is not None)
                wanted = ", ".join(named + (["unknown"] if None in views else []))
                reason = f"no image with a view in: {wanted}"
                self.problems.append(Problem(f"study {record.study_id}", reason))
                continue
            items.extend(_Item(record, image) for image in (chosen if per_image else chosen[:1]))
        if validate:
            bad = _validate([item.image.path for item in items])
            self.problems.extend(bad)
            failed = {problem.path for problem in bad}
            items = [item for item in items if str(item.image.path) not in failed]
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int, out: torch.Tensor | None = None) -> dict[str, Any] | None:
        item = self.items[index]
        image = self.loader.load(item.image.path, index, out)
        if image is None:
            return None
        record = item.record
        text = self.text_fn(record) if self.text_fn is not None else record.report_text()
        return {
            "image": image,
            "text": text,
            "labels": label_tensor(record),
            "study_id": record.study_id,
            "image_id": item.image.image_id,
            "index": index,
        }

    def paths(self) -> list[Path]:
        """The image path of every item (e.g. for :meth:`ImageCache.build`)."""
        return [item.image.path for item in self.items]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (matters only with an integer ``seed``)."""
        self.loader.epoch = epoch


class ImageDataset(_BatchedItems):
    """Items ``{"image", "path", "index"}``, one per image path; same options as :class:`ImageReportDataset`.

    Defaults to 1 channel normalised to ``[-1, 1]`` (mean 0.5, std 0.5), as generative models expect.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        policy: ResizePolicy,
        channels: int = 1,
        augment: Augmentation | None = None,
        cache: ImageCache | None = None,
        *,
        validate: bool = False,
        on_error: OnError = "raise",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.loader = _ImageLoader(policy, channels, augment, cache, mean, std, seed, on_error)
        self.image_paths = [Path(path) for path in paths]
        self.problems: list[Problem] = []
        if validate:
            self.problems = _validate(self.image_paths)
            failed = {problem.path for problem in self.problems}
            self.image_paths = [path for path in self.image_paths if str(path) not in failed]

    @classmethod
    def from_records(
        cls,
        records: Sequence[StudyRecord],
        policy: ResizePolicy,
        view_filter: Collection[str | None] | None = None,
        **options: Any,
    ) -> ImageDataset:
        """Every image of ``records`` whose view is in ``view_filter`` (default: frontal and unknown)."""
        views = _views(view_filter)
        paths = [image.path for record in records for image in record.images if _view(image) in views]
        return cls(paths, policy, **options)

    def __len__(self) -> int:
        return len(self.image_paths)

    def _item(self, index: int, out: torch.Tensor | None = None) -> dict[str, Any] | None:
        path = self.image_paths[index]
        image = self.loader.load(path, index, out)
        if image is None:
            return None
        return {"image": image, "path": str(path), "index": index}

    def paths(self) -> list[Path]:
        """The image paths, in item order."""
        return list(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (matters only with an integer ``seed``)."""
        self.loader.epoch = epoch


def label_tensor(record: StudyRecord) -> torch.Tensor:
    """The record's 14 CheXpert labels in :data:`CHEXPERT_LABELS` order; NaN where blank."""
    values = [record.labels.get(name) for name in CHEXPERT_LABELS]
    return torch.tensor(
        [math.nan if value is None else float(value) for value in values], dtype=torch.float32
    )


def label_set_codes(labels: torch.Tensor) -> torch.Tensor:
    """One int64 per study naming its set of positive labels (bit ``i``: ``CHEXPERT_LABELS[i]`` is 1).

    ``labels`` is N×14 as :func:`label_tensor` gives it. A study whose labels are all blank (a dataset
    without CheXpert labels) gets -1: its label set is unknown, not empty.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (n, n_labels) tensor, got shape {tuple(labels.shape)}")
    bits = torch.bitwise_left_shift(torch.ones((), dtype=torch.int64), torch.arange(labels.shape[1]))
    codes = ((labels == 1).to(torch.int64) * bits).sum(dim=1)
    return torch.where(torch.isnan(labels).all(dim=1), torch.full_like(codes, -1), codes)


def collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """``default_collate`` after dropping skipped (``None``) items; ``"skipped"`` counts them.

    Images written into one batch tensor by ``__getitems__`` are returned as that tensor, without the
    copy ``torch.stack`` would make. A batch whose items were all skipped is ``{"skipped": n}`` only.
    """
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return {"skipped": skipped}
    if "image" not in kept[0]:
        return {**default_collate(kept), "skipped": skipped}
    rest = default_collate([{key: value for key, value in item.items() if key != "image"} for item in kept])
    return {"image": _stack([item["image"] for item in kept]), **rest, "skipped": skipped}


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(images)``, or a view of their storage when they already lie there in order."""
    first = images[0]
    storage, numel = first.untyped_storage(), first.numel()
    in_place = all(
        image.is_contiguous()
        and image.shape == first.shape
        and image.untyped_storage().data_ptr() == storage.data_ptr()
        and image.storage_offset() == row * numel
        for row, image in enumerate(images)
    )
    if not in_place:
        return torch.stack(images)
    return first.new_empty(0).set_(storage, 0, (len(images), *first.shape), (numel, *first.stride()))


def _view(image: ImageRecord) -> str | None:
    return image.view_position.strip().upper() if image.view_position else None


def _views(view_filter: Collection[str | None] | None) -> tuple[str | None, ...]:
    if view_filter is None:
        return DEFAULT_VIEWS
    if isinstance(view_filter, str):
        view_filter = [view_filter]
    return tuple(view.strip().upper() if view else None for view in view_filter)
