"""The in-process limit: the service's own pipeline (decode, faces, crops, model) on the same
images, without HTTP or a second process, at several batch sizes.

    BENTOML_HOME=.bentoml python bench/inprocess.py --batch-sizes 1 8 32 64 --images 64
    BENTOML_HOME=.bentoml python bench/inprocess.py --no-faces

A stream, as in the service: decoding and face detection (the service's decode threads) work
through the uploads while the model runs the batch before. Prints images/s per batch size, the
best, and the single-image times (one image through the whole pipeline, nothing overlapped) of
detect and of detect_augmented (seven variants, one model batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages
FIXTURES = ROOT / "tests" / "fixtures"
SINGLE_ROUNDS = 8  # times each image goes through the pipeline alone, for the median


@dataclass
class InProcessResult:
    model_tag: str
    faces: bool
    images: int
    per_batch_size: dict[int, float]  # images/s
    best_batch_size: int
    best_images_per_s: float
    single_image_ms: float  # median, decode + faces + model, nothing overlapped
    single_augmented_ms: float  # the same for detect_augmented: seven variants, one model batch
    model_only_ms: dict[int, float]  # median model time per batch


def default_images() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob("*.jpg"))]


def measure(
    model_tag: str,
    faces: bool,
    batch_sizes: list[int],
    count: int,
    images: list[bytes],
    rounds: int = SINGLE_ROUNDS,
    detector_name: str | None = None,
) -> InProcessResult:
    import bentoml

    from modeling.inference import Classifier
    from modeling.spec import DETECTOR_FILES_NAME, ModelSpec
    from preprocessing.detectors import load_detector
    from serving.pipeline import DetectionPipeline, FaceSettings
    from serving.settings import Settings

    settings = Settings()
    stored = bentoml.models.get(model_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    classifier = Classifier.load(Path(stored.path), spec)
    name = detector_name or settings.face_detector or spec.detector or "blazeface"  # as the service picks
    files = Path(bentoml.models.get(f"{DETECTOR_FILES_NAME}:latest").path)
    detector = load_detector(name, model_dir=files) if faces else None
    face_settings = FaceSettings(max_faces=settings.max_faces)
    pipeline = DetectionPipeline(spec, str(stored.tag), settings.limits, None, detector, face_settings)  # type: ignore[arg-type]
    uploads = [images[i % len(images)] for i in range(count)]

    def crops(data: bytes) -> list[np.ndarray]:
        return pipeline.prepare(data).crops

    for data in images:  # warm-up: every image once, and the model at each batch size
        crops(data)
    for size in batch_sizes:
        classifier(np.zeros((size, *spec.input_size, 3), np.uint8))

    # One image at a time, nothing overlapped: every image `rounds` times, so that the median
    # is taken over the same mix as a concurrency-1 HTTP run (bench/suite.py sends as many).
    single, augmented = [], []
    for data in images * rounds:
        started = time.perf_counter()
        if found := crops(data):  # a photo without a face is not shown to the model
            classifier(np.stack(found))
        single.append(time.perf_counter() - started)
    for data in images * max(1, rounds // 2):
        started = time.perf_counter()
        if len(batch := pipeline.augmented_batch(data)[1]):
            classifier(batch)
        augmented.append(time.perf_counter() - started)

    per_batch, model_ms = {}, {}
    with ThreadPoolExecutor(max_workers=settings.decode_concurrency) as pool:
        for size in batch_sizes:
            # A stream, as in the service: the decode threads work through every upload in
            # order while the model runs; the model takes the next `size` images as soon as
            # they are prepared. Nothing waits at a batch boundary but the model.
            timings = []
            started = time.perf_counter()
            pending = [pool.submit(crops, data) for data in uploads]
            for index in range(0, count, size):
                ready = [crop for future in pending[index : index + size] for crop in future.result()]
                t0 = time.perf_counter()
                if ready:
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
        single_augmented_ms=round(statistics.median(augmented) * 1000, 1),
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
    parser.add_argument("--detector", choices=("blazeface", "mtcnn"), help="default: as the service picks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(
        args.model_tag,
        not args.no_faces,
        args.batch_sizes,
        args.images,
        default_images(),
        detector_name=args.detector,
    )
    for size, rate in result.per_batch_size.items():
        print(f"batch {size:3d}: {rate:7.2f} images/s   model {result.model_only_ms[size]:7.1f} ms/batch")
    print(
        f"best: batch {result.best_batch_size}, {result.best_images_per_s} images/s; "
        f"single image {result.single_image_ms} ms, augmented {result.single_augmented_ms} ms "
        f"(faces {'on' if result.faces else 'off'})"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
