"""Memory of a served bundle, for the deployment's requests and limits: PSS (each shared page
counted once: closest to what the processes really use) and RSS of the whole process tree,
idle and after each load, from one `bentoml serve` of the defaults.

    BENTOML_HOME=.bentoml .venv/bin/python bench/memory.py [--model-tag TAG]

Loads: 64 requests at 8 concurrent, 512 at 64 concurrent (batches up to 64), one 40-Mpx JPEG
through `detect` and `detect/augmented`, and the 10-s 720p clip through the video route. The
image (`make image-smoke`) measures the same in a container; this is the same server without one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import load_images, run, server_processes  # noqa: E402
from bench.suite import Server  # noqa: E402


def tree_mb(url: str) -> tuple[float, float]:
    """(PSS, RSS) of the server's process tree, MiB."""
    pss = rss = 0
    for proc in server_processes(url):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss, rss = pss + info.pss, rss + info.rss
    return pss / 2**20, rss / 2**20


def big_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (500, 800, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((8000, 5000), Image.Resampling.BILINEAR)  # 40 Mpx
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-tag", default=None, help="unset: the defaults (deepfake_classifier:latest)")
    args = parser.parse_args()
    images = load_images([])
    env = {"DEEPFAKE_MODEL_TAG": args.model_tag} if args.model_tag else {}
    rows = []
    with Server(env) as server:
        time.sleep(5)
        rows.append(("idle", *tree_mb(server.url)))
        asyncio.run(run(server.url, "detect", 8, 64, 0, images))
        rows.append(("64 requests, 8 concurrent", *tree_mb(server.url)))
        asyncio.run(run(server.url, "detect", 64, 512, 0, images))
        rows.append(("512 requests, 64 concurrent", *tree_mb(server.url)))
        data = big_jpeg()
        for route in ("/api/v1/detect/", "/api/v1/detect/augmented"):
            answer = httpx.post(f"{server.url}{route}", files={"file": ("big.jpg", data, "image/jpeg")},
                                data={"require_face": "false"}, timeout=300)  # fmt: skip
            rows.append((f"one 40-Mpx JPEG, {route} ({answer.status_code})", *tree_mb(server.url)))
        from bench.video import make_clip

        clip = make_clip(2.0).read_bytes()
        answer = httpx.post(f"{server.url}/api/v1/detect/video", files={"file": ("c.mp4", clip, "video/mp4")},
                            timeout=300)  # fmt: skip
        rows.append((f"the 10-s 720p clip, video route ({answer.status_code})", *tree_mb(server.url)))
        processes = len(server_processes(server.url))
    print(f"\n{processes} processes (supervisor, model and API workers, decoder processes once a video came)")
    print("| state | PSS | RSS |\n| --- | --- | --- |")
    for label, pss, rss in rows:
        print(f"| {label} | {pss:.0f} MiB | {rss:.0f} MiB |")


if __name__ == "__main__":
    main()
