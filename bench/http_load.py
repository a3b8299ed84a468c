"""Closed-loop HTTP load against a running server: throughput, latency, errors, batch sizes, memory.

    python bench/http_load.py --url http://127.0.0.1:3000 --concurrency 1 8 32 64 --requests 400
    python bench/http_load.py --route augmented --concurrency 1 8 --seconds 20

Each of N clients sends its next request as soon as the previous answer arrives. Prints one
line per run: requests/s, p50/p95/p99 latency, answers by status, the model service's
adaptive batch sizes over the run (from /metrics), the resident memory of the server's
processes, and where the CPU went: core-milliseconds per request of the model service, the API
service and the load generator (run it on the server's machine for those).
A script, not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import psutil

ROUTES = {"detect": "/api/v1/detect/", "augmented": "/api/v1/detect/augmented"}
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
BATCH_METRIC = re.compile(
    r'^bentoml_service_adaptive_batch_size_bucket\{le="([^"]+)",method_name="predict"[^}]*\} (\S+)', re.M
)


@dataclass
class RunResult:
    route: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    batch_histogram: dict[str, int] = field(default_factory=dict)
    mean_batch: float = 0.0
    server_rss_mb: float = 0.0
    # Faces judged per answered request (`face_count`): a detector that finds fewer faces is not
    # faster for it, so every configuration's mix is shown beside its speed.
    faces_per_request: float | None = None
    # Where the CPU went: core-milliseconds per request of the model service, the API
    # service, the rest of the server (arbiter) and this load generator.
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    # 503 answers that said when to come back (the documented overload answer)
    retry_after_503: int = 0


def load_images(paths: list[Path]) -> list[tuple[str, bytes]]:
    if not paths:
        paths = sorted(p for p in FIXTURES.glob("*.jpg"))
    return [(p.name, p.read_bytes()) for p in paths]


async def batch_buckets(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return {le: float(count) for le, count in BATCH_METRIC.findall(text)}


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> tuple[dict[str, int], float]:
    """Batches per size bucket during the run, and the mean batch size estimated from them."""
    cumulative = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    ordered = sorted(cumulative, key=lambda le: float("inf") if le == "+Inf" else float(le))
    buckets, previous, weighted, total = {}, 0.0, 0.0, 0.0
    for le in ordered:
        count = cumulative[le] - previous
        previous = cumulative[le]
        if count:
            buckets[le] = int(count)
            weighted += count * (float(le) if le != "+Inf" else 0)
            total += count
    return buckets, (weighted / total if total else 0.0)


def server_processes(url: str) -> list[psutil.Process]:
    """The process tree that listens on the server's port (arbiter and service workers)."""
    port = urlparse(url).port or 80
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            root = psutil.Process(conn.pid)
            while root.parent() and "bentoml" in " ".join(root.parent().cmdline()):
                root = root.parent()
            return [root, *root.children(recursive=True)]
    return []


def server_rss_mb(url: str) -> float:
    """Resident memory of the server's process tree."""
    procs = [p for p in server_processes(url) if p.is_running()]
    return sum(p.memory_info().rss for p in procs) / 2**20 if procs else float("nan")


def cpu_seconds(url: str) -> dict[str, float]:
    """CPU time (user + system) so far of each server process, by role, and of this client."""
    seconds: Counter[str] = Counter()
    for proc in [*server_processes(url), psutil.Process()]:
        try:
            times = proc.cpu_times()
            command = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        role = (
            "client"
            if proc.pid == os.getpid()
            else "model"
            if "face_classifier" in command
            else "api"
            if "deepfake_detector" in command
            else "other"
        )
        seconds[role] += times.user + times.system
    return dict(seconds)


async def run(
    url: str, route: str, concurrency: int, total: int, seconds: float, images: list[tuple[str, bytes]]
) -> RunResult:
    latencies: list[float] = []
    faces: list[int] = []
    statuses: Counter[str] = Counter()
    retry_after = 0
    sent = 0
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        before = await batch_buckets(session, url)
        cpu_before = cpu_seconds(url)
        deadline = time.perf_counter() + seconds if seconds else float("inf")

        async def client(worker: int) -> None:
            nonlocal sent, retry_after
            while sent < total and time.perf_counter() < deadline:
                name, data = images[(sent + worker) % len(images)]
                sent += 1
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name, content_type="image/jpeg")
                # Photos with no face answer too (not the legacy routes' default 422): same work.
                form.add_field("require_face", "false")
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}{ROUTES[route]}", data=form) as response:
                        body = await response.read()
                        statuses[str(response.status)] += 1
                        retry_after += response.status == 503 and "Retry-After" in response.headers
                    # detect answers face_count at the top; detect_augmented does not
                    count = json.loads(body).get("face_count") if response.status == 200 else None
                    if count is not None:
                        faces.append(count)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = await batch_buckets(session, url)
        cpu_after = cpu_seconds(url)
    buckets, mean_batch = histogram_delta(before, after)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return RunResult(
        route=route,
        concurrency=concurrency,
        requests=len(latencies),
        seconds=round(elapsed, 2),
        rps=round(len(latencies) / elapsed, 2),
        p50_ms=round(quantiles[49] * 1000, 1),
        p95_ms=round(quantiles[94] * 1000, 1),
        p99_ms=round(quantiles[98] * 1000, 1),
        statuses=dict(statuses),
        batch_histogram=buckets,
        mean_batch=round(mean_batch, 1),
        server_rss_mb=round(server_rss_mb(url), 1),
        faces_per_request=round(statistics.fmean(faces), 2) if faces else None,
        retry_after_503=retry_after,
        cpu_ms_per_request={
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / max(len(latencies), 1), 1)
            for role in cpu_after
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--route", choices=sorted(ROUTES), default="detect")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=200, help="per run (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=0, help="per run, if set: stop at this time")
    parser.add_argument(
        "--images", type=Path, nargs="*", default=[], help="JPEGs to send (default: fixtures)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    images = load_images(args.images)
    results = []
    for concurrency in args.concurrency:
        result = asyncio.run(run(args.url, args.route, concurrency, args.requests, args.seconds, images))
        results.append(result)
        print(
            f"{result.route:9s} c={result.concurrency:3d} n={result.requests:5d} {result.rps:7.2f} req/s  "
            f"p50 {result.p50_ms:7.1f} ms  p95 {result.p95_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
            f"status {result.statuses}  mean batch {result.mean_batch}  faces {result.faces_per_request}  "
            f"rss {result.server_rss_mb} MB  "
            f"cpu ms/request {result.cpu_ms_per_request}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
