"""The speed report: configurations side by side, in one run, on the same image mix and clip.

    make bench            # or: BENTOML_HOME=.bentoml .venv/bin/python bench/suite.py

Configurations (each a `bentoml serve` of its own, one after the other), all serving the
default model (`make model`: CLIP) or its fp32 copy:
- before:     the face step before 2026-12 (BlazeFace tiles on every photo, full detection on
              every sampled video frame: DEEPFAKE_FACE_TILES=always, DEEPFAKE_VIDEO_FULL_EVERY=1)
              and the fp32 path;
- after:      the defaults: tiles when needed, tracked video faces, the precision the import
              chose for this CPU;
- after-fp32: the defaults with the fp32 copy (what a CPU without a faster passing precision
              serves);
- no-faces-fp32: face detection off, fp32 (the serving overhead against the in-process limit);
- facenet:    the defaults serving the FaceNet model CLIP replaced (before/after the switch);
- legacy:     the old backend's stack rebuilt (bench/legacy_stack.py: gunicorn 1x4, eager
              TensorFlow, model.predict per request, no faces), serving the same fp32 file.
For each: ready time and idle memory, detect at concurrency 1, 8, 32 (three runs, the median
counts) and 64, with requests/s, p50/p99, answers by status (503s with Retry-After), faces per
request, CPU per request by process; for before/after also one client on a 4-face photo and the
10-s 720p two-face clip (bench/video.py) at one client with its split; for `after` augmented,
recovery after the burst and the in-process limit. The run names the CPU and its kind (native
bf16, VNNI only, neither): a figure of the other kind is "not measured". Then one table against
the targets; the raw numbers go to bench/results/ (git-ignored).
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
FACENET_NAME = "deepfake_classifier_facenet"  # the default before CLIP (model_import.py --default facenet)
# --quick (checks the script, not the speed) sets these to 1: each image this often at
# concurrency 1, requests per client at higher concurrency, runs of the ratios' measures.
ROUNDS_C1, PER_CLIENT, REPEATS = SINGLE_ROUNDS, 4, 3


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
        count = ROUNDS_C1 * len(images) if concurrency == 1 else max(requests, PER_CLIENT * concurrency)
        runs[f"detect_c{concurrency}"] = load(url, "detect", concurrency, count, images)
        if concurrency == 32 and min(repeats, REPEATS) > 1:  # the ratios' run: the median of three
            more = [runs["detect_c32"]] + [
                load(url, "detect", 32, count, images) for _ in range(min(repeats, REPEATS) - 1)
            ]
            runs["detect_c32_repeats"] = [r["rps"] for r in more]
            runs["detect_c32"] = sorted(more, key=lambda r: r["rps"])[len(more) // 2]
    return runs


def four_faces(url: str) -> dict:
    """One client, one 4-face photo (the face-api demo's sample 4)."""
    photo = [("faceapi_sample4.jpg", (ROOT / "tests" / "fixtures" / "faceapi_sample4.jpg").read_bytes())]
    return load(url, "detect", 1, 3 * ROUNDS_C1, photo)


def clip_at_one_client(url: str) -> dict:
    """The 10-s 720p two-face clip, one client, `rounds` times: wall (median) and the answer's
    own split (decode, faces, model), tracks and full face detections; REPEATS times."""
    from bench.video import make_clip

    data = make_clip(2.0).read_bytes()
    runs = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/api/v1/detect/video", files={"file": ("clip.mp4", data, "video/mp4")}, timeout=120
        )
        wall = time.perf_counter() - started
        body = response.json()
        if response.status_code != 200:
            return {"status": response.status_code, "body": body}
        runs.append({"wall_s": round(wall, 2), **body["timings"], "tracks": body["track_count"],
                     "samples": body["video"]["frames_sampled"],
                     "full_face_detections": body["video"].get("full_face_detections")})  # fmt: skip
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2] | {"walls": [r["wall_s"] for r in runs]}


def cpu_kind() -> tuple[str, str]:
    """(the CPU and its flags, its kind for the precisions)."""
    from modeling.optimized import bf16_native, cpu_flags, describe_cpu

    flags = cpu_flags()
    if bf16_native(flags):
        kind = "native bf16 (AVX512_BF16 / AMX)"
    elif flags & {"avx512_vnni", "avx_vnni"}:
        kind = "VNNI without bf16"
    else:
        kind = "neither bf16 nor VNNI"
    return describe_cpu(), kind


def bench_server(name: str, env: dict[str, str], requests: int, images: list[tuple[str, bytes]], *,
                 inprocess: dict | None = None, extras: bool = False, clip: bool = False,
                 repeats: int = 3) -> dict:  # fmt: skip
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
        report["http"] = detect_runs(server.url, requests, images, repeats)
        if clip:
            report["four_faces_c1"] = four_faces(server.url)
            report["clip"] = clip_at_one_client(server.url)
            print(
                f"  4-face photo p50 {report['four_faces_c1']['p50_ms']} ms; clip {report['clip']}",
                flush=True,
            )
        if extras:
            report["recovery_p50_ms"] = recovery(server.url, images)
            print(f"  detect c=1 after c=64, p50 per 2 s window: {report['recovery_p50_ms']}", flush=True)
            for concurrency in (1, 32):
                count = (
                    max(ROUNDS_C1 * len(images) // 2, 4)
                    if concurrency == 1
                    else max(requests // 2, 2 * 32 * PER_CLIENT // 4)
                )
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


def ensure_models() -> tuple[str, str, str]:
    """The default classifier as `make model` imported it, again in fp32 for `before`, and the
    FaceNet model it replaced (at the precision its import picks) for `facenet`."""
    from model_import import import_default, import_face_detector

    import_face_detector()
    default = import_default("deepfake_classifier", if_missing=True)
    fp32 = import_default(FP32_NAME, if_missing=True, precision="fp32")
    facenet = import_default(FACENET_NAME, if_missing=True, which="facenet")
    return default, fp32, facenet


def errors(http: dict, route: str, up_to: int = 1 << 30) -> int:
    """Answers other than 200 on `route` at concurrency up to `up_to`."""
    return sum(
        n
        for key, run_ in http.items()
        if key.startswith(route) and isinstance(run_, dict) and run_.get("concurrency", 0) <= up_to
        for status, n in run_["statuses"].items()
        if status != "200"
    )


def table(reports: dict) -> list[str]:
    before, after, after32 = (reports[k]["http"] for k in ("before", "after", "after_fp32"))
    off = reports["no_faces_fp32"]
    limit = off["inprocess"]["best_images_per_s"]
    rps = {
        name: r["http"]["detect_c32"]["rps"]
        for name, r in reports.items()
        if isinstance(r, dict) and "http" in r
    }
    cpu = {
        name: sum(r["http"]["detect_c32"]["cpu_ms_per_request"].values())
        for name, r in reports.items()
        if isinstance(r, dict) and "http" in r
    }
    clip_b, clip_a = reports["before"]["clip"], reports["after"]["clip"]
    c64 = after["detect_c64"]

    def split(c: dict) -> str:
        if "wall_s" not in c:
            return f"failed: {c}"
        return (
            f"{c['wall_s']} s (decode {c['decode_s']:.2f}, faces {c['faces_s']:.2f}, "
            f"model {c['model_s']:.2f}; {c['tracks']} tracks, {c['full_face_detections']} of "
            f"{c['samples']} frames fully searched)"
        )

    rows = [
        "| measure | before (old face step + fp32) | after (defaults) | after, fp32 | target |",
        "|---|---|---|---|---|",
        f"| detect c=32 req/s (medians of {before.get('detect_c32_repeats')}, "
        f"{after.get('detect_c32_repeats')}) "
        f"| {rps['before']} | {rps['after']} ({rps['after'] / rps['before']:.2f}x) | {rps['after_fp32']} "
        f"({rps['after_fp32'] / rps['before']:.2f}x) | after >= 2x before |",
        f"| detect c=32 against the legacy stack ({rps['legacy']} req/s, same model, no faces) | "
        f"{rps['before'] / rps['legacy']:.1f}x | {rps['after'] / rps['legacy']:.1f}x | "
        f"{rps['after_fp32'] / rps['legacy']:.1f}x | >= 10x |",
        f"| one client, 4-face photo, p50 | {reports['before']['four_faces_c1']['p50_ms']} ms | "
        f"{reports['after']['four_faces_c1']['p50_ms']} ms | | <= 100 ms |",
        f"| detect p50 / p99 at c=1 (image mix) | {before['detect_c1']['p50_ms']} / "
        f"{before['detect_c1']['p99_ms']} ms | {after['detect_c1']['p50_ms']} / "
        f"{after['detect_c1']['p99_ms']} ms | {after32['detect_c1']['p50_ms']} / "
        f"{after32['detect_c1']['p99_ms']} ms | |",
        f"| faces per request at c=32 | {before['detect_c32']['faces_per_request']} | "
        f"{after['detect_c32']['faces_per_request']} | {after32['detect_c32']['faces_per_request']} | "
        "the same mix |",
        f"| CPU per request at c=32 (core-ms, all processes) | {cpu['before']:.0f} | {cpu['after']:.0f} | "
        f"{cpu['after_fp32']:.0f} | |",
        f"| errors, detect c=1..32 | {errors(before, 'detect', 32)} | {errors(after, 'detect', 32)} | "
        f"{errors(after32, 'detect', 32)} | 0 |",
        f"| detect c=64: answers | {before['detect_c64']['statuses']} | {c64['statuses']} "
        f"({c64['retry_after_503']} 503s with Retry-After) | {after32['detect_c64']['statuses']} | "
        "200 or 503 + Retry-After |",
        f"| 10-s 720p two-face clip, one client | {split(clip_b)} | {split(clip_a)} | | "
        "<= 1.5 s, two tracks |",
        f"| idle RSS, all server processes | {reports['before']['idle_rss_mb']} MB | "
        f"{reports['after']['idle_rss_mb']} MB | {reports['after_fp32']['idle_rss_mb']} MB | <= 1000 MB |",
        f"| ready after start | {reports['before']['ready_s']} s | {reports['after']['ready_s']} s | "
        f"{reports['after_fp32']['ready_s']} s | |",
        f"| faces off, fp32: c=32 / in-process limit | | {off['http']['detect_c32']['rps']} / {limit} | | "
        f"{off['http']['detect_c32']['rps'] / limit:.2f} (>= 0.85) |",
    ]
    if "facenet" in reports:
        rows.append(
            f"| the FaceNet default it replaced, same defaults: c=32 req/s, faces/request | | "
            f"{rps['facenet']} ({reports['facenet']['http']['detect_c32']['faces_per_request']}) | | "
            "before the CLIP switch |"
        )
    if "augmented_c1" in after:
        rows.append(
            f"| augmented / detect p50 at c=1 | | {after['augmented_c1']['p50_ms']} / "
            f"{after['detect_c1']['p50_ms']} ms | | |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per HTTP run (more at high concurrency)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few requests a run, no repeats: checks the script, not the speed",
    )
    args = parser.parse_args()
    if args.quick:
        global ROUNDS_C1, PER_CLIENT, REPEATS
        ROUNDS_C1, PER_CLIENT, REPEATS, args.requests = 1, 1, 1, 16
    images = load_images([])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    default, fp32, facenet = ensure_models()
    faces_on = {
        "faces": True,
        "batch_sizes": [1, 8, 32, 64],
        "count": 16 if args.quick else 96,
        "rounds": ROUNDS_C1,
    }
    cpu, kind = cpu_kind()
    print(f"CPU: {cpu}; kind: {kind} (figures of the other kinds: not measured)", flush=True)
    old_face_step = {"DEEPFAKE_FACE_TILES": "always", "DEEPFAKE_VIDEO_FULL_EVERY": "1"}
    reports: dict = {"cpu": cpu, "cpu_kind": kind}
    reports["before"] = bench_server(
        "before", {**old_face_step, "DEEPFAKE_MODEL_TAG": fp32}, args.requests, images, clip=True
    )
    reports["after"] = bench_server(
        "after",
        {"DEEPFAKE_MODEL_TAG": default},
        args.requests,
        images,
        inprocess=faces_on,
        extras=True,
        clip=True,
    )
    reports["after_fp32"] = bench_server(
        "after-fp32", {"DEEPFAKE_MODEL_TAG": fp32}, args.requests, images, repeats=1
    )
    reports["no_faces_fp32"] = bench_server(
        "no-faces-fp32",
        {"DEEPFAKE_FACE_DETECTION": "false", "DEEPFAKE_MODEL_TAG": fp32},
        args.requests,
        images,
        inprocess={**faces_on, "faces": False},
        repeats=1,
    )
    reports["legacy"] = bench_legacy(fp32, args.requests, images)
    # The default before the CLIP switch, served with today's defaults (issue 20: before/after)
    reports["facenet"] = bench_server(
        "facenet", {"DEEPFAKE_MODEL_TAG": facenet}, args.requests, images, repeats=1
    )
    reports["model_path"] = model_path()
    # The raw numbers first: a table that fails must not lose a 15-minute run.
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, **reports}, indent=2))
    print(f"raw numbers: {path}")
    print(f"\nMachine: {machine}; CPU: {cpu}; kind: {kind}; other kinds: not measured")
    print(f"models: {default} (after), {fp32} (before, after-fp32, no-faces, legacy), {facenet} (facenet)\n")
    print("\n".join(table(reports)))
    print(f"\nThe model path alone (bench/precision.py):\n{reports['model_path']}")


if __name__ == "__main__":
    main()
