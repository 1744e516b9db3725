"""Seconds per explanation for every radlens.explain method, beside the library it wraps or replaces.

Each method runs batched on three models at 224 px: the VGG-style CheXpert classifier, EfficientNet-Lite0
with a 14-label head (when ``radlens.models.image_towers`` provides it) and the fusion model sized like the
cpu-demo preset (EfficientNet-Lite0 image tokens, 2 transformer layers, randomly initialised), explained
image-only through its ITM "related" logit for one fixed report sentence. In the same run, the reference
does the same work directly: a minimal hand-written Grad-CAM (pytorch-grad-cam needs torchvision) and
attention rollout, captum for integrated gradients / SmoothGrad / guided backprop / deconvnet / occlusion,
zennit for LRP (classifiers only: LRP has no transformer rules), plain autograd for the gradient methods.
Target: no method more than 1.5× slower than its reference. Prints a Markdown table naming the machine.

    .venv/bin/python benchmarks/explain.py            # 224 px, batch 4
    .venv/bin/python benchmarks/explain.py --quick    # 64 px, batch 2, one repeat: a sanity run
    .venv/bin/python benchmarks/explain.py --quick --models fusion --methods gradcam,attention_rollout
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radlens.explain import ScoreTarget, TokenLayout, explain, import_zennit
from radlens.models.vgg import VGGClassifier, VGGConfig

CLASS = 3
REPORT = "large right pleural effusion"  # the fixed text the fusion model matches each image against

Score = Callable[[torch.Tensor], torch.Tensor]
#: (method, radlens options, reference name, reference function of the input batch)
Case = tuple[str, dict[str, Any], str, Callable[[torch.Tensor], Any]]


class _Classifier(nn.Module):
    """An image tower with a classifier head as a module returning logits."""

    def __init__(self, tower: nn.Module, cam_layer: str) -> None:
        super().__init__()
        self.tower = tower
        self.cam_layer = cam_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.tower.classify(x)  # type: ignore[operator]
        return logits


@dataclass
class Bench:
    """One model to time: what explain() gets (model, target), its input channels and its cases."""

    model: nn.Module
    channels: int
    target: int | ScoreTarget
    cases: list[Case]


def _models(size: int, quick: bool) -> dict[str, Bench]:
    """name -> the model in eval mode with its target and cases, for ``size`` px images."""
    torch.manual_seed(0)
    vgg = VGGClassifier(VGGConfig()).eval()
    models = {"vgg": Bench(vgg, 1, CLASS, _classifier_cases(vgg, quick))}
    try:
        from radlens.explain.retrieval_targets import ITM_RELATED, FixedTextFusion
        from radlens.models.fusion import FusionConfig, FusionModel
        from radlens.models.image_towers import EfficientNetLite0Tower, ImageTowerConfig
    except ImportError:
        return models
    config = ImageTowerConfig(name="efficientnet_lite0", pretrained=False, num_classes=14)
    lite0 = _Classifier(EfficientNetLite0Tower(config, load_pretrained=False), "tower.head").eval()
    models["efficientnet_lite0"] = Bench(lite0, 3, CLASS, _classifier_cases(lite0, quick))
    # The cpu-demo preset's fusion model ("cpu-demo" -> "fusion" in radlens.train.presets), untrained.
    torch.manual_seed(0)
    fusion_config = FusionConfig(
        image_source="efficientnet_lite0",
        pretrained=False,
        image_size=size,
        patch_size=32,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=512,
        max_text_length=96,
    )
    fixed = FixedTextFusion(FusionModel(fusion_config, load_pretrained=False).eval(), REPORT, size).eval()
    models["fusion"] = Bench(fixed, fusion_config.in_channels, ITM_RELATED, _fusion_cases(fixed, quick))
    return models


def _minimal_gradcam(
    score: Score,
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    plus: bool = False,
    layout: TokenLayout | None = None,
) -> torch.Tensor:
    """The few lines everyone writes: hook the layer, one gradient, weight, ReLU, upsample."""
    store: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o if torch.is_tensor(o) else o[0]))
    scores = score(x)
    handle.remove()
    (grads,) = torch.autograd.grad(scores.sum(), store["a"])
    acts = store["a"].detach()
    if acts.ndim == 3:  # transformer tokens B×T×D: the image patch tokens as a B×D×rows×cols grid
        assert layout is not None and layout.image is not None and layout.grid is not None
        start, stop = layout.image
        acts, grads = (t[:, start:stop].transpose(1, 2).unflatten(2, layout.grid) for t in (acts, grads))
    if plus:
        g2 = grads.pow(2)
        alpha = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-7)
        weights = (torch.where(grads != 0, alpha, 0) * grads.clamp(min=0)).sum((2, 3))
    else:
        weights = grads.mean((2, 3))
    cam = torch.relu((weights[:, :, None, None] * acts).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _minimal_rollout(model: nn.Module, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): head-mean attentions plus the residual, rows renormalised,
    multiplied through the layers; the CLS row over the image patches, upsampled."""
    with torch.no_grad():
        attentions = model(x).attentions
    eye = torch.eye(attentions[0].shape[-1], device=x.device)
    flow = eye
    for attention in attentions:
        mixed = attention.mean(1) + eye
        flow = mixed / mixed.sum(-1, keepdim=True) @ flow
    assert layout.image is not None and layout.grid is not None
    start, stop = layout.image
    grid = flow[:, layout.cls_index, start:stop].reshape(x.shape[0], 1, *layout.grid)
    return F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _zennit_lrp(model: nn.Module, x: torch.Tensor, rule: str) -> torch.Tensor:
    zennit = import_zennit()
    rules, types = zennit.rules, zennit.types
    make = {"epsilon": lambda: rules.Epsilon(1e-6), "zplus": lambda: rules.ZPlus()}[rule]
    composite = zennit.composites.LayerMapComposite(
        layer_map=[
            (types.Activation, rules.Pass()),
            (types.AvgPool, rules.Norm()),
            (types.BatchNorm, rules.Pass()),
            (types.Convolution, make()),
            (nn.Linear, make()),
        ],
        canonizers=[zennit.canonizers.SequentialMergeBatchNorm()],
    )
    with zennit.attribution.Gradient(model, composite) as attributor:
        output = model(x)
        onehot = torch.zeros_like(output)
        onehot[:, CLASS] = 1
        _, relevance = attributor(x, lambda out: out * onehot)
    return relevance


def _zennit_relu(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    zennit = import_zennit()
    rule = zennit.rules.ReLUGuidedBackprop if kind == "guided" else zennit.rules.ReLUDeconvNet
    composite = zennit.composites.LayerMapComposite(layer_map=[((nn.ReLU, nn.ReLU6), rule())])
    with zennit.attribution.Gradient(model, composite) as attributor:
        onehot = torch.zeros(x.shape[0], 14)
        onehot[:, CLASS] = 1
        _, gradient = attributor(x, onehot)
    return gradient


def _autograd(x: torch.Tensor, score: Score, square: bool = False, times_input: bool = False) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(x).sum(), x)
    return grad.pow(2) if square else grad * x.detach() if times_input else grad


def _shared_cases(score: Score, quick: bool) -> dict[str, Case]:
    """The cases every model has, by method: autograd gradients, captum IG, SmoothGrad and occlusion."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    steps, samples, window = (4, 2, 32) if quick else (16, 8, 32)

    def integrate(x: torch.Tensor) -> torch.Tensor:
        return IntegratedGradients(score).attribute(x, baselines=torch.zeros_like(x), n_steps=steps)

    def smooth(x: torch.Tensor) -> torch.Tensor:
        span = float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
        return NoiseTunnel(Saliency(score)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            nt_samples_batch_size=samples,
            stdevs=0.15 * span,
            abs=False,
        )

    def occlude(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return Occlusion(score).attribute(
                x,
                sliding_window_shapes=(x.shape[1], window, window),
                strides=(x.shape[1], window, window),
                baselines=torch.zeros_like(x),
                perturbations_per_eval=16,
            )

    cases: list[Case] = [
        ("gradient", {}, "torch.autograd", lambda x: _autograd(x, score)),
        ("sensitivity", {}, "torch.autograd", lambda x: _autograd(x, score, square=True)),
        ("taylor", {"root": "black"}, "torch.autograd", lambda x: _autograd(x, score, times_input=True)),
        (
            "integrated_gradients",
            {"n_steps": steps, "integration": "gausslegendre"},
            "captum IntegratedGradients",
            integrate,
        ),
        ("smoothgrad", {"n_samples": samples, "noise": 0.15}, "captum NoiseTunnel", smooth),
        ("occlusion", {"window": window, "stride": window}, "captum Occlusion", occlude),
    ]
    return {case[0]: case for case in cases}


def _classifier_cases(model: nn.Module, quick: bool) -> list[Case]:
    """Every method on a CNN classifier's logit ``CLASS``."""
    from captum.attr import Deconvolution, GuidedBackprop

    layer: str = model.cam_layer  # type: ignore[assignment]

    def score(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, CLASS]

    class Scored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)[:, CLASS]

    scored = Scored()
    shared = _shared_cases(score, quick)

    # captum hooks only nn.ReLU; for ReLU6 networks (EfficientNet-Lite) zennit with a ReLU6 rule does the
    # same work radlens does, so it is the fair reference there.
    guided: Case
    deconv: Case
    if any(isinstance(m, nn.ReLU6) for m in model.modules()):
        guided = (
            "guided_backprop",
            {},
            "zennit GuidedBackprop (+ReLU6)",
            lambda x: _zennit_relu(model, x, "guided"),
        )
        deconv = ("deconvnet", {}, "zennit DeconvNet (+ReLU6)", lambda x: _zennit_relu(model, x, "deconv"))
    else:
        guided = (
            "guided_backprop",
            {},
            "captum GuidedBackprop",
            lambda x: GuidedBackprop(scored).attribute(x),
        )
        deconv = ("deconvnet", {}, "captum Deconvolution", lambda x: Deconvolution(scored).attribute(x))
    return [
        (
            "gradcam",
            {"layer": layer},
            "hand-written Grad-CAM",
            lambda x: _minimal_gradcam(score, model, x, layer),
        ),
        (
            "gradcam_pp",
            {"layer": layer},
            "hand-written Grad-CAM++",
            lambda x: _minimal_gradcam(score, model, x, layer, True),
        ),
        shared["gradient"],
        shared["sensitivity"],
        shared["taylor"],
        shared["integrated_gradients"],
        shared["smoothgrad"],
        guided,
        deconv,
        shared["occlusion"],
        (
            "lrp_epsilon",
            {"keep_layers": False},
            "zennit Epsilon composite",
            lambda x: _zennit_lrp(model, x, "epsilon"),
        ),
        (
            "lrp_zplus",
            {"keep_layers": False},
            "zennit ZPlus composite",
            lambda x: _zennit_lrp(model, x, "zplus"),
        ),
        ("activation_maximisation", {"n_steps": 2 if quick else 10}, "", lambda x: None),
    ]


def _fusion_cases(fixed: nn.Module, quick: bool) -> list[Case]:
    """The methods that apply to the fusion model (a FixedTextFusion) and its ITM "related" logit."""
    layer: str = fixed.cam_layer  # type: ignore[assignment]
    layout: TokenLayout = fixed.token_layout  # type: ignore[assignment]
    cam = {"layer": layer, "token_layout": layout}

    def score(x: torch.Tensor) -> torch.Tensor:
        return fixed(x).itm_logits[:, 1]

    shared = _shared_cases(score, quick)
    return [
        (
            "gradcam",
            cam,
            "hand-written Grad-CAM",
            lambda x: _minimal_gradcam(score, fixed, x, layer, layout=layout),
        ),
        (
            "gradcam_pp",
            cam,
            "hand-written Grad-CAM++",
            lambda x: _minimal_gradcam(score, fixed, x, layer, True, layout),
        ),
        shared["gradient"],
        shared["sensitivity"],
        shared["taylor"],
        shared["integrated_gradients"],
        shared["smoothgrad"],
        shared["occlusion"],
        (
            "attention_rollout",
            {"token_layout": layout, "head_fusion": "mean", "discard_ratio": 0.0},
            "hand-written rollout",
            lambda x: _minimal_rollout(fixed, x, layout),
        ),
    ]


def _best_seconds(functions: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Best-of-``repeats`` wall time of each function, alternating them so load drifts hit all alike."""
    for function in functions:
        function()  # warm-up: lazy imports, caches, allocator
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _time_model(name: str, bench: Bench, x: torch.Tensor, repeats: int, methods: set[str] | None) -> None:
    """Print one table row per method as soon as it is measured: radlens and its reference, s/image."""
    batch = x.shape[0]
    for method, options, reference, run_reference in bench.cases:
        if methods is not None and method not in methods:
            continue

        def run_ours(method: str = method, options: dict[str, Any] = options) -> Any:
            return explain(bench.model, x, bench.target, method, **options)

        def run_theirs(function: Callable[[torch.Tensor], Any] = run_reference) -> Any:
            return function(x)

        functions: list[Callable[[], Any]] = [run_ours, run_theirs] if reference else [run_ours]
        seconds = [value / batch for value in _best_seconds(functions, repeats)]
        ours, theirs = seconds[0], (seconds[1] if reference else None)
        ratio = f"{ours / theirs:.2f}×" if theirs else "–"
        theirs_text = f"{theirs:.4f}" if theirs is not None else "–"
        print(
            f"| {name} | {method} | {ours:.4f} | {reference or '–'} | {theirs_text} | {ratio} |", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px, batch 2, one repeat")
    parser.add_argument("--size", type=int, default=None, help="image size (default 224; 64 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default 4; 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--models", default="vgg,efficientnet_lite0,fusion", help="comma-separated model names"
    )
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    args = parser.parse_args()
    size = args.size or (64 if args.quick else 224)
    batch = args.batch or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    wanted = set(args.models.split(","))

    print(f"## radlens.explain: seconds per explanation ({size} px, batch {batch}, best of {repeats})\n")
    print(
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}\n"
    )
    print("| model | method | radlens s/img | reference | reference s/img | radlens / reference |")
    print("|---|---|---:|---|---:|---:|", flush=True)
    for name, bench in _models(size, args.quick).items():
        if name in wanted:
            x = torch.rand(batch, bench.channels, size, size, generator=torch.Generator().manual_seed(0))
            methods = set(args.methods.split(",")) if args.methods else None
            _time_model(name, bench, x, repeats, methods)


if __name__ == "__main__":
    main()
