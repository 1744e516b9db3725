"""Load test of the web app on loopback with wrk: text search at 1, 8 and 32 concurrent clients.

The server runs in its own process (the app from ``radlens.web.create_app`` on uvicorn, as ``radlens
serve`` runs it) over a built index, by default the demo's (``radlens demo``). The client is wrk (a C
load generator; ``apt-get install wrk``), one thread, one connection per client, each level bounded in
time (``--seconds``), sending varied short queries from a Lua script that also counts 503 "busy"
answers apart from other failures. The table gives throughput, p50/p99 latency, errors, 503s and the
server's resident memory before and after each level (it should stay flat). Series: the defaults (one
torch thread, batching of up to 16 waiting queries), two torch threads, no batching, and 32 clients
against the default ``--queue 16`` to show back-pressure (requests beyond the queue get 503 +
Retry-After at once; wrk's latencies then include those quick 503s).

    python benchmarks/load.py --index demo/index --model demo/model            # 20 s per level
    python benchmarks/load.py --index demo/index --model demo/model --quick    # 5 s per level

Client and server share the machine's cores, as they would on a laptop demo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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


#: wrk script: varied queries; counts 503s and other non-200 answers per thread; one summary line.
_WRK_LUA = """
local queries = %s
local threads = {}
local n = 0
function setup(thread) table.insert(threads, thread) end
function init(args) busy = 0; failed = 0 end
function request()
  n = n + 1
  local body = '{"text": "' .. queries[(n %% #queries) + 1] .. '", "k": 10}'
  return wrk.format("POST", "/api/search", {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  if status == 503 then busy = busy + 1 elseif status ~= 200 then failed = failed + 1 end
end
function done(summary, latency, requests)
  local b, f = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("busy"); f = f + t:get("failed") end
  local e = summary.errors
  io.write(string.format("RADLENS %%d %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, b, f,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


def run_level(url: str, clients: int, seconds: float, script: Path) -> dict[str, float]:
    """wrk with ``clients`` connections for ``seconds``; the counts and latencies it reports."""
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(row for row in output.splitlines() if row.startswith("RADLENS "))
    requests, busy, failed, socket_errors, p50, p99, took = line.split()[1:]
    return {
        "requests": int(requests),
        "busy": int(busy),
        "errors": int(failed) + int(socket_errors),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "seconds": float(took),
    }


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
            with urllib.request.urlopen(f"{url}/api/health", timeout=5) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not answer /api/health")


def measure(
    index: str, model: str, config: Config, levels: list[int], seconds: float, script: Path
) -> list[Level]:
    process, url = start_server(index, model, config)
    rows = []
    try:
        run_level(url, 2, 2.0, script)  # warm-up
        for clients in levels:
            before = rss_mb(process.pid)
            result = run_level(url, clients, seconds, script)
            after = rss_mb(process.pid)
            rows.append(
                Level(
                    clients=clients,
                    config=config,
                    requests=int(result["requests"]),
                    errors=int(result["errors"]),
                    busy=int(result["busy"]),
                    seconds=result["seconds"],
                    p50_ms=result["p50_ms"],
                    p99_ms=result["p99_ms"],
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
    parser.add_argument("--quick", action="store_true", help="5 s per level")
    args = parser.parse_args()
    for folder in (args.index, args.model):
        if not Path(folder).is_dir():
            raise SystemExit(
                f"{folder} not found: run `radlens demo --no-serve` first (or pass --index/--model)"
            )
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    seconds = 5.0 if args.quick else args.seconds
    series = [
        (Config(threads=1, batch=16, queue=64), [1, 8, 32]),  # the defaults (queue raised for 32 clients)
        (Config(threads=2, batch=16, queue=64), [1, 8, 32]),  # two torch threads
        (Config(threads=1, batch=1, queue=64), [8, 32]),  # no batching
        (Config(threads=1, batch=16, queue=16), [32]),  # default queue: back-pressure
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="radlens-load-") as tmp:
        script = Path(tmp) / "search.lua"
        lua_queries = "{" + ", ".join(json.dumps(text) for text in queries()) + "}"
        script.write_text(_WRK_LUA % lua_queries, encoding="utf-8")
        for config, levels in series:
            rows += measure(args.index, args.model, config, levels, seconds, script)
    load = os.getloadavg()
    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end; "
        f"Python {platform.python_version()}; wrk client and server on the same machine (loopback)\n"
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
