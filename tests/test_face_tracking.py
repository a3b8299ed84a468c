"""Faces tracked through a video's samples (preprocessing/face_tracking.py) with the real
BlazeFace detector on the test clips: the same faces as a full detection on every sample, for
far fewer full detections."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from bench.face_detection import CountingNet
from preprocessing.detectors import load_detector
from preprocessing.face_tracking import FULL_EVERY, FaceTracker
from preprocessing.faces import Face, FaceDetector
from preprocessing.video import decode_frames, probe, sample_times
from serving.tracks import iou
from tests.videos import clip

SAMPLES = 24
FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "faces.json").read_text())  # each fixture's faces, by detector


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return load_detector("blazeface")


def samples(name: str) -> list[Image.Image]:
    info = probe(clip(name))
    return [decoded.image for decoded in decode_frames(info, sample_times(info, frames=SAMPLES))]


def same_faces(a: Sequence[Face], b: Sequence[Face]) -> bool:
    return len(a) == len(b) and all(any(iou(x.box, y.box) >= 0.5 for y in b) for x in a)


@pytest.mark.parametrize("name", ["two_faces.mp4", "moving.mp4", "pasted.mp4"])
def test_tracked_faces_are_the_faces_full_detection_finds(detector: FaceDetector, name: str) -> None:
    frames = samples(name)
    tracker = FaceTracker(detector)
    tracked = [tracker.detect(image) for image in frames]
    full = [detector.detect(image) for image in frames]
    assert [same_faces(a, b) for a, b in zip(tracked, full, strict=True)] == [True] * len(frames)
    assert tracker.stats.full < len(frames) and tracker.stats.tracked > 0
    assert tracker.stats.full + tracker.stats.tracked == len(frames)


def test_a_face_coming_and_going_costs_a_full_detection_at_once(detector: FaceDetector) -> None:
    frames = samples("pasted.mp4")
    tracker = FaceTracker(detector, full_every=len(frames) + 1)  # no periodic full detection
    counts = [len(tracker.detect(image)) for image in frames]
    full = [len(detector.detect(image)) for image in frames]
    # the pasted face is there for the middle third of the clip (tests/videos.pasted_frames)
    assert full[0] == 1 and max(full) == 2 and full[-1] == 1
    assert counts == full  # on the sample it enters and on the one it is gone
    assert tracker.stats.entered >= 1 and tracker.stats.lost >= 1 and tracker.stats.full <= 3


def test_full_every_one_and_a_detector_without_tracking_detect_every_frame(detector: FaceDetector) -> None:
    class DetectOnly:  # the real detector behind the bare FaceDetector interface (as MTCNN is)
        def detect(self, image: Image.Image, *, max_faces: int = 20) -> list[Face]:
            return detector.detect(image, max_faces=max_faces)

    frames = samples("two_faces.mp4")[:FULL_EVERY]
    for tracker in (FaceTracker(detector, full_every=1), FaceTracker(DetectOnly())):  # type: ignore[arg-type]
        for image in frames:
            tracker.detect(image)
        assert tracker.stats.full == len(frames) and tracker.stats.tracked == 0
    with pytest.raises(ValueError, match="full_every"):
        FaceTracker(detector, full_every=0)


def test_the_face_cap_holds_on_tracked_frames(detector: FaceDetector) -> None:
    tracker = FaceTracker(detector, max_faces=1)
    counts = [len(tracker.detect(image)) for image in samples("two_faces.mp4")]
    assert counts == [1] * SAMPLES and tracker.stats.tracked > 0


@pytest.mark.parametrize("name", ["astronaut.jpg", "faceapi_sample6.jpg", "openpeople_p003_emotions.jpg"])
def test_tiles_when_needed_find_the_faces_tiles_always_find(name: str) -> None:
    from PIL import ImageOps

    with Image.open(FIXTURES / name) as image:
        photo = ImageOps.exif_transpose(image).convert("RGB")
    detectors = {tiles: load_detector("blazeface", tiles=tiles) for tiles in ("always", "when_needed")}
    counters = {}
    for tiles, d in detectors.items():
        counters[tiles] = d._net = CountingNet(d._net)  # type: ignore[attr-defined]
    always, needed = (detectors[t].detect(photo, max_faces=100) for t in ("always", "when_needed"))
    assert same_faces(always, needed) and len(needed) == len(EXPECTED[name]["blazeface"])
    assert counters["when_needed"].inputs <= counters["always"].inputs
    if len(needed) == 1:  # a portrait: the whole photo's own input and one check
        assert counters["when_needed"].inputs < counters["always"].inputs / 4
    with pytest.raises(ValueError, match="tiles"):
        load_detector("blazeface", tiles="sometimes")
