"""Search benchmark: build time, single-query latency and recall of radlens's FAISS index kinds.

Synthetic, clustered unit vectors (dim 256) so IVF's partitioning is meaningful. For each size, exact
search (``flat``) gives the ground truth; IVF's ``nprobe`` (and HNSW's ``ef_search``, at sizes up to
100k) is raised until recall@10 against exact reaches the target, and the latency is measured there.
At 1M vectors IVF uses 4096 lists trained on a 100k sample (training on all 1M costs minutes).

    python benchmarks/search.py --quick          # 10k vectors only: a sanity run
    python benchmarks/search.py                  # 10k and 1M (~1 GB of vectors; a few minutes)

Prints a Markdown table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from _machine import cpu_model
from radlens.retrieval.index import VectorIndex, default_nlist

K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 256, 512)


@dataclass
class Row:
    size: int
    kind: str
    params: str
    build_s: float
    p50_ms: float
    p99_ms: float
    recall: float


def clustered_vectors(count: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """``count`` unit vectors around random ``centres``, generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, centres.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk += noise * rng.standard_normal(chunk.shape, dtype=np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def _timed(build: Callable[[], VectorIndex]) -> tuple[VectorIndex, float]:
    start = time.perf_counter()
    index = build()
    return index, time.perf_counter() - start


def latency_ms(index: VectorIndex, queries: np.ndarray) -> tuple[float, float]:
    """p50 / p99 milliseconds of single-query k=10 searches (after a short warm-up)."""
    for query in queries[:10]:
        index.search(query[None, :], K)
    times = []
    for query in queries:
        start = time.perf_counter_ns()
        index.search(query[None, :], K)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall_at_10(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the exact top-10 found in the index's top-10 (neighbour recall)."""
    _, ids = index.search(queries, K)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth, strict=True)]))


def tune(
    index: VectorIndex,
    setting: str,
    values: tuple[int, ...],
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
) -> tuple[int, float]:
    """The smallest ``setting`` value reaching ``target`` recall (else the largest tried)."""
    best = (values[0], 0.0)
    for value in values:
        if setting == "nprobe" and value > index.index.nlist:
            break
        setattr(index, setting, value)
        best = (value, recall_at_10(index, queries, truth))
        if best[1] >= target:
            break
    setattr(index, setting, best[0])
    return best


def bench_size(size: int, args: argparse.Namespace, centres: np.ndarray) -> list[Row]:
    base = clustered_vectors(size, centres, args.noise, args.seed + 1)
    queries = clustered_vectors(
        max(args.latency_queries, args.recall_queries), centres, args.noise, args.seed + 2
    )
    lat_q, rec_q = queries[: args.latency_queries], queries[: args.recall_queries]
    rows = []

    flat, build_s = _timed(lambda: VectorIndex.build(base, "flat"))
    _, truth = flat.search(rec_q, K)
    rows.append(Row(size, "flat", "exact", build_s, *latency_ms(flat, lat_q), 1.0))
    del flat

    big = size >= 1_000_000
    nlist = 4096 if big else default_nlist(size)
    train = 100_000 if big else None
    ivf, build_s = _timed(lambda: VectorIndex.build(base, "ivf", nlist=nlist, train_size=train))
    nprobe, recall = tune(ivf, "nprobe", NPROBES, rec_q, truth, args.target)
    trained = f", trained on {train // 1000}k" if train else ""
    rows.append(
        Row(size, "ivf", f"nlist={nlist}{trained}, nprobe={nprobe}", build_s, *latency_ms(ivf, lat_q), recall)
    )
    del ivf

    if size <= 100_000:
        hnsw, build_s = _timed(lambda: VectorIndex.build(base, "hnsw"))
        ef, recall = tune(hnsw, "ef_search", EF_SEARCHES, rec_q, truth, args.target)
        rows.append(
            Row(
                size,
                "hnsw",
                f"M=32, efConstruction=80, efSearch={ef}",
                build_s,
                *latency_ms(hnsw, lat_q),
                recall,
            )
        )
    return rows


def to_markdown(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; FAISS {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} threads; numpy {np.__version__}; Python {platform.python_version()}.",
        f"Data: dim {args.dim}, {args.clusters} clusters (noise {args.noise}), unit vectors, inner product. "
        f"Latency: {args.latency_queries} single queries, k={K}. Recall@10 vs exact on {args.recall_queries} "
        f"queries; target {args.target}.",
        "",
        "| vectors | kind | parameters | build (s) | p50 (ms) | p99 (ms) | recall@10 vs exact |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.size:,} | {row.kind} | {row.params} | {row.build_s:.2f} | {row.p50_ms:.3f} | "
            f"{row.p99_ms:.3f} | {row.recall:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors only (sanity run)")
    parser.add_argument("--sizes", type=str, default="10000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=0.06, help="per-dimension noise around a centre")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument(
        "--target", type=float, default=0.95, help="recall@10 that nprobe/efSearch must reach"
    )
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: FAISS default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = [row for size in sizes for row in bench_size(size, args, centres)]
    print(to_markdown(rows, args))


if __name__ == "__main__":
    main()
