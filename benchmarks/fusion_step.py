"""Fusion-model training steps: on pixels (the dual encoder run at every step) vs precomputed aligner outputs.

The workload is the ``cpu-demo`` fusion preset fused on a ``cpu-demo`` dual encoder (``--base``:
EfficientNet-Lite0 + MiniLM at 160 px, 128 tokens; the dual encoder's ImageNet / MiniLM weights and
untrained projections, which cost the same as trained ones) on RadPhantom studies generated into a
temporary folder. One step is :class:`radlens.train.retrieval.FusionITM`'s ITM + MLM loss, backward and
an AdamW step on the same batches (16 pairs, half with a random negative report):

- ``pixels``: the frozen dual encoder's image tower and text tower run inside every step
  (``precompute_frozen: false``, the preset);
- ``precomputed``: :func:`radlens.train.frozen.precompute_fusion_features` ran them once per study
  (``precompute_frozen: true``); its cost per study is measured too.

Precomputing pays when a run visits each study more than ``precompute s/study ÷ saving s/pair`` times
(printed as the break-even epochs).

    python benchmarks/fusion_step.py --quick   # 48 studies, 3 timed steps
    python benchmarks/fusion_step.py           # 160 studies, 10 timed steps, best of 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu_model
from radlens.core import set_quiet
from radlens.data.dataset import ImageReportDataset
from radlens.data.readers import read_dataset
from radlens.data.transforms import ResizePolicy
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.models.fusion import FusionConfig, FusionModel, aligned_fusion_config
from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset
from radlens.train.frozen import precompute_fusion_features
from radlens.train.negatives import NegativeSampler
from radlens.train.presets import preset_values
from radlens.train.retrieval import FusionITM, ITMCollator, ITMPairs

BATCH = 16


def _setup(root: Path, studies: int) -> tuple[FusionModel, ImageReportDataset, list[str]]:
    generate_dataset(PhantomConfig(studies=studies, size=256, seed=0, workers=0), root / "phantom")
    dual_config = DualEncoderConfig.model_validate(preset_values("cpu-demo", "dual")["dual_encoder"])
    fusion_config = FusionConfig.model_validate(preset_values("cpu-demo", "fusion")["fusion"])
    torch.manual_seed(0)
    dual = DualEncoder(dual_config)
    model = FusionModel(aligned_fusion_config(fusion_config, dual_config))
    model.load_aligner(dual)
    records = [r for r in read_dataset(root / "phantom", "mimic").records if r.split == "train"]
    policy = ResizePolicy(size=dual_config.image_size)
    dataset = ImageReportDataset(records, policy, channels=1, mean=0.0, std=1.0, seed=0)
    texts = [item.record.report_text() for item in dataset.items]
    return model, dataset, texts


def _step_seconds(step: FusionITM, batches: list[dict[str, torch.Tensor]], warmup: int) -> float:
    """Seconds per step (loss, backward, AdamW), timed after ``warmup`` untimed steps."""
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-4)
    step.model.train()

    def one(batch: dict[str, torch.Tensor]) -> None:
        step.loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    for batch in batches[:warmup]:
        one(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        one(batch)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="48 studies, 3 timed steps, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    studies, steps, repeats = (48, 3, 1) if args.quick else (160, 10, 2)
    repeats = args.repeats or repeats
    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        model, dataset, texts = _setup(Path(tmp), studies)
        sampler = NegativeSampler([item.record.labels for item in dataset.items], "R")
        collator = ITMCollator(model.tokenizer, model.config.max_text_length)
        start = time.perf_counter()
        features = precompute_fusion_features(model, dataset, texts, batch_size=32)
        per_study = (time.perf_counter() - start) / len(dataset)
        generator = torch.Generator().manual_seed(0)
        orders = [
            torch.randperm(len(dataset), generator=generator)[:BATCH].tolist() for _ in range(steps + 1)
        ]
        best = {"pixels": float("inf"), "precomputed": float("inf")}
        for _ in range(repeats):  # interleaved, best kept: the machine may be shared
            for name, source, precomputed in (
                ("pixels", dataset, None),
                ("precomputed", features, features),
            ):
                pairs = ITMPairs(source, texts, sampler, seed=0)
                batches = [collator([pairs[i] for i in order]) for order in orders]
                seconds = _step_seconds(FusionITM(model, 0.15, precomputed), batches, warmup=1)
                best[name] = min(best[name], seconds)
    saving = (best["pixels"] - best["precomputed"]) / BATCH
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{len(dataset)} training studies, batch {BATCH}, {steps} timed steps, best of {repeats}\n")
    print("| fusion step | s/step | pairs/s | speed-up |")
    print("|---|---|---|---|")
    for name in ("pixels", "precomputed"):
        print(
            f"| {name} | {best[name]:.3f} | {BATCH / best[name]:.1f} | {best['pixels'] / best[name]:.2f}× |"
        )
    print(f"\nprecompute: {per_study * 1000:.0f} ms per study (image tower + text tower, once)")
    if saving > 0:
        print(f"break-even: {per_study / saving:.2f} epochs (precomputing pays for runs longer than this)")


if __name__ == "__main__":
    main()
