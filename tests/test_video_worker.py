"""The video worker pool (`serving.video_worker`) on real clips: faces and crops per frame,
tracks on them, progress, and what happens on a deadline, a dead worker, a cancel, a close.

Two pools per module: one with the real face detector (MTCNN, loaded once in its worker),
and one without (whole frames, quick to restart) for the kill and recovery tests."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from preprocessing.errors import InputError
from preprocessing.faces import CropRule, Face, crop_face
from preprocessing.tensor import to_input_array
from preprocessing.video import decode_frames, probe
from serving.tracks import build_tracks, judge_video, min_track_frames
from serving.video_worker import (
    Progress,
    VideoAnalysis,
    VideoRequest,
    VideoWorkerError,
    VideoWorkerPool,
)
from tests.videos import FPS, PORTRAIT, SECONDS, BackgroundLoop, alive, clip, pasted_frames

SAMPLES = 9
INPUT = (64, 64)  # the small test models' input (tests/helpers.build_legacy_facenet_like)
CROP = CropRule(INPUT)


@pytest.fixture(scope="module")
def faces_pool(loop: BackgroundLoop) -> Iterator[VideoWorkerPool]:
    pool = VideoWorkerPool(1)
    loop.run(pool.start(), timeout=300)
    yield pool
    loop.run(pool.close())


@pytest.fixture(scope="module")
def frames_pool(loop: BackgroundLoop) -> Iterator[VideoWorkerPool]:
    pool = VideoWorkerPool(1, detector=None, test_hooks=True)
    loop.run(pool.start())
    yield pool
    loop.run(pool.close())


def analyze(loop: BackgroundLoop, pool: VideoWorkerPool, name: str, **fields: object) -> VideoAnalysis:
    request = VideoRequest(frames=SAMPLES, **({"crop": CROP} | fields))
    return loop.run(pool.analyze(clip(name), request, timeout_s=120))


# -- faces, crops and tracks --------------------------------------------------------------------


def tracks_of(analysis: VideoAnalysis) -> list:
    p_fake = [0.5] * len(analysis.crops())  # association does not look at the model
    return build_tracks(analysis.detections(p_fake))


def test_a_moving_face_is_one_track(loop: BackgroundLoop, faces_pool: VideoWorkerPool) -> None:
    analysis = analyze(loop, faces_pool, "moving.mp4")
    assert [len(f.boxes) for f in analysis.frames] == [1] * SAMPLES
    (track,) = tracks_of(analysis)
    assert track.frame_count == SAMPLES
    xs = [f.box[0] for f in track.frames]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 200  # left to right across the frame
    assert analysis.stats.decoded == SAMPLES and analysis.stats.failed == 0
    assert analysis.crops().shape == (SAMPLES, *INPUT, 3) and analysis.crops().dtype == np.uint8


def test_two_faces_are_two_tracks(loop: BackgroundLoop, faces_pool: VideoWorkerPool) -> None:
    for name in ("two_faces.mp4", "two_faces.webm"):
        tracks = tracks_of(analyze(loop, faces_pool, name))
        assert [t.frame_count for t in tracks] == [SAMPLES, SAMPLES], name
        left, right = sorted(tracks, key=lambda t: t.frames[0].box[0])
        assert max(f.box[0] for f in left.frames) < min(f.box[0] for f in right.frames)


def test_a_pasted_face_is_its_own_track_over_its_frames(
    loop: BackgroundLoop, faces_pool: VideoWorkerPool
) -> None:
    analysis = analyze(loop, faces_pool, "pasted.mp4")
    host, pasted = tracks_of(analysis)
    assert host.frame_count == SAMPLES
    first, last = pasted_frames(round(FPS * SECONDS))
    expected = [f.index for f in analysis.frames if first <= round(f.pts_s * FPS) < last]
    assert [analysis.frames[f.frame].index for f in pasted.frames] == expected
    assert 2 <= len(expected) < SAMPLES
    # The pasted face is judged on its own frames: here it is the fake one.
    p_fake = [
        0.9 if any(f.frame == i and f.box == b for f in pasted.frames) else 0.1 for i, b in _boxes(analysis)
    ]
    verdict = judge_video(
        build_tracks(analysis.detections(p_fake)),
        SAMPLES,
        judge=lambda p: "fake" if p >= 0.5 else "real",
        threshold_for=lambda n: 0.5,
    )
    assert verdict is not None and verdict.deciding_track_id == 1 and verdict.prediction == "fake"


def _boxes(analysis: VideoAnalysis) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(frame position, box) for every crop, in the order of `crops()`."""
    return [(i, box) for i, frame in enumerate(analysis.frames) for box in frame.boxes]


def test_the_rotated_phone_video_is_searched_upright(
    loop: BackgroundLoop, faces_pool: VideoWorkerPool
) -> None:
    analysis = analyze(loop, faces_pool, "rotated.mp4")
    assert (analysis.info.width, analysis.info.height) == PORTRAIT
    assert [len(f.boxes) for f in analysis.frames] == [1] * SAMPLES  # MTCNN misses sideways faces
    for frame in analysis.frames:
        x, y, w, h = frame.boxes[0]
        assert h > w * 0.9 and 0 <= x < PORTRAIT[0] and PORTRAIT[1] / 4 < y + h / 2 < PORTRAIT[1] * 3 / 4


def test_no_face_no_tracks(loop: BackgroundLoop, faces_pool: VideoWorkerPool) -> None:
    analysis = analyze(loop, faces_pool, "no_face.mp4")
    # BlazeFace scores one frame's coffee foam 0.61 (its bar is 0.6): a stray box, not a track
    # that counts (tests/test_video_tracks.py: a face seen too briefly gives no verdict).
    assert analysis.stats.decoded == SAMPLES and analysis.stats.faces <= 1
    assert all(track.frame_count < min_track_frames(SAMPLES) for track in tracks_of(analysis))


def test_crops_are_cut_exactly_as_the_image_path_cuts_them(
    loop: BackgroundLoop, faces_pool: VideoWorkerPool
) -> None:
    analysis = analyze(loop, faces_pool, "two_faces.mp4", crop=CropRule(INPUT, margin=0.4))
    frame = analysis.frames[3]
    info = probe(clip("two_faces.mp4"))
    (decoded,) = decode_frames(info, [frame.time_s])
    assert decoded.scale == (1.0, 1.0)  # boxes are in these pixels too
    for box, score, crop in zip(frame.boxes, frame.scores, frame.crops, strict=True):
        face = Face(box=box, score=score, landmarks={})
        expected = to_input_array(
            crop_face(decoded.image, face, size=(INPUT[1], INPUT[0]), margin=0.4), INPUT
        )
        assert np.array_equal(crop, expected)


def test_progress_is_reported_as_frames_are_done(loop: BackgroundLoop, faces_pool: VideoWorkerPool) -> None:
    seen: list[tuple[int, int, int]] = []

    async def progress(report: Progress) -> None:
        seen.append((report.done, report.total, len(report.frames)))

    request = VideoRequest(frames=SAMPLES, crop=CROP, detect_batch=4)
    loop.run(faces_pool.analyze(clip("moving.mp4"), request, timeout_s=120, progress=progress))
    assert seen == [(0, 9, 0), (4, 9, 4), (8, 9, 4), (9, 9, 1)]


# -- without a detector: whole frames -----------------------------------------------------------


def test_without_a_detector_each_frame_is_one_whole_crop(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    analysis = analyze(loop, frames_pool, "moving.mp4")
    assert all(f.whole_frame and f.boxes == () for f in analysis.frames)
    assert analysis.crops().shape == (SAMPLES, *INPUT, 3)
    (track,) = build_tracks(analysis.detections([0.3] * SAMPLES))
    assert track.frames[0].box == (0, 0, analysis.info.width, analysis.info.height)


def test_a_refused_video_is_an_input_error_and_the_worker_stays(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    before = frames_pool.pids
    for name, code in (("text.mp4", "UNSUPPORTED_FORMAT"), ("ten_hours.mp4", "VIDEO_TOO_LONG")):
        with pytest.raises(InputError) as caught:
            analyze(loop, frames_pool, name)
        assert caught.value.code == code
    assert frames_pool.pids == before


def test_an_exception_in_the_worker_is_reported_and_the_worker_stays(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool, tmp_path: object
) -> None:
    analyze(loop, frames_pool, "moving.mp4")
    before = frames_pool.pids
    with pytest.raises(VideoWorkerError, match="FileNotFoundError"):
        loop.run(frames_pool.analyze(f"{tmp_path}/gone.mp4", VideoRequest(), timeout_s=30))
    assert frames_pool.pids == before
    assert analyze(loop, frames_pool, "moving.mp4").worker_pid == before[0]


# -- deadline, death, cancel ----------------------------------------------------------------------


def test_a_stalled_decode_is_killed_at_the_deadline_and_the_worker_replaced(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    (stalled,) = frames_pool.pids
    request = VideoRequest(frames=SAMPLES, crop=CROP, test_sleep_s=60)
    with pytest.raises(InputError) as caught:
        loop.run(frames_pool.analyze(clip("moving.mp4"), request, timeout_s=1.5))
    assert (caught.value.status, caught.value.code) == (422, "VIDEO_TIMEOUT")
    assert not alive(stalled)  # killed and reaped
    analysis = analyze(loop, frames_pool, "moving.mp4")  # waits for the replacement
    assert analysis.worker_pid != stalled and analysis.stats.decoded == SAMPLES


def test_a_stall_between_messages_is_a_timeout_too(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    request = VideoRequest(frames=SAMPLES, crop=CROP, test_sleep_s=60)
    with pytest.raises(InputError) as caught:
        loop.run(frames_pool.analyze(clip("moving.mp4"), request, timeout_s=60, stall_timeout_s=1.0))
    assert caught.value.code == "VIDEO_TIMEOUT"


def test_a_worker_that_dies_is_replaced_and_the_request_told(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    analyze(loop, frames_pool, "moving.mp4")  # a worker is ready
    (victim,) = frames_pool.pids

    def kill_on_start(report: Progress) -> None:
        if report.done == 0:
            os.kill(victim, signal.SIGKILL)  # as the OOM killer or a crash in FFmpeg would

    request = VideoRequest(frames=SAMPLES, crop=CROP, test_sleep_s=30)
    with pytest.raises(VideoWorkerError, match="exited"):
        loop.run(frames_pool.analyze(clip("moving.mp4"), request, timeout_s=60, progress=kill_on_start))
    assert not alive(victim)
    assert analyze(loop, frames_pool, "moving.mp4").worker_pid != victim


def test_cancelling_the_request_kills_the_work(loop: BackgroundLoop, frames_pool: VideoWorkerPool) -> None:
    analyze(loop, frames_pool, "moving.mp4")
    (busy,) = frames_pool.pids
    request = VideoRequest(frames=SAMPLES, crop=CROP, test_sleep_s=60)

    async def cancel_once_started() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(
            frames_pool.analyze(clip("moving.mp4"), request, timeout_s=60, progress=lambda _: started.set())
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run(cancel_once_started())
    assert not alive(busy)
    assert analyze(loop, frames_pool, "moving.mp4").worker_pid != busy


def test_requests_beyond_the_pool_size_wait_their_turn(
    loop: BackgroundLoop, frames_pool: VideoWorkerPool
) -> None:
    async def three() -> list[VideoAnalysis]:
        request = VideoRequest(frames=3, crop=CROP)
        return await asyncio.gather(
            *(frames_pool.analyze(clip(name), request, timeout_s=60) for name in ("moving.mp4",) * 3)
        )

    results = loop.run(three())
    assert len({r.worker_pid for r in results}) == 1 and all(r.stats.decoded == 3 for r in results)


def test_close_leaves_no_process(loop: BackgroundLoop) -> None:
    pool = VideoWorkerPool(2, detector=None)
    loop.run(pool.start())
    pids = pool.pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    loop.run(pool.close())
    assert pool.pids == [] and not any(alive(pid) for pid in pids)
    with pytest.raises(VideoWorkerError):
        loop.run(pool.analyze(clip("moving.mp4"), VideoRequest(), timeout_s=10))
