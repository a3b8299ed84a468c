"""Video analysis in child processes, with a deadline: probe, decode the sampled frames, find
the faces and cut the model's crops, exactly as the image path does.

    pool = VideoWorkerPool(size=2, detector="")       # one face detector per worker
    await pool.start()
    analysis = await pool.analyze(path, VideoRequest.for_spec(spec, frames=32), timeout_s=30)
    ...
    await pool.close()

Why processes: FFmpeg and the detector are CPU-bound native code that a thread cannot stop;
a worker process can be killed. Each worker is `python -m serving.video_worker`, started
with asyncio's subprocess support (no fork of the API process, which holds TensorFlow and
threads); requests and results are length-prefixed pickles on its stdin/stdout, read with
asyncio streams, so the event loop never blocks on a worker.

The worker parses hostile files with native code, so the API process trusts nothing it sends:
a message's length is checked against what the request can produce (`message_bound`) before
a byte of it is read, and it is unpickled by `_SafeUnpickler`, which builds only the classes
of this exchange and numpy arrays (no other global: no code of the worker's choosing runs in
the API process). A message over its bound or naming anything else kills that worker.

Crops are not kept: `analyze(..., keep_crops=False)` hands each batch of frames to `progress`
(the caller scores them as they arrive) and keeps their boxes only, so a video's crops are
never all in memory at once.

What happens when:
- the deadline (`timeout_s`, from the moment a worker takes the request) or the stall limit
  (`stall_timeout_s` without a message) passes: the worker is killed (SIGKILL), a new one is
  started in the background, and `analyze` raises InputError(422, "VIDEO_TIMEOUT").
- the worker dies (a crash in FFmpeg, the OOM killer), or sends a message over its bound or
  naming a class outside the exchange: it is killed, a new one is started and `analyze`
  raises `VideoWorkerError` (a server-side fault: the lead maps it to a 5xx). An unexpected
  exception inside the worker is a VideoWorkerError too, with its traceback; that worker stays.
- the awaiting task is cancelled (a job cancelled, a client gone): the worker is killed and
  replaced, so the work really stops.
- the video is refused (probe) or nothing decodes: InputError from preprocessing.video, and
  the worker stays.
A worker is also replaced after `max_requests` requests (FFmpeg and TensorFlow keep some
memory). Temporary files: none are made here; the caller owns the upload's file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import pickle
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from preprocessing.errors import InputError
from preprocessing.face_tracking import FULL_EVERY, FaceTracker
from preprocessing.faces import DEFAULT_MAX_FACES, CropRule, Face, FaceDetector
from preprocessing.tensor import to_input_array
from preprocessing.video import (
    WORKING_MAX_SIDE,
    DecodedFrame,
    DecodeStats,
    Strategy,
    VideoInfo,
    VideoLimits,
    decode_frames,
    probe,
    sample_times,
    video_timeout,
)
from serving.tracks import Detection, FrameDetections

logger = logging.getLogger("deepfake.video")

ROOT = Path(__file__).resolve().parents[1]
Box = tuple[int, int, int, int]
_HEADER = struct.Struct(">Q")
TEST_HOOKS_ENV = "DEEPFAKE_VIDEO_TEST_HOOKS"  # set by the pool only when test_hooks=True
# Room in a message beside its crops: boxes, scores, the video's header, the stats, a traceback.
MESSAGE_SLACK_BYTES = 1024 * 1024
READY_BOUND_BYTES = 64 * 1024


# -- requests and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoRequest:
    """What to take from one video. Times win over frames/fps; neither: 32 evenly spaced.

    `crop` is the model's crop (its metadata: `for_spec`), `max_faces` the settings' cap;
    `full_every`: the full face detector on every n-th sample, faces tracked between
    (preprocessing/face_tracking.py; 1: full detection on every sample). `test_sleep_s` is
    honoured only by workers started with test hooks.
    """

    times: tuple[float, ...] | None = None
    frames: int | None = None
    fps: float | None = None
    max_faces: int = DEFAULT_MAX_FACES
    crop: CropRule = CropRule()
    limits: VideoLimits = VideoLimits()
    strategy: Strategy = "auto"
    max_side: int = WORKING_MAX_SIDE
    detect_batch: int = 8  # frames per progress report (and per message)
    full_every: int = FULL_EVERY
    test_sleep_s: float = 0.0

    @classmethod
    def for_spec(cls, spec: Any, **fields: Any) -> VideoRequest:
        """A request cutting the crops `spec` (a modeling.spec.ModelSpec) was trained on."""
        return cls(crop=CropRule.of(spec), **fields)


@dataclass(frozen=True)
class FrameFaces:
    """One sampled frame: the faces found and the model's uint8 crops, one per face.

    Boxes are (x, y, w, h) in the upright video's pixels (`VideoInfo.width/height`), as the
    detector regressed them (they may extend past the edge). Without a detector, or when
    `whole_frame` is set, the single crop is the whole frame and there are no boxes.
    """

    index: int  # position among the requested times
    time_s: float  # the requested time, from the video's start
    pts_s: float  # timestamp of the frame shown at that time
    boxes: tuple[Box, ...]
    scores: tuple[float, ...]
    crops: np.ndarray  # (k, H, W, 3) uint8; empty once handed on (analyze's keep_crops=False)
    whole_frame: bool = False
    # Per face, the detector's landmarks in the upright video's pixels (an aligned crop's angle).
    landmarks: tuple[dict[str, tuple[float, float]], ...] = ()

    def face(self, index: int) -> Face:
        """Face `index` in the upright video's pixels, as the crop was cut around it."""
        landmarks = self.landmarks[index] if index < len(self.landmarks) else {}
        return Face(self.boxes[index], self.scores[index], dict(landmarks))

    @property
    def crop_count(self) -> int:
        """The crops cut from this frame (also once they are dropped): one per face, or the
        whole frame."""
        return 1 if self.whole_frame else len(self.boxes)


@dataclass
class AnalysisStats:
    """Where the time went, in the worker; sampled = decoded + failed."""

    sampled: int = 0
    decoded: int = 0
    failed: int = 0
    frames_decoded: int = 0  # every frame the decoder produced (the decoding cost)
    seeks: int = 0
    strategy: str = ""
    faces: int = 0
    full_detections: int = 0  # frames the full face detector ran on (the others: tracked)
    probe_s: float = 0.0
    decode_s: float = 0.0
    detect_s: float = 0.0
    crop_s: float = 0.0
    decoder_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VideoAnalysis:
    info: VideoInfo
    frames: list[FrameFaces]  # in time order; failed samples are absent
    stats: AnalysisStats
    worker_pid: int
    wall_s: float  # from the worker taking the request to the last result

    def crops(self) -> np.ndarray:
        """Every crop of every frame, frame by frame: one batch for the model, (N, H, W, 3)."""
        return concat_crops(self.frames)

    def detections(self, p_fake: Sequence[float]) -> list[FrameDetections]:
        """Per frame, its faces with their P(fake) (`p_fake` in the order of `crops()`), as
        serving.tracks takes them. Whole-frame crops become a box covering the frame."""
        return frame_detections(self.frames, p_fake, (self.info.width, self.info.height))


def concat_crops(frames: Sequence[FrameFaces]) -> np.ndarray:
    arrays = [f.crops for f in frames if len(f.crops)]
    return np.concatenate(arrays) if arrays else np.zeros((0, 0, 0, 3), np.uint8)


def frame_detections(
    frames: Sequence[FrameFaces], p_fake: Sequence[float], video_size: tuple[int, int]
) -> list[FrameDetections]:
    if len(p_fake) != sum(f.crop_count for f in frames):
        raise ValueError("one P(fake) per crop is needed")
    out: list[FrameDetections] = []
    position = 0
    for frame in frames:
        boxes = frame.boxes if not frame.whole_frame else ((0, 0, *video_size),)
        scores = frame.scores if not frame.whole_frame else (1.0,)
        values = p_fake[position : position + frame.crop_count]
        position += frame.crop_count
        detections = tuple(Detection(b, s, float(p)) for b, s, p in zip(boxes, scores, values, strict=True))
        out.append(FrameDetections(frame.time_s, detections))
    return out


@dataclass(frozen=True)
class Progress:
    done: int  # samples handled (decoded or failed)
    total: int
    frames: list[FrameFaces]  # the ones that just arrived
    info: VideoInfo


class VideoWorkerError(RuntimeError):
    """The worker failed for a reason of the server's (it died, or raised unexpectedly)."""


class VideoWorkerDied(VideoWorkerError):
    """The worker died on the request, or was killed for what it sent: as far as anyone can
    tell, the file's doing."""


class _MessageRefused(VideoWorkerError):
    """A message from the worker over its bound, or naming a global outside the exchange."""


def message_bound(request: VideoRequest) -> int:
    """The largest message a worker can send for `request`: a batch of `detect_batch` frames,
    each with its crops (at most `max_faces`, or the whole frame), plus room for the rest."""
    height, width = request.crop.input_size
    crops = request.detect_batch * max(request.max_faces, 1)
    return crops * height * width * 3 + MESSAGE_SLACK_BYTES


# What a worker's messages may name: the exchange's own classes and numpy arrays.
_ALLOWED_GLOBALS = {
    ("serving.video_worker", "FrameFaces"),
    ("serving.video_worker", "AnalysisStats"),
    ("preprocessing.video", "VideoInfo"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}  # fmt: skip


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _MessageRefused(f"the video worker's message names {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes) -> Any:
    import io

    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except _MessageRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed message is the worker's fault
        raise _MessageRefused(f"the video worker sent a malformed message: {type(exc).__name__}") from None


# -- the worker process --------------------------------------------------------------------------


def _send(stream: BinaryIO, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=5)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream: BinaryIO) -> tuple[Any, ...] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def run_request(
    path: str,
    request: VideoRequest,
    detector: FaceDetector | None,
    emit: Callable[[tuple[Any, ...]], None],
    *,
    test_hooks: bool = False,
) -> None:
    """Probe, decode, find faces (tracked between full detections), crop; report through
    `emit`. Runs in the worker process (and in-process for benchmarks). Raises InputError for
    the video's faults."""
    stats = AnalysisStats()
    started = time.perf_counter()
    info = probe(path, request.limits)
    stats.probe_s = time.perf_counter() - started
    if request.times is not None:
        times = [float(t) for t in request.times][: request.limits.max_frames]
    else:
        times = sample_times(info, request.frames, request.fps, request.limits.max_frames)
    emit(("info", info, len(times)))
    if test_hooks and request.test_sleep_s:
        time.sleep(request.test_sleep_s)  # tests: a decoder that stalls

    decode = DecodeStats()
    frames = decode_frames(
        info, times, strategy=request.strategy, limits=request.limits, max_side=request.max_side, stats=decode
    )
    tracker = (
        FaceTracker(detector, max_faces=request.max_faces, full_every=request.full_every)
        if detector is not None
        else None
    )
    done_before = 0
    results: list[FrameFaces] = []

    def flush() -> None:
        nonlocal done_before, results
        done = decode.decoded + decode.failed
        if results or done > done_before:
            emit(("frames", results, done))
            done_before = done
        results = []

    while True:
        t0 = time.perf_counter()
        decoded = next(frames, None)
        t1 = time.perf_counter()
        stats.decode_s += t1 - t0
        if decoded is None:
            break
        faces = tracker.detect(decoded.image) if tracker is not None else None
        t2 = time.perf_counter()
        stats.detect_s += t2 - t1
        results.append(_frame_faces(decoded, faces, request.crop))
        stats.crop_s += time.perf_counter() - t2
        stats.faces += len(results[-1].boxes)
        if len(results) >= request.detect_batch:
            flush()
    flush()
    for name in ("sampled", "decoded", "failed", "frames_decoded", "seeks", "strategy"):
        setattr(stats, name, getattr(decode, name))
    stats.full_detections = tracker.stats.full if tracker is not None else 0
    stats.decoder_errors = list(decode.errors)
    if decode.decoded == 0:
        raise InputError(400, "INVALID_VIDEO", "The video cannot be decoded: no sampled frame decoded")
    emit(("done", stats))


def _frame_faces(decoded: DecodedFrame, faces: list[Face] | None, crop: CropRule) -> FrameFaces:
    """Crops cut from the working frame by the model's crop rule, as photos are cut; boxes and
    landmarks in video pixels."""
    image = decoded.image
    if faces is None:
        whole = to_input_array(image, crop.input_size)
        return FrameFaces(decoded.index, decoded.time_s, decoded.pts_s, (), (), whole[None], whole_frame=True)
    sx, sy = decoded.scale
    boxes = tuple(
        (round(x / sx), round(y / sy), max(1, round(w / sx)), max(1, round(h / sy)))
        for x, y, w, h in (f.box for f in faces)
    )
    landmarks = tuple({k: (px / sx, py / sy) for k, (px, py) in f.landmarks.items()} for f in faces)
    return FrameFaces(
        decoded.index, decoded.time_s, decoded.pts_s, boxes, tuple(float(f.score) for f in faces),
        crop.crops(image, faces), landmarks=landmarks,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The worker: `python -m serving.video_worker [--detector NAME | --no-detector]`."""
    import argparse

    from preprocessing.detectors import load_detector, warm_up

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="blazeface")
    parser.add_argument("--detector-options", default="{}", help="JSON: load_detector's keyword arguments")
    parser.add_argument("--no-detector", action="store_true", help="judge whole frames")
    args = parser.parse_args(argv)
    # Results go out on a private copy of stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inbox = os.fdopen(os.dup(0), "rb")
    logging.basicConfig(level=logging.WARNING, format="video-worker %(process)d %(levelname)s %(message)s")
    logging.getLogger("libav").setLevel(logging.CRITICAL)  # decoder errors are counted, not logged
    test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
    options = json.loads(args.detector_options)
    if options.get("model_dir"):
        options["model_dir"] = Path(options["model_dir"])
    detector = None if args.no_detector else load_detector(args.detector, **options)
    if detector is not None:
        warm_up(detector)
    _send(out, ("ready", os.getpid()))
    while (message := _recv(inbox)) is not None:
        _, path, request = message
        try:
            run_request(path, request, detector, lambda m: _send(out, m), test_hooks=test_hooks)
        except InputError as exc:
            _send(out, ("input_error", exc.status, exc.code, exc.message))
        except Exception:  # noqa: BLE001 - reported to the parent, the worker lives on
            _send(out, ("error", traceback.format_exc()))
    return 0


# -- the pool, in the API process ------------------------------------------------------------------


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.requests = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=5)
        assert self.process.stdin is not None
        self.process.stdin.write(_HEADER.pack(len(data)) + data)
        await self.process.stdin.drain()

    async def recv(self, bound: int) -> tuple[Any, ...]:
        """The next message; _MessageRefused, before anything more is read, if its length is
        over `bound`, or if it names a global outside the exchange."""
        assert self.process.stdout is not None
        header = await self.process.stdout.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > bound:
            raise _MessageRefused(f"the video worker sent a message of {size} bytes (bound: {bound})")
        message = _unpickle(await self.process.stdout.readexactly(size))
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            raise _MessageRefused("the video worker sent something that is not a message")
        return message

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


ProgressCallback = Callable[[Progress], Awaitable[None] | None]


class VideoWorkerPool:
    """`size` worker processes, each with its own face detector (`detector=None`: none; every
    frame is judged whole). `size` is the video concurrency cap: a request waits for a free
    worker. Use `async with VideoWorkerPool(...) as pool`, or `start()` and `close()`."""

    def __init__(
        self,
        size: int = 1,
        *,
        detector: str | None = "blazeface",
        detector_options: dict[str, Any] | None = None,
        start_timeout_s: float = 180.0,
        max_requests: int = 500,
        test_hooks: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.detector = detector
        self.detector_options = {
            k: str(v) if isinstance(v, Path) else v for k, v in (detector_options or {}).items()
        }
        self.start_timeout_s = start_timeout_s
        self.max_requests = max_requests
        self.test_hooks = test_hooks
        self.env = env or {}
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()  # None: closed
        self._workers: set[_Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._closed = False
        self.restarts = 0  # workers replaced (killed, died, recycled)

    async def __aenter__(self) -> VideoWorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (busy or idle)."""
        return sorted(w.pid for w in self._workers if w.alive)

    async def start(self) -> None:
        """Start every worker and wait until each has loaded its detector."""
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    @property
    def closed(self) -> bool:
        """Closed (the server stopping): what it was doing was killed, not failed."""
        return self._closed

    async def close(self) -> None:
        """Kill every worker (busy ones too) and wait for them to exit."""
        self._closed = True
        self._idle.put_nowait(None)  # requests waiting for a worker: the pool is closed
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        await asyncio.gather(*(w.kill() for w in list(self._workers)))
        self._workers.clear()

    async def _spawn(self) -> _Worker:
        args = [sys.executable, "-m", "serving.video_worker"]
        if self.detector is None:
            args += ["--no-detector"]
        else:
            args += ["--detector", self.detector, "--detector-options", json.dumps(self.detector_options)]
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.test_hooks:
            env[TEST_HOOKS_ENV] = "1"
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(process)
        self._workers.add(worker)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                message = await worker.recv(READY_BOUND_BYTES)
            if message[0] != "ready":
                raise VideoWorkerError(f"video worker sent {message[0]!r} instead of ready")
        except BaseException:
            self._workers.discard(worker)
            await worker.kill()
            raise
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill `worker` (if alive) and start a new one in the background."""
        self._workers.discard(worker)
        self.restarts += 1
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._respawn(worker))
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _respawn(self, old: _Worker) -> None:
        await old.kill()
        delay = 1.0
        while not self._closed:
            try:
                self._idle.put_nowait(await self._spawn())
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep trying: the pool must not shrink for good
                logger.exception("video worker failed to start; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _take(self) -> _Worker:
        while True:
            worker = await self._idle.get()
            if worker is None:  # closed while waiting: wake the next waiter too
                self._idle.put_nowait(None)
                raise VideoWorkerError("the video worker pool is closed")
            if worker.alive:
                return worker
            self._replace(worker)  # died while idle

    async def analyze(
        self,
        path: str | os.PathLike[str],
        request: VideoRequest,
        *,
        timeout_s: float,
        stall_timeout_s: float | None = None,
        progress: ProgressCallback | None = None,
        keep_crops: bool = True,
    ) -> VideoAnalysis:
        """Analyse the video at `path` in a worker. Waits for a free worker first (not counted
        in `timeout_s`). `progress` (sync or async) is called as each batch of frames arrives;
        `keep_crops=False`: the frames keep their boxes, their crops are dropped once `progress`
        has returned (the caller took them)."""
        if self._closed:
            raise VideoWorkerError("the video worker pool is closed")
        worker = await self._take()
        healthy = False
        try:
            result = await self._run(
                worker, str(path), request, timeout_s, stall_timeout_s, progress, keep_crops
            )
            healthy = True
            return result
        except InputError as exc:
            healthy = exc.code != "VIDEO_TIMEOUT"
            raise
        except VideoWorkerError:
            healthy = worker.alive  # an exception in the worker leaves it usable; a death does not
            raise
        finally:
            worker.requests += 1
            if healthy and worker.alive and worker.requests < self.max_requests and not self._closed:
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)

    async def _run(
        self,
        worker: _Worker,
        path: str,
        request: VideoRequest,
        timeout_s: float,
        stall_timeout_s: float | None,
        progress: ProgressCallback | None,
        keep_crops: bool,
    ) -> VideoAnalysis:
        loop = asyncio.get_running_loop()
        bound = message_bound(request)
        started = loop.time()
        deadline = started + timeout_s
        info: VideoInfo | None = None
        total = 0
        frames: list[FrameFaces] = []
        try:
            await worker.send(("analyze", path, request))
            while True:
                wait = deadline - loop.time()
                if stall_timeout_s is not None:
                    wait = min(wait, stall_timeout_s)
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    message = await worker.recv(bound)
                kind = message[0]
                if kind == "info":
                    info, total = message[1], message[2]
                    await _call(progress, Progress(0, total, [], info))
                elif kind == "frames":
                    assert info is not None
                    await _call(progress, Progress(message[2], total, message[1], info))
                    if keep_crops:
                        frames.extend(message[1])
                    else:
                        frames.extend(dataclasses.replace(f, crops=_NO_CROPS) for f in message[1])
                elif kind == "done":
                    assert info is not None
                    frames.sort(key=lambda f: f.index)
                    return VideoAnalysis(info, frames, message[1], worker.pid, loop.time() - started)
                elif kind == "input_error":
                    raise InputError(message[1], message[2], message[3])
                else:
                    raise VideoWorkerError(f"the video worker failed:\n{message[1]}")
        except _MessageRefused as exc:
            await worker.kill()
            logger.error("video worker %d killed: %s", worker.pid, exc)
            raise VideoWorkerDied(f"the video worker was killed: {exc}") from None
        except TimeoutError:
            await worker.kill()
            raise video_timeout(
                timeout_s if loop.time() >= deadline else stall_timeout_s or timeout_s
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            code = await worker.process.wait()
            raise VideoWorkerDied(
                f"the video worker exited (code {code}) while processing the video"
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(worker.kill())
            raise


_NO_CROPS = np.zeros((0, 0, 0, 3), np.uint8)


async def _call(callback: ProgressCallback | None, progress: Progress) -> None:
    if callback is None:
        return
    result = callback(progress)
    if inspect.isawaitable(result):
        await result


if __name__ == "__main__":
    # Run the imported module's main, so that results pickle as serving.video_worker.* (not
    # __main__.*) and the API process can load them.
    from serving.video_worker import main as _main

    sys.exit(_main())
