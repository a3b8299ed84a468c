"""The face detectors compared, in one run: recall, box and crop agreement, speed, memory.

    .venv/bin/python bench/face_detection.py [--runs 7]   # the report, both detectors
    .venv/bin/python bench/face_detection.py --sweep      # BlazeFace settings: levels, overlap, score
    .venv/bin/python bench/face_detection.py --fit        # fit BlazeFace's box mapping to MTCNN's boxes
    .venv/bin/python bench/face_detection.py --threads    # only the throughput with 1 and 2 threads
    BENTOML_HOME=.bentoml .venv/bin/python bench/face_detection.py --tiles   # tiles always / when needed

Photos: the face fixtures (tests/fixtures, true faces in faces.json), the face-api demo photos
sample1-6 at full size (npm `@vladmandic/face-api@1.7.15`, fetched with `npm pack` as
training/sources.py does), and "mosaics" of those six photos (k x k on a 1920 x 1440 canvas,
k = 2..6) for small faces: a face's box is then about 10 / k % of the long side (k = 5: 2 %,
where MTCNN at 640 px starts to miss faces).

A detection matches a true face when each box's centre lies inside the other (one detection
per face): robust to the two detectors' different box shapes and to small faces.

Speed: each fixture photo (all ten, the EXIF copy left out) resized to 0.3, 1 and 3 MP; per
photo time is the median and p90 over `--runs` rounds after a warm-up, one thread, of
`detect` (one photo a call) and of `detect_many` (all ten in one call, time / 10). Memory: the
RSS of a fresh Python process after importing and building each detector and one detect call.
Timings on a shared machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from preprocessing.detectors import load_detector  # noqa: E402
from preprocessing.faces import Face, FaceDetector, crop_face  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
EXPECTED: dict[str, dict] = json.loads((FIXTURES / "faces.json").read_text())
MEGAPIXELS = (0.3, 1.0, 3.0)
MOSAIC_CANVAS = (1920, 1440)
MOSAIC_GRIDS = (2, 3, 4, 5, 6)
SERIES_FACTORS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Recall by face size: the true box's longer side in % of the photo's long side.
SIZE_EDGES = (0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 100.0)
ALL_FACES = 1000  # max_faces for recall: never the cap

Box = tuple[float, float, float, float]
Photo = tuple[str, Image.Image, list[Box]]  # name, image, true face boxes (x, y, w, h)


# -- photos and their true faces --------------------------------------------------------------


def load(path: Path | io.BytesIO) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def true_faces(name: str) -> list[Box]:
    """Every face of a fixture counted by eye: the union of both detectors' expected faces
    (faces.json; tests/test_faces.py checks that the union has `faces` members)."""
    entry = EXPECTED[name]
    faces: list[Box] = [tuple(b) for b in entry["mtcnn"]]
    faces += [tuple(b) for b in entry["blazeface"] if not any(centres_match(b, m) for m in entry["mtcnn"])]
    return faces


def fixture_photos() -> list[Photo]:
    return [(name, load(FIXTURES / name), true_faces(name)) for name in EXPECTED]


def faceapi_photos() -> list[Photo]:
    """sample1-6 at full size; true faces scaled from their 960 px fixture copies."""
    from training.sources import PACKAGES, download

    archive = download(PACKAGES["faceapi"], ROOT / ".cache" / "training" / "downloads")
    photos = []
    with tarfile.open(archive) as tar:
        for index in range(1, 7):
            data = tar.extractfile(f"package/demo/sample{index}.jpg").read()  # type: ignore[union-attr]
            image = load(io.BytesIO(data))
            fixture = f"faceapi_sample{index}.jpg"
            with Image.open(FIXTURES / fixture) as small:
                fx, fy = image.width / small.width, image.height / small.height
            boxes = [(x * fx, y * fy, w * fx, h * fy) for x, y, w, h in true_faces(fixture)]
            photos.append((f"npm sample{index}.jpg", image, boxes))
    return photos


def mosaic(photos: Sequence[Photo], grid: int, canvas: tuple[int, int] = MOSAIC_CANVAS) -> Photo:
    """`grid` x `grid` cells on a grey canvas, photo i in cell i (cycling), each fitted into its
    cell: many small faces in one picture, with known boxes."""
    width, height = canvas
    cell_w, cell_h = width // grid, height // grid
    out = Image.new("RGB", canvas, (128, 128, 128))
    boxes: list[Box] = []
    for cell in range(grid * grid):
        _, image, faces = photos[cell % len(photos)]
        factor = min(cell_w / image.width, cell_h / image.height)
        small = image.resize(
            (round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS
        )
        ox = (cell % grid) * cell_w + (cell_w - small.width) // 2
        oy = (cell // grid) * cell_h + (cell_h - small.height) // 2
        out.paste(small, (ox, oy))
        boxes += [(x * factor + ox, y * factor + oy, w * factor, h * factor) for x, y, w, h in faces]
    return f"mosaic {grid}x{grid}", out, boxes


def size_series(photos: Sequence[Photo], canvas: tuple[int, int] = MOSAIC_CANVAS) -> list[Photo]:
    """Each photo shrunk by each of SERIES_FACTORS onto a grey canvas, at a position that
    varies with the photo and the factor (so faces fall at all places relative to the tiles)."""
    width, height = canvas
    out = []
    for fi, factor in enumerate(SERIES_FACTORS):
        for pi, (name, image, faces) in enumerate(photos):
            small = image.resize(
                (round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS
            )
            ox = round((width - small.width) * ((fi * 3 + pi * 7) % 10) / 9)
            oy = round((height - small.height) * ((fi * 5 + pi * 3) % 10) / 9)
            framed = Image.new("RGB", canvas, (128, 128, 128))
            framed.paste(small, (ox, oy))
            boxes = [(x * factor + ox, y * factor + oy, w * factor, h * factor) for x, y, w, h in faces]
            out.append((f"{name} x{factor}", framed, boxes))
    return out


def centres_match(a: Sequence[float], b: Sequence[float]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    acx, acy, bcx, bcy = ax + aw / 2, ay + ah / 2, bx + bw / 2, by + bh / 2
    return bx <= acx <= bx + bw and by <= acy <= by + bh and ax <= bcx <= ax + aw and ay <= bcy <= ay + ah


def match(found: Sequence[Face], truth: Sequence[Box]) -> dict[int, int]:
    """true face index -> detection index, each detection used once (nearest centre first)."""
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for t, box in enumerate(truth):
        candidates = [
            (
                abs(f.box[0] + f.box[2] / 2 - box[0] - box[2] / 2)
                + abs(f.box[1] + f.box[3] / 2 - box[1] - box[3] / 2),
                i,
            )
            for i, f in enumerate(found)
            if i not in used and centres_match(f.box, box)
        ]
        if candidates:
            pairs[t] = min(candidates)[1]
            used.add(pairs[t])
    return pairs


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - w * h
    return w * h / union if union > 0 else 0.0


# -- recall ------------------------------------------------------------------------------------


def recall_table(detectors: dict[str, Callable[[Image.Image], list[Face]]], photos: Sequence[Photo]) -> None:
    names = list(detectors)
    print(f"{'photo':>34} {'faces':>5} " + " ".join(f"{n + ' found':>15} {'extra':>6}" for n in names))
    totals = {n: [0, 0] for n in names}
    faces_total = 0
    for name, image, truth in photos:
        row = f"{name:>34} {len(truth):>5} "
        faces_total += len(truth)
        for label in names:
            found = detectors[label](image)
            pairs = match(found, truth)
            extra = len(found) - len(pairs)
            totals[label][0] += len(pairs)
            totals[label][1] += extra
            row += f"{len(pairs):>15} {extra:>6} "
        print(row)
    print(f"{'total':>34} {faces_total:>5} " + " ".join(f"{t[0]:>15} {t[1]:>6}" for t in totals.values()))


def recall_by_size(
    detectors: dict[str, Callable[[Image.Image], list[Face]]], photos: Sequence[Photo]
) -> None:
    buckets = len(SIZE_EDGES) - 1
    print(
        f"{'face size, % of long side':>34} "
        + " ".join(f"{f'{SIZE_EDGES[i]:g}-{SIZE_EDGES[i + 1]:g}':>8}" for i in range(buckets))
        + "   extra"
    )
    for label, detect in detectors.items():
        found, total, extra = np.zeros(buckets, int), np.zeros(buckets, int), 0
        for _, image, truth in photos:
            faces = detect(image)
            pairs = match(faces, truth)
            extra += len(faces) - len(pairs)
            for t, box in enumerate(truth):
                size = max(box[2], box[3]) / max(image.size) * 100
                bucket = int(np.searchsorted(SIZE_EDGES, size, side="right")) - 1
                total[bucket] += 1
                found[bucket] += t in pairs
        cells = " ".join(f"{f'{f}/{t}':>8}" for f, t in zip(found, total, strict=True))
        print(f"{label:>34} {cells} {extra:>7}")


def extras(detector: Callable[[Image.Image], list[Face]], photos: Sequence[Photo]) -> None:
    """Detections that match no true face (false positives), with their scores."""
    for name, image, truth in photos:
        found = detector(image)
        used = set(match(found, truth).values())
        wrong = [(f.box, round(f.score, 2)) for i, f in enumerate(found) if i not in used]
        if wrong:
            print(f"  {name}: {wrong}")


# -- box mapping -------------------------------------------------------------------------------


def matched_pairs(blazeface: FaceDetector, mtcnn: FaceDetector, photos: Sequence[Photo]) -> list[tuple]:
    """(photo, BlazeFace face, MTCNN face) for every face both find."""
    pairs = []
    for _, image, _ in photos:
        theirs = mtcnn.detect(image, max_faces=ALL_FACES)
        ours = blazeface.detect(image, max_faces=ALL_FACES)
        for t, o in match(ours, [f.box for f in theirs]).items():
            pairs.append((image, ours[o], theirs[t]))
    return pairs


def fit_mapping(pairs: Sequence[tuple]) -> dict[str, float]:
    """Centre offset (in box sizes) and scale taking BlazeFace's raw boxes to MTCNN's: least
    squares for the scales, means for the offsets."""
    b = np.array([p[1].box for p in pairs], float)
    m = np.array([p[2].box for p in pairs], float)
    bw, bh, mw, mh = b[:, 2], b[:, 3], m[:, 2], m[:, 3]
    dx = ((m[:, 0] + mw / 2) - (b[:, 0] + bw / 2)) / bw
    dy = ((m[:, 1] + mh / 2) - (b[:, 1] + bh / 2)) / bh
    return {
        "dx": float(dx.mean()),
        "dx_sd": float(dx.std()),
        "dy": float(dy.mean()),
        "dy_sd": float(dy.std()),
        "sw": float((mw * bw).sum() / (bw * bw).sum()),
        "sh": float((mh * bh).sum() / (bh * bh).sum()),
        "pairs": len(pairs),
    }


def closeness(pairs: Sequence[tuple]) -> str:
    """IoU of BlazeFace's boxes with MTCNN's, and the mean absolute difference (0-255) of
    their 160 x 160 crops (crop_face, margin 0.25)."""
    ious = [iou(o.box, t.box) for _, o, t in pairs]
    diffs = [
        np.abs(np.asarray(crop_face(img, o), np.int16) - np.asarray(crop_face(img, t), np.int16)).mean()
        for img, o, t in pairs
    ]
    return (
        f"{len(pairs)} faces: IoU median {np.median(ious):.3f}, min {min(ious):.3f}; "
        f"crop |diff| mean {np.mean(diffs):.1f}, median {np.median(diffs):.1f}, max {max(diffs):.1f} (of 255)"
    )


# -- speed -------------------------------------------------------------------------------------


def resized_to(image: Image.Image, megapixels: float) -> Image.Image:
    factor = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.BICUBIC)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def speed_table(detectors: dict[str, FaceDetector], photos: Sequence[Photo], runs: int) -> None:
    columns = ("one by one ms", 14), ("p90", 6), ("batched ms", 11), ("p90", 6), ("faces", 6)
    print(f"{'size':>6} {'detector':>24} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for megapixels in MEGAPIXELS:
        images = [resized_to(image, megapixels) for _, image, _ in photos]
        for label, detector in detectors.items():
            faces = sum(len(detector.detect(image)) for image in images)  # also the warm-up
            single: list[float] = []
            batched: list[float] = []
            for _ in range(runs):
                for image in images:
                    started = time.perf_counter()
                    detector.detect(image)
                    single.append(time.perf_counter() - started)
                started = time.perf_counter()
                detector.detect_many(images)
                batched.append((time.perf_counter() - started) / len(images))
            print(
                f"{megapixels:>4} MP {label:>24} {statistics.median(single) * 1e3:>14.1f} "
                f"{percentile(single, 90) * 1e3:>6.1f} {statistics.median(batched) * 1e3:>11.1f} "
                f"{percentile(batched, 90) * 1e3:>6.1f} {faces:>6}"
            )


def thread_table(
    detectors: dict[str, FaceDetector], images: Sequence[Image.Image], rounds: int, repeats: int = 3
) -> None:
    """Photos per second with 1 and 2 threads calling one detector instance: the median of
    `repeats` runs, the detectors taking turns (so that load from elsewhere hits all alike)."""

    def run(detector: FaceDetector, threads: int) -> float:
        work = list(images) * rounds
        parts = [work[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=lambda p=p: [detector.detect(i) for i in p]) for p in parts]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return len(work) / (time.perf_counter() - started)

    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for label, detector in detectors.items():
            for threads in (1, 2):
                rates.setdefault((label, threads), []).append(run(detector, threads))
    for (label, threads), values in rates.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{label:>34} {threads} thread(s): {statistics.median(values):6.1f} photos/s ({spread})")


RSS_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy, PIL.Image
if sys.argv[2]:
    from preprocessing.detectors import load_detector
    load_detector(sys.argv[2]).detect(PIL.Image.open(sys.argv[3]).convert("RGB"))
rss = [line for line in open("/proc/self/status") if line.startswith("VmRSS")][0].split()[1]
print(int(rss) // 1024, "tensorflow" in sys.modules)
"""


def rss_report(name: str) -> None:
    """RSS of a fresh process after importing and building one detector and one detect call."""
    photo = str(FIXTURES / "faceapi_sample5.jpg")
    command = [sys.executable, "-c", RSS_SCRIPT, str(ROOT), name, photo]
    mib, tf_loaded = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    print(f"{name or 'python + numpy + Pillow':>34}: {mib:>5} MiB RSS; tensorflow imported: {tf_loaded}")


# -- the runs ----------------------------------------------------------------------------------


def report(runs: int) -> None:
    from preprocessing.blazeface import BlazeFaceDetector

    started = time.perf_counter()
    mtcnn = load_detector("mtcnn")
    mtcnn_s = time.perf_counter() - started
    started = time.perf_counter()
    blazeface = load_detector("blazeface")
    blazeface_s = time.perf_counter() - started
    print(f"load_detector: mtcnn {mtcnn_s:.2f} s, blazeface {blazeface_s:.2f} s; {os.cpu_count()} CPU cores")
    both = {"mtcnn": mtcnn, "blazeface": blazeface}
    detect_all = {
        label: (lambda image, d=d: d.detect(image, max_faces=ALL_FACES)) for label, d in both.items()
    }

    fixtures, faceapi = fixture_photos(), faceapi_photos()
    mosaics = [mosaic(faceapi, grid) for grid in MOSAIC_GRIDS]
    print("\nrecall: true faces found per photo ('extra': detections matching no true face)")
    recall_table(detect_all, fixtures + faceapi + mosaics)
    for label, detect in detect_all.items():
        print(f"extra detections of {label}:")
        extras(detect, fixtures + faceapi + mosaics)
    print("\nrecall by face size: the six face-api photos shrunk onto a canvas, and the mosaics")
    recall_by_size(detect_all, size_series(faceapi) + mosaics[1:])

    print("\nBlazeFace boxes (mapped) against MTCNN's, faces both find")
    print("  fixtures:", closeness(matched_pairs(blazeface, mtcnn, fixtures)))
    print("  face-api full size:", closeness(matched_pairs(blazeface, mtcnn, faceapi)))

    photos = [p for p in fixtures if p[0] != "astronaut_exif_orientation6.jpg"]
    print(f"\nper-photo time, {len(photos)} fixture photos resized, median / p90 of {runs} rounds")
    speed_table(
        {
            "mtcnn": mtcnn,
            "blazeface": blazeface,
            "blazeface tiles all-in-1": BlazeFaceDetector(tile_batch=0),
            "blazeface tiles by 4": BlazeFaceDetector(tile_batch=4),
        },
        photos,
        runs,
    )
    throughput(mtcnn, blazeface, photos)
    print("\nmemory of a fresh process")
    for name in ("", "blazeface", "mtcnn"):
        rss_report(name)


class CountingNet:
    """Wraps a BlazeFaceDetector's network to count model inputs (the cost that matters)."""

    def __init__(self, net: object) -> None:
        self.net, self.inputs = net, 0
        self.anchors = net.anchors  # type: ignore[attr-defined]

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.inputs += len(tiles)
        return self.net(tiles)  # type: ignore[operator]


def throughput(mtcnn: FaceDetector, blazeface: FaceDetector, photos: Sequence[Photo]) -> None:
    from preprocessing.blazeface import BlazeFaceDetector

    one_mp = [resized_to(image, 1.0) for _, image, _ in photos]
    print("\nthroughput, 1 MP photos, one detector instance shared by the threads")
    thread_table(
        {
            "mtcnn": mtcnn,
            "blazeface (interpreter per thread)": blazeface,
            "blazeface (one interpreter, lock)": BlazeFaceDetector(per_thread=False),
        },
        one_mp,
        2,
    )


def sweep() -> None:
    """BlazeFace settings against MTCNN: recall on the photos and by face size, detections
    matching no true face, model inputs per photo, time per 1 MP photo."""
    from preprocessing.blazeface import BlazeFaceDetector

    fixtures, faceapi = fixture_photos(), faceapi_photos()
    photos = [p for p in fixtures + faceapi if p[2]]
    small = size_series(faceapi) + [mosaic(faceapi, grid) for grid in MOSAIC_GRIDS[1:]]
    negatives = [p for p in fixtures if not p[2]]
    one_mp = [resized_to(image, 1.0) for _, image, _ in photos[:6]]

    def measure(label: str, detector: FaceDetector) -> None:
        detect = lambda image: detector.detect(image, max_faces=ALL_FACES)  # noqa: E731
        found = extra = total = 0
        for _, image, truth in photos:
            faces = detect(image)
            pairs = match(faces, truth)
            found, extra, total = found + len(pairs), extra + len(faces) - len(pairs), total + len(truth)
        fp = sum(len(detect(image)) for _, image, _ in negatives)
        detector.detect(one_mp[0])  # warm-up
        net = getattr(detector, "_net", None)
        counter = CountingNet(net) if net is not None else None
        if counter is not None:
            detector._net = counter  # type: ignore[attr-defined]
        started = time.perf_counter()
        for image in one_mp:
            detector.detect(image)
        ms = (time.perf_counter() - started) / len(one_mp) * 1e3
        inputs = f"{counter.inputs / len(one_mp):.1f} model inputs" if counter else ""
        print(f"\n{label}: photos {found}/{total} +{extra}, no-face photos {fp}; 1 MP: {ms:.0f} ms {inputs}")
        recall_by_size({label: detect}, small)

    measure("mtcnn 640 px, 0.9", load_detector("mtcnn"))
    for levels in [(192, 576), (192, 384, 768)]:
        measure(f"search only {levels}, 0.6", BlazeFaceDetector(levels=levels, zoom=None, min_score=0.6))
    for levels, candidate, zoom, min_score in [
        ((192, 576), 0.2, 5.0, 0.6),  # the defaults
        ((192, 448), 0.2, 5.0, 0.6),
        ((192, 640), 0.2, 5.0, 0.6),
        ((192, 384, 768), 0.2, 5.0, 0.6),
        ((192, 576), 0.3, 5.0, 0.6),
        ((192, 576), 0.4, 5.0, 0.6),
        ((192, 576), 0.2, 4.0, 0.6),
        ((192, 576), 0.2, 5.0, 0.5),
        ((192, 576), 0.2, 5.0, 0.7),
    ]:
        detector = BlazeFaceDetector(levels=levels, candidate_score=candidate, zoom=zoom, min_score=min_score)
        measure(f"{levels} candidates {candidate}, zoom {zoom}, {min_score}", detector)


def tiles(runs: int) -> None:
    """Tiles always (the detector before) against tiles when needed (the default): recall and
    extra detections on every photo, recall by face size, model inputs and time per photo (as
    given and at 1 MP), how far the boxes of the faces both find move, and what that does to
    the served model's P(fake) (`--model-tag`, from the BentoML store at BENTOML_HOME)."""
    from preprocessing.blazeface import BlazeFaceDetector

    both = {"tiles always": BlazeFaceDetector(tiles_when_needed=False), "when needed": BlazeFaceDetector()}
    detect_all = {
        label: (lambda image, d=d: d.detect(image, max_faces=ALL_FACES)) for label, d in both.items()
    }
    fixtures, faceapi = fixture_photos(), faceapi_photos()
    mosaics = [mosaic(faceapi, grid) for grid in MOSAIC_GRIDS]
    photos = fixtures + faceapi + mosaics
    print("recall: true faces found per photo ('extra': detections matching no true face)")
    recall_table(detect_all, photos)
    print("\nrecall by face size: the six face-api photos shrunk onto a canvas, and the mosaics")
    recall_by_size(detect_all, size_series(faceapi) + mosaics[1:])

    counters = {label: CountingNet(d._net) for label, d in both.items()}  # type: ignore[attr-defined]
    for label, d in both.items():
        d._net = counters[label]  # type: ignore[attr-defined]
    print(f"\nmodel inputs and ms per photo (median of {runs} rounds, one thread)")
    rows: dict[str, list[str]] = {}
    for name, image, _ in fixtures + faceapi:
        for size_label, picture in (("as given", image), ("1 MP", resized_to(image, 1.0))):
            row = rows.setdefault(f"{name} {size_label} ({picture.width}x{picture.height})", [])
            for label, d in both.items():
                d.detect(picture)
                counters[label].inputs = 0
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    d.detect(picture)
                    times.append(time.perf_counter() - t0)
                row.append(
                    f"{label}: {counters[label].inputs // runs:>2} inputs "
                    f"{1e3 * statistics.median(times):6.1f} ms"
                )
    for key, row in rows.items():
        print(f"  {key:>52}  " + "   ".join(row))
    totals = {label: sum(float(r[i].split()[-2]) for r in rows.values()) for i, label in enumerate(both)}
    print("  total ms: " + ", ".join(f"{label} {ms:.0f}" for label, ms in totals.items()))

    pairs = []  # (image, face before, face now) for the faces both find
    for _, image, _ in photos:
        before, now = (d.detect(image, max_faces=ALL_FACES) for d in both.values())
        pairs += [(image, before[b], now[n]) for n, b in match(now, [f.box for f in before]).items()]
    moved = [iou(a.box, b.box) for _, a, b in pairs]
    same = sum(m == 1.0 for m in moved)
    print(f"\nboxes of {len(pairs)} faces both find: identical {same}, IoU min {min(moved):.3f}")
    print("  served model:", served_agreement(pairs))


def served_agreement(pairs: Sequence[tuple]) -> str:
    """The stored default model's P(fake) on the crops of both boxes of each pair."""
    import bentoml

    from modeling.inference import Classifier
    from modeling.spec import DEFAULT_MODEL_NAME, ModelSpec
    from preprocessing.faces import CropRule

    try:
        stored = bentoml.models.get(f"{DEFAULT_MODEL_NAME}:latest")
    except bentoml.exceptions.NotFound:
        return "no stored model (make model): left out"
    spec = ModelSpec.from_metadata(stored.info.metadata)
    classifier, rule = Classifier.load(Path(stored.path), spec), CropRule.of(spec)
    p = [
        np.array(
            [
                spec.fake_probability(r)
                for r in classifier(np.stack([rule.crop(pair[0], pair[k]) for pair in pairs]))
            ]
        )
        for k in (1, 2)
    ]
    diff = np.abs(p[0] - p[1])
    flips = int(((p[0] >= spec.threshold) != (p[1] >= spec.threshold)).sum())
    return (
        f"{stored.tag} ({spec.precision}): P(fake) |change| mean {diff.mean():.4f}, max {diff.max():.4f}; "
        f"label flipped {flips}/{len(diff)}"
    )


def rescaled_pairs(
    detector: FaceDetector, fixtures: Sequence[Photo], faceapi: Sequence[Photo]
) -> list[tuple]:
    """(960 px fixture, the detector's face on the full-size photo scaled down, its face on the
    fixture): how much one detector's own crops move between two sizes of one photo."""
    small = {name: image for name, image, _ in fixtures}
    pairs = []
    for name, image, _ in faceapi:
        fixture = small[name.replace("npm sample", "faceapi_sample")]
        factor = fixture.width / image.width
        scaled = [Face(tuple(round(v * factor) for v in f.box), f.score, {}) for f in detector.detect(image)]  # type: ignore[arg-type]
        theirs = detector.detect(fixture)
        pairs += [(fixture, scaled[o], theirs[t]) for t, o in match(scaled, [f.box for f in theirs]).items()]
    return pairs


def classifier_agreement(model: object, threshold: float, pairs: Sequence[tuple]) -> str:
    """The default model's P(fake) on both crops of each pair: mean and max difference, and
    how often the verdict (at the model's threshold) differs."""
    crops = [np.stack([np.asarray(crop_face(pair[0], pair[k])) for pair in pairs]) for k in (1, 2)]
    # the default model's output is P(real) of a [0, 1] crop (models/MODEL_CARD.md)
    p_fake = [1.0 - np.asarray(model.predict_on_batch(c / 255.0)).reshape(-1) for c in crops]  # type: ignore[attr-defined]
    diff = np.abs(p_fake[0] - p_fake[1])
    flips = int(((p_fake[0] >= threshold) != (p_fake[1] >= threshold)).sum())
    return f"P(fake) |diff| mean {diff.mean():.3f}, max {diff.max():.3f}; verdict differs {flips}/{len(diff)}"


def fit() -> None:
    """Fit BlazeFace's box mapping on the fixtures, and compare the crops it gives with MTCNN's
    (and, for scale, MTCNN's own crops of one photo at two sizes), also through the classifier."""
    from modeling.default import build_default_classifier, read_recipe
    from preprocessing.blazeface import BlazeFaceDetector, BoxMapping

    model, threshold = build_default_classifier(), read_recipe()["threshold"]
    mtcnn = load_detector("mtcnn")
    raw = BlazeFaceDetector(mapping=BoxMapping())
    mapped = load_detector("blazeface")
    fixtures, faceapi = fixture_photos(), faceapi_photos()
    unmapped_pairs = matched_pairs(raw, mtcnn, fixtures)
    print("fit on the fixtures:", json.dumps(fit_mapping(unmapped_pairs)))
    comparisons = {
        "BlazeFace raw boxes vs MTCNN, fixtures": unmapped_pairs,
        "BlazeFace mapped vs MTCNN, fixtures": matched_pairs(mapped, mtcnn, fixtures),
        "BlazeFace mapped vs MTCNN, face-api full size": matched_pairs(mapped, mtcnn, faceapi),
        "MTCNN vs MTCNN, full-size photo scaled vs 960 px copy": rescaled_pairs(mtcnn, fixtures, faceapi),
        "BlazeFace vs BlazeFace, likewise": rescaled_pairs(mapped, fixtures, faceapi),
    }
    for label, pairs in comparisons.items():
        print(f"{label}:\n    {closeness(pairs)}")
        print(f"    default model: {classifier_agreement(model, threshold, pairs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="compare BlazeFace settings")
    parser.add_argument("--fit", action="store_true", help="fit BlazeFace's box mapping")
    parser.add_argument("--threads", action="store_true", help="only the throughput with 1 and 2 threads")
    parser.add_argument("--tiles", action="store_true", help="tiles always vs tiles when needed")
    args = parser.parse_args()
    if args.threads:
        photos = [p for p in fixture_photos() if p[0] != "astronaut_exif_orientation6.jpg"]
        throughput(load_detector("mtcnn"), load_detector("blazeface"), photos)
    elif args.sweep:
        sweep()
    elif args.tiles:
        tiles(args.runs)
    elif args.fit:
        fit()
    else:
        report(args.runs)


if __name__ == "__main__":
    main()
