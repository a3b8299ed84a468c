"""Faces through a video's sampled frames with few full detections.

The full detector (a tiled search of the whole frame, then a zoomed check of each candidate:
~25 model inputs a 720p frame for BlazeFace) runs on the first sampled frame, on every
`full_every`-th one after it, and on any frame where something changed. Between them a frame
costs one model input per tracked face plus one:

* each tracked face is looked for again around its last box (`detect_near`: the zoomed check
  alone); a face not found there (moved far, left, hidden) means a full detection;
* the whole frame is glanced at in one input (`glance`: the search's first level alone, at the
  verification threshold); a face there that no tracked face covers (one entering) means a
  full detection.

So a face entering is found at once when it is larger than ~11 % of the frame's long side
(what the glance sees), and otherwise at the next full detection, at most `full_every - 1`
samples late. Tracks are still joined by serving/tracks.py from the boxes, as before.
`bench/video.py --parts tracking` measures the recall against full detection on every sample
and the model inputs a clip costs.

A detector without `detect_near` and `glance` (MTCNN) runs in full on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from preprocessing.faces import DEFAULT_MAX_FACES, Face, FaceDetector, covered, drop_nested

# Full detection on every 8th sample (and on the first, and whenever something changed): 32
# samples of an unchanging clip cost 4 full detections and 28 glances.
FULL_EVERY = 8


class TrackingDetector(FaceDetector, Protocol):
    def detect_near(self, image: Image.Image, faces: Sequence[Face]) -> list[Face | None]: ...

    def glance(self, image: Image.Image) -> list[tuple[int, int, int, int]]: ...


@dataclass
class TrackerStats:
    frames: int = 0
    full: int = 0  # frames the full detector ran on
    tracked: int = 0  # frames answered by the near checks and the glance alone
    lost: int = 0  # frames where a tracked face was not found near its last box
    entered: int = 0  # frames where the glance saw a face no tracked face covers


class FaceTracker:
    """`detect(image)` for consecutive sampled frames of one video, in time order."""

    def __init__(
        self, detector: FaceDetector, *, max_faces: int = DEFAULT_MAX_FACES, full_every: int = FULL_EVERY
    ) -> None:
        if full_every < 1:
            raise ValueError("full_every must be >= 1")
        self.detector, self.max_faces, self.full_every = detector, max_faces, full_every
        self.tracks = full_every > 1 and all(hasattr(detector, m) for m in ("detect_near", "glance"))
        self.stats = TrackerStats()
        self._last: list[Face] = []
        self._since_full = 0

    def detect(self, image: Image.Image) -> list[Face]:
        self.stats.frames += 1
        if self.tracks and self._since_full < self.full_every - 1:
            faces = self._track(image)
            if faces is not None:
                self.stats.tracked += 1
                self._since_full += 1
                self._last = faces
                return faces
        self.stats.full += 1
        self._since_full = 0
        self._last = self.detector.detect(image, max_faces=self.max_faces)
        return self._last

    def _track(self, image: Image.Image) -> list[Face] | None:
        """The tracked faces in `image`, or None where a full detection is needed."""
        detector: TrackingDetector = self.detector  # type: ignore[assignment]
        found = detector.detect_near(image, self._last) if self._last else []
        if any(face is None for face in found):
            self.stats.lost += 1
            return None
        faces = drop_nested(sorted(found, key=lambda f: (-f.area, -f.score, f.box)))  # type: ignore[arg-type, union-attr]
        if len(faces) < self.max_faces:
            known = [face.box for face in faces]
            if any(not covered(box, known) for box in detector.glance(image)):
                self.stats.entered += 1
                return None
        return faces[: self.max_faces]
