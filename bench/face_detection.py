"""Face detection speed at about 0.3, 1 and 3 megapixels, and face counts on the fixtures.

    .venv/bin/python bench/face_detection.py [--runs 7] [--max-side 640 --max-side 1024]

Each timing is the median of `--runs` calls after one warm-up call, on one thread, of
`FaceDetector.detect` (downscale + MTCNN + mapping back) and of `crop_face` for every face.
The large images are a fixture photo resized (upscaled) to the target pixel count: detection
time depends on the pixel count far more than on the content.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from PIL import Image, ImageOps  # noqa: E402

from preprocessing.faces import DEFAULT_MAX_SIDE, FaceDetector, crop_face  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SOURCE = "faceapi_sample5.jpg"  # 5 faces
MEGAPIXELS = (0.3, 1.0, 3.0)


def median_seconds(call: Callable[[], object], runs: int) -> float:
    call()  # warm-up: first calls trace and allocate
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def resized_to(image: Image.Image, megapixels: float) -> Image.Image:
    factor = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.BICUBIC)


def load(name: str) -> Image.Image:
    with Image.open(FIXTURES / name) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def bench_sizes(detector: FaceDetector, max_sides: list[int], runs: int) -> None:
    source = load(SOURCE)
    print(f"\ndetection time, median of {runs} after a warm-up ({SOURCE} resized; 5 faces)")
    print(f"{'image':>16} {'max_side':>8} {'detect ms':>10} {'faces':>6} {'crop all ms':>12}")
    for megapixels in MEGAPIXELS:
        image = resized_to(source, megapixels)
        label = f"{image.width}x{image.height}"
        for max_side in max_sides:
            faces = detector.detect(image, max_side=max_side)
            detect_s = median_seconds(lambda i=image, m=max_side: detector.detect(i, max_side=m), runs)
            crop_s = median_seconds(lambda i=image, f=faces: [crop_face(i, x) for x in f], runs)
            row = f"{label:>16} {max_side:>8} {detect_s * 1000:>10.0f} {len(faces):>6}"
            print(f"{row} {crop_s * 1000:>12.1f}")


def count_fixtures(detector: FaceDetector, max_sides: list[int]) -> None:
    expected: dict[str, int] = json.loads((FIXTURES / "faces.json").read_text())
    print("\nface counts per fixture (expected = people visible, counted by eye)")
    header = " ".join(f"{'max_side ' + str(m):>13}" for m in max_sides)
    print(f"{'fixture':>34} {'expected':>8} {header}")
    for name, count in expected.items():
        image = load(name)
        found = " ".join(f"{len(detector.detect(image, max_side=m)):>13}" for m in max_sides)
        print(f"{name:>34} {count:>8} {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-side", type=int, action="append", dest="max_sides")
    args = parser.parse_args()
    max_sides = args.max_sides or [DEFAULT_MAX_SIDE]

    started = time.perf_counter()
    detector = FaceDetector()
    print(f"FaceDetector() {time.perf_counter() - started:.2f} s; {os.cpu_count()} CPU cores")
    bench_sizes(detector, max_sides, args.runs)
    count_fixtures(detector, max_sides)


if __name__ == "__main__":
    main()
