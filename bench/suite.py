"""The speed report: configurations side by side, in one run, on the same image mix.

    make bench            # or: BENTOML_HOME=.bentoml .venv/bin/python bench/suite.py

Configurations (each a `bentoml serve` of its own, one after the other):
- before:  MTCNN + the default classifier in fp32 TensorFlow (fa10c59's configuration);
- after:   the defaults: BlazeFace + the default classifier at the precision its import chose;
- no-faces-fp32: face detection off, fp32 (the serving overhead against the in-process limit);
- legacy:  the old backend's stack rebuilt (bench/legacy_stack.py: gunicorn 1x4, eager
           TensorFlow, model.predict per request, no faces), serving the same fp32 file.
For each: ready time and idle memory, detect at concurrency 1, 8, 32 (three runs, the median
counts) and 64, with requests/s, p50/p99, answers by status, faces per request (a detector
that finds fewer faces is not faster for it), CPU per request by process; for `after` also
augmented, recovery after the burst, and the in-process limit. Then one table of ratios
against the targets; the raw numbers go to bench/results/ (git-ignored).
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

FP32_NAME = "deepfake_classifier_fp32"  # the default classifier imported again, fp32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`bentoml serve` (or another command) with its own BENTOML_HOME around the store."""

    def __init__(
        self, env: dict[str, str], command: list[str] | None = None, port: int | None = None
    ) -> None:
        store = Path(os.environ.get("BENTOML_HOME", ROOT / ".bentoml")).resolve()
        self.home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        (self.home / "models").symlink_to(store / "models")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = command or [
            sys.executable, "-m", "bentoml", "serve", "service:DeepfakeDetector", "--port", str(self.port),
        ]  # fmt: skip
        self.env = {**os.environ, "BENTOML_HOME": str(self.home), "DEEPFAKE_LOG_FORMAT": "text", **env}
        self.ready_path = "/readyz" if command is None else "/metrics"

    def __enter__(self) -> Server:
        started = time.perf_counter()
        self.log = (self.home / "serve.log").open("wb")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        while time.perf_counter() - started < 300:
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200:
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
    return [asyncio.run(run(url, "detect", 1, 10**6, 2.0, images)).p50_ms for _ in range(int(seconds / 2))]


def load(url: str, route: str, concurrency: int, count: int, images: list[tuple[str, bytes]]) -> dict:
    result = asyncio.run(run(url, route, concurrency, count, 0, images))
    print(
        f"  {route} c={concurrency}: {result.rps} req/s p50 {result.p50_ms} ms p99 {result.p99_ms} ms "
        f"statuses {result.statuses} faces/request {result.faces_per_request} batches {result.mean_batch} "
        f"cpu ms/request {result.cpu_ms_per_request} rss {result.server_rss_mb} MB",
        flush=True,
    )
    return asdict(result)


def detect_runs(url: str, requests: int, images: list[tuple[str, bytes]], repeats: int = 3) -> dict:
    runs: dict = {}
    asyncio.run(run(url, "detect", 4, 40, 0, images))  # warm-up: first-call costs out of the way
    for concurrency in (1, 8, 32, 64):
        # Concurrency 1 sends every image as often as the in-process single-image median saw it.
        count = SINGLE_ROUNDS * len(images) if concurrency == 1 else max(requests, 8 * concurrency)
        runs[f"detect_c{concurrency}"] = load(url, "detect", concurrency, count, images)
        if concurrency == 32 and repeats > 1:  # the ratios' run: the median of three
            more = [runs["detect_c32"]] + [load(url, "detect", 32, count, images) for _ in range(repeats - 1)]
            runs["detect_c32_repeats"] = [r["rps"] for r in more]
            runs["detect_c32"] = sorted(more, key=lambda r: r["rps"])[len(more) // 2]
    return runs


def bench_server(name: str, env: dict[str, str], requests: int, images: list[tuple[str, bytes]], *,
                 inprocess: dict | None = None, extras: bool = False) -> dict:  # fmt: skip
    print(f"\n[{name}] {env}", flush=True)
    with Server(env) as server:
        time.sleep(3)  # idle: what a quiet server holds
        report: dict = {
            "env": env,
            "ready_s": round(server.ready_s, 1),
            "idle_rss_mb": round(server_rss_mb(server.url), 1),
        }
        print(f"  ready {report['ready_s']} s, idle RSS {report['idle_rss_mb']} MB", flush=True)
        if inprocess is not None:
            os.environ.update(env)  # the in-process pipeline reads the same settings
            limit = measure(env["DEEPFAKE_MODEL_TAG"], **inprocess, images=default_images())
            for key in env:
                os.environ.pop(key, None)
            report["inprocess"] = asdict(limit)
            print(
                f"  in-process: best {limit.best_images_per_s} img/s (batch {limit.best_batch_size}), single "
                f"{limit.single_image_ms} ms, augmented {limit.single_augmented_ms} ms",
                flush=True,
            )
        report["http"] = detect_runs(server.url, requests, images)
        if extras:
            report["recovery_p50_ms"] = recovery(server.url, images)
            print(f"  detect c=1 after c=64, p50 per 2 s window: {report['recovery_p50_ms']}", flush=True)
            for concurrency in (1, 32):
                count = SINGLE_ROUNDS * len(images) // 2 if concurrency == 1 else max(requests // 2, 64)
                report["http"][f"augmented_c{concurrency}"] = load(
                    server.url, "augmented", concurrency, count, images
                )
        report["final_rss_mb"] = round(server_rss_mb(server.url), 1)
    return report


def bench_legacy(fp32_tag: str, requests: int, images: list[tuple[str, bytes]]) -> dict:
    from bench.legacy_stack import serve

    port = free_port()
    print(f"\n[legacy] gunicorn 1x4, eager TensorFlow, {fp32_tag}", flush=True)
    with Server({}, command=serve(fp32_tag, port), port=port) as server:
        report: dict = {"ready_s": round(server.ready_s, 1), "http": {}}
        asyncio.run(run(server.url, "detect", 2, 8, 0, images))
        for concurrency in (1, 32):
            count = max(requests // 4, 2 * concurrency)
            report["http"][f"detect_c{concurrency}"] = load(server.url, "detect", concurrency, count, images)
    return report


def model_path() -> str:
    """bench/precision.py in a process of its own: the chosen path against fp32 TensorFlow."""
    run_ = subprocess.run(
        [sys.executable, "bench/precision.py", "--batch-sizes", "1", "32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return run_.stdout.strip() or run_.stderr[-2000:]


def ensure_models() -> tuple[str, str]:
    """The default classifier as `make model` imported it, and again in fp32 for `before`."""
    from model_import import import_default, import_face_detector

    import_face_detector()
    default = import_default("deepfake_classifier", if_missing=True)
    fp32 = import_default(FP32_NAME, if_missing=True, precision="fp32")
    return default, fp32


def errors(http: dict, route: str) -> int:
    return sum(
        n
        for key, run_ in http.items()
        if key.startswith(route) and isinstance(run_, dict)
        for status, n in run_["statuses"].items()
        if status != "200"
    )


def table(reports: dict) -> list[str]:
    before, after = reports["before"]["http"], reports["after"]["http"]
    off, legacy = reports["no_faces_fp32"], reports["legacy"]["http"]
    ratio_32 = after["detect_c32"]["rps"] / before["detect_c32"]["rps"]
    p50 = after["detect_c1"]["p50_ms"] / before["detect_c1"]["p50_ms"]
    limit = off["inprocess"]["best_images_per_s"]
    cpu = {
        name: sum(r["http"]["detect_c32"]["cpu_ms_per_request"].values())
        for name, r in reports.items()
        if isinstance(r, dict) and "http" in r
    }
    rows = [
        "| measure | before (MTCNN + fp32) | after (defaults) | ratio | target |",
        "|---|---|---|---|---|",
        f"| detect c=32 req/s (medians of {before.get('detect_c32_repeats')}, "
        f"{after.get('detect_c32_repeats')}) | {before['detect_c32']['rps']} | "
        f"{after['detect_c32']['rps']} | {ratio_32:.2f}x | >= 3x |",
        f"| detect p50 at c=1 | {before['detect_c1']['p50_ms']} ms | {after['detect_c1']['p50_ms']} ms | "
        f"{p50:.2f} | <= 0.5 |",
        f"| detect p99 at c=1 / c=32 | {before['detect_c1']['p99_ms']} / "
        f"{before['detect_c32']['p99_ms']} ms | "
        f"{after['detect_c1']['p99_ms']} / {after['detect_c32']['p99_ms']} ms | | |",
        f"| faces per request at c=32 | {before['detect_c32']['faces_per_request']} | "
        f"{after['detect_c32']['faces_per_request']} | | the same mix |",
        f"| CPU per request at c=32 (core-ms, by process) | {cpu['before']:.0f} "
        f"({before['detect_c32']['cpu_ms_per_request']}) | {cpu['after']:.0f} "
        f"({after['detect_c32']['cpu_ms_per_request']}) | | |",
        f"| errors, detect c=1..64 | {errors(before, 'detect')} | {errors(after, 'detect')} | | 0 |",
        f"| idle RSS, all server processes | {reports['before']['idle_rss_mb']} MB | "
        f"{reports['after']['idle_rss_mb']} MB | | <= 1000 MB |",
        f"| ready after start | {reports['before']['ready_s']} s | {reports['after']['ready_s']} s "
        "| | <= 10 s |",
        f"| faces off, fp32: c=32 / in-process limit | | {off['http']['detect_c32']['rps']} / {limit} | "
        f"{off['http']['detect_c32']['rps'] / limit:.2f} | >= 0.85 |",
        f"| legacy stack c=32 req/s (after / legacy) | | {legacy['detect_c32']['rps']} | "
        f"{after['detect_c32']['rps'] / legacy['detect_c32']['rps']:.1f}x | >= 10x |",
    ]
    if "augmented_c1" in after:
        rows.append(
            f"| augmented / detect p50 at c=1 | | {after['augmented_c1']['p50_ms']} / "
            f"{after['detect_c1']['p50_ms']} ms | "
            f"{after['augmented_c1']['p50_ms'] / after['detect_c1']['p50_ms']:.2f} | |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per HTTP run (more at high concurrency)"
    )
    args = parser.parse_args()
    images = load_images([])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    default, fp32 = ensure_models()
    faces_on = {"faces": True, "batch_sizes": [1, 8, 32, 64], "count": 96}
    reports = {
        "before": bench_server(
            "before", {"DEEPFAKE_FACE_DETECTOR": "mtcnn", "DEEPFAKE_MODEL_TAG": fp32}, args.requests, images
        ),
        "after": bench_server(
            "after", {"DEEPFAKE_MODEL_TAG": default}, args.requests, images, inprocess=faces_on, extras=True
        ),
        "no_faces_fp32": bench_server(
            "no-faces-fp32",
            {"DEEPFAKE_FACE_DETECTION": "false", "DEEPFAKE_MODEL_TAG": fp32},
            args.requests,
            images,
            inprocess={**faces_on, "faces": False},
        ),
        "legacy": bench_legacy(fp32, args.requests, images),
    }
    reports["model_path"] = model_path()
    # The raw numbers first: a table that fails must not lose a 15-minute run.
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, **reports}, indent=2))
    print(f"raw numbers: {path}")
    print(f"\nMachine: {machine}; models: {default} (after), {fp32} (before, fp32)\n")
    print("\n".join(table(reports)))
    print(f"\nThe model path alone (bench/precision.py):\n{reports['model_path']}")


if __name__ == "__main__":
    main()
