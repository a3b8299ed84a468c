"""The in-process limit: the service's own pipeline (decode, faces, crops, model) on the same
images, without HTTP or a second process, at several batch sizes.

    BENTOML_HOME=.bentoml python bench/inprocess.py --batch-sizes 1 8 32 64 --images 64
    BENTOML_HOME=.bentoml python bench/inprocess.py --no-faces

Decoding and face detection of the next batch (two worker threads) overlap with the model
running the current one, as in the service. Prints images/s per batch size, the best, and the
single-image time (one image through the whole pipeline, nothing overlapped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


@dataclass
class InProcessResult:
    model_tag: str
    faces: bool
    images: int
    per_batch_size: dict[int, float]  # images/s
    best_batch_size: int
    best_images_per_s: float
    single_image_ms: float  # median, decode + faces + model, nothing overlapped
    model_only_ms: dict[int, float]  # median model time per batch


def default_images() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob("*.jpg"))]


def measure(
    model_tag: str, faces: bool, batch_sizes: list[int], count: int, images: list[bytes]
) -> InProcessResult:
    import bentoml

    from modeling.inference import Classifier
    from modeling.spec import ModelSpec
    from preprocessing.faces import FaceDetector
    from serving.pipeline import DetectionPipeline
    from serving.settings import SETTINGS

    stored = bentoml.models.get(model_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    classifier = Classifier.load(Path(stored.path), spec)
    detector = FaceDetector() if faces else None
    pipeline = DetectionPipeline(spec, str(stored.tag), SETTINGS.limits, None, detector, SETTINGS.faces)  # type: ignore[arg-type]
    uploads = [images[i % len(images)] for i in range(count)]

    def crops(data: bytes) -> list[np.ndarray]:
        return pipeline.prepare(data).crops

    for data in images:  # warm-up: every image once, and the model at each batch size
        crops(data)
    for size in batch_sizes:
        classifier(np.zeros((size, *spec.input_size, 3), np.uint8))

    single = []
    for data in uploads[: min(count, 16)]:
        started = time.perf_counter()
        classifier(np.stack(crops(data)))
        single.append(time.perf_counter() - started)

    per_batch, model_ms = {}, {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for size in batch_sizes:
            batches = [uploads[i : i + size] for i in range(0, count, size)]
            timings = []
            started = time.perf_counter()
            pending = [pool.submit(crops, data) for data in batches[0]]
            for index in range(len(batches)):
                ready = [crop for future in pending for crop in future.result()]
                if index + 1 < len(batches):  # prepare the next batch while the model runs
                    pending = [pool.submit(crops, data) for data in batches[index + 1]]
                t0 = time.perf_counter()
                classifier(np.stack(ready))
                timings.append(time.perf_counter() - t0)
            per_batch[size] = round(count / (time.perf_counter() - started), 2)
            model_ms[size] = round(statistics.median(timings) * 1000, 1)
    best = max(per_batch, key=per_batch.__getitem__)
    return InProcessResult(
        model_tag=str(stored.tag),
        faces=faces,
        images=count,
        per_batch_size=per_batch,
        best_batch_size=best,
        best_images_per_s=per_batch[best],
        single_image_ms=round(statistics.median(single) * 1000, 1),
        model_only_ms=model_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-tag", default="deepfake_classifier:latest")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=64, help="images per batch-size run")
    parser.add_argument("--no-faces", action="store_true", help="judge whole images (face detection off)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.model_tag, not args.no_faces, args.batch_sizes, args.images, default_images())
    for size, rate in result.per_batch_size.items():
        print(f"batch {size:3d}: {rate:7.2f} images/s   model {result.model_only_ms[size]:7.1f} ms/batch")
    print(
        f"best: batch {result.best_batch_size}, {result.best_images_per_s} images/s; "
        f"single image {result.single_image_ms} ms (faces {'on' if result.faces else 'off'})"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
