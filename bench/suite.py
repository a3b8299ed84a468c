"""The speed report: the service against its own in-process limit, measured in one run.

    make bench            # or: BENTOML_HOME=.bentoml .venv/bin/python bench/suite.py

Starts `bentoml serve` (faces on, then faces off), and for each: time to ready, idle memory,
the in-process limit (bench/inprocess.py), then closed-loop HTTP load (bench/http_load.py) on
`detect` at concurrency 1, 8, 32, 64, concurrency 1 again right after 64 (recovery), and
`detect_augmented` at concurrency 1, 8, 32, 64. Prints one table of ratios; writes the raw
numbers to bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import load_images, run, server_rss_mb  # noqa: E402
from bench.inprocess import SINGLE_ROUNDS, default_images, measure  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`bentoml serve` with its own BENTOML_HOME around the project's model store."""

    def __init__(self, env: dict[str, str]) -> None:
        store = Path(os.environ.get("BENTOML_HOME", ROOT / ".bentoml"))
        self.home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        (self.home / "models").symlink_to(store / "models")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BENTOML_HOME": str(self.home), "DEEPFAKE_LOG_FORMAT": "text", **env}

    def __enter__(self) -> Server:
        started = time.perf_counter()
        self.log = (self.home / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service:DeepfakeDetector", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        while time.perf_counter() - started < 180:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    self.ready_s = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready; see {self.home / 'serve.log'}")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def recovery(url: str, images: list[tuple[str, bytes]], seconds: float = 10.0) -> list[float]:
    """p50 latency (ms) of concurrency-1 detect in consecutive 2-second windows."""
    windows = []
    for _ in range(int(seconds / 2)):
        result = asyncio.run(run(url, "detect", 1, 10**6, 2.0, images))
        windows.append(result.p50_ms)
    return windows


def load(url: str, route: str, concurrency: int, count: int, images: list[tuple[str, bytes]]) -> dict:
    result = asyncio.run(run(url, route, concurrency, count, 0, images))
    print(
        f"  {route} c={concurrency}: {result.rps} req/s p50 {result.p50_ms} ms p95 {result.p95_ms} ms "
        f"p99 {result.p99_ms} ms statuses {result.statuses} batches {result.batch_histogram} "
        f"(mean {result.mean_batch}) rss {result.server_rss_mb} MB",
        flush=True,
    )
    return asdict(result)


def bench_config(faces: bool, requests: int, images: list[tuple[str, bytes]]) -> dict:
    env = {"DEEPFAKE_FACE_DETECTION": "true" if faces else "false"}
    with Server(env) as server:
        time.sleep(2)
        report: dict = {
            "faces": faces,
            "ready_s": round(server.ready_s, 1),
            "idle_rss_mb": round(server_rss_mb(server.url), 1),
        }
        os.environ.update(env)  # the in-process pipeline reads the same settings
        limit = measure("deepfake_classifier:latest", faces, [1, 8, 16, 32, 64], 96, default_images())
        report["inprocess"] = asdict(limit)
        print(
            f"[faces {'on' if faces else 'off'}] ready {report['ready_s']} s, idle RSS "
            f"{report['idle_rss_mb']} MB; in-process best {limit.best_images_per_s} img/s at batch "
            f"{limit.best_batch_size}, single image {limit.single_image_ms} ms, augmented "
            f"{limit.single_augmented_ms} ms",
            flush=True,
        )
        runs = {}
        asyncio.run(run(server.url, "detect", 4, 40, 0, images))  # warm-up: first-call costs out of the way
        # Concurrency 1 sends every image as often as the in-process single-image median saw it.
        single_count = SINGLE_ROUNDS * len(images)
        for concurrency in (1, 8, 32, 64):
            count = max(requests, 8 * concurrency) if concurrency > 1 else single_count
            runs[f"detect_c{concurrency}"] = load(server.url, "detect", concurrency, count, images)
            if concurrency == 32:  # the ratio's run: twice more, and the median of the three
                repeats = [runs["detect_c32"]] + [
                    load(server.url, "detect", concurrency, count, images) for _ in range(2)
                ]
                runs["detect_c32_repeats"] = [r["rps"] for r in repeats]
                runs["detect_c32"] = sorted(repeats, key=lambda r: r["rps"])[1]
        report["recovery_p50_ms"] = recovery(server.url, images)
        print(f"  detect c=1 after c=64, p50 per 2 s window: {report['recovery_p50_ms']}", flush=True)
        # Augmented requests carry seven times the model work: fewer of them.
        for concurrency in (1, 8, 32, 64):
            count = single_count // 2 if concurrency == 1 else max(requests // 2, 2 * concurrency)
            runs[f"augmented_c{concurrency}"] = load(server.url, "augmented", concurrency, count, images)
        report["http"] = runs
        report["final_rss_mb"] = round(server_rss_mb(server.url), 1)
    return report


def summary(report: dict) -> list[str]:
    limit = report["inprocess"]
    http = report["http"]
    single = limit["single_image_ms"]
    c1 = http["detect_c1"]["p50_ms"]
    errors = {
        route: sum(
            n
            for key, run_ in http.items()
            if key.startswith(route) and isinstance(run_, dict)
            for status, n in run_["statuses"].items()
            if status != "200"
        )
        for route in ("detect", "augmented")
    }
    augmented = http["augmented_c1"]["p50_ms"]
    back = next((i * 2 + 2 for i, p50 in enumerate(report["recovery_p50_ms"]) if p50 <= 1.2 * c1), None)
    rps, best = http["detect_c32"]["rps"], limit["best_images_per_s"]
    cpu = http["detect_c32"]["cpu_ms_per_request"]
    cores = os.cpu_count() or 1
    return [
        f"| throughput c=32 (median of {http['detect_c32_repeats']}) / in-process limit | "
        f"{rps} / {best} = {rps / best:.2f} | >= 0.85 |",
        f"| CPU per image: in-process ({cores} cores / limit) vs service at c=32 | "
        f"{cores * 1000 / best:.1f} vs {sum(cpu.values()):.1f} core-ms "
        f"({', '.join(f'{role} {ms}' for role, ms in sorted(cpu.items()))}) | |",
        f"| errors, detect c=1..64 (augmented) | {errors['detect']} ({errors['augmented']}) | 0 |",
        f"| p50 c=1 vs in-process single image | {c1} vs {single} ms ({c1 - single:+.1f} ms) | <= +15 ms |",
        f"| p50 c=1 within 20 % of idle after c=64 | {f'after {back} s' if back else 'not within 10 s'} "
        f"({report['recovery_p50_ms']}) | <= 10 s |",
        f"| augmented / detect p50 at c=1 | {augmented} / {c1} = {augmented / c1:.2f} (in-process "
        f"{limit['single_augmented_ms'] / single:.2f}) | <= 2.5 |",
        f"| ready after start | {report['ready_s']} s | <= 20 s |",
        f"| idle RSS, all server processes | {report['idle_rss_mb']} MB | < 1500 MB |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per HTTP run (more at high concurrency)"
    )
    parser.add_argument("--only", choices=("faces", "no-faces"), help="run one configuration")
    args = parser.parse_args()
    images = load_images([])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    reports = {}
    for faces in (True, False):
        if args.only and args.only != ("faces" if faces else "no-faces"):
            continue
        reports["faces" if faces else "no_faces"] = bench_config(faces, args.requests, images)
    print(f"\nMachine: {machine}")
    for name, report in reports.items():
        print(
            f"\n{name}: model {report['inprocess']['model_tag']}\n| measure | value | target |\n|---|---|---|"
        )
        print("\n".join(summary(report)))
    if len(reports) == 2:
        on, off = (
            reports["faces"]["http"]["detect_c32"]["rps"],
            reports["no_faces"]["http"]["detect_c32"]["rps"],
        )
        print(f"\nface detection cost at c=32: {on} req/s with faces, {off} without ({on / off:.2f}x)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, **reports}, indent=2))
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
