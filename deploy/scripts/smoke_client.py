"""Smoke and load client, run INSIDE the container by image-smoke.sh (`python smoke_client.py`).

It talks to the server over the container's own loopback, so the container can run with no
network at all; it uses only the standard library and httpx (a BentoML dependency).

    python smoke_client.py ready TIMEOUT_S
    python smoke_client.py detect IMAGE EXPECTED_MODEL_TAG
    python smoke_client.py memory
    python smoke_client.py load IMAGE REQUESTS CONCURRENCY
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

BASE = f"http://127.0.0.1:{os.environ.get('BENTOML_PORT', '3000')}"


def ready(timeout_s: float) -> None:
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            response = httpx.get(f"{BASE}/readyz", timeout=5)
            if response.status_code == 200:
                print(f"readyz 200 after {time.monotonic() - start:.1f}s")
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    sys.exit(f"readyz not 200 after {timeout_s:.0f}s (last: {last})")


def post(client: httpx.Client, image: bytes) -> dict:
    response = client.post(f"{BASE}/api/v1/detect/", files={"file": ("face.png", image, "image/png")})
    response.raise_for_status()
    return response.json()


def detect(image_path: str, expected_tag: str) -> None:
    with httpx.Client(timeout=60) as client:
        answer = post(client, Path(image_path).read_bytes())
        health = client.get(f"{BASE}/api/v1/detect/health")
        livez = client.get(f"{BASE}/livez")
    print("POST /api/v1/detect/ ->", json.dumps(answer))
    assert answer["prediction"] in ("real", "fake"), answer
    assert 0.0 <= answer["confidence"] <= 1.0, answer
    fake = answer["fake_probability"]
    assert abs(answer["confidence"] - (fake if answer["prediction"] == "fake" else 1 - fake)) < 1e-6, answer
    assert answer["debug_info"]["input_shape"][0] == 1, answer
    if expected_tag:
        assert answer["model_tag"] == expected_tag, f"served {answer['model_tag']}, expected {expected_tag}"
    assert health.status_code == 200 and health.json()["model_loaded"] is True, health.text
    assert livez.status_code == 200, livez.status_code
    print(f"GET /api/v1/detect/health -> {health.status_code} {health.text}")


def _memory(exclude: set[int]) -> tuple[int, int, int]:
    """(PSS, RSS, processes) of the container's processes, bytes; PSS counts shared pages once."""
    pss = rss = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in (entry / "smaps_rollup").read_text().splitlines()[1:]
            )
        except (OSError, ValueError):
            continue
        pss += int(fields["Pss"].split()[0]) * 1024
        rss += int(fields["Rss"].split()[0]) * 1024
        count += 1
    return pss, rss, count


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _role(pid: str) -> str:
    """A short name for a server process: its BentoML service, or the supervisor."""
    argv = (Path("/proc") / pid / "cmdline").read_bytes().split(b"\0")
    if b"--service-name" in argv:
        return argv[argv.index(b"--service-name") + 1].decode()
    return "supervisor" if any(a.endswith(b"bentoml") for a in argv) else Path(argv[0].decode()).name


def memory() -> None:
    pss, rss, count = _memory({os.getpid()})
    parts = []
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                text = (entry / "smaps_rollup").read_text()
                parts.append(f"{_role(entry.name)} {_mib(int(text.split('Pss:')[1].split()[0]) * 1024)}")
            except (OSError, IndexError):
                continue
    print(f"memory: PSS {_mib(pss)}, RSS {_mib(rss)} ({count} processes: {', '.join(parts)})")


def load(image_path: str, requests: int, concurrency: int) -> None:
    image = Path(image_path).read_bytes()
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss, _ = _memory({os.getpid()})
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    latencies: list[float] = []
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(_: int) -> None:
            t0 = time.perf_counter()
            post(client, image)
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(
        f"load: {requests} requests, concurrency {concurrency}: {requests / elapsed:.1f} req/s, "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; "
        f"peak memory PSS {_mib(peak[0])}, RSS {_mib(peak[1])}"
    )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "ready":
        ready(float(args[0]))
    elif command == "detect":
        detect(args[0], args[1] if len(args) > 1 else "")
    elif command == "memory":
        memory()
    elif command == "load":
        load(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown command {command}")
