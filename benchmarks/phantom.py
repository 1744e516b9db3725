"""RadPhantom generation speed: studies per second at 256 and 512 px, one process and all cores.

Counts everything a dataset needs (sampling, rendering, report, JPEG, masks, tables), written to a
temporary folder. A second table splits one study's time into rendering, report writing and
encoding + file writing, to show where the time goes. Prints Markdown.

    python benchmarks/phantom.py                 # 200 studies per run, written under benchmarks/out/
    python benchmarks/phantom.py --studies 1000 --sizes 256 --dir /data/scratch

Where the files go matters: small-file writes cost ~0.2 ms each on a local disk but can cost ten
times that on a busy or network file system, so run it on the disk you will generate onto.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from _machine import cpu_model
from radlens.core import set_quiet
from radlens.phantom.render import render_study
from radlens.phantom.report import write_report
from radlens.phantom.sampling import sample_studies
from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset, write_studies


def time_dataset(studies: int, size: int, workers: int, where: Path) -> float:
    """Seconds to generate a whole dataset (best of two runs: the machine may be shared)."""
    best = float("inf")
    for _ in range(2):
        with tempfile.TemporaryDirectory(dir=where) as folder:
            config = PhantomConfig(studies=studies, size=size, workers=workers, seed=1)
            start = time.perf_counter()
            generate_dataset(config, Path(folder) / "out")
            best = min(best, time.perf_counter() - start)
    return best


def breakdown(studies: int, size: int, where: Path) -> tuple[float, float, float]:
    """Milliseconds per study for rendering, report writing, and the whole per-study write."""
    specs = sample_studies(PhantomConfig(studies=studies, size=size, seed=2))
    start = time.perf_counter()
    for spec in specs:
        render_study(spec, size)
    render_ms = (time.perf_counter() - start) * 1000 / studies
    start = time.perf_counter()
    for spec in specs:
        write_report(spec)
    report_ms = (time.perf_counter() - start) * 1000 / studies
    with tempfile.TemporaryDirectory(dir=where) as folder:
        start = time.perf_counter()
        write_studies(specs, size, Path(folder))
        total_ms = (time.perf_counter() - start) * 1000 / studies
    return render_ms, report_ms, total_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out", help="scratch folder")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    set_quiet(True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores ({cores} usable), Python {platform.python_version()}"
    )
    print(f"Scratch folder: {args.dir.resolve()}; load average at start: {os.getloadavg()[0]:.1f}")
    print()
    print("| size (px) | workers | studies | seconds | studies/s |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for workers in sorted({1, cores}):
            seconds = time_dataset(args.studies, size, workers, args.dir)
            print(f"| {size} | {workers} | {args.studies} | {seconds:.2f} | {args.studies / seconds:.1f} |")
    print()
    print("| size (px) | render ms/study | report ms/study | all per-study work ms/study | render share |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        render_ms, report_ms, total_ms = breakdown(min(args.studies, 100), size, args.dir)
        share = render_ms / total_ms
        print(f"| {size} | {render_ms:.1f} | {report_ms:.2f} | {total_ms:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
