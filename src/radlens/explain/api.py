"""``explain(model, inputs, target, method, **options) -> Explanation``: one call for every method.

Methods are plain strings; each declares its options with defaults (:data:`METHODS`), and anything else
is an :class:`~radlens.core.InputError` naming the options it does take. The model runs in eval mode with
in-place activations off while it is explained, and is restored afterwards.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from radlens.core import InputError
from radlens.explain.methods._common import Context, MethodResult, TokenLayout, evaluation
from radlens.explain.targets import Target, as_target


@dataclass(frozen=True)
class Method:
    """A registered method: where it lives, its options (with defaults), and what its output means."""

    name: str
    runner: str  # "module:function" under radlens.explain.methods
    options: dict[str, Any]
    signed: bool
    reference: str
    summary: str

    def run(self, ctx: Context) -> MethodResult:
        """Import the method's module (lazily: captum and zennit are slow to import) and run it."""
        module_name, function = self.runner.split(":")
        module = importlib.import_module(f"radlens.explain.methods.{module_name}")
        result: MethodResult = getattr(module, function)(ctx)
        return result


_CAM = {"layer": None, "patch_size": None, "token_layout": None}
_IG = {
    "n_steps": 32,
    "baseline": "black",
    "blur_sigma": None,
    "integration": "gausslegendre",
    "internal_batch_size": 32,
    "embedding_layer": None,
    "pad_token_id": None,
    "keep_token_ids": None,
}
_LRP = {
    "epsilon": 1e-6,
    "alpha": 1.0,
    "beta": 0.0,
    "stabilizer": 1e-6,
    "rules": None,
    "input_rule": None,
    "low": 0.0,
    "high": 1.0,
    "keep_layers": True,
}
_ROLLOUT = {
    "head_fusion": "mean",
    "discard_ratio": 0.0,
    "attentions": None,
    "token_layout": None,
    "patch_size": None,
}

#: Every method, by name. ``signed``: whether the attribution has a meaningful sign.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", "cam:run_gradcam", _CAM, False, "hand-written (pytorch-grad-cam needs torchvision)", "Grad-CAM at a conv layer or transformer block"),
        Method("gradcam_pp", "cam:run_gradcam_pp", _CAM, False, "hand-written (pytorch-grad-cam needs torchvision)", "Grad-CAM++"),
        Method("gradient", "gradients:run_gradient", {}, True, "torch.autograd", "∂f/∂x"),
        Method("sensitivity", "gradients:run_sensitivity", {}, False, "torch.autograd", "(∂f/∂x)², sums to ‖∇f‖²"),
        Method("taylor", "gradients:run_taylor", {"root": "black", "blur_sigma": None}, True, "torch.autograd", "∇f(x) ⊙ (x − root)"),
        Method("smoothgrad", "gradients:run_smoothgrad", {"n_samples": 16, "noise": 0.15, "seed": 0, "internal_batch_size": 32}, True, "captum NoiseTunnel(Saliency)", "gradient averaged over noisy copies"),
        Method("integrated_gradients", "gradients:run_integrated_gradients", _IG, True, "captum IntegratedGradients / LayerIntegratedGradients", "path integral of gradients from a baseline"),
        Method("guided_backprop", "backprop:run_guided_backprop", {}, True, "captum GuidedBackprop", "ReLU backward masked by forward and backward sign"),
        Method("deconvnet", "backprop:run_deconvnet", {}, True, "captum Deconvolution", "ReLU backward rectified, forward mask ignored"),
        Method("occlusion", "occlusion:run_occlusion", {"window": 16, "stride": 8, "baseline": "black", "blur_sigma": None, "internal_batch_size": None}, True, "captum Occlusion", "score drop when a window is occluded"),
        Method("lrp_epsilon", "lrp:run_lrp_epsilon", _LRP, True, "zennit Epsilon", "LRP-ε"),
        Method("lrp_alphabeta", "lrp:run_lrp_alphabeta", _LRP, True, "zennit AlphaBeta", "LRP-αβ (α − β = 1)"),
        Method("lrp_zplus", "lrp:run_lrp_zplus", _LRP, True, "zennit ZPlus", "LRP-z⁺"),
        Method("attention_rollout", "rollout:run_attention_rollout", _ROLLOUT, False, "vit-explain (Gildenblat), re-implemented", "product of head-fused attentions with the residual"),
        Method("activation_maximisation", "actmax:run_activation_maximisation", {"n_steps": 200, "lr": 0.05, "l2": 1e-3, "init_scale": 0.1, "seed": 0, "log_prob": "sigmoid"}, True, "hand-written (Erhan et al. 2009)", "an input maximising log p(class|x) − λ‖x‖²"),
    )
}  # fmt: skip


def _choice(*allowed: Any) -> Any:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(repr(a) for a in allowed)}"

    return check


def _number(low: float, high: float = math.inf, integer: bool = False, optional: bool = False) -> Any:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            what = "an integer" if integer else "a number"
            return f"{what} in [{low}, {high}]" + (" or None" if optional else "")
        return None

    return check


def _baseline(value: Any) -> str | None:
    ok = value in ("black", "white", "blur") or isinstance(value, torch.Tensor | int | float)
    return None if ok and not isinstance(value, bool) else "'black', 'white', 'blur', a number or a tensor"


def _window(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return None
    pair = isinstance(value, tuple | list) and len(value) == 2
    if pair and all(isinstance(v, int) and v > 0 for v in value):
        return None
    return "a positive int or an (h, w) pair"


def _of_type(*types: type, optional: bool = True) -> Any:
    def check(value: Any) -> str | None:
        if (value is None and optional) or isinstance(value, types):
            return None
        return " or ".join(t.__name__ for t in types) + (" or None" if optional else "")

    return check


_CHECKS: dict[str, Any] = {
    "layer": _of_type(str),
    "embedding_layer": _of_type(str),
    "patch_size": _number(1, integer=True, optional=True),
    "token_layout": _of_type(TokenLayout),
    "n_steps": _number(1, 100_000, integer=True),
    "baseline": _baseline,
    "root": _baseline,
    "blur_sigma": _number(1e-3, optional=True),
    "integration": _choice(
        "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"
    ),
    "internal_batch_size": _number(1, integer=True, optional=True),
    "pad_token_id": _number(0, integer=True, optional=True),
    "keep_token_ids": _of_type(tuple, list),
    "epsilon": _number(0.0),
    "alpha": _number(0.0),
    "beta": _number(0.0),
    "stabilizer": _number(0.0),
    "rules": _of_type(str, dict),
    "input_rule": _choice(None, "flat", "wsquare", "zbox", "epsilon", "zplus"),
    "low": _of_type(int, float, torch.Tensor, optional=False),
    "high": _of_type(int, float, torch.Tensor, optional=False),
    "keep_layers": _of_type(bool, optional=False),
    "head_fusion": _choice("mean", "max", "min"),
    "discard_ratio": _number(0.0, 0.999),
    "attentions": lambda v: None if v is None or callable(v) else "a function (*inputs) -> list of B×H×T×T",
    "n_samples": _number(1, 10_000, integer=True),
    "noise": _number(0.0),
    "seed": _number(0, integer=True),
    "window": _window,
    "stride": _window,
    "lr": _number(1e-8),
    "l2": _number(0.0),
    "init_scale": _number(0.0),
    "log_prob": _choice("sigmoid", "softmax", "none"),
}


def resolve_options(method: Method, options: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``options``; unknown names or bad values are InputErrors."""
    for name, value in options.items():
        if name not in method.options:
            close = difflib.get_close_matches(name, list(method.options), n=1)
            valid = ", ".join(method.options) or "none"
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                f"unknown option {name!r} for method {method.name!r}", f"{hint}valid options: {valid}"
            )
        problem = _CHECKS[name](value)
        if problem:
            raise InputError(f"option {name}={value!r} for {method.name} is invalid", f"pass {problem}")
    return {**method.options, **options}


def _classify_inputs(inputs: tuple[Any, ...]) -> tuple[int | None, int | None]:
    """Positions of the image (float B×C×H×W) and the token ids (first integer B×T); checks values."""
    image_index = text_index = None
    for position, item in enumerate(inputs):
        if not isinstance(item, torch.Tensor):
            continue
        if item.is_floating_point():
            if not bool(torch.isfinite(item).all()):
                raise InputError(
                    f"input {position} contains NaN or infinite values",
                    "replace them first (e.g. torch.nan_to_num) or drop that image",
                )
            if item.ndim == 4:
                if image_index is not None:
                    raise InputError(
                        "explain takes one image input (float B×C×H×W) per call",
                        "wrap the model so the other image is fixed",
                    )
                image_index = position
        elif item.ndim == 2 and text_index is None and item.dtype in (torch.int64, torch.int32):
            text_index = position
    if image_index is None and text_index is None:
        raise InputError(
            "found no image (float B×C×H×W tensor) or token ids (integer B×T tensor) among the inputs",
            "pass images with a batch dimension, e.g. x.unsqueeze(0)",
        )
    return image_index, text_index


_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def _model_fingerprint(model: nn.Module) -> str:
    """The model's fingerprint, cached per model until a parameter or buffer changes.

    Registered radlens models (those with a ``model_type``) get :func:`radlens.models.model_fingerprint`,
    the same value their checkpoint has. Any other module gets a SHA-256 over the names, shapes, dtypes and
    values of its parameters and buffers.
    """
    state = model.state_dict(keep_vars=True)
    key = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = None
    if getattr(type(model), "model_type", None) is not None:
        from radlens.models.checkpoint import model_fingerprint

        with contextlib.suppress(TypeError):  # not registered after all
            value = model_fingerprint(model)
    if value is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(state.items()):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        value = digest.hexdigest()
    _FINGERPRINTS[model] = (key, value)
    return value


def _describe(value: Any) -> Any:
    """A JSON-friendly form of an option value for provenance (tensors by shape, callables by name)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    if isinstance(value, TokenLayout):
        return {"cls_index": value.cls_index, "image": value.image, "grid": value.grid, "text": value.text}
    return value


@dataclass
class Explanation:
    """An explanation and where it came from.

    ``attribution``: the method's raw output shaped like the image input (B×C×H×W; B×1×H×W for CAM and
    rollout maps, which broadcast over channels), per token (B×T) for text-only inputs, or the synthesised
    image for activation maximisation. ``heatmap``: B×H×W, channel-summed, signed if ``signed``.
    ``token_scores``: B×T for text inputs. ``layers``: per-layer tensors (relevance for LRP, the raw map
    for CAM, the rollout matrix). ``diagnostics``: checks such as IG completeness or LRP conservation.
    ``scores``: the explained score per item (for activation maximisation: log p of the synthesised
    image). Provenance: ``method``, ``options``, ``target``,
    ``model_fingerprint``.
    """

    method: str
    attribution: torch.Tensor | None
    heatmap: torch.Tensor | None
    signed: bool
    target: str
    model_fingerprint: str
    options: dict[str, Any]
    token_scores: torch.Tensor | None = None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    scores: torch.Tensor | None = None

    def provenance(self) -> dict[str, Any]:
        """What produced this explanation, as JSON-friendly values."""
        return {
            "method": self.method,
            "options": {key: _describe(value) for key, value in self.options.items()},
            "target": self.target,
            "model_fingerprint": self.model_fingerprint,
        }


def explain(
    model: nn.Module, inputs: Any, target: Any, method: str = "gradcam", **options: Any
) -> Explanation:
    """Explain ``target(model(*inputs))`` with ``method``.

    ``inputs``: one tensor or a tuple (image and/or token ids, plus whatever else the model takes, e.g.
    an attention mask). ``target``: a class index or label, ``ClassTarget``, ``ScoreTarget(fn)``,
    ``PixelSetTarget`` or any callable output -> B scores. ``options``: the method's keyword options
    (see ``METHODS[method].options`` or docs/explain.md).
    """
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown explanation method {method!r}", f"{hint}methods: {', '.join(METHODS)}")
    spec = METHODS[method]
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model must be a torch.nn.Module, got {type(model).__name__}", "wrap it in a Module"
        )
    resolved = resolve_options(spec, options)
    items = tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)
    image_index, text_index = _classify_inputs(items)
    chosen: Target = as_target(target, getattr(model, "labels", None))
    ctx = Context(model, items, chosen, resolved, image_index, text_index)
    with evaluation(model):
        result = spec.run(ctx)
        scores = result.scores
        if scores is None:
            with torch.no_grad():
                scores = chosen(ctx.run())
    heatmap = result.heatmap
    attribution = result.attribution
    if heatmap is None and attribution is not None and attribution.ndim == 4:
        heatmap = attribution.sum(dim=1)
    return Explanation(
        method=method,
        attribution=attribution,
        heatmap=heatmap,
        signed=spec.signed,
        target=chosen.description,
        model_fingerprint=_model_fingerprint(model),
        options=resolved,
        token_scores=result.token_scores,
        layers=result.layers,
        diagnostics=result.diagnostics,
        scores=scores.detach() if isinstance(scores, torch.Tensor) else scores,
    )
