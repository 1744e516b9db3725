"""What an explanation explains: a target maps the model's output to one score per batch item.

Every method differentiates (or perturbs) ``target(model(*inputs))``, so any model plugs in with a
target that knows how to read its output: a class logit of a classifier, the similarity of a dual
encoder, the "related" logit of an image-text matching head, pixels of a segmentation map.

A target is any object with ``__call__(output) -> B`` scores and a ``description``. LRP also asks for
``initial_relevance(output)``: the relevance placed on the output tensors before propagation. Targets
that do not define it get ``output ⊙ ∂score/∂output`` (the score itself for a class logit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from radlens.core import InputError

PixelInit = Literal["logits", "probabilities", "ones"]


@runtime_checkable
class Target(Protocol):
    """Maps a model output to a score tensor of shape (B,); ``description`` is kept as provenance."""

    description: str

    def __call__(self, output: Any) -> torch.Tensor: ...


def output_tensors(output: Any) -> list[torch.Tensor]:
    """All tensors in a model output (a tensor, tuple/list, dict, dataclass or ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in output_tensors(value)]
    if isinstance(output, list | tuple):
        return [t for value in output for t in output_tensors(value)]
    if is_dataclass(output) and not isinstance(output, type):
        return [t for item in fields(output) for t in output_tensors(getattr(output, item.name))]
    return []


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model output: the tensor itself, ``.logits`` / ``["logits"]``, or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return logits_of(output["logits"])
    if getattr(output, "logits", None) is not None:
        return logits_of(output.logits)
    if isinstance(output, list | tuple) and output:
        return logits_of(output[0])
    raise InputError(
        f"cannot find logits in a model output of type {type(output).__name__}",
        "return a tensor or an object with .logits, or pass ScoreTarget(fn) that reads the output",
    )


def _ancestors(tensor: torch.Tensor) -> set[Any]:
    """Every autograd node ``tensor`` was computed from."""
    seen: set[Any] = set()
    stack = [tensor.grad_fn] if tensor.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def initial_relevance(target: Target, output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(output tensor, relevance placed on it) pairs that start LRP for ``target``.

    Without a target-specific rule: ``t ⊙ ∂score/∂t`` on the output tensors the score reads. An output
    tensor that another one was computed from (embeddings under a similarity matrix) gets nothing, or
    its relevance would be counted twice.
    """
    custom = getattr(target, "initial_relevance", None)
    if callable(custom):
        return list(custom(output))
    tensors = list({id(t): t for t in output_tensors(output) if t.requires_grad}.values())
    score = target(output)
    grads = torch.autograd.grad(score.sum(), tensors, retain_graph=True, allow_unused=True)
    used = [(t, g) for t, g in zip(tensors, grads, strict=True) if g is not None]
    upstream = set().union(*(_ancestors(t) for t, _ in used)) if len(used) > 1 else set()
    return [(t, (t * g).detach()) for t, g in used if t.grad_fn is None or t.grad_fn not in upstream]


class ClassTarget:
    """The logit of one class. ``index`` is a position, or a label name looked up in ``labels``."""

    def __init__(self, index: int | str, labels: Sequence[str] | None = None) -> None:
        if isinstance(index, str):
            if labels is None or index not in labels:
                known = ", ".join(labels) if labels else "none given"
                raise InputError(
                    f"unknown class label {index!r}", f"pass an integer index or one of the labels ({known})"
                )
            self.label: str | None = index
            self.index = list(labels).index(index)
        elif isinstance(index, int) and not isinstance(index, bool):
            self.index = index
            self.label = labels[index] if labels is not None and 0 <= index < len(labels) else None
        else:
            raise InputError(f"class index must be an int or a label name, got {type(index).__name__}")
        name = f" ({self.label})" if self.label else ""
        self.description = f"class logit {self.index}{name}"

    def logits(self, output: Any) -> torch.Tensor:
        """The B×C logits, after checking that this class exists."""
        logits = logits_of(output)
        if logits.ndim != 2:
            raise InputError(
                f"ClassTarget needs B×C logits, the model returned shape {tuple(logits.shape)}",
                "use PixelTarget/PixelSetTarget for maps or ScoreTarget(fn) for other outputs",
            )
        classes = logits.shape[1]
        if not 0 <= self.index < classes:
            raise InputError(
                f"class index {self.index} is out of range for a model with {classes} outputs",
                f"pass an index between 0 and {classes - 1}",
            )
        return logits

    def __call__(self, output: Any) -> torch.Tensor:
        return self.logits(output)[:, self.index]

    def initial_relevance(self, output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The class logit on its own output neuron, zero elsewhere."""
        logits = self.logits(output)
        relevance = torch.zeros_like(logits)
        relevance[:, self.index] = logits[:, self.index].detach()
        return [(logits, relevance)]


class ScoreTarget:
    """Any score the user computes from the output, e.g. the cosine similarity of a dual encoder."""

    def __init__(self, fn: Callable[[Any], torch.Tensor], description: str | None = None) -> None:
        if not callable(fn):
            raise InputError("ScoreTarget needs a function output -> scores", "pass a callable")
        self.fn = fn
        self.description = description or f"score {getattr(fn, '__name__', type(fn).__name__)}"

    def __call__(self, output: Any) -> torch.Tensor:
        score = self.fn(output)
        if not isinstance(score, torch.Tensor) or score.ndim != 1:
            shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise InputError(
                f"the ScoreTarget function must return one score per batch item (shape B), got {shape}",
                "reduce the output to a 1-D tensor of length B",
            )
        return score


class PixelSetTarget:
    """A set of output pixels of one class of a B×C×H×W map (segmentation); one pixel is a 1-pixel mask.

    ``init`` sets the explained score and the LRP start: the masked ``logits``, softmax ``probabilities``
    or ``ones`` (then the score is the sum of the masked logits, and LRP starts from 1 on each pixel).
    """

    def __init__(self, mask: torch.Tensor, class_index: int, init: PixelInit = "logits") -> None:
        if mask.ndim not in (2, 3):
            raise InputError(f"pixel mask must be H×W or B×H×W, got shape {tuple(mask.shape)}")
        if init not in ("logits", "probabilities", "ones"):
            raise InputError(f"unknown init {init!r}", "pass 'logits', 'probabilities' or 'ones'")
        self.mask = mask.bool()
        self.class_index = class_index
        self.init = init
        self.description = f"{int(self.mask.sum())} pixels of class {class_index} (init={init})"

    def _maps(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(output)
        if logits.ndim != 4 or logits.shape[-2:] != self.mask.shape[-2:]:
            raise InputError(
                f"PixelSetTarget needs a B×C×H×W output matching the mask {tuple(self.mask.shape[-2:])}, "
                f"got {tuple(logits.shape)}",
                "pass a mask of the output's spatial size",
            )
        if not 0 <= self.class_index < logits.shape[1]:
            raise InputError(
                f"class index {self.class_index} is out of range for {logits.shape[1]} output channels",
                f"pass an index between 0 and {logits.shape[1] - 1}",
            )
        mask = self.mask.to(logits.device).expand(logits.shape[0], *self.mask.shape[-2:])
        return logits, mask.to(logits.dtype)

    def __call__(self, output: Any) -> torch.Tensor:
        logits, mask = self._maps(output)
        values = logits.softmax(1) if self.init == "probabilities" else logits
        return (values[:, self.class_index] * mask).flatten(1).sum(1)

    def initial_relevance(self, output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Masked logits, probabilities or ones on the class channel, zero elsewhere."""
        logits, mask = self._maps(output)
        start = {
            "logits": logits[:, self.class_index].detach(),
            "probabilities": logits.softmax(1)[:, self.class_index].detach(),
            "ones": torch.ones_like(mask),
        }[self.init]
        relevance = torch.zeros_like(logits)
        relevance[:, self.class_index] = start * mask
        return [(logits, relevance)]


class PixelTarget(PixelSetTarget):
    """One output pixel ``(row, col)`` of one class of a B×C×H×W map."""

    def __init__(
        self, row: int, col: int, class_index: int, size: tuple[int, int], init: PixelInit = "logits"
    ) -> None:
        height, width = size
        if not (0 <= row < height and 0 <= col < width):  # a negative index would wrap silently
            raise InputError(
                f"pixel ({row}, {col}) lies outside the {height}×{width} output map",
                f"use a row in [0, {height}) and a column in [0, {width})",
            )
        mask = torch.zeros(size, dtype=torch.bool)
        mask[row, col] = True
        super().__init__(mask, class_index, init)
        self.description = f"pixel ({row}, {col}) of class {class_index} (init={init})"


def as_target(target: Any, labels: Sequence[str] | None = None) -> Target:
    """Turn what the user passed into a :class:`Target`: an int/str is a class, a callable a score."""
    if isinstance(target, str | int) and not isinstance(target, bool):
        return ClassTarget(target, labels)
    if isinstance(target, Target):
        return target
    if callable(target):
        return ScoreTarget(target)
    raise InputError(
        f"cannot use a {type(target).__name__} as an explanation target",
        "pass a class index, ClassTarget(i), ScoreTarget(fn) or PixelSetTarget(mask, c)",
    )
