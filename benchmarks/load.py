"""Load test of the web app on loopback: text search at 1, 8 and 32 concurrent clients.

The server runs in its own process (the app from ``radlens.web.create_app`` on uvicorn, as ``radlens
serve`` runs it; series with one and two torch threads, with and without batching) over a built index — by default the demo's (``radlens demo``). A small asyncio + httpx
client (bounded in time and in requests) sends varied queries; the table gives throughput, p50/p99
latency, errors, 503 "busy" answers and the server's resident memory before and after each level (it
should stay flat). A last row runs 32 clients against the default ``--queue 16`` to show back-pressure:
the requests beyond the queue get 503 + Retry-After instead of piling up.

    python benchmarks/load.py --index demo/index --model demo/model            # 20 s per level
    python benchmarks/load.py --index demo/index --model demo/model --quick    # 5 s per level

Client and server share the machine's cores, as they would on a laptop demo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from _machine import cpu_model

_SERVER = """
import sys
import uvicorn
from radlens.cli.serve_cmd import bind_socket, set_threads
from radlens.retrieval.retriever import Retriever
from radlens.web.app import Settings, create_app

index, model = sys.argv[1], sys.argv[2]
queue, threads, batch = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
set_threads(threads)
retriever = Retriever.load(index, model)
sock = bind_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
app = create_app(retriever, Settings(queue_size=queue, max_batch=batch))
uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning")).run(sockets=[sock])
"""

_SIDES = ("left", "right", "bilateral", "")
_FINDINGS = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "cardiomegaly",
    "pulmonary edema",
    "atelectasis",
    "lung nodule",
    "rib fracture",
)
_SIZES = ("small", "moderate", "large", "")


def queries() -> list[str]:
    """Varied short queries (no two consecutive requests are the same text)."""
    return [
        " ".join(word for word in (size, side, finding) if word)
        for finding in _FINDINGS
        for side in _SIDES
        for size in _SIZES
    ]


@dataclass(frozen=True)
class Config:
    """Server settings of one series: torch threads, max batch, queue size."""

    threads: int
    batch: int
    queue: int


@dataclass
class Level:
    clients: int
    config: Config
    requests: int
    errors: int
    busy: int
    seconds: float
    p50_ms: float
    p99_ms: float
    rss_before_mb: float
    rss_after_mb: float


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (from /proc)."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _client(
    http: httpx.AsyncClient, texts: list[str], offset: int, stop: float, budget: list[int], out: dict
) -> None:
    n = offset
    while time.perf_counter() < stop and budget[0] > 0:
        budget[0] -= 1
        text = texts[n % len(texts)]
        n += 7
        start = time.perf_counter()
        try:
            response = await http.post("/api/search", json={"text": text, "k": 10})
            status = response.status_code
        except httpx.HTTPError:
            status = -1
        elapsed = (time.perf_counter() - start) * 1000
        if status == 200:
            out["latencies"].append(elapsed)
        elif status == 503:
            out["busy"] += 1
        else:
            out["errors"] += 1


async def run_level(
    url: str, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], int, int, float]:
    """``clients`` concurrent loops for ``seconds`` (or ``max_requests`` in all)."""
    texts = queries()
    out: dict = {"latencies": [], "errors": 0, "busy": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        for text in texts[:3]:  # warm-up
            await http.post("/api/search", json={"text": text, "k": 10})
        start = time.perf_counter()
        budget = [max_requests]
        await asyncio.gather(*(_client(http, texts, i, start + seconds, budget, out) for i in range(clients)))
        took = time.perf_counter() - start
    return out["latencies"], out["errors"], out["busy"], took


def start_server(index: str, model: str, config: Config) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVER,
            index,
            model,
            str(config.queue),
            str(config.threads),
            str(config.batch),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    if not port.isdigit():
        process.kill()
        raise SystemExit("the server did not start (see its error above)")
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not answer /api/health")


def measure(
    index: str, model: str, config: Config, levels: list[int], seconds: float, max_requests: int
) -> list[Level]:
    process, url = start_server(index, model, config)
    rows = []
    try:
        for clients in levels:
            before = rss_mb(process.pid)
            latencies, errors, busy, took = asyncio.run(run_level(url, clients, seconds, max_requests))
            after = rss_mb(process.pid)
            values = np.asarray(latencies) if latencies else np.asarray([float("nan")])
            rows.append(
                Level(
                    clients=clients,
                    config=config,
                    requests=len(latencies),
                    errors=errors,
                    busy=busy,
                    seconds=took,
                    p50_ms=float(np.percentile(values, 50)),
                    p99_ms=float(np.percentile(values, 99)),
                    rss_before_mb=before,
                    rss_after_mb=after,
                )
            )
    finally:
        process.terminate()
        process.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="demo/index")
    parser.add_argument("--model", default="demo/model")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="request cap of each level")
    parser.add_argument("--quick", action="store_true", help="5 s per level")
    args = parser.parse_args()
    for folder in (args.index, args.model):
        if not Path(folder).is_dir():
            raise SystemExit(
                f"{folder} not found: run `radlens demo --no-serve` first (or pass --index/--model)"
            )
    seconds = 5.0 if args.quick else args.seconds
    series = [
        (Config(threads=1, batch=16, queue=64), [1, 8, 32]),  # the defaults (queue raised for 32 clients)
        (Config(threads=2, batch=16, queue=64), [1, 8, 32]),  # two torch threads
        (Config(threads=1, batch=1, queue=64), [8, 32]),  # no batching
        (Config(threads=1, batch=16, queue=16), [32]),  # default queue: back-pressure
    ]
    rows = []
    for config, levels in series:
        rows += measure(args.index, args.model, config, levels, seconds, args.max_requests)
    load = os.getloadavg()
    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end; "
        f"Python {platform.python_version()}; client and server on the same machine (loopback)\n"
    )
    print(
        "| clients | threads | max batch | queue | requests | req/s | p50 ms | p99 ms | errors | 503 busy | RSS MB before → after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        c = row.config
        print(
            f"| {row.clients} | {c.threads} | {c.batch} | {c.queue} | {row.requests} | "
            f"{row.requests / row.seconds:.1f} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.errors} | "
            f"{row.busy} | {row.rss_before_mb:.0f} → {row.rss_after_mb:.0f} |"
        )


if __name__ == "__main__":
    main()
