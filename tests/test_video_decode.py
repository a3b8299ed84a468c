"""Video probe, limits, sampling and decoding (`preprocessing.video`) on videos the tests make
(tests/videos.py): no server, no face detector."""

from __future__ import annotations

import av
import numpy as np
import pytest

from preprocessing.errors import InputError
from preprocessing.video import (
    DEFAULT_FRAMES,
    DecodeStats,
    VideoInfo,
    VideoLimits,
    choose_strategy,
    decode_frames,
    probe,
    sample_times,
)
from tests.videos import FPS, PORTRAIT, SECONDS, SIZE, clip

# -- probe: what is accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [
        ("moving.mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264"),
        ("moving.mov", "mov,mp4,m4a,3gp,3g2,mj2", "h264"),
        ("moving.webm", "matroska,webm", "vp9"),
        ("moving.avi", "avi", "mpeg4"),
        ("codec_hevc.mp4", "mov,mp4,m4a,3gp,3g2,mj2", "hevc"),
        ("codec_vp8.webm", "matroska,webm", "vp8"),
        ("codec_av1.webm", "matroska,webm", "av1"),
        ("codec_mjpeg.avi", "avi", "mjpeg"),
        ("codec_gif.gif", "gif", "gif"),
    ],
)
def test_probe_reads_each_accepted_container_and_codec(name: str, container: str, codec: str) -> None:
    info = probe(clip(name))
    assert (info.container, info.codec, info.rotation) == (container, codec, 0)
    assert info.fps == pytest.approx(FPS)
    expected = SECONDS if name.startswith("moving") else 1.0
    assert info.duration_s == pytest.approx(expected, abs=0.15)
    assert (info.width, info.height) == (SIZE if name.startswith("moving") else (320, 180))
    assert info.size_bytes == clip(name).stat().st_size
    assert not info.has_audio


def test_probe_reads_the_keyframe_spacing_from_the_index() -> None:
    info = probe(clip("moving.mp4"))  # a keyframe every second (tests.videos.GOP)
    assert info.keyframe_times == pytest.approx((0.0, 1.0, 2.0))
    assert info.keyframe_interval_s == pytest.approx(1.0)
    assert info.frame_count == FPS * SECONDS


@pytest.mark.parametrize("name", ["rotated.mp4", "rotated.mov"])
def test_probe_turns_the_size_of_a_rotated_phone_video_upright(name: str) -> None:
    info = probe(clip(name))
    assert info.rotation == 270  # the display matrix says -90: a quarter turn clockwise
    assert (info.coded_width, info.coded_height) == (PORTRAIT[1], PORTRAIT[0])
    assert (info.width, info.height) == PORTRAIT


# -- probe: what is refused, from the header --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("truncated.mp4", 400, "INVALID_VIDEO"),  # the index (at the end) is cut off
        ("truncated_faststart.mp4", 400, "INVALID_VIDEO"),  # the index points past the end
        ("corrupt.mp4", 400, "INVALID_VIDEO"),  # header intact, nothing decodes
        ("huge_frame.webm", 413, "VIDEO_TOO_LARGE"),  # declares 100,000 x 100,000
        ("ten_hours.mp4", 413, "VIDEO_TOO_LONG"),  # declares 10 hours
        ("audio_only.mp4", 415, "UNSUPPORTED_FORMAT"),
        ("text.mp4", 415, "UNSUPPORTED_FORMAT"),
        ("image.mp4", 415, "UNSUPPORTED_FORMAT"),  # a JPEG: FFmpeg would read it as a video
        ("playlist.m3u8", 415, "UNSUPPORTED_FORMAT"),
        ("empty.mp4", 400, "EMPTY_FILE"),
    ],
)
def test_probe_refuses_each_hostile_file(name: str, status: int, code: str) -> None:
    with pytest.raises(InputError) as caught:
        probe(clip(name))
    assert (caught.value.status, caught.value.code) == (status, code)


def test_the_declared_size_and_duration_are_named_in_the_message() -> None:
    with pytest.raises(InputError, match="100000x100000"):
        probe(clip("huge_frame.webm"))
    with pytest.raises(InputError, match="36000.0 s"):
        probe(clip("ten_hours.mp4"))


def test_the_ten_hour_header_is_refused_although_its_frames_decode() -> None:
    # The limit is read from the header: the same file's frames are fine (3 s of video).
    info = probe(clip("ten_hours.mp4"), VideoLimits(max_duration_s=11 * 3600))
    assert info.duration_s == pytest.approx(10 * 3600, rel=0.01)


def test_a_playlist_is_refused_not_followed() -> None:
    # Without the demuxer whitelist FFmpeg opens the playlist and reads the file it names.
    with av.open(str(clip("playlist.m3u8"))) as followed:
        assert followed.format.name == "hls"
    with pytest.raises(InputError) as caught:
        probe(clip("playlist.m3u8"))
    assert caught.value.status == 415


@pytest.mark.parametrize("name", ["moving.mp4", "moving.webm"])
def test_frame_size_limit_is_read_from_the_header(name: str) -> None:
    limits = VideoLimits(max_frame_pixels=SIZE[0] * SIZE[1] - 1)
    with pytest.raises(InputError) as caught:
        probe(clip(name), limits)
    assert (caught.value.status, caught.value.code) == (413, "VIDEO_TOO_LARGE")
    assert f"{SIZE[0]}x{SIZE[1]}" in caught.value.message


def test_duration_and_byte_limits() -> None:
    with pytest.raises(InputError) as caught:
        probe(clip("moving.mp4"), VideoLimits(max_duration_s=SECONDS - 0.5))
    assert (caught.value.status, caught.value.code) == (413, "VIDEO_TOO_LONG")
    with pytest.raises(InputError) as caught:
        probe(clip("moving.mp4"), VideoLimits(max_bytes=1000))
    assert (caught.value.status, caught.value.code) == (413, "FILE_TOO_LARGE")


# -- sampling -----------------------------------------------------------------------------------


def info_of(duration_s: float, fps: float = 30.0, frame_count: int | None = None) -> VideoInfo:
    return VideoInfo(
        path="",
        container="",
        codec="h264",
        width=640,
        height=360,
        coded_width=640,
        coded_height=360,
        rotation=0,
        duration_s=duration_s,
        start_s=0.0,
        fps=fps,
        frame_count=frame_count,
        keyframe_interval_s=None,
    )


def test_samples_are_slice_midpoints() -> None:
    assert sample_times(info_of(10.0), frames=4) == pytest.approx([1.25, 3.75, 6.25, 8.75])
    assert sample_times(info_of(10.0), fps=0.5) == pytest.approx([1.0, 3.0, 5.0, 7.0, 9.0])
    assert len(sample_times(info_of(10.0))) == DEFAULT_FRAMES  # neither frames nor fps


def test_samples_are_capped_by_the_limit_and_the_frames_there_are() -> None:
    assert len(sample_times(info_of(100.0), frames=1000, max_frames=300)) == 300
    assert len(sample_times(info_of(100.0), fps=30, max_frames=50)) == 50
    assert len(sample_times(info_of(1.0, frame_count=10), frames=32)) == 10
    assert len(sample_times(info_of(1.0, fps=12.0), frames=32)) == 12  # no count: duration x fps
    assert sample_times(info_of(0.05), fps=1) == pytest.approx([0.025])  # at least one


def test_sampling_rejects_contradictions() -> None:
    with pytest.raises(ValueError):
        sample_times(info_of(10.0), frames=4, fps=1.0)
    with pytest.raises(ValueError):
        sample_times(info_of(10.0), frames=0)


# -- decoding -----------------------------------------------------------------------------------


def decode(name: str, strategy: str, frames: int = 12, **kwargs: object) -> tuple[list, DecodeStats]:
    info = probe(clip(name))
    stats = DecodeStats()
    decoded = list(decode_frames(info, sample_times(info, frames), strategy=strategy, stats=stats, **kwargs))
    return decoded, stats


@pytest.mark.parametrize("name", ["moving.mp4", "moving.webm", "moving.avi", "two_faces.mp4"])
def test_seek_and_one_pass_give_the_same_frames(name: str) -> None:
    # seek_cost_frames=0: seek at every keyframe it can skip to, as often as it can.
    sought, seek_stats = decode(name, "seek", seek_cost_frames=0)
    passed, pass_stats = decode(name, "sequential")
    assert [(f.index, f.pts_s) for f in sought] == [(f.index, f.pts_s) for f in passed]
    for a, b in zip(sought, passed, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert seek_stats.decoded == pass_stats.decoded == 12
    if name.endswith(".mp4"):  # MP4 indexes every keyframe: seeking really seeks
        assert seek_stats.seeks > pass_stats.seeks


def test_each_sample_gets_the_frame_shown_at_its_time() -> None:
    decoded, stats = decode("moving.mp4", "auto", frames=6)
    # midpoints of 6 slices of 3 s: 0.25, 0.75, ...; frames every 0.1 s
    assert [f.time_s for f in decoded] == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25, 2.75])
    assert [f.pts_s for f in decoded] == pytest.approx([0.2, 0.7, 1.2, 1.7, 2.2, 2.7])
    assert stats.failed == 0 and stats.sampled == 6


def test_auto_picks_one_pass_when_samples_are_dense_and_seek_when_sparse() -> None:
    info = probe(clip("moving.mp4"))  # keyframes every 10 frames
    assert choose_strategy(info, sample_times(info, 12)) == "sequential"
    sparse = VideoInfo(**{**info.__dict__, "keyframe_times": tuple(float(k) for k in range(0, 600, 2))})
    sparse = VideoInfo(**{**sparse.__dict__, "duration_s": 600.0, "fps": 30.0})
    assert choose_strategy(sparse, sample_times(sparse, 8)) == "seek"
    assert choose_strategy(VideoInfo(**{**info.__dict__, "keyframe_times": None}), [1.0]) == "sequential"


def test_frames_are_rgb_upright_and_scaled_to_the_working_size() -> None:
    decoded, _ = decode("rotated.mp4", "auto", frames=3)
    image = np.asarray(decoded[0].image)
    assert image.shape == (PORTRAIT[1], PORTRAIT[0], 3)  # (height, width): portrait
    top, bottom = image[:10].reshape(-1, 3).mean(0), image[-10:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 40 and top[2] < 40  # the red bar is on top
    assert not (bottom[0] > 200 and bottom[1] < 40)
    small, _ = decode("moving.mp4", "auto", frames=2, max_side=240)
    assert small[0].image.size == (240, 135)
    assert small[0].scale == pytest.approx((0.5, 0.5))


def test_frames_that_fail_to_decode_are_skipped_and_counted() -> None:
    info = probe(clip("corrupt_tail.mp4"))  # the second half of the media data is noise
    for strategy in ("seek", "sequential"):
        stats = DecodeStats()
        decoded = list(decode_frames(info, sample_times(info, 12), strategy=strategy, stats=stats))
        assert 0 < stats.decoded < 12 and stats.decoded + stats.failed == 12
        assert len(decoded) == stats.decoded
        assert all(f.time_s < SECONDS / 2 + 0.3 for f in decoded)
