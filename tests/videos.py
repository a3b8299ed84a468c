"""Test videos, made with PyAV from the face fixtures, and hostile files; cached per session.

`clip(name)` returns the path of a video built on first use into one temporary folder per
test session (removed at exit). Scenes are a few seconds at 320-640 px: fast to make.

Scenes (faces are head patches cut from the fixtures around the face MTCNN finds there):
  moving      one face (astronaut) moving left to right over a no-face photo
  two_faces   two faces (astronaut, a face-api face), each drifting a little
  pasted      the astronaut throughout, and for the middle third of the clip a second face
              (openpeople) pasted in from another photo
  no_face     the coffee photo, panning
  rotated     a phone video: stored landscape, a display matrix saying "turn 90 degrees
              clockwise" (rotation -90), upright a portrait with one face and a red bar on top
Containers and codecs: MP4/H.264 (`.mp4`), WebM/VP9 (`.webm`), MOV/H.264 (`.mov`),
AVI/MPEG-4 part 2 (`.avi`); and tiny clips of H.265, VP8, AV1, MJPEG, GIF (`codec_*`).

Hostile files, and how each is made:
  truncated.mp4            moving.mp4 (index at the end) cut in half: no index at all
  truncated_faststart.mp4  the index moved to the front (+faststart), then cut in half: the
                           index points past the end of the file
  corrupt.mp4              the media data of moving.mp4 overwritten with random bytes (the
                           header intact): nothing decodes
  corrupt_tail.mp4         only the second half of the media data overwritten: the first
                           frames decode, the later ones fail
  huge_frame.webm          a WebM written by hand (EBML below) whose track header declares
                           100,000 x 100,000 pixels; the frames are zeros, so FFmpeg has only
                           the header to go by
  ten_hours.mp4            moving.mp4 with every duration in the header (mvhd, tkhd, elst,
                           mdhd and each sample's duration in stts) multiplied by 36,000/3:
                           the header declares 10 hours
  audio_only.mp4           AAC in MP4, no video stream
  text.mp4                 a text file named .mp4
  image.mp4                a JPEG named .mp4
  playlist.m3u8            an HLS playlist naming moving.mp4 as its segment: FFmpeg opens
                           it (and reads that other file) unless its demuxer is refused (an
                           upload spooled under the client's file extension could be this)
  empty.mp4                zero bytes
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
T = TypeVar("T")

# Head patches: (fixture, region (left, top, right, bottom)) around the face box MTCNN reports
# on the fixture (astronaut (182, 64, 83, 107); faceapi_sample4 (129, 101, 91, 119);
# openpeople (579, 424, 67, 90)), with room for the detector's context.
HEADS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "astronaut": ("astronaut.jpg", (137, 14, 310, 216)),
    "faceapi": ("faceapi_sample4.jpg", (84, 46, 265, 265)),
    "openpeople": ("openpeople_p003_emotions.jpg", (544, 379, 681, 544)),
}
BACKGROUND = "coffee_no_face.jpg"

FPS = 10
SECONDS = 3.0
SIZE = (480, 270)
GOP = 10  # a keyframe every second, so that seeking seeks

_cache_dir: Path | None = None
_lock = threading.RLock()  # builders of hostile files call clip() for their source
_built: dict[str, Path] = {}


def cache_dir() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="test-videos-"))
        atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    return _cache_dir


def clip(name: str) -> Path:
    """The path of the named test video, built on first use (see the module docstring)."""
    with _lock:
        if name not in _built:
            if name not in BUILDERS:
                raise KeyError(f"no test video {name!r}; known: {sorted(BUILDERS)}")
            path = cache_dir() / name
            BUILDERS[name](path)
            _built[name] = path
        return _built[name]


# -- pictures ----------------------------------------------------------------------------------


def head(name: str, height: int) -> Image.Image:
    """A head patch scaled to `height` pixels."""
    fixture, region = HEADS[name]
    with Image.open(FIXTURES / fixture) as image:
        patch = image.convert("RGB").crop(region)
    width = round(patch.width * height / patch.height)
    return patch.resize((width, height), Image.Resampling.LANCZOS)


def background(size: tuple[int, int], pan: float = 0.0, name: str = BACKGROUND) -> Image.Image:
    """The no-face photo scaled to cover `size` with 20 % to spare, its window at `pan` (0..1)."""
    with Image.open(FIXTURES / name) as image:
        photo = image.convert("RGB")
    scale = max(size[0] / photo.width, size[1] / photo.height) * 1.2
    big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BILINEAR)
    left = round((big.width - size[0]) * pan)
    top = (big.height - size[1]) // 2
    return big.crop((left, top, left + size[0], top + size[1]))


def scene_moving(i: int, n: int, size: tuple[int, int] = SIZE) -> Image.Image:
    frame = background(size)
    face = head("astronaut", round(size[1] * 0.55))
    margin = size[0] // 20
    x = margin + round((size[0] - face.width - 2 * margin) * i / max(n - 1, 1))
    frame.paste(face, (x, (size[1] - face.height) // 2))
    return frame


def scene_two_faces(i: int, n: int, size: tuple[int, int] = SIZE) -> Image.Image:
    frame = background(size, pan=0.5)
    height = round(size[1] * 0.5)
    drift = round(size[0] * 0.04 * np.sin(2 * np.pi * i / max(n, 1)))
    left, right = head("astronaut", height), head("faceapi", height)
    frame.paste(left, (size[0] // 8 + drift, (size[1] - height) // 2))
    frame.paste(right, (size[0] * 7 // 8 - right.width - drift, (size[1] - height) // 3))
    return frame


def scene_pasted(i: int, n: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """The astronaut throughout; another person's face pasted in for the middle third."""
    frame = background(size, pan=0.2)
    height = round(size[1] * 0.5)
    astronaut = head("astronaut", height)
    frame.paste(astronaut, (size[0] // 10 + i, (size[1] - height) // 2))
    if pasted_frames(n)[0] <= i < pasted_frames(n)[1]:
        other = head("openpeople", height)
        frame.paste(other, (size[0] * 9 // 10 - other.width, (size[1] - height) // 2))
    return frame


def pasted_frames(n: int) -> tuple[int, int]:
    """The frames [first, last) of a clip of n frames that carry the pasted face."""
    return n // 3, 2 * n // 3


def scene_no_face(i: int, n: int, size: tuple[int, int] = SIZE) -> Image.Image:
    return background(size, pan=i / max(n - 1, 1))


PORTRAIT = (270, 480)  # upright size of the rotated clip


def scene_portrait(i: int, n: int, size: tuple[int, int] = PORTRAIT) -> Image.Image:
    """Upright portrait: a face and a red bar along the top edge (to check the rotation)."""
    frame = background(size, pan=0.5)
    face = head("astronaut", round(size[0] * 0.6))
    frame.paste(face, ((size[0] - face.width) // 2 + i % 3, (size[1] - face.height) // 2))
    frame.paste((255, 0, 0), (0, 0, size[0], size[1] // 12))
    return frame


# -- writing -----------------------------------------------------------------------------------


def write_video(
    path: Path,
    frames: Iterable[Image.Image],
    *,
    codec: str = "libx264",
    fps: int = FPS,
    options: dict[str, str] | None = None,
    rotation: float | None = None,
    container_options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode RGB frames (all one size) into `path`; the container follows the file suffix."""
    import av

    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = first.size
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


X264 = {"preset": "veryfast", "g": str(GOP), "keyint_min": str(GOP)}  # veryfast has B-frames
VP9 = {"deadline": "realtime", "cpu-used": "8", "g": str(GOP), "row-mt": "1"}


def scene_frames(
    scene: Callable[..., Image.Image], n: int, size: tuple[int, int] | None = None
) -> list[Image.Image]:
    return [scene(i, n) if size is None else scene(i, n, size) for i in range(n)]


def _frames_n() -> int:
    return round(FPS * SECONDS)


def _scene_builder(
    scene: Callable[..., Image.Image], codec: str = "libx264", options: dict[str, str] | None = None
) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        return write_video(path, scene_frames(scene, _frames_n()), codec=codec, options=options or X264)

    return build


def _rotated(path: Path) -> Path:
    # The sensor's landscape frame: the upright portrait turned 90 degrees counter-clockwise;
    # rotation -90 tells the player to turn it back, clockwise.
    upright = scene_frames(scene_portrait, _frames_n())
    stored = [image.transpose(Image.Transpose.ROTATE_90) for image in upright]
    return write_video(path, stored, options=X264, rotation=-90)


def _codec_clip(codec: str, pix_fmt: str = "yuv420p", options: dict[str, str] | None = None):  # noqa: ANN202
    def build(path: Path) -> Path:
        frames = scene_frames(scene_moving, 10, (320, 180))
        return write_video(path, frames, codec=codec, options=options, pix_fmt=pix_fmt)

    return build


# -- hostile files -----------------------------------------------------------------------------


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None, path: tuple[str, ...] = ()):  # noqa: ANN201
    """(path of box names, offset, size) of every box, depth first, in the containers we patch."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8:
            return
        name = kind.decode("latin-1")
        yield (*path, name), offset, size
        if name in ("moov", "trak", "mdia", "minf", "stbl", "edts"):
            yield from mp4_boxes(data, offset + 8, offset + size, (*path, name))
        offset += size


def _truncated(path: Path) -> Path:
    data = clip("moving.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _moving_faststart(path: Path) -> Path:
    frames = scene_frames(scene_moving, _frames_n())
    return write_video(path, frames, options=X264, container_options={"movflags": "+faststart"})


def _truncated_faststart(path: Path) -> Path:
    data = clip("moving_faststart.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mdat(data: bytes) -> tuple[int, int]:
    """(first byte, end) of the media data of an MP4."""
    for names, offset, size in mp4_boxes(data):
        if names == ("mdat",):
            return offset + 8, offset + size
    raise ValueError("no mdat")


def _corrupt(path: Path, part: float = 0.0) -> Path:
    data = bytearray(clip("moving.mp4").read_bytes())
    first, end = _mdat(bytes(data))
    first += round((end - first) * part)
    data[first:end] = np.random.default_rng(7).bytes(end - first)
    path.write_bytes(bytes(data))
    return path


def _ten_hours(path: Path) -> Path:
    data = bytearray(clip("moving.mp4").read_bytes())
    factor = round(10 * 3600 / SECONDS)

    def scale(offset: int) -> None:
        struct.pack_into(">I", data, offset, struct.unpack_from(">I", data, offset)[0] * factor)

    for names, offset, _ in mp4_boxes(bytes(data)):
        body, kind = offset + 8, names[-1]
        if kind in ("mvhd", "mdhd"):  # version 0: flags, created, modified, timescale, duration
            scale(body + 16)
        elif kind == "tkhd":  # flags, created, modified, track id, reserved, duration
            scale(body + 20)
        elif kind == "elst":  # entries of (segment duration, media time, rate)
            for entry in range(struct.unpack_from(">I", data, body + 4)[0]):
                scale(body + 8 + 12 * entry)
        elif kind == "stts":  # entries of (sample count, sample duration)
            for entry in range(struct.unpack_from(">I", data, body + 4)[0]):
                scale(body + 8 + 8 * entry + 4)
    path.write_bytes(bytes(data))
    return path


def ebml_element(element_id: int, payload: bytes) -> bytes:
    """One EBML element: its id, its size as a variable-length integer, its payload."""
    for length in range(1, 9):
        if len(payload) < (1 << (7 * length)) - 1:
            size = ((1 << (7 * length)) | len(payload)).to_bytes(length, "big")
            break
    else:
        raise ValueError("element too large")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload


def _uint(element_id: int, value: int) -> bytes:
    return ebml_element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def webm_bytes(
    width: int, height: int, frames: list[bytes], codec_id: str = "V_VP9", fps: int = FPS
) -> bytes:
    """A minimal WebM: EBML header, one video track declaring `width` x `height`, one cluster."""
    header = ebml_element(
        0x1A45DFA3,
        _uint(0x4286, 1)
        + _uint(0x42F7, 1)
        + _uint(0x42F2, 4)
        + _uint(0x42F3, 8)
        + ebml_element(0x4282, b"webm")
        + _uint(0x4287, 4)
        + _uint(0x4285, 2),
    )
    info = ebml_element(
        0x1549A966,
        _uint(0x2AD7B1, 1_000_000) + ebml_element(0x4489, struct.pack(">d", 1000.0 * len(frames) / fps)),
    )
    video = ebml_element(0xE0, _uint(0xB0, width) + _uint(0xBA, height))
    entry = _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 1) + ebml_element(0x86, codec_id.encode()) + video
    tracks = ebml_element(0x1654AE6B, ebml_element(0xAE, entry))
    blocks = b"".join(
        ebml_element(
            0xA3, b"\x81" + struct.pack(">h", round(i * 1000 / fps)) + (b"\x80" if i == 0 else b"\x00") + f
        )
        for i, f in enumerate(frames)
    )
    cluster = ebml_element(0x1F43B675, _uint(0xE7, 0) + blocks)
    return header + ebml_element(0x18538067, info + tracks + cluster)


def _huge_frame(path: Path) -> Path:
    path.write_bytes(webm_bytes(100_000, 100_000, [bytes(64)] * 3))
    return path


def _audio_only(path: Path) -> Path:
    import av

    rate = 16_000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        t = np.arange(rate) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _text(path: Path) -> Path:
    path.write_text("This is a text file, not a video.\n" * 20)
    return path


def _image(path: Path) -> Path:
    shutil.copyfile(FIXTURES / "astronaut.jpg", path)
    return path


def _playlist(path: Path) -> Path:
    segment = clip("moving.mp4")
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{segment}\n#EXT-X-ENDLIST\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "moving.mp4": _scene_builder(scene_moving),
    "moving.webm": _scene_builder(scene_moving, "libvpx-vp9", VP9),
    "moving.mov": _scene_builder(scene_moving),
    "moving.avi": _scene_builder(scene_moving, "mpeg4", {"g": str(GOP), "bf": "2"}),
    "moving_faststart.mp4": _moving_faststart,
    "two_faces.mp4": _scene_builder(scene_two_faces),
    "two_faces.webm": _scene_builder(scene_two_faces, "libvpx-vp9", VP9),
    "pasted.mp4": _scene_builder(scene_pasted),
    "no_face.mp4": _scene_builder(scene_no_face),
    "rotated.mp4": _rotated,
    "rotated.mov": _rotated,
    "codec_hevc.mp4": _codec_clip(
        "libx265", options={"preset": "ultrafast", "x265-params": "log-level=error"}
    ),
    "codec_vp8.webm": _codec_clip("libvpx", options={"deadline": "realtime", "cpu-used": "8"}),
    "codec_av1.webm": _codec_clip("libsvtav1", options={"preset": "12"}),
    "codec_mjpeg.avi": _codec_clip("mjpeg", pix_fmt="yuvj420p"),
    "codec_gif.gif": _codec_clip("gif", pix_fmt="rgb8"),
    "truncated.mp4": _truncated,
    "truncated_faststart.mp4": _truncated_faststart,
    "corrupt.mp4": _corrupt,
    "corrupt_tail.mp4": lambda path: _corrupt(path, part=0.5),
    "huge_frame.webm": _huge_frame,
    "ten_hours.mp4": _ten_hours,
    "audio_only.mp4": _audio_only,
    "text.mp4": _text,
    "image.mp4": _image,
    "playlist.m3u8": _playlist,
    "empty.mp4": _empty,
}


# -- an event loop for module-scoped async fixtures ------------------------------------------------


class BackgroundLoop:
    """An asyncio loop on its own thread: a worker pool started once per test module lives on
    it, and each test runs its coroutines there with `run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[object, object, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def alive(pid: int) -> bool:
    """Whether a process (a decoder the pool should have killed) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
