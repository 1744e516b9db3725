"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) with zennit's rules.

One pass does it all: BatchNorm is folded into the conv/linear layer before it (:func:`fold_batchnorm`),
zennit hooks put an LRP rule on every conv/linear layer (ε, z⁺, αβ, flat, w², z^B; chosen per layer by a
preset or by name patterns), activations and BatchNorm pass relevance through, average pooling splits it
in proportion (zennit's ``Norm``), max-pooling sends it to the winner (the plain gradient), and residual
additions / constant scalings / sum-mean reductions written as tensor arithmetic get their LRP rule from
:class:`~radlens.explain.methods._lrp_ops.LRPArithmetic`. Relevance arriving at each layer is kept
(``layers``) and what a layer's bias and stabiliser absorb is reported (``diagnostics["absorbed"]``),
together with conservation: Σ input relevance against the relevance the target put on the output.
"""

from __future__ import annotations

import contextlib
import fnmatch
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from radlens.core import InputError
from radlens.explain._zennit_compat import import_zennit
from radlens.explain.methods._common import Context, MethodResult
from radlens.explain.methods._lrp_ops import LRPArithmetic
from radlens.explain.targets import initial_relevance

_zennit = import_zennit()
_rules = _zennit.rules
_types = _zennit.types

#: Rule presets: (kind of layer: "conv" | "linear", is it the first layer) -> rule name.
PRESETS = {
    "epsilon": lambda kind, first: "epsilon",
    "zplus": lambda kind, first: "zplus",
    "alphabeta": lambda kind, first: "alphabeta",
    "epsilon_plus": lambda kind, first: "zplus" if kind == "conv" else "epsilon",
    "epsilon_alpha2_beta1": lambda kind, first: "alpha2beta1" if kind == "conv" else "epsilon",
    "epsilon_plus_flat": lambda kind, first: "flat" if first else ("zplus" if kind == "conv" else "epsilon"),
}
RULES = ("epsilon", "zplus", "alphabeta", "alpha1beta0", "alpha2beta1", "flat", "wsquare", "zbox", "pass")


def make_rule(name: str, options: dict[str, Any]) -> Any:
    """The zennit hook for rule ``name`` with the method's options (ε, α, β, stabiliser, box bounds)."""
    stabilizer = float(options["stabilizer"])
    if name == "epsilon":
        return _rules.Epsilon(epsilon=float(options["epsilon"]))
    if name == "zplus":
        return _rules.ZPlus(stabilizer=stabilizer)
    if name in ("alphabeta", "alpha1beta0", "alpha2beta1"):
        alpha, beta = {"alpha1beta0": (1.0, 0.0), "alpha2beta1": (2.0, 1.0)}.get(
            name, (float(options["alpha"]), float(options["beta"]))
        )
        return _rules.AlphaBeta(alpha=alpha, beta=beta, stabilizer=stabilizer)
    if name == "flat":
        return _rules.Flat(stabilizer=stabilizer)
    if name == "wsquare":
        return _rules.WSquare(stabilizer=stabilizer)
    if name == "zbox":
        return _rules.ZBox(low=options["low"], high=options["high"], stabilizer=stabilizer)
    if name == "pass":
        return _rules.Pass()
    raise InputError(f"unknown LRP rule {name!r}", f"use one of: {', '.join(RULES)}")


# --- model structure: which BatchNorm follows which layer, layer order ---------------------------------


@dataclass
class _Structure:
    signature: tuple[int, ...]
    order: list[str]  # conv/linear layers in the order the forward pass calls them
    pairs: list[tuple[str, str]]  # (layer, batch norm) that can be folded
    unpaired: list[str]  # batch norms that cannot (relevance passes them unchanged)


_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()


def _consumers(outputs: list[torch.Tensor]) -> Counter[Any]:
    """How many autograd nodes consume each node's output, over the graph behind ``outputs``."""
    counts: Counter[Any] = Counter()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set(stack)
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            counts[child] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return counts


def model_structure(model: nn.Module, inputs: tuple[Any, ...], image_index: int) -> _Structure:
    """Find foldable (layer, BatchNorm) pairs by watching one forward pass (cached per model).

    A BatchNorm is folded only if its input is the output of a conv/linear layer that feeds nothing else,
    checked on the autograd graph, so module registration order does not matter and branches are safe.
    """
    signature = tuple(id(module) for module in model.modules())
    cached = _STRUCTURES.get(model)
    if cached is not None and cached.signature == signature:
        return cached
    from radlens.explain.targets import output_tensors

    produced: dict[int, tuple[str, torch.Tensor]] = {}
    order: list[str] = []
    bn_inputs: dict[str, torch.Tensor] = {}
    handles = []

    def on_layer(name: str) -> Any:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)
            order.append(name)

        return hook

    def on_norm(name: str) -> Any:
        def hook(_: nn.Module, args: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                bn_inputs[name] = args[0]

        return hook

    norms: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, _types.Linear):
            handles.append(module.register_forward_hook(on_layer(name)))
        elif isinstance(module, _types.BatchNorm):
            norms[name] = module
            handles.append(module.register_forward_pre_hook(on_norm(name)))
    try:
        x = inputs[image_index].detach().requires_grad_(True)
        with torch.enable_grad():
            output = model(*[x if i == image_index else item for i, item in enumerate(inputs)])
    finally:
        for handle in handles:
            handle.remove()
    counts = _consumers(output_tensors(output))
    pairs, unpaired = [], []
    for name, module in norms.items():
        source = bn_inputs.get(name)
        found = produced.get(id(source)) if source is not None else None
        foldable = (
            found is not None
            and found[1] is source
            and not isinstance(model.get_submodule(found[0]), _types.ConvolutionTranspose)
            and counts[source.grad_fn] == 1
            and module.track_running_stats
            and module.running_var is not None
        )
        if foldable and found is not None:
            pairs.append((found[0], name))
        elif name in bn_inputs:
            unpaired.append(name)
    structure = _Structure(signature, list(dict.fromkeys(order)), pairs, unpaired)
    _STRUCTURES[model] = structure
    return structure


@contextlib.contextmanager
def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> Iterator[None]:
    """Fold each BatchNorm into the layer before it and make the BatchNorm an exact identity.

    W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β; the BatchNorm gets μ = 0, σ² = 1 − ε, γ = 1, β = 0,
    so it computes x exactly (zennit's ``MergeBatchNorm`` keeps ε and leaves a 1/√(1+ε) factor per
    BatchNorm). Everything is restored on exit, to the same tensors.
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    created: list[nn.Module] = []
    try:
        for layer_name, norm_name in pairs:
            layer: Any = model.get_submodule(layer_name)
            norm: Any = model.get_submodule(norm_name)
            with torch.no_grad():
                scale = torch.rsqrt(norm.running_var + norm.eps)
                if norm.weight is not None:
                    scale = scale * norm.weight
                shift = norm.bias if norm.bias is not None else torch.zeros_like(scale)
                weight = layer.weight.data
                bias = layer.bias.data if layer.bias is not None else torch.zeros_like(scale)
                saved.append((layer, "weight", weight))
                layer.weight.data = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
                new_bias = (bias - norm.running_mean) * scale + shift
                if layer.bias is None:
                    layer.bias = nn.Parameter(new_bias, requires_grad=False)
                    created.append(layer)
                else:
                    saved.append((layer, "bias", layer.bias.data))
                    layer.bias.data = new_bias
                for key, value in (("running_mean", 0.0), ("running_var", 1.0 - norm.eps)):
                    buffer = getattr(norm, key)
                    saved.append((norm, key, buffer.data))
                    buffer.data = torch.full_like(buffer, value)
                for key, value in (("weight", 1.0), ("bias", 0.0)):
                    param = getattr(norm, key)
                    if param is not None:
                        saved.append((norm, key, param.data))
                        param.data = torch.full_like(param, value)
        yield
    finally:
        for module, key, data in reversed(saved):
            getattr(module, key).data = data
        for layer in created:
            layer.bias = None


# --- relevance taps -----------------------------------------------------------------------------------


def _per_item(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the batch dimension (B values; a B-vector is returned as is)."""
    return tensor.reshape(tensor.shape[0], -1).sum(1)


class _Taps:
    """Record, per rule-carrying layer, the relevance at its output and the message it sends down."""

    def __init__(self, keep_layers: bool) -> None:
        self.keep_layers = keep_layers
        self.armed = False  # only the relevance pass records (not e.g. the gradients behind the seeds)
        self.incoming: dict[str, torch.Tensor] = {}
        self.outgoing: dict[str, torch.Tensor] = {}
        self.layers: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def _add(self, store: dict[str, torch.Tensor], name: str, grad: torch.Tensor) -> None:
        if not self.armed:
            return
        total = _per_item(grad.detach())
        store[name] = store[name] + total if name in store else total

    def attach(self, name: str, module: nn.Module) -> None:
        def before(_: nn.Module, args: Any) -> Any:
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].requires_grad:
                return None
            tapped = args[0].clone()
            tapped.register_hook(lambda grad: self._add(self.outgoing, name, grad))
            return (tapped, *args[1:])

        def after(_: nn.Module, __: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self._keep(name, grad))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def _keep(self, name: str, grad: torch.Tensor) -> None:
        self._add(self.incoming, name, grad)
        if self.keep_layers and self.armed:
            key, call = name, 1
            while key in self.layers:
                key, call = f"{name}#{call}", call + 1
            self.layers[key] = grad.detach()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients, so ``requires_grad`` marks what depends on the input."""
    flags = {param: param.requires_grad for param in model.parameters()}
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)


def _choose_rules(model: nn.Module, order: list[str], preset: str, options: dict[str, Any]) -> dict[str, str]:
    """Rule name per conv/linear layer: name patterns from ``rules``, else the preset; ``input_rule`` first."""
    spec = options["rules"]
    patterns: dict[str, str] = spec if isinstance(spec, dict) else {}
    preset = spec if isinstance(spec, str) else preset
    if preset not in PRESETS:
        raise InputError(f"unknown LRP rule preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
    for rule in patterns.values():
        if rule not in RULES:
            raise InputError(f"unknown LRP rule {rule!r} in rules=", f"use one of: {', '.join(RULES)}")
    modules = dict(model.named_modules())
    layers = order + [
        name for name, m in modules.items() if isinstance(m, _types.Linear) and name not in order
    ]
    chosen: dict[str, str] = {}
    for position, name in enumerate(layers):
        kind = "conv" if isinstance(modules[name], _types.Convolution) else "linear"
        match = next((rule for pattern, rule in patterns.items() if fnmatch.fnmatchcase(name, pattern)), None)
        chosen[name] = match or PRESETS[preset](kind, position == 0)
    if options["input_rule"] and layers:
        chosen[layers[0]] = options["input_rule"]
    return chosen


def run(ctx: Context, preset: str) -> MethodResult:
    """LRP of ``ctx.target`` with rule preset ``preset`` (overridden by ``rules`` / ``input_rule``)."""
    if ctx.image_index is None:
        raise InputError(
            "LRP attributes image inputs", "for text use integrated_gradients or attention_rollout"
        )
    options = ctx.options
    if options["alpha"] - options["beta"] != 1 or options["beta"] < 0:
        raise InputError(
            f"alpha-beta LRP needs alpha - beta = 1 and beta >= 0, got alpha={options['alpha']}, "
            f"beta={options['beta']}",
            "pass e.g. alpha=1, beta=0 or alpha=2, beta=1",
        )
    model, image, index = ctx.model, ctx.image, ctx.image_index
    structure = model_structure(model, ctx.inputs, index)
    chosen = _choose_rules(model, structure.order, preset, options)
    templates = {name: make_rule(rule, options) for name, rule in chosen.items()}
    norm_rule = _rules.Norm(stabilizer=float(options["stabilizer"]))

    def module_map(_: dict[str, Any], name: str, module: nn.Module) -> Any:
        if name in templates:
            return templates[name]
        if isinstance(module, _types.Activation | _types.BatchNorm):
            return _rules.Pass()
        if isinstance(module, _types.AvgPool):
            return norm_rule
        return None

    composite = _zennit.core.Composite(module_map=module_map)
    taps = _Taps(bool(options["keep_layers"]))
    arithmetic = LRPArithmetic(float(options["stabilizer"]), float(options["epsilon"]))
    for name, module in model.named_modules():
        if name in templates or isinstance(module, _types.AvgPool):
            taps.attach(name, module)
    try:
        with _frozen_parameters(model), fold_batchnorm(model, structure.pairs), composite.context(model):
            x = image.detach().requires_grad_(True)
            with torch.enable_grad():
                with arithmetic:
                    output = ctx.run((index, x))
                seeds = initial_relevance(ctx.target, output)
                scores = ctx.target(output).detach()
                if not seeds:
                    raise InputError("the explained score does not depend on the model output")
                taps.armed = True
                (relevance,) = torch.autograd.grad(
                    [tensor for tensor, _ in seeds],
                    x,
                    grad_outputs=[seed for _, seed in seeds],
                    allow_unused=True,
                )
    finally:
        taps.remove()
    if relevance is None:  # the score does not depend on the image at all
        relevance = torch.zeros_like(image)
    explained = sum(_per_item(seed) for _, seed in seeds)
    assert isinstance(explained, torch.Tensor)
    total = relevance.flatten(1).sum(1)
    absorbed = {
        name: (taps.incoming[name] - taps.outgoing.get(name, torch.zeros_like(taps.incoming[name]))).tolist()
        for name in taps.incoming
    }
    diagnostics: dict[str, Any] = {
        "explained_relevance": explained.tolist(),
        "input_relevance": total.tolist(),
        "conservation_error": ((total - explained).abs() / explained.abs().clamp(min=1e-12)).tolist(),
        "absorbed": absorbed,
        "rules": chosen,
        "folded_batchnorm": [f"{norm}->{layer}" for layer, norm in structure.pairs],
        "unfolded_batchnorm": structure.unpaired,
        **arithmetic.counts,
    }
    return MethodResult(
        attribution=relevance.detach(), layers=taps.layers, diagnostics=diagnostics, scores=scores
    )


def run_lrp_epsilon(ctx: Context) -> MethodResult:
    """LRP-ε on every layer (``epsilon`` = ε)."""
    return run(ctx, "epsilon")


def run_lrp_alphabeta(ctx: Context) -> MethodResult:
    """LRP-αβ on every layer (``alpha``, ``beta`` with α − β = 1)."""
    return run(ctx, "alphabeta")


def run_lrp_zplus(ctx: Context) -> MethodResult:
    """LRP-z⁺ on every layer (positive contributions only: relevance keeps the sign of the start)."""
    return run(ctx, "zplus")
