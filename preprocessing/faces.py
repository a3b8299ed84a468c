"""Face detection (MTCNN) and the one face-crop function shared by serving and training.

Pure functions plus a detector object; no server code. Coordinates are always in the pixels
of the image that was passed in (after EXIF orientation, which is the decoder's job).

Choices, measured on the face-api group photos, scikit-image's astronaut and the openpeople
portraits and emotion sheets (see `bench/face_detection.py` and the report in the PR):

* `max_side=640`: detection runs on a copy whose long side is at most 640 px. Recall on those
  photos (201 of 203 faces) was the same from 480 to 1920 px (the two misses, a profile and
  a face looking down, are missed at every size); a face is still found when its box is
  about 2 % of the long side (60 px in a 3000 px photo). 1024 px finds 40 px faces there
  but takes ~1.7x as long, 1920 px ~4x.
* MTCNN's own thresholds stay at their defaults (P/R/O-Net 0.6/0.7/0.8, the paper's values)
  and `min_face_size` stays at 20: mtcnn 1.0.0 builds its image pyramid from the image size
  alone, so a larger `min_face_size` shrinks the last levels below PNet's 12 px window and
  the library then swallows the error and reports *no faces at all*. The smallest face is
  set by `max_side` instead.
* `min_score=0.9` on the final (O-Net) score: the false positives we saw (a dress pattern, a
  shelf behind a selfie) scored 0.83-0.93 and appeared only at some scales; true faces scored
  >= 0.92 except one face looking down (0.83-0.95).
* A face whose box lies more than 30 % inside a larger face's box is dropped (`drop_nested`):
  MTCNN's IoU-based NMS keeps small boxes on part of a face (up to 0.93 here; 45 % inside),
  the only false positive left at 0.9. No two true faces on these photos overlapped at all.
* `margin=0.25`: FaceNet's 32 px margin at 160 px, i.e. the face box fills 128 of the 160 px.
  The backbone (Sandberg's FaceNet) was trained on such crops.
* No rotation by default: the FaceNet backbone was trained on unrotated MTCNN crops, and a
  rotation resamples every pixel, which smooths the fine texture a real/fake classifier looks
  at. `align=True` is there (deterministic) for experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

DEFAULT_MAX_SIDE = 640
DEFAULT_MIN_SCORE = 0.9
DEFAULT_MAX_FACES = 20
DEFAULT_MARGIN = 0.25
NESTED_OVERLAP = 0.3
CROP_SIZE = (160, 160)

# MTCNN keyword arguments, pinned so a library default change cannot move our results.
# min_face_size must stay <= 20 with mtcnn 1.0.0 (see the module docstring).
_MTCNN_PARAMS: dict[str, float] = {
    "min_face_size": 20,
    "scale_factor": 0.709,
    "threshold_pnet": 0.6,
    "threshold_rnet": 0.7,
    "threshold_onet": 0.8,
}


@dataclass(frozen=True)
class Face:
    """One detected face.

    `box` is (x, y, width, height) in the original image's pixels, as the detector regressed
    it: for a face cut by the image border it extends past the edge (x or y may be negative),
    so that the crop stays centred on the face. Use `clip_box` for display.
    Landmarks use mtcnn's names: `left_eye` is the eye on the image's left (the person's
    right eye); likewise `mouth_left`.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: dict[str, tuple[float, float]]

    @property
    def area(self) -> int:
        return max(self.box[2], 0) * max(self.box[3], 0)


def clip_box(box: tuple[int, int, int, int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of `box` inside an image of `image_size` (width, height), as (x, y, w, h)."""
    x, y, w, h = box
    width, height = image_size
    left, top = min(max(x, 0), width), min(max(y, 0), height)
    right, bottom = min(max(x + w, left), width), min(max(y + h, top), height)
    return left, top, right - left, bottom - top


class FaceDetector:
    """MTCNN, loaded once (~2 s with the TensorFlow import; its weights ship in the wheel).

    `detect` may be called from several threads on one instance: it keeps no state between
    calls, and tests/test_faces.py checks that concurrent calls give the sequential results.
    """

    def __init__(self, *, device: str = "CPU:0", compiled: bool = True) -> None:
        # Heavy: imports TensorFlow and builds three small Keras models.
        import tensorflow as tf
        from mtcnn import MTCNN

        self._mtcnn: Any = MTCNN(stages="face_and_landmarks_detection", device=device)
        if compiled:
            # mtcnn calls its P/R/O-Nets eagerly, layer by layer: Python overhead was 70 % of
            # detection time. As tf.functions (one generic trace: the pyramid's shapes vary)
            # detection took 70 instead of 146 ms per fixture photo, with identical faces.
            for stage in self._mtcnn.stages:
                network = stage._model
                stage._model = tf.function(
                    lambda x, net=network: net(x, training=False), reduce_retracing=True
                )

    def detect(
        self,
        image: Image.Image,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        min_score: float = DEFAULT_MIN_SCORE,
        max_faces: int = DEFAULT_MAX_FACES,
    ) -> list[Face]:
        """Faces in an RGB image, largest first (ties: higher score), at most `max_faces`.

        Large photos are searched on a copy whose long side is `max_side`; boxes and landmarks
        are mapped back to `image`'s pixels.
        """
        if max_side < 1 or max_faces < 0:
            raise ValueError("max_side must be >= 1 and max_faces >= 0")
        small, scale = downscale(image, max_side)
        rows = self._mtcnn.detect_faces(
            np.asarray(small),
            fit_to_image=False,  # keep boxes centred on faces cut by the border
            limit_boundaries_landmarks=False,
            box_format="xyxy",
            output_type="numpy",  # the "json" output rounds landmarks to whole pixels
            **_MTCNN_PARAMS,
        )
        faces = [_to_face(row, 1.0 / scale) for row in np.asarray(rows, dtype=np.float64)]
        faces = [face for face in faces if face.score >= min_score]
        faces.sort(key=lambda face: (-face.area, -face.score, face.box))
        return drop_nested(faces)[:max_faces]


def drop_nested(faces: list[Face], max_inside: float = NESTED_OVERLAP) -> list[Face]:
    """Drop each face with more than `max_inside` of its area inside a larger kept face.

    MTCNN's NMS uses IoU, so a small box on part of a face (forehead and hair, seen at
    0.87-0.93 on the face-api photos) survives next to the real box. Expects largest first.
    """
    kept: list[Face] = []
    for face in faces:
        if all(_intersection(face.box, other.box) <= max_inside * face.area for other in kept):
            kept.append(face)
    return kept


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def downscale(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """An RGB copy whose long side is at most `max_side`, and the scale factor applied."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    longest = max(rgb.size)
    if longest <= max_side:
        return rgb, 1.0
    scale = max_side / longest
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    # Pillow's bilinear filter widens with the reduction, so this is antialiased.
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0), scale


def _to_face(row: np.ndarray, factor: float) -> Face:
    # mtcnn 1.0.0 numpy row: image index, x1, y1, x2, y2, score, then the five landmark x's
    # and the five y's in LANDMARK_NAMES order (tests check this against its json output).
    x1, y1, x2, y2 = (float(v) * factor for v in row[1:5])
    xs, ys = row[6:11] * factor, row[11:16] * factor
    landmarks = {name: (float(x), float(y)) for name, x, y in zip(LANDMARK_NAMES, xs, ys, strict=True)}
    box = (round(x1), round(y1), max(1, round(x2 - x1)), max(1, round(y2 - y1)))
    return Face(box=box, score=float(row[5]), landmarks=landmarks)


def crop_face(
    image: Image.Image,
    face: Face,
    *,
    size: tuple[int, int] = CROP_SIZE,
    margin: float = DEFAULT_MARGIN,
    align: bool = False,
) -> Image.Image:
    """THE face crop for serving and training: an RGB image of exactly `size` (width, height).

    A square centred on the face box, with side `max(w, h) * (1 + margin)`; parts outside
    the image are black. With `align=True` the square is first rotated about the box centre
    so that the eyes are level. Resized with a bicubic filter (antialiased when shrinking).
    Deterministic: the same inputs give the same pixels.
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    x, y, w, h = face.box
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(1, round(max(w, h, 1) * (1.0 + margin)))
    angle = eye_angle(face) if align else 0.0
    square = _crop_rotated(rgb, cx, cy, side, angle) if angle else _crop_padded(rgb, cx, cy, side)
    return square.resize(size, Image.Resampling.BICUBIC)


def eye_angle(face: Face) -> float:
    """Degrees to rotate the image counter-clockwise so that the eyes are level."""
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    if lx == rx and ly == ry:
        return 0.0
    return math.degrees(math.atan2(ry - ly, rx - lx))


def _crop_padded(image: Image.Image, cx: float, cy: float, side: int) -> Image.Image:
    # Pillow's crop fills whatever lies outside the image with zeros (black).
    left, top = round(cx - side / 2.0), round(cy - side / 2.0)
    return image.crop((left, top, left + side, top + side))


def _crop_rotated(image: Image.Image, cx: float, cy: float, side: int, angle: float) -> Image.Image:
    # Cut a region that holds the square at any angle, rotate it at full resolution (one
    # resampling), then take the centred square; the final resize does the scaling.
    outer = math.ceil(side * math.sqrt(2)) + 2
    left, top = round(cx - outer / 2.0), round(cy - outer / 2.0)
    region = image.crop((left, top, left + outer, top + outer))
    center = (cx - left, cy - top)
    rotated = region.rotate(angle, resample=Image.Resampling.BICUBIC, center=center, fillcolor=(0, 0, 0))
    return _crop_padded(rotated, center[0], center[1], side)
