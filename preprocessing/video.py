"""Video uploads: probe and limits before decoding, evenly spaced samples, upright RGB frames.

Everything here works on a file path (uploads are spooled to a temporary file) with PyAV's
FFmpeg. No server, no face detection: `serving/video_worker.py` runs this in a child process.

Probe (`probe`): the container is opened with a demuxer whitelist (MP4/MOV, Matroska/WebM,
AVI, GIF) and the `file` protocol only, so that a playlist or concat script named `.mp4` is
refused instead of being followed to other files or URLs. Limits are checked on what the
header declares, before a frame is decoded: FFmpeg is told the pixel limit (`max_pixels`)
while it reads the stream parameters, so a stream declaring 8192x8192 is not decoded there
either. FFmpeg itself zeroes sizes it cannot represent (100,000 x 100,000); the size it
refused is read back from its log. Only then is the first frame decoded: it tells the
rotation (display matrix) and proves the stream decodes at all.

Sampling (`sample_times`): n times at the midpoints of n equal slices of the duration.

Decoding (`decode_frames`): the frame shown at time t is the last frame whose timestamp is
<= t. Two strategies give the same frames: `sequential` decodes one pass from the keyframe
before the first sample to the last sample; `seek` jumps to the keyframe before a sample
whenever that skips more frames than a seek costs (SEEK_COST_FRAMES), and decodes on
otherwise. `auto` picks by keyframe spacing: it estimates the frames each would decode from
the keyframe times in the index (`choose_strategy`). Measured (bench/video.py, 10-s 720p
H.264, 32 samples): the two are equal within noise at keyframes every 1, 2 and 10 s (32
samples are closer together than the keyframes: there is little to skip); with 8 samples,
seeking decodes half the frames. Frames are scaled to a working size (long side <= 1280)
while they are converted to RGB (one swscale pass), then turned upright.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import av.logging
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from preprocessing import errors
from preprocessing.errors import InputError

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 100 * MIB
DEFAULT_MAX_DURATION_S = 30 * 60.0  # long enough for a job, bounded for one worker's time
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160  # 4K UHD: what phones record
DEFAULT_MAX_FRAMES = 300  # most frames sampled from one video (the `frames` field's cap)
DEFAULT_FRAMES = 32  # frames sampled when the request names neither frames nor fps
WORKING_MAX_SIDE = 1280  # decoded frames are scaled down to this long side first

# FFmpeg demuxer names; a file any other demuxer recognises is refused (415).
ACCEPTED_DEMUXERS: tuple[str, ...] = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "gif")
FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,gif"
ACCEPTED_CODECS: tuple[str, ...] = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "gif")
ACCEPTED_NAMES = "MP4/MOV (H.264, H.265, MPEG-4, MJPEG, AV1), WebM/Matroska (VP8, VP9, AV1, H.264), AVI, GIF"
# FFmpeg decoder names that differ from the codec's name.
_CODEC_ALIASES = {"libdav1d": "av1", "libaom-av1": "av1", "libvpx": "vp8", "libvpx-vp9": "vp9"}

# How far `probe` reads looking for the first decodable frame before calling the file broken.
FIRST_FRAME_MAX_PACKETS = 600
# `auto`: a seek costs about this many decoded frames (demuxer seek, decoder flush, and the
# frame threads filling their pipeline again): 3.7-6.6 frames of CPU measured with bench/video.py.
SEEK_COST_FRAMES = 6

Strategy = Literal["auto", "seek", "sequential"]
Target = tuple[int, float]  # (index in the requested times, time)
Shown = tuple[int, float, VideoFrame | None]  # a target and the frame shown then


@dataclass(frozen=True)
class VideoLimits:
    """Video upload limits. Duration and frame size are checked on the header, before decoding."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES  # most frames sampled from one video


@dataclass(frozen=True)
class VideoInfo:
    """What the header (and the first frame) say about a video stream.

    `width`/`height` are upright (after the rotation); `coded_width`/`coded_height` are as
    stored. `rotation` is the counter-clockwise turn, in degrees (0/90/180/270), that makes a
    stored frame upright. `start_s` is the first timestamp; sample times are relative to it.
    """

    path: str
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    duration_s: float
    start_s: float
    fps: float
    frame_count: int | None  # from the header, when it tells
    keyframe_interval_s: float | None  # mean spacing from the index, when there is one
    keyframe_times: tuple[float, ...] | None = field(default=None, repr=False)  # relative to start_s
    has_audio: bool = False
    size_bytes: int = 0


# -- errors (the video counterparts of preprocessing.errors) ----------------------------------


def unsupported_video(reason: str) -> InputError:
    return InputError(
        415, "UNSUPPORTED_FORMAT", f"The file is not a supported video ({ACCEPTED_NAMES}): {reason}"
    )


def invalid_video(reason: str) -> InputError:
    return InputError(400, "INVALID_VIDEO", f"The video cannot be decoded: {reason}")


def video_too_long(duration_s: float, limit_s: float) -> InputError:
    return InputError(
        413, "VIDEO_TOO_LONG", f"The video declares {duration_s:.1f} s; the limit is {limit_s:.0f} s"
    )


def video_too_large(size: tuple[int, int], limit: int) -> InputError:
    return InputError(
        413, "VIDEO_TOO_LARGE", f"The video declares {size[0]}x{size[1]} pixels a frame; the limit is {limit}"
    )


def video_timeout(limit_s: float) -> InputError:
    return InputError(422, "VIDEO_TIMEOUT", f"The video was not processed within {limit_s:.0f} s")


# -- probe -------------------------------------------------------------------------------------

_PICTURE_SIZE = re.compile(r"Picture size (\d+)x(\d+)")
# FFmpeg's log callback is process-wide; opening under this lock keeps one capture at a time.
_LOG_LOCK = threading.Lock()


def _open(path: str, max_frame_pixels: int) -> tuple[InputContainer, list[str]]:
    """Open with the whitelists; returns (container, FFmpeg's error log lines of the open)."""
    options = {"max_pixels": str(max_frame_pixels)}  # also read by the decoders of find_stream_info
    container_options = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "file"}
    with _LOG_LOCK:
        previous = av.logging.get_level()
        # PyAV ignores FFmpeg's log by default; the refused picture size is only there. The
        # open reads stream parameters single-threaded, so the Python log callback is safe.
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture() as logs:
                container = av.open(path, options=options, container_options=container_options)
        finally:
            av.logging.set_level(previous)
    return container, [message for _, _, message in logs]


def _sniff_container(path: str) -> bool:
    """Whether the file starts like one of the accepted containers (then a failure is a 400)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or head.startswith(b"\x1a\x45\xdf\xa3")  # EBML: Matroska, WebM
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith((b"GIF87a", b"GIF89a"))
    )


def probe(path: str | os.PathLike[str], limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Read and check a video's header; raise `InputError` for every fault of the upload.

    415 UNSUPPORTED_FORMAT: not a video, audio only, another container or codec.
    400 INVALID_VIDEO / EMPTY_FILE: truncated or corrupt, nothing decodable, empty.
    413 FILE_TOO_LARGE / VIDEO_TOO_LONG / VIDEO_TOO_LARGE: over `limits`, from the header.
    """
    path = str(path)
    size = os.path.getsize(path)
    if size == 0:
        raise errors.empty_file()
    if size > limits.max_bytes:
        raise errors.file_too_large(limits.max_bytes)
    try:
        container, log = _open(path, limits.max_frame_pixels)
    except av.error.FFmpegError as exc:
        if _sniff_container(path):
            raise invalid_video(_reason(exc)) from None
        raise unsupported_video("the file is not a recognised video container") from None
    with container:
        if container.format.name not in ACCEPTED_DEMUXERS:
            raise unsupported_video(f"container {container.format.name}")
        videos = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        has_audio = bool(container.streams.audio)
        if not videos:
            raise unsupported_video("audio only" if has_audio else "no video stream")
        stream = videos[0]
        codec = _codec_name(stream)
        if codec not in ACCEPTED_CODECS:
            raise unsupported_video(f"codec {codec}")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            refused = [tuple(map(int, m.groups())) for m in map(_PICTURE_SIZE.search, log) if m]
            big = max(refused, key=lambda wh: wh[0] * wh[1], default=None)
            if big and big[0] * big[1] > limits.max_frame_pixels:
                raise video_too_large(big, limits.max_frame_pixels)
            raise invalid_video("the stream declares no frame size")
        if width * height > limits.max_frame_pixels:
            raise video_too_large((width, height), limits.max_frame_pixels)
        start_s = _seconds(stream.start_time, stream.time_base) or 0.0
        duration_s = _declared_duration(container, stream)
        if duration_s is not None and duration_s > limits.max_duration_s:
            raise video_too_long(duration_s, limits.max_duration_s)
        _check_index(stream, size)
        first = _first_frame(container, stream, limits)
        if duration_s is None:  # no duration in the header: read the timestamps (no decoding)
            duration_s = _scan_duration(container, stream, limits, start_s)
        fps = _fps(stream, duration_s)
        frame_count = stream.frames or None
        keyframes = _keyframe_times(stream, start_s)
        rotation = round((first.rotation or 0) / 90) * 90 % 360
        upright = (height, width) if rotation in (90, 270) else (width, height)
        return VideoInfo(
            path=path,
            container=container.format.name,
            codec=codec,
            width=upright[0],
            height=upright[1],
            coded_width=width,
            coded_height=height,
            rotation=rotation,
            duration_s=max(duration_s, 0.0),
            start_s=start_s,
            fps=fps,
            frame_count=frame_count,
            keyframe_interval_s=_mean_spacing(keyframes, duration_s),
            keyframe_times=keyframes,
            has_audio=has_audio,
            size_bytes=size,
        )


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The first video stream that is not cover art."""
    attached = av.stream.Disposition.attached_pic
    return next((s for s in container.streams.video if not s.disposition & attached), None)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _codec_name(stream: VideoStream) -> str:
    name = stream.codec_context.name if stream.codec_context else "unknown"
    return _CODEC_ALIASES.get(name, name)


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """The longest duration the header declares (stream or container), if any."""
    known = [
        d
        for d in (
            _seconds(stream.duration, stream.time_base),
            container.duration / 1_000_000 if container.duration else None,
        )
        if d is not None and d > 0
    ]
    return max(known) if known else None


def _check_index(stream: VideoStream, size: int) -> None:
    """A truncated file whose index (MP4 sample table, AVI idx1, Matroska cues) points past
    its end is refused before decoding."""
    entries = stream.index_entries
    if len(entries) and max(entry.pos + max(entry.size, 0) for entry in entries) > size:
        raise invalid_video("the file is truncated (its index points past the end)")


def _first_frame(container: InputContainer, stream: VideoStream, limits: VideoLimits) -> VideoFrame:
    """Decode the first frame (single-threaded): proves the stream decodes, gives the rotation."""
    _configure_decoder(stream, limits, threads=False)
    try:
        for packets, packet in enumerate(container.demux(stream)):
            if packets > FIRST_FRAME_MAX_PACKETS:
                break
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError:
                continue
            for frame in frames:
                if not frame.is_corrupt:
                    return frame
    except av.error.FFmpegError as exc:
        raise invalid_video(_reason(exc)) from None
    raise invalid_video("no frame could be decoded")


def _scan_duration(
    container: InputContainer, stream: VideoStream, limits: VideoLimits, start_s: float
) -> float:
    """The last timestamp, demuxing packets only; stops as soon as it passes the limit."""
    last = start_s
    try:
        container.seek(0, stream=stream, backward=True)
        for packet in container.demux(stream):
            end = _seconds(packet.pts if packet.pts is not None else packet.dts, stream.time_base)
            if end is None:
                continue
            end += _seconds(packet.duration, stream.time_base) or 0.0
            last = max(last, end)
            if last - start_s > limits.max_duration_s:
                raise video_too_long(last - start_s, limits.max_duration_s)
    except av.error.FFmpegError:
        pass  # a broken tail: the duration up to it
    return last - start_s


def _fps(stream: VideoStream, duration_s: float) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return stream.frames / duration_s if stream.frames and duration_s > 0 else 25.0


def _keyframe_times(stream: VideoStream, start_s: float) -> tuple[float, ...] | None:
    """Keyframe times from the index, relative to the start; None when there is no index.

    Index timestamps are decode times: with B-frames they run ahead of the presentation
    times by the reordering delay. The first entry is the first frame, shown at the start,
    so the delay is start - first entry; keyframes (never reordered later than that) are
    shifted by it."""
    entries = stream.index_entries
    if not len(entries) or stream.time_base is None:
        return None
    first = min(float(e.timestamp * stream.time_base) for e in entries)
    delay = max(start_s - first, 0.0)
    times = sorted(
        {float(e.timestamp * stream.time_base) + delay - start_s for e in entries if e.is_keyframe}
    )
    return tuple(round(t, 6) for t in times) or None


def _mean_spacing(keyframes: tuple[float, ...] | None, duration_s: float) -> float | None:
    if not keyframes:
        return None
    if len(keyframes) == 1:
        return max(duration_s, 0.0)  # one group of pictures for the whole clip
    return (keyframes[-1] - keyframes[0]) / (len(keyframes) - 1)


# -- sampling ----------------------------------------------------------------------------------


def sample_times(
    info: VideoInfo, frames: int | None = None, fps: float | None = None, max_frames: int = DEFAULT_MAX_FRAMES
) -> list[float]:
    """Evenly spaced sample times in seconds from the video's start (`info.start_s`).

    `frames=n`: the midpoints of n equal slices of the duration (so neither the first frame,
    often black, nor a time past the last frame). `fps=f`: one sample every 1/f s, also at
    slice midpoints, i.e. n = floor(duration * f) (at least 1). Neither: DEFAULT_FRAMES.
    n is capped by `max_frames` and by the number of frames (declared, or duration x fps); a capped
    request is spread over the whole duration like `frames`. Both given: ValueError.
    """
    if frames is not None and fps is not None:
        raise ValueError("give frames or fps, not both")
    if frames is not None and frames < 1:
        raise ValueError("frames must be >= 1")
    if fps is not None and not fps > 0:
        raise ValueError("fps must be > 0")
    if fps is not None:
        count = max(1, math.floor(info.duration_s * fps + 1e-9))
    else:
        count = DEFAULT_FRAMES if frames is None else frames
    frames_there = info.frame_count or math.ceil(info.duration_s * info.fps) or count
    count = min(count, max_frames, frames_there)
    count = max(count, 1)
    step = info.duration_s / count
    return [step * (i + 0.5) for i in range(count)]


# -- decoding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedFrame:
    """One sample: the upright RGB frame at the working size, and the frame it came from."""

    index: int  # position in the requested times
    time_s: float  # the requested time, relative to the start
    pts_s: float  # timestamp of the frame shown then, relative to the start
    image: Image.Image
    scale: tuple[float, float]  # working pixels per upright video pixel, (x, y)


@dataclass
class DecodeStats:
    sampled: int = 0
    decoded: int = 0
    failed: int = 0  # samples whose frame did not decode (skipped)
    frames_decoded: int = 0  # frames the decoder produced, wanted or not (the cost)
    seeks: int = 0
    strategy: str = ""
    errors: list[str] = field(default_factory=list)  # first few decoder errors

    def note_error(self, exc: Exception) -> None:
        if len(self.errors) < 5:
            self.errors.append(_reason(exc))


def working_size(info: VideoInfo, sample_aspect: Fraction | None, max_side: int) -> tuple[int, int]:
    """(width, height) of frames as stored but scaled to square pixels and at most `max_side`."""
    width = info.coded_width * (float(sample_aspect) if sample_aspect else 1.0)
    height = float(info.coded_height)
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def choose_strategy(
    info: VideoInfo, times: Sequence[float], seek_cost_frames: float = SEEK_COST_FRAMES
) -> Literal["seek", "sequential"]:
    """The strategy expected to decode fewer frames, a seek counting as `seek_cost_frames`.

    Sequential decodes every frame from the keyframe before the first sample to the last
    sample. Seek walks the same samples but jumps to a sample's keyframe whenever that skips
    more frames than a seek costs (the rule `decode_frames` follows). Keyframe times come from
    the index (MP4/MOV sample tables, AVI idx1: every keyframe; Matroska cues: the keyframes
    that start clusters); without one, seeking cannot be planned and sequential is chosen.
    """
    if not times or not info.keyframe_times:
        return "sequential"
    ordered = sorted(times)
    fps = info.fps
    sequential = (ordered[-1] - _key_before(info.keyframe_times, ordered[0])) * fps
    position = _key_before(info.keyframe_times, ordered[0])
    seek = seek_cost_frames
    for t in ordered:
        key = _key_before(info.keyframe_times, t)
        if _seek_pays(position, key, fps, seek_cost_frames):
            seek += seek_cost_frames
            position = key
        seek += (t - position) * fps
        position = t
    return "seek" if seek < sequential else "sequential"


def _key_before(keys: Sequence[float], t: float) -> float:
    return max((k for k in keys if k <= t), default=0.0)


def _seek_pays(position: float, key: float, fps: float, seek_cost_frames: float) -> bool:
    """Whether jumping to `key` skips more frames than a seek costs."""
    return key > position and (key - position) * fps > seek_cost_frames


def decode_frames(
    info: VideoInfo,
    times: Sequence[float],
    *,
    strategy: Strategy = "auto",
    limits: VideoLimits = VideoLimits(),
    max_side: int = WORKING_MAX_SIDE,
    threads: bool = True,
    stats: DecodeStats | None = None,
    seek_cost_frames: float = SEEK_COST_FRAMES,
) -> Iterator[DecodedFrame]:
    """The frames shown at `times` (seconds from the start), in time order, upright RGB.

    A sample whose frame does not decode (decoder error, corrupt frame, or no frame within
    two frame durations of it) is skipped and counted in `stats.failed`. Samples that fall
    on the same frame each get it (with their own index and time).
    """
    stats = stats if stats is not None else DecodeStats()
    order = sorted(range(len(times)), key=lambda i: times[i])
    stats.sampled += len(times)
    chosen = choose_strategy(info, times, seek_cost_frames) if strategy == "auto" else strategy
    if chosen not in ("seek", "sequential"):
        raise ValueError(f"unknown strategy {strategy!r}")
    stats.strategy = chosen
    container, _ = _open(info.path, limits.max_frame_pixels)
    with container:
        stream = _video_stream(container)
        _configure_decoder(stream, limits, threads=threads)
        size = working_size(info, stream.sample_aspect_ratio, max_side)
        # Working pixels per upright video pixel, (x, y).
        scale = (size[0] / info.coded_width, size[1] / info.coded_height)
        if info.rotation in (90, 270):
            scale = (scale[1], scale[0])
        tolerance = 2.0 / info.fps if info.fps > 0 else 0.5
        targets = [(i, float(times[i])) for i in order]
        if chosen == "seek":
            walk = _walk_seek(container, stream, info, targets, stats, seek_cost_frames)
        else:
            walk = _walk_sequential(container, stream, info, targets, stats)
        converted: tuple[int, Image.Image] | None = None  # samples on one frame share its image
        for index, t, frame in walk:
            if frame is None:
                stats.failed += 1
                continue
            frame_t = _frame_time(frame, stream, info)
            if t - frame_t > max(tolerance, 1.5 * _duration_s(frame, stream)):
                stats.failed += 1  # the frame for t is missing: it did not decode
                continue
            if converted is None or converted[0] != frame.pts:
                converted = (frame.pts, _to_image(frame, size, info.rotation))
            stats.decoded += 1
            yield DecodedFrame(index, t, frame_t, converted[1], scale)


def _configure_decoder(stream: VideoStream, limits: VideoLimits, *, threads: bool) -> None:
    context = stream.codec_context
    # A stream that grows past the limit mid-way is refused by the decoder, not allocated.
    context.options = {**(context.options or {}), "max_pixels": str(limits.max_frame_pixels)}
    if threads:
        context.thread_type = "AUTO"  # frame and slice threads
        context.thread_count = 0  # one per core
    else:
        context.thread_type = "SLICE"
        context.thread_count = 1


def _duration_s(frame: VideoFrame, stream: VideoStream) -> float:
    return float(frame.duration * stream.time_base) if frame.duration else 0.0


def _frames(container: InputContainer, stream: VideoStream, stats: DecodeStats) -> Iterator[VideoFrame]:
    """Decoded, uncorrupted frames with timestamps from the current position; errors skipped."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:  # a broken tail
            stats.note_error(exc)
            return
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError as exc:
            stats.note_error(exc)
            continue
        for frame in frames:
            stats.frames_decoded += 1
            if frame.pts is None or frame.is_corrupt:
                continue
            yield frame


def _walk_sequential(
    container: InputContainer, stream: VideoStream, info: VideoInfo, targets: list[Target], stats: DecodeStats
) -> Iterator[Shown]:
    """One pass from the keyframe before the first target to the last target."""
    if not targets:
        return
    frames = _seek(container, stream, info, targets[0][1], stats)
    previous = None
    remaining = list(targets)
    for frame in frames:
        frame_t = _frame_time(frame, stream, info)
        while remaining and frame_t > remaining[0][1]:
            index, t = remaining.pop(0)
            # A target before the first frame is shown the first frame.
            yield index, t, previous if previous is not None else frame
        if not remaining:
            return
        previous = frame
    for index, t in remaining:  # past the last frame: the last frame
        yield index, t, previous


def _walk_seek(
    container: InputContainer,
    stream: VideoStream,
    info: VideoInfo,
    targets: list[Target],
    stats: DecodeStats,
    seek_cost_frames: float,
) -> Iterator[Shown]:
    """Seek to the keyframe before a target when that skips more frames than a seek costs;
    otherwise decode on from where the decoder stands."""
    keys = info.keyframe_times or ()
    frames: Iterator[VideoFrame] | None = None
    last: VideoFrame | None = None  # the last frame at or before the previous target
    ahead: VideoFrame | None = None  # the first frame after the previous target (read, not yet used)
    for index, t in targets:
        current = ahead if ahead is not None else last
        here = _frame_time(current, stream, info) if current is not None else None
        key = _key_before(keys, t)
        if frames is None or here is None or here > t or _seek_pays(here, key, info.fps, seek_cost_frames):
            frames, last, ahead = _seek(container, stream, info, t, stats), None, None
        if ahead is None or _frame_time(ahead, stream, info) <= t:
            candidate = ahead if ahead is not None else last
            ahead = None
            for frame in frames:
                if _frame_time(frame, stream, info) > t:
                    ahead = frame
                    break
                candidate = frame
            last = candidate
        # Nothing at or before t (a target before the first frame): the first frame.
        yield index, t, last if last is not None else ahead


def _frame_time(frame: VideoFrame, stream: VideoStream, info: VideoInfo) -> float:
    return float(frame.pts * stream.time_base) - info.start_s


def _seek(
    container: InputContainer, stream: VideoStream, info: VideoInfo, t: float, stats: DecodeStats
) -> Iterator[VideoFrame]:
    """Frames from the keyframe at or before t (relative seconds).

    If the demuxer lands after t (an imprecise index), seek again further back: both
    strategies must show the same frame for t."""
    back = 0.0
    for _ in range(6):
        stats.seeks += 1
        target = max(0, math.floor((t - back + info.start_s) / stream.time_base))
        try:
            container.seek(target, stream=stream, backward=True)
        except av.error.FFmpegError as exc:
            stats.note_error(exc)
            break
        frames = _frames(container, stream, stats)
        first = next(frames, None)
        if first is None:
            return iter(())
        if _frame_time(first, stream, info) <= t or target == 0:
            return itertools.chain([first], frames)
        back = max(2 * back, 1.0)
    container.seek(0, stream=stream, backward=True)
    return _frames(container, stream, stats)


def _to_image(frame: VideoFrame, size: tuple[int, int], rotation: int) -> Image.Image:
    """Scale while converting to RGB (one swscale pass), then turn upright."""
    interpolation = "AREA" if size[0] < frame.width else "BILINEAR"
    rgb = frame.reformat(
        width=size[0],
        height=size[1],
        format="rgb24",
        interpolation=interpolation,
        src_color_range=frame.color_range or None,
    )
    image = rgb.to_image()
    if rotation == 90:
        return image.transpose(Image.Transpose.ROTATE_90)
    if rotation == 180:
        return image.transpose(Image.Transpose.ROTATE_180)
    if rotation == 270:
        return image.transpose(Image.Transpose.ROTATE_270)
    return image
