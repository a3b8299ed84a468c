"""Tracks (`serving.tracks`): association of faces across sampled frames and the verdicts, on
boxes and probabilities. The same rule on real clips is tested in tests/test_video_worker.py."""

from __future__ import annotations

import pytest

from serving.tracks import (
    Detection,
    FrameDetections,
    TrackRule,
    build_tracks,
    centre_shift,
    iou,
    judge_video,
    min_track_frames,
)


def frames_of(*frames: list[tuple[tuple[int, int, int, int], float]]) -> list[FrameDetections]:
    """Frames from lists of (box, p_fake); one sample every 0.25 s."""
    return [
        FrameDetections(i * 0.25, tuple(Detection(box, 0.99, p) for box, p in faces))
        for i, faces in enumerate(frames)
    ]


def judge(p_fake: float) -> str:
    return "fake" if p_fake >= 0.5 else "real"


def flat(_: int) -> float:
    return 0.5


def test_iou_and_centre_shift() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0
    assert centre_shift((0, 0, 10, 10), (10, 0, 10, 10)) == pytest.approx(1.0)


def test_overlapping_boxes_form_one_track() -> None:
    frames = frames_of(*[[((100 + 10 * i, 50, 80, 80), 0.2)] for i in range(6)])
    (track,) = build_tracks(frames)
    assert track.frame_count == 6
    assert [f.frame for f in track.frames] == list(range(6))
    assert track.p_fake == pytest.approx(0.2)


def test_a_fast_face_is_followed_by_centre_distance() -> None:
    # 60 px per sample with 80 px boxes: IoU 0.14, under 0.3; shift 0.75 sides, within 1.0.
    frames = frames_of(*[[((20 + 60 * i, 50, 80, 80), 0.3)] for i in range(5)])
    assert iou(frames[0].detections[0].box, frames[1].detections[0].box) < TrackRule().min_iou
    assert len(build_tracks(frames)) == 1


def test_two_faces_side_by_side_are_two_tracks_in_order_of_appearance() -> None:
    left, right = (50, 50, 80, 80), (300, 60, 70, 70)
    frames = frames_of(
        *[[(right, 0.9), (left, 0.1)] if i % 2 else [(left, 0.1), (right, 0.9)] for i in range(6)]
    )
    tracks = build_tracks(frames)
    assert len(tracks) == 2
    assert {f.box for f in tracks[0].frames} == {left}
    assert {f.box for f in tracks[1].frames} == {right}


def test_a_track_survives_a_short_gap_and_ends_after_a_long_one() -> None:
    box = (100, 100, 60, 60)
    short = frames_of([(box, 0.1)], [], [], [], [(box, 0.1)])  # 3 frames missing: MAX_GAP
    assert len(build_tracks(short)) == 1
    long = frames_of([(box, 0.1)], [], [], [], [], [(box, 0.1)])  # 4 missing
    assert len(build_tracks(long)) == 2


def test_a_small_face_near_a_large_one_is_not_merged_into_its_track() -> None:
    big, small = (100, 100, 120, 120), (150, 150, 40, 40)
    frames = frames_of([(big, 0.1)], [(small, 0.1)])
    assert len(build_tracks(frames)) == 2  # sides 3x apart: over max_size_ratio


def test_a_face_pasted_in_for_some_frames_is_its_own_track() -> None:
    host, pasted = (50, 80, 90, 90), (320, 80, 90, 90)
    frames = frames_of(*[[(host, 0.1)] + ([(pasted, 0.95)] if 3 <= i < 6 else []) for i in range(9)])
    host_track, pasted_track = build_tracks(frames)
    assert host_track.frame_count == 9
    assert [f.frame for f in pasted_track.frames] == [3, 4, 5]


def test_min_track_frames() -> None:
    assert min_track_frames(32) == 4  # 10 % of 32, rounded up
    assert min_track_frames(12) == 3
    assert min_track_frames(2) == 2  # never more than were sampled
    assert min_track_frames(300) == 30


def test_the_most_fake_counted_track_decides_against_the_bar_for_their_number() -> None:
    host, pasted, passer = (50, 80, 90, 90), (320, 80, 90, 90), (200, 300, 50, 50)
    frames = frames_of(
        *[
            [(host, 0.2)] + ([(pasted, 0.8)] if i >= 4 else []) + ([(passer, 0.99)] if i == 0 else [])
            for i in range(10)
        ]
    )
    tracks = build_tracks(frames)
    bars: list[int] = []

    def threshold_for(n: int) -> float:
        bars.append(n)
        return 0.5 + 0.1 * (n - 1)

    verdict = judge_video(tracks, len(frames), judge=judge, threshold_for=threshold_for)
    assert verdict is not None
    by_id = {v.track.track_id: v for v in verdict.tracks}
    # Tracks in order of appearance: host, passer (frame 0 only), pasted (from frame 4).
    assert [v.track.frame_count for v in verdict.tracks] == [10, 1, 6]
    assert [v.counted for v in verdict.tracks] == [True, False, True]  # the passer: 1 frame of 10
    assert bars == [2] and verdict.threshold == pytest.approx(0.6)
    assert verdict.deciding_track_id == 2 and verdict.p_fake == pytest.approx(0.8)
    assert verdict.prediction == "fake"
    assert by_id[2].share_fake == 1.0 and by_id[0].share_fake == 0.0
    assert by_id[1].prediction == "fake"  # judged, but does not count
    raised = judge_video(tracks, len(frames), judge=judge, threshold_for=lambda n: 0.85)
    assert raised is not None and raised.prediction == "real"


def test_share_fake_counts_frames_and_the_mean_decides() -> None:
    box = (10, 10, 50, 50)
    frames = frames_of(*[[(box, p)] for p in (0.9, 0.9, 0.1, 0.1, 0.1)])
    verdict = judge_video(build_tracks(frames), 5, judge=judge, threshold_for=flat)
    assert verdict is not None
    (track,) = verdict.tracks
    assert track.share_fake == pytest.approx(0.4)
    assert track.p_fake == pytest.approx(0.42)
    assert verdict.prediction == "real"


def test_a_face_seen_too_briefly_gives_no_verdict() -> None:
    """One frame of ten (a stray box, a passer-by): not enough to judge the video by."""
    frames = frames_of([((10, 10, 50, 50), 0.7)], [], [], [], [], [], [], [], [], [])
    assert judge_video(build_tracks(frames), 10, judge=judge, threshold_for=flat) is None
    three = frames_of(*[[((10, 10, 50, 50), 0.7)]] * 3, [], [], [], [], [], [], [])
    verdict = judge_video(build_tracks(three), 10, judge=judge, threshold_for=flat)
    assert verdict is not None and verdict.counted == 1 and verdict.prediction == "fake"


def test_no_faces_no_verdict() -> None:
    assert judge_video(build_tracks(frames_of([], [])), 2, judge=judge, threshold_for=flat) is None
