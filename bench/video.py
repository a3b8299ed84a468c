"""Video speed: decoding strategies, one clip through the pipeline split into decode / faces /
crops / model, and clips through the worker pool, one and eight at a time.

    nice -n 10 .venv/bin/python bench/video.py                          # everything, ~5 min
    .venv/bin/python bench/video.py --parts decode                      # strategies only
    BENTOML_HOME=.bentoml .venv/bin/python bench/video.py --model-tag deepfake_classifier:latest
    .venv/bin/python bench/video.py --parts pipeline --model-tag default    # FaceNet, no store

The clip: 10 s of 1280x720 at 30 fps, H.264 (libx264 `medium`, CRF 23, yuv420p), two faces
from the test fixtures drifting over a panning photo, with sensor-like noise (sigma 3) so
that the bitrate is a camera's rather than a slideshow's. One clip per keyframe interval
(1, 2, 10 s), made once into bench/results/video/ (git-ignored).

decode: 32 samples, FFmpeg threads on (one per core), each variant `--rounds` times (5),
interleaved, medians of wall and CPU time: `sequential` (one pass), `seek` with
seek_cost_frames=0 (seek whenever a sample's keyframe lies ahead: seek per sample), `auto`
(what `choose_strategy` picks, default cost), and sequential on one thread. Also 8 samples
(sparse), where seeking should pay. From the two strategies' CPU time it estimates what one
seek costs, in decoded frames (SEEK_COST_FRAMES in preprocessing/video.py).

pipeline: `serving.video_worker.run_request` in this process on the 2-s-keyframe clip
(probe, decode, faces with `--detector`, crops), then the model hook: `--model-tag` loads that model (from the
BentoML store, or `default`: the default FaceNet built from the committed recipe) and runs
every crop as one batch; without it, the model is left out (P(fake) 0.5 for the tracks).
Prints the tracks found and where the time went.

pool: `VideoWorkerPool` (`--pool-size`, default 2) with that detector: the clip alone three times,
then 8 clips at once; wall time, latency, frames/s, and the workers' resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages

from preprocessing.detectors import load_detector, warm_up  # noqa: E402
from preprocessing.face_tracking import FULL_EVERY  # noqa: E402
from preprocessing.video import DecodeStats, decode_frames, probe, sample_times  # noqa: E402
from serving.tracks import build_tracks, judge_video  # noqa: E402
from serving.video_worker import (  # noqa: E402
    FrameFaces,
    VideoRequest,
    VideoWorkerPool,
    concat_crops,
    frame_detections,
    run_request,
)

RESULTS = ROOT / "bench" / "results"
CLIPS = RESULTS / "video"
SIZE, FPS, SECONDS = (1280, 720), 30, 10
SAMPLES = 32
ROUNDS = 3


def make_clip(gop_s: float, scene: str = "two_faces") -> Path:
    """A 10-s 720p clip with a keyframe every `gop_s` seconds (cached). `two_faces`: the bench
    clip; `comings`: faces that come and go (for `tracking`): the two faces, a third as large
    walking in from the right edge at 2-5 s, a small one (64 px, 5 % of the long side: below
    what the tracker's glance sees) in the middle at 4-7 s, and the second face gone after 8 s."""
    import av
    from PIL import Image

    from tests.videos import background, head

    path = CLIPS / f"{scene}_720p_gop{gop_s:g}s.mp4"
    if path.exists():
        return path
    CLIPS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = FPS * SECONDS
    faces = (head("astronaut", 300), head("faceapi", 280))
    walker, small = head("openpeople", 260), head("faceapi", 64)
    gop = round(gop_s * FPS)
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "medium", "crf": "23", "g": str(gop), "keyint_min": str(gop)}
        for i in range(n):
            frame = background(SIZE, pan=i / (n - 1))
            t = i / n
            frame.paste(faces[0], (150 + round(250 * t), 200 + round(40 * np.sin(6.28 * t))))
            if scene == "two_faces" or t < 0.8:
                frame.paste(faces[1], (820 - round(200 * t), 180))
            if scene == "comings" and 0.2 <= t < 0.5:
                frame.paste(walker, (SIZE[0] - round((t - 0.2) / 0.3 * 320), 450))
            if scene == "comings" and 0.4 <= t < 0.7:
                frame.paste(small, (620, 620))
            noisy = np.asarray(frame, dtype=np.int16) + rng.normal(0, 3, (SIZE[1], SIZE[0], 3)).astype(
                np.int16
            )
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)
    return path


# -- decode --------------------------------------------------------------------------------------


VARIANTS: dict[str, dict[str, Any]] = {
    "sequential": {"strategy": "sequential"},
    "seek per sample": {"strategy": "seek", "seek_cost_frames": 0},
    "auto": {"strategy": "auto"},
    "sequential, 1 thread": {"strategy": "sequential", "threads": False},
}


def time_decode(path: Path, samples: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Every variant `rounds` times, interleaved (the machine is shared: a slow spell hits all
    variants alike); medians of wall and CPU time (all threads of this process)."""
    info = probe(path)
    times = sample_times(info, samples)
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
    last: dict[str, DecodeStats] = {}
    for _ in range(rounds):
        for name, options in VARIANTS.items():
            stats = DecodeStats()
            wall, cpu = time.perf_counter(), time.process_time()
            for _frame in decode_frames(info, times, stats=stats, **options):
                pass
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
            last[name] = stats
    return {
        name: {
            "wall_s": round(statistics.median(walls[name]), 3),
            "cpu_s": round(statistics.median(cpus[name]), 3),
            "frames_decoded": last[name].frames_decoded,
            "seeks": last[name].seeks,
            "strategy": last[name].strategy,
        }
        for name in VARIANTS
    }


def bench_decode(clips: dict[float, Path], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for gop, path in clips.items():
        info = probe(path)
        row: dict[str, Any] = {"bitrate_mbps": round(path.stat().st_size * 8 / info.duration_s / 1e6, 2)}
        print(f"\n== keyframe every {gop:g} s ({row['bitrate_mbps']} Mbit/s)")
        for samples in (SAMPLES, 8):
            measured = time_decode(path, samples, rounds)
            row[f"{samples} samples"] = measured
            seq, seek = measured["sequential"], measured["seek per sample"]
            winner = min(("sequential", "seek per sample"), key=lambda k: measured[k]["cpu_s"])
            print(f"  {samples} samples: auto picks {measured['auto']['strategy']}; less CPU: {winner}")
            for name, m in measured.items():
                print(f"    {name:22s} {m}")
            if seek["seeks"] > seq["seeks"] and seq["frames_decoded"]:
                per_frame = seq["cpu_s"] / seq["frames_decoded"]
                extra = (seek["cpu_s"] - seek["frames_decoded"] * per_frame) / (seek["seeks"] - seq["seeks"])
                row[f"{samples} samples: one seek costs, frames (CPU)"] = round(extra / per_frame, 1)
                print(f"    one seek costs {extra / per_frame:.1f} frames of CPU")
        results[f"keyframe every {gop:g} s"] = row
    return results


# -- pipeline ------------------------------------------------------------------------------------


def load_model(tag: str) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """The model hook: (uint8 crops -> P(fake), spec) for a model in the BentoML store, or
    (tag "default") the default FaceNet model built in this process from the committed
    recipe, without a store."""
    from modeling.inference import Classifier
    from modeling.spec import ModelSpec

    if tag == "default":
        from modeling.default import build_default_classifier, read_recipe

        recipe = read_recipe()
        labels = ("fake", "real") if recipe["output"] == "p_real" else ("real", "fake")
        model = build_default_classifier()
        size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        spec = ModelSpec(
            labels=labels, threshold=recipe["threshold"], normalization="zero_one", input_size=size
        )
        classifier = Classifier.from_keras(model, spec)
        classifier(np.zeros((1, *spec.input_size, 3), np.uint8))  # warm-up
    else:
        import bentoml

        stored = bentoml.models.get(tag)
        spec = ModelSpec.from_metadata(stored.info.metadata)
        classifier = Classifier.load(Path(stored.path), spec)

    def predict(crops: np.ndarray) -> np.ndarray:
        return np.array([spec.fake_probability(r) for r in classifier(crops)])

    return predict, spec


def bench_pipeline(path: Path, model_tag: str | None, detector_name: str) -> dict[str, Any]:
    started = time.perf_counter()
    detector = load_detector(detector_name)
    warm_up(detector)
    load_s = time.perf_counter() - started
    predict, spec = load_model(model_tag) if model_tag else (None, None)
    request = VideoRequest.for_spec(spec, frames=SAMPLES) if spec else VideoRequest(frames=SAMPLES)
    runs = []
    for _ in range(ROUNDS):
        frames: list[FrameFaces] = []
        stats: list[Any] = []

        def emit(
            message: tuple[Any, ...], frames: list[FrameFaces] = frames, stats: list[Any] = stats
        ) -> None:
            if message[0] == "frames":
                frames.extend(message[1])
            elif message[0] == "done":
                stats.append(message[1])

        t0 = time.perf_counter()
        run_request(str(path), request, detector, emit)
        t1 = time.perf_counter()
        crops = concat_crops(frames)
        p_fake = predict(crops) if predict else np.full(len(crops), 0.5)
        t2 = time.perf_counter()
        info = probe(path)
        tracks = build_tracks(
            frame_detections(sorted(frames, key=lambda f: f.index), p_fake, (info.width, info.height))
        )
        verdict = judge_video(
            tracks,
            len(frames),
            judge=(lambda p: "fake" if p >= spec.threshold else "real") if spec else (lambda p: "real"),
            threshold_for=lambda n: spec.threshold if spec else 0.5,
        )
        t3 = time.perf_counter()
        s = stats[0]
        runs.append(
            {
                "wall_s": t3 - t0,
                "probe_s": s.probe_s,
                "decode_s": s.decode_s,
                "faces_s": s.detect_s,
                "crops_s": s.crop_s,
                "model_s": t2 - t1 if predict else None,
                "tracks_s": t3 - t2,
                "crops": len(crops),
                "tracks": [t.frame_count for t in tracks],
                "verdict": verdict.prediction if verdict else None,
                "strategy": s.strategy,
            }
        )
    keys = ("wall_s", "probe_s", "decode_s", "faces_s", "crops_s", "tracks_s") + (
        ("model_s",) if predict else ()
    )
    result: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    result["cpu_s"] = stage_cpu(path, detector, predict, crops)
    result.update(
        {k: runs[-1][k] for k in ("crops", "tracks", "verdict", "strategy")},
        detector_load_s=round(load_s, 1),
        frames_per_s=round(SAMPLES / result["wall_s"], 1),
        model=model_tag or "left out (hook: --model-tag)",
    )
    print("\n== pipeline, in process, one clip (median of 3)")
    for key, value in result.items():
        print(f"  {key:18s} {value}")
    return result


# -- tracking -------------------------------------------------------------------------------------


def bench_tracking(clips: dict[str, Path], samples: int, full_every: int) -> dict[str, Any]:
    """Per clip: the full detector on every sample (the reference) against the tracker
    (preprocessing/face_tracking.py): recall (reference faces the tracker has, IoU >= 0.5),
    extra faces, model inputs and detector time per clip."""
    from bench.face_detection import CountingNet
    from preprocessing.face_tracking import FaceTracker
    from serving.tracks import iou

    detector = load_detector("blazeface")
    warm_up(detector)
    counting = CountingNet(detector._net)  # type: ignore[attr-defined]
    detector._net = counting  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    print(f"\n== tracking: {samples} samples a clip, full detection every {full_every}")
    for name, path in clips.items():
        info = probe(path)
        frames = [d.image for d in decode_frames(info, sample_times(info, frames=samples))]
        counting.inputs, t0 = 0, time.perf_counter()
        reference = [detector.detect(image) for image in frames]
        full_s, full_inputs = time.perf_counter() - t0, counting.inputs
        tracker = FaceTracker(detector, full_every=full_every)
        counting.inputs, t0 = 0, time.perf_counter()
        tracked = [tracker.detect(image) for image in frames]
        tracked_s, tracked_inputs = time.perf_counter() - t0, counting.inputs
        pairs = list(zip(reference, tracked, strict=True))
        found = sum(any(iou(r.box, t.box) >= 0.5 for t in mine) for ref, mine in pairs for r in ref)
        extra = sum(not any(iou(r.box, t.box) >= 0.5 for r in ref) for ref, mine in pairs for t in mine)
        total = sum(len(ref) for ref in reference)
        row = {
            "faces (full on every sample)": total,
            "recall": round(found / total, 3) if total else None,
            "extra faces": extra,
            "full detections": tracker.stats.full,
            "lost / entered": f"{tracker.stats.lost} / {tracker.stats.entered}",
            "model inputs full / tracked": f"{full_inputs} / {tracked_inputs}",
            "detector ms a frame full / tracked": (
                f"{1000 * full_s / len(frames):.1f} / {1000 * tracked_s / len(frames):.1f}"
            ),
        }
        out[name] = row
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return out


def stage_cpu(
    path: Path, detector: Any, predict: Callable[[np.ndarray], np.ndarray] | None, crops: np.ndarray
) -> dict[str, float]:
    """CPU seconds (all threads of this process) of each stage, stage by stage: on a shared
    machine a steadier measure of the work than wall time. Their sum over the cores is the
    best wall time a 2-core machine of our own could reach with the stages overlapped."""
    info = probe(path)
    times = sample_times(info, SAMPLES)
    c0 = time.process_time()
    images = [frame.image for frame in decode_frames(info, times)]
    c1 = time.process_time()
    detector.detect_many(images)
    c2 = time.process_time()
    if predict is not None:
        predict(crops)
    c3 = time.process_time()
    cpu = {"decode": c1 - c0, "faces": c2 - c1, "model": c3 - c2 if predict else 0.0}
    cpu["total"] = sum(cpu.values())
    return {k: round(v, 2) for k, v in cpu.items()}


# -- pool ----------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_pool(path: Path, size: int, concurrent: int, detector: str) -> dict[str, Any]:
    request = VideoRequest(frames=SAMPLES)
    started = time.perf_counter()
    async with VideoWorkerPool(size, detector=detector) as pool:
        start_s = time.perf_counter() - started
        alone = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            analysis = await pool.analyze(path, request, timeout_s=300)
            alone.append(time.perf_counter() - t0)

        async def one() -> float:
            t0 = time.perf_counter()
            await pool.analyze(path, request, timeout_s=600)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        latencies = await asyncio.gather(*(one() for _ in range(concurrent)))
        total = time.perf_counter() - t0
        memory = [round(rss_mb(pid)) for pid in pool.pids]
    result = {
        "pool_size": size,
        "workers_ready_s": round(start_s, 1),
        "alone_wall_s": round(statistics.median(alone), 2),
        "alone_stats": {
            k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(analysis.stats).items()
        },
        f"{concurrent}_clips_wall_s": round(total, 2),
        f"{concurrent}_clips_latency_p50_s": round(statistics.median(latencies), 2),
        f"{concurrent}_clips_latency_max_s": round(max(latencies), 2),
        f"{concurrent}_clips_frames_per_s": round(concurrent * SAMPLES / total, 1),
        "worker_rss_mb": memory,
    }
    print(f"\n== pool of {size}, {detector}")
    for key, value in result.items():
        print(f"  {key:28s} {value}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["decode", "pipeline", "pool", "tracking"],
        choices=["decode", "pipeline", "pool", "tracking"],
    )
    parser.add_argument(
        "--model-tag",
        default=None,
        help="a model in the BentoML store, or 'default' (built here): times it too",
    )
    parser.add_argument("--detector", default="blazeface", choices=("blazeface", "mtcnn"))
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--full-every", type=int, default=FULL_EVERY, help="tracking: full detection every n")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="decode: runs of each variant")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    clips = {gop: make_clip(gop) for gop in (1.0, 2.0, 10.0)}
    print(f"clips ready in {time.perf_counter() - started:.1f} s: {[str(p) for p in clips.values()]}")
    report: dict[str, Any] = {"clip": f"{SIZE[0]}x{SIZE[1]} {FPS} fps {SECONDS} s H.264, {SAMPLES} samples"}
    if "decode" in args.parts:
        report["decode"] = bench_decode(clips, args.rounds)
    if "pipeline" in args.parts:
        report["pipeline"] = bench_pipeline(clips[2.0], args.model_tag, args.detector)
    if "tracking" in args.parts:
        from tests.videos import clip

        tracked = {"two_faces_720p": clips[2.0], "comings_720p": make_clip(2.0, "comings")}
        small = ("two_faces.mp4", "pasted.mp4", "moving.mp4", "rotated.mp4", "no_face.mp4")  # tests/videos.py
        tracked |= {name: clip(name) for name in small}
        report["tracking"] = bench_tracking(tracked, SAMPLES, args.full_every)
    if "pool" in args.parts:
        report["pool"] = asyncio.run(bench_pool(clips[2.0], args.pool_size, args.concurrent, args.detector))
    out = args.json or RESULTS / f"video-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
