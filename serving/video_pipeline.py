"""The data path of one video:
upload (spooled to a file) -> worker process (probe, decode the sampled frames, faces, crops)
-> model batches (each batch of frames as it arrives: decoding and the model overlap)
-> tracks (serving/tracks.py) -> the answer.

Crops stream: each batch of frames' crops goes to the model as it arrives and is dropped once
scored; at most MAX_BATCHES_WITH_THE_MODEL batches wait for the model at once (past that, the
worker's messages wait, and so does the worker). A video's crops (300 frames x 20 faces would be
~460 MB) are never all in memory. Heatmaps (`explain`) need the crop of each track's most-fake
frame, known only at the end: those few frames are decoded again.

The worker pool's size is the video concurrency cap; a few more requests may wait for a
worker, past that a video request answers 503 at once, so videos cannot take the service
from image requests. The jobs have a pipeline (and a pool) of their own (service.py), so the
synchronous route and the jobs cannot starve each other."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modeling.explain import heatmap_png, unpack_maps
from modeling.spec import DECISION_POINT, ModelSpec
from preprocessing.errors import InputError
from preprocessing.face_tracking import FULL_EVERY
from preprocessing.video import VideoLimits
from serving.errors import Overloaded, ServiceError
from serving.forms import sampling
from serving.observability import record_verdict
from serving.pipeline import Explain, Predict
from serving.provenance import Provenance, ProvenanceReader
from serving.provenance import reason as provenance_reason
from serving.schemas import Heatmap, TrackFrameResult, TrackResult, VideoResponse, VideoStats, VideoTimings
from serving.tracks import build_tracks, judge_video, min_track_frames
from serving.video_worker import (
    Progress,
    VideoAnalysis,
    VideoRequest,
    VideoWorkerDied,
    VideoWorkerError,
    VideoWorkerPool,
    concat_crops,
)

# Requests that may wait for a busy worker, per worker; past them: 503 SERVICE_OVERLOADED.
QUEUE_PER_WORKER = 2
# Batches of frames (VideoRequest.detect_batch each) whose crops wait for the model at once.
MAX_BATCHES_WITH_THE_MODEL = 2


class VideoDecodeFailed(ServiceError):
    """The decoder process died on this video: a fault of the file as far as anyone can tell."""

    status, code = 422, "VIDEO_DECODE_FAILED"
    message = "The video could not be decoded (the decoder stopped on it)"


class VideoPipeline:
    def __init__(
        self,
        spec: ModelSpec,
        model_tag: str,
        predict: Predict,
        pool: VideoWorkerPool,
        limits: VideoLimits,
        *,
        timeout_s: float,
        max_faces: int,
        default_frames: int,
        full_every: int = FULL_EVERY,
        explain: Explain | None = None,
        provenance: ProvenanceReader | None = None,
    ) -> None:
        self.spec = spec
        self.explain = explain
        self.provenance = provenance
        self.model_tag = model_tag
        self.predict = predict
        self.pool = pool
        self.limits = limits
        self.timeout_s = timeout_s
        self.max_faces = max_faces
        self.default_frames = default_frames
        self.full_every = full_every
        self._waiting = 0
        self._started: asyncio.Task[None] | None = None

    async def _pool(self) -> VideoWorkerPool:
        """The decoder processes, started by the first video (until then they cost nothing)."""
        if self._started is None or (self._started.done() and self._started.exception()):
            self._started = asyncio.ensure_future(self.pool.start())
        await asyncio.shield(self._started)
        return self.pool

    async def close(self) -> None:
        await self.pool.close()

    async def detect(
        self,
        path: Path,
        frames: int | None = None,
        fps: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
        explain: bool = False,
    ) -> VideoResponse:
        frames, fps = sampling(frames, fps, self.limits.max_frames)
        if explain and self.explain is None:
            raise InputError(422, "EXPLAIN_UNAVAILABLE", "This server computes no heatmaps")
        if self._waiting >= self.pool.size * (1 + QUEUE_PER_WORKER):
            raise Overloaded()
        started = time.perf_counter()
        request = VideoRequest.for_spec(
            self.spec,
            frames=frames if frames is not None or fps is not None else self.default_frames,
            fps=fps,
            max_faces=self.max_faces,
            limits=self.limits,
            full_every=self.full_every,
        )
        timeout_s = timeout_s or self.timeout_s
        self._waiting += 1
        # The file's Content Credentials are read in a thread while the decoder process works (the
        # open file outlives its deletion by the caller, on an error answer).
        provenance = (
            asyncio.ensure_future(asyncio.to_thread(self.provenance.read_video, path))
            if self.provenance is not None
            else None
        )
        try:
            pool = await self._pool()
            analysis, raw, model_s = await self._analyze(pool, path, request, timeout_s, progress)
            declared = await provenance if provenance is not None else None
            response = self._response(analysis, raw, started, model_s, declared)
            if explain and response.tracks:
                await self._explain_tracks(pool, path, request, timeout_s, analysis, response)
        except VideoWorkerError as exc:
            if self.pool.closed:  # the server stopping killed the decoder: not the file's fault
                raise Overloaded("This server is stopping; send the video again") from None
            if isinstance(exc, VideoWorkerDied):
                raise VideoDecodeFailed() from None
            raise
        finally:
            self._waiting -= 1
        record_verdict("detect_video", response.verdict, len(response.tracks))
        return response

    async def _analyze(
        self,
        pool: VideoWorkerPool,
        path: Path,
        request: VideoRequest,
        timeout_s: float,
        progress: Callable[[int, int], None] | None,
    ) -> tuple[VideoAnalysis, list[float], float]:
        """The worker's analysis (boxes only) and the model's output for every crop, in order:
        each batch of crops is scored as it arrives, a bounded number at a time."""
        scoring: deque[asyncio.Task[np.ndarray]] = deque()
        raw: list[float] = []
        model_s = 0.0  # wall time with at least one of this video's batches at the model
        busy, busy_since = 0, 0.0

        async def score(crops: np.ndarray) -> np.ndarray:
            nonlocal model_s, busy, busy_since
            if busy == 0:
                busy_since = time.perf_counter()
            busy += 1
            try:
                return await self.predict(crops)
            finally:
                busy -= 1
                if busy == 0:  # overlapping batches count once
                    model_s += time.perf_counter() - busy_since

        async def arrived(update: Progress) -> None:
            crops = concat_crops(update.frames)
            if len(crops):  # this batch of frames' crops go to the model while decoding goes on
                scoring.append(asyncio.ensure_future(score(crops)))
                while len(scoring) > MAX_BATCHES_WITH_THE_MODEL:  # the worker waits meanwhile
                    raw.extend(float(r) for r in await scoring.popleft())
            if progress is not None:
                progress(update.done, update.total)

        try:
            analysis = await pool.analyze(
                path, request, timeout_s=timeout_s, progress=arrived, keep_crops=False
            )
            while scoring:
                raw.extend(float(r) for r in await scoring.popleft())
        finally:
            for task in scoring:
                task.cancel()
        return analysis, raw, model_s

    async def _explain_tracks(
        self,
        pool: VideoWorkerPool,
        path: Path,
        request: VideoRequest,
        timeout_s: float,
        analysis: VideoAnalysis,
        response: VideoResponse,
    ) -> None:
        """A heatmap per track, on its most-fake frame: those frames decoded again (the crops
        were not kept), then one batched call for all tracks."""
        assert self.explain is not None
        best = {
            track.track_id: max(track.frames, key=lambda f: f.fake_probability) for track in response.tracks
        }
        times = tuple(sorted({frame.time for frame in best.values()}))
        again = await pool.analyze(
            path, dataclasses.replace(request, times=times, frames=None, fps=None), timeout_s=timeout_s
        )
        chosen = []
        for track in response.tracks:
            frame = next((f for f in again.frames if f.time_s == best[track.track_id].time), None)
            if frame is None or not len(frame.crops):
                continue  # the frame did not decode the second time: no heatmap for this track
            if frame.whole_frame:  # no face detection: the whole frame was the crop
                index, square = 0, [0, 0, analysis.info.width, analysis.info.height]
            else:
                index = min(
                    range(len(frame.boxes)),
                    key=lambda j: sum(
                        abs(a - b) for a, b in zip(frame.boxes[j], best[track.track_id].box, strict=True)
                    ),
                )
                # the image path's square, alignment included (README, "Heatmaps")
                square = request.crop.square(frame.face(index))
            chosen.append((track, frame.crops[index], square))
        if not chosen:
            return
        packed = await self.explain(np.stack([crop for _, crop, _ in chosen]))
        for (track, _, square), (cells, laid) in zip(chosen, unpack_maps(packed), strict=True):
            png = base64.b64encode(heatmap_png(laid)).decode()
            track.heatmap = Heatmap(png=png, box=square, map_size=list(cells))
            track.heatmap_time = best[track.track_id].time

    def _response(
        self,
        analysis: VideoAnalysis,
        raw: list[float],
        started: float,
        model_s: float,
        provenance: Provenance | None = None,
    ) -> VideoResponse:
        spec = self.spec
        # Each crop's served P(fake) (decision at 0.5), as images are judged.
        p_fake = [spec.judge(r).fake_probability for r in raw]
        tracks = build_tracks(analysis.detections(p_fake))
        judged = judge_video(
            tracks,
            analysis.stats.sampled,
            judge=lambda p: "fake" if p >= DECISION_POINT else "real",
            threshold_for=lambda n: 1.0 / (1.0 + math.exp(-spec.group_shift(n))),
        )
        info, stats = analysis.info, analysis.stats
        video = VideoStats(
            duration_s=info.duration_s,
            fps=info.fps,
            width=info.width,
            height=info.height,
            rotation=info.rotation,
            codec=info.codec,
            container=info.container,
            frames_sampled=stats.sampled,
            frames_decoded=stats.decoded,
            frames_failed=stats.failed,
            strategy=stats.strategy,
            full_face_detections=stats.full_detections,
        )
        timings = VideoTimings(
            decode_s=stats.probe_s + stats.decode_s,
            faces_s=stats.detect_s + stats.crop_s,
            model_s=model_s,
            total_s=time.perf_counter() - started,
        )
        need = min_track_frames(stats.sampled)
        results = [
            TrackResult(
                track_id=track.track_id,
                prediction="fake" if track.p_fake >= DECISION_POINT else "real",
                fake_probability=track.p_fake,
                fake_share=track.share_fake(lambda p: "fake" if p >= DECISION_POINT else "real"),
                verdict=spec.verdict_of(track.p_fake),
                frame_count=track.frame_count,
                counted=track.frame_count >= need,
                start_s=track.start_s,
                end_s=track.end_s,
                frames=[
                    TrackFrameResult(time=f.time_s, box=[round(c) for c in f.box], fake_probability=f.p_fake)
                    for f in track.frames
                ],
            )
            for track in tracks
        ]
        why = provenance_reason(provenance)
        common = {
            "processing_time": time.perf_counter() - started, "model_tag": self.model_tag,
            "track_count": len(results), "video": video, "timings": timings, "tracks": results,
            "provenance": provenance, "reason": why,
        }  # fmt: skip
        if judged is None:  # no face seen long enough (in `need` samples) to judge the video by
            return VideoResponse(
                prediction="fake" if why else "real", confidence=1.0 if why else 0.5, fake_probability=None,
                verdict="likely_fake" if why else "no_face", model_verdict="no_face",
                face_detected=False, fake_tracks=0, **common,
            )  # fmt: skip
        deciding = next(v for v in judged.tracks if v.track.track_id == judged.deciding_track_id)
        logit = math.log(max(deciding.p_fake, 1e-7) / max(1.0 - deciding.p_fake, 1e-7))
        image = spec.judge_logit(logit - spec.group_shift(judged.counted))
        return VideoResponse(
            prediction="fake" if why else image.prediction,
            confidence=1.0 if why else image.confidence,
            fake_probability=image.fake_probability,
            verdict="likely_fake" if why else image.verdict,
            model_verdict=image.verdict,
            face_detected=True,
            fake_tracks=sum(r.prediction == "fake" and r.counted for r in results),
            **common,
        )
