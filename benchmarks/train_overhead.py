"""Training-loop overhead: radlens's Accelerate loop vs a bare PyTorch loop, same model/data/optimiser.

The workload is the ``cpu-demo`` dual-encoder preset (EfficientNet-Lite0 + MiniLM, the preset's top
stages trained, 160 px, frozen features computed once) on a RadPhantom dataset generated into a temporary
folder. Both loops run :class:`radlens.train.frozen.FrozenFeatureDualEncoder` on the same precomputed
features, batch size, AdamW parameter groups, warm-up + cosine schedule and gradient clipping:

- ``bare``: ``DataLoader`` (shuffled, drop_last) → loss → backward → clip → step → schedule → zero_grad;
- ``radlens``: :class:`radlens.train.loop.Trainer` (Accelerate, accumulate context, JSONL log per step,
  checkpoint at the end only, no progress bar).

Steady-state speed is measured as a difference, ``(n2 - n1) / (T(n2) - T(n1))`` over runs of ``n1`` and
``n2`` steps, so one-time costs (building the optimiser, the final checkpoint, the loss-curve PNG) cancel
and every per-step cost counts. Runs are interleaved and the best of ``--repeats`` is kept, because the
machine may be shared; CPU seconds of the process are reported beside wall time. Target: overhead <= 10%.

    python benchmarks/train_overhead.py --quick        # 48 studies, 4 vs 12 steps, 1 repeat
    python benchmarks/train_overhead.py                # 160 studies, 10 vs 40 steps, best of 2
    python benchmarks/train_overhead.py --threads 1    # one torch thread: steadiest on a busy machine

On a machine other jobs are using, torch's worker threads wait for each other at every operation and
both wall and CPU time swing by tens of percent between identical runs; ``--threads 1`` removes that
wait, and CPU seconds per step are then the reliable measure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from _machine import cpu_model
from radlens.core import set_quiet
from radlens.data.dataset import ImageReportDataset
from radlens.data.readers import read_dataset
from radlens.data.transforms import ResizePolicy
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset
from radlens.train.frozen import FeatureDataset, FrozenFeatureDualEncoder, collate_features
from radlens.train.loop import TrainConfig, Trainer
from radlens.train.presets import preset_values
from radlens.train.schedule import build_optimizer, build_scheduler


def _features(root: Path, studies: int) -> tuple[DualEncoder, FeatureDataset, TrainConfig]:
    generate_dataset(PhantomConfig(studies=studies, size=256, seed=0, workers=0), root / "phantom")
    values = preset_values("cpu-demo", "dual")
    records = [r for r in read_dataset(root / "phantom", "mimic").records if r.split == "train"]
    config = DualEncoderConfig.model_validate(values["dual_encoder"])
    policy = ResizePolicy(size=config.image_size)
    dataset = ImageReportDataset(records, policy, channels=1, mean=0.0, std=1.0, seed=0)
    torch.manual_seed(0)
    model = DualEncoder(config)
    train = TrainConfig.model_validate({**values["train"], "checkpoint_every": 0})
    return model, FrozenFeatureDualEncoder(model).precompute(dataset, train.batch_size), train


def _bare(model: DualEncoder, data: FeatureDataset, train: TrainConfig, steps: int) -> None:
    wrapper = FrozenFeatureDualEncoder(model)
    optimizer = build_optimizer(wrapper, train.lr, train.weight_decay, train.adam_betas, train.adam_eps)
    scheduler = build_scheduler(optimizer, train.warmup_steps, steps)
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(data, train.batch_size, sampler=sampler, collate_fn=collate_features, drop_last=True)
    wrapper.train()
    done = 0
    while done < steps:
        for batch in loader:
            loss = wrapper.loss(batch)
            loss.backward()
            assert train.max_grad_norm is not None
            torch.nn.utils.clip_grad_norm_(wrapper.parameters(), train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break


def _radlens(model: DualEncoder, data: FeatureDataset, train: TrainConfig, steps: int, out: Path) -> None:
    config = train.model_copy(update={"max_steps": steps})
    Trainer(
        FrozenFeatureDualEncoder(model), data, config, out, collate_fn=collate_features, save_model=model
    ).fit()


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 studies, 4 vs 12 steps, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    studies, (n1, n2), repeats = (48, (4, 12), 1) if args.quick else (160, (10, 40), 2)
    repeats = args.repeats or repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="radlens-bench-") as tmp:
        root = Path(tmp)
        model, data, train = _features(root, studies)
        initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        best: dict[str, list[tuple[float, float]]] = {"bare": [], "radlens": []}
        for repeat in range(repeats):
            for name in ("bare", "radlens"):
                timings = []
                for steps in (n1, n2):
                    model.load_state_dict(initial)
                    out = root / f"run-{name}-{repeat}-{steps}"
                    run = (
                        (lambda s=steps: _bare(model, data, train, s))
                        if name == "bare"
                        else (lambda s=steps, o=out: _radlens(model, data, train, s, o))
                    )
                    timings.append(_timed(run))
                best[name].append(
                    (
                        (n2 - n1) / max(timings[1][0] - timings[0][0], 1e-9),
                        (timings[1][1] - timings[0][1]) / (n2 - n1),
                    )
                )
    bare_rate = max(rate for rate, _ in best["bare"])
    bare_cpu = min(cpu for _, cpu in best["bare"])
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); cpu-demo dual encoder, {len(data)} training studies, "
        f"batch {train.batch_size}, steps/s from runs of {n1} and {n2} steps, best of {repeats}\n"
    )
    print("| loop | steps/s | CPU s/step | overhead (wall) | overhead (CPU) |")
    print("|---|---|---|---|---|")
    for name in ("bare", "radlens"):
        rate = max(rate for rate, _ in best[name])
        cpu = min(cpu for _, cpu in best[name])
        print(
            f"| {name} | {rate:.2f} | {cpu:.3f} | {100 * (bare_rate / rate - 1):+.1f}% | "
            f"{100 * (cpu / bare_cpu - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
