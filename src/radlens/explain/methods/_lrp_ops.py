"""LRP for the tensor arithmetic that lives in ``forward`` code rather than in modules.

zennit attaches LRP rules to modules. Residual additions (``out + x`` in an MBConv or ResNet block),
scalings by constants (input normalisation ``(x - mean) / std``, layer scales) and functional pooling
(``features.mean((2, 3))``) are plain tensor ops, whose gradient is the wrong relevance rule: an addition's
gradient hands the *full* relevance to both summands (relevance doubles at every skip connection), a
scaling by c multiplies relevance by c. While a forward pass runs under :class:`LRPArithmetic`, those ops
are swapped for autograd functions whose backward is the LRP rule:

* ``a + b`` (both depending on the input): relevance split in proportion to the contributions,
  R_a = a / (a + b) · R (zennit's canonizers do the same with a ``Sum`` module and the ``Norm`` rule);
* ``x * c``, ``x / c`` (``c`` constant): relevance passes unchanged (one input per output neuron);
* ``x.sum(dims)``, ``x.mean(dims)``: R_i = x_i / Σx · R;
* ``x @ W`` (``W`` constant, e.g. a similarity against fixed embeddings): the ε rule of a linear layer.

Products of two input-dependent tensors (gates, attention, ``q @ k``) keep their gradient.

"Depends on the input" is ``requires_grad``: LRP freezes the parameters while it runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor
_ADD = {_T.add, torch.add}
_ADD_INPLACE = {_T.add_}
_SCALE = {_T.mul, torch.mul, _T.div, torch.div, _T.true_divide, torch.true_divide}
_REDUCE = {_T.sum, torch.sum, _T.mean, torch.mean}
_MATMUL = {_T.matmul, torch.matmul, _T.mm, torch.mm, _T.bmm, torch.bmm}


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + ε·sign(z)`` with sign(0) = +1, as zennit stabilises its denominators."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _reduce_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast result back to ``shape`` (what autograd does for broadcast inputs)."""
    while tensor.ndim > len(shape):
        tensor = tensor.sum(0)
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and tensor.shape[i] != 1)
    return tensor.sum(dims, keepdim=True) if dims else tensor


class _ProportionalSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
        ctx.save_for_backward(a.detach().clone(), b.detach().clone())
        ctx.epsilon = epsilon
        return a + b

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        a, b = ctx.saved_tensors
        ratio = relevance / stabilize(a + b, ctx.epsilon)
        return _reduce_to(a * ratio, a.shape), _reduce_to(b * ratio, b.shape), None


class _PassThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, func: Any, other: Any, x_first: bool) -> torch.Tensor:
        ctx.shape = x.shape
        return func(x, other) if x_first else func(other, x)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _reduce_to(relevance, ctx.shape), None, None, None


class _ProportionalReduce(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, func: Any, dims: Any, keepdim: bool, epsilon: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x.detach().clone())
        ctx.dims, ctx.keepdim, ctx.epsilon = dims, keepdim, epsilon
        return func(x, dims, keepdim=keepdim) if dims is not None else func(x)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (x,) = ctx.saved_tensors
        dims = tuple(range(x.ndim)) if ctx.dims is None else ctx.dims
        dims = (dims,) if isinstance(dims, int) else tuple(d % x.ndim for d in dims)
        total = stabilize(x.sum(dims, keepdim=True), ctx.epsilon)
        if not ctx.keepdim:
            for dim in sorted(dims):
                relevance = relevance.unsqueeze(dim)
        return x * relevance / total, None, None, None, None


class _LinearEpsilon(torch.autograd.Function):
    """``func(x, w)`` linear in ``x`` with ``w`` constant: R_x = x ⊙ ∂/∂x [func(x, w) · R / (z + ε)]."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, func: Any, other: Any, x_first: bool, epsilon: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x.detach().clone())
        ctx.func, ctx.other, ctx.x_first, ctx.epsilon = func, other, x_first, epsilon
        return func(x, other) if x_first else func(other, x)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            z = ctx.func(leaf, ctx.other) if ctx.x_first else ctx.func(ctx.other, leaf)
            (grad,) = torch.autograd.grad(z, leaf, relevance / stabilize(z.detach(), ctx.epsilon))
        return x * grad, None, None, None, None


def _tracked(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and value.is_floating_point()


class LRPArithmetic(TorchFunctionMode):
    """Swap residual additions, constant scalings and sum/mean reductions for their LRP rules.

    ``counts`` records how many of each were swapped (reported in the explanation's diagnostics).
    """

    def __init__(self, stabilizer: float, epsilon: float) -> None:
        super().__init__()
        self.stabilizer = stabilizer  # proportional splits (additions, reductions)
        self.epsilon = epsilon  # the ε rule of constant products
        self.counts = {
            "residual_additions": 0,
            "constant_scalings": 0,
            "sum_reductions": 0,
            "constant_products": 0,
        }

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if len(args) == 2 and kwargs.get("alpha", 1) == 1 and not set(kwargs) - {"alpha"}:
            a, b = args
            if func in _ADD and _tracked(a) and _tracked(b):
                self.counts["residual_additions"] += 1
                return _ProportionalSum.apply(a, b, self.stabilizer)
            if func in _ADD_INPLACE and _tracked(a) and _tracked(b) and not a.is_leaf:
                self.counts["residual_additions"] += 1
                return a.copy_(_ProportionalSum.apply(a, b, self.stabilizer))
        if func in _SCALE and len(args) == 2 and not kwargs:
            a, b = args
            is_division = func in (_T.div, torch.div, _T.true_divide, torch.true_divide)
            if _tracked(a) and not _tracked(b):
                self.counts["constant_scalings"] += 1
                return _PassThrough.apply(a, func, b, True)
            if _tracked(b) and not _tracked(a) and not is_division:
                self.counts["constant_scalings"] += 1
                return _PassThrough.apply(b, func, a, False)
        if func in _MATMUL and len(args) == 2 and not kwargs and _tracked(args[0]) != _tracked(args[1]):
            self.counts["constant_products"] += 1
            x_first = _tracked(args[0])
            x, other = (args[0], args[1]) if x_first else (args[1], args[0])
            return _LinearEpsilon.apply(x, func, other, x_first, self.epsilon)
        if (
            func in _REDUCE
            and args
            and _tracked(args[0])
            and set(kwargs) <= {"dim", "keepdim"}
            and len(args) <= 3
        ):
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
            if dims is None or isinstance(dims, int | tuple | list):
                self.counts["sum_reductions"] += 1
                reduce = torch.sum if func in (_T.sum, torch.sum) else torch.mean
                return _ProportionalReduce.apply(args[0], reduce, dims, keepdim, self.stabilizer)
        return func(*args, **kwargs)
