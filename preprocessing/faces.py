"""Face detection: one interface, two detectors; and the one face-crop function shared by
serving and training.

`preprocessing.detectors.load_detector(name)` builds a detector: "blazeface" (MediaPipe's
BlazeFace on LiteRT, no TensorFlow; `preprocessing.blazeface`) or "mtcnn" (mtcnn on
TensorFlow; `preprocessing.mtcnn_detector`). Each has its own defaults (score threshold, working size),
chosen on the project's face fixtures and documented where they are defined. Both return
`Face`s whose boxes frame a face the way MTCNN does (BlazeFace's boxes are mapped to that by a
fixed offset and scale), so that `crop_face` cuts nearly the crop a classifier trained on
MTCNN crops expects: not exactly (on the fixtures the default model's P(fake) moved by 0.05 on
average between the two detectors' crops of a face; see bench/face_detection.py --fit). A
model is best served with the detector its training crops came from (`ModelSpec.detector`).

Coordinates are always in the pixels of the image that was passed in (after EXIF orientation,
which is the decoder's job).

Choices for the crop and the merge of overlapping boxes:

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# The defaults of a model's crop (ModelSpec reads them from here) and of the face cap (the
# settings' `max_faces`): each written once.
DEFAULT_MAX_FACES = 20
DEFAULT_MARGIN = 0.25
NESTED_OVERLAP = 0.3
CROP_SIZE = (160, 160)  # (width, height), as crop_face takes it


@dataclass(frozen=True)
class Face:
    """One detected face.

    `box` is (x, y, width, height) in the original image's pixels, as the detector regressed
    it: for a face cut by the image border it extends past the edge (x or y may be negative),
    so that the crop stays centred on the face. Use `clip_box` for display.
    Landmarks use mtcnn's names (LANDMARK_NAMES): `left_eye` is the eye on the image's left
    (the person's right eye); likewise `mouth_left`. A detector reports those it has:
    BlazeFace has the eyes and the nose but no mouth corners (its mouth point is the centre).
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


class FaceDetector(Protocol):
    """What serving and training need of a face detector. Implementations are safe to call
    from several threads at once, and keep their defaults (score threshold, working size) as
    named constants beside them."""

    name: str

    def detect(self, image: Image.Image, *, max_faces: int = DEFAULT_MAX_FACES) -> list[Face]:
        """Faces in an image, largest first (ties: higher score), at most `max_faces`."""
        ...

    def detect_many(
        self, images: Sequence[Image.Image], *, max_faces: int = DEFAULT_MAX_FACES
    ) -> list[list[Face]]:
        """`detect` for each image (photos, video frames), in as few model calls as pays."""
        ...


def drop_nested(faces: list[Face], max_inside: float = NESTED_OVERLAP) -> list[Face]:
    """Drop each face with more than `max_inside` of its area inside a larger kept face.

    MTCNN's NMS uses IoU, so a small box on part of a face (forehead and hair, seen at
    0.87-0.93 on the face-api photos) survives next to the real box. Expects largest first.
    """
    kept: list[Face] = []
    for face in faces:
        if not covered(face.box, [other.box for other in kept], max_inside):
            kept.append(face)
    return kept


Box = tuple[int, int, int, int]  # x, y, w, h


def covered(box: Box, boxes: Sequence[Box], max_inside: float = NESTED_OVERLAP) -> bool:
    """Whether more than `max_inside` of `box`'s area lies inside one of `boxes` (x, y, w, h)."""
    area = max(box[2], 0) * max(box[3], 0)
    return any(_intersection(box, other) > max_inside * area for other in boxes)


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
    side = crop_square(face, margin=margin).side
    angle = eye_angle(face) if align else 0.0
    square = _crop_rotated(rgb, cx, cy, side, angle) if angle else _crop_padded(rgb, cx, cy, side)
    return square.resize(size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class CropSquare:
    """The square `crop_face` cut, in the original image's pixels: (left, top) and `side`,
    turned by `angle` degrees clockwise about its centre when the crop was aligned (draw it as
    CSS `rotate(<angle>deg)` with the default centre origin). Parts may lie outside the image."""

    left: int
    top: int
    side: int
    angle: float = 0.0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the unrotated square."""
        return self.left, self.top, self.side, self.side

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """A point of the crop, in fractions of its side (0..1 from its top-left corner), in
        original image pixels."""
        cx, cy = self.left + self.side / 2.0, self.top + self.side / 2.0
        dx, dy = (u - 0.5) * self.side, (v - 0.5) * self.side
        # The aligned crop is the image turned counter-clockwise by `angle`: undo it.
        t = math.radians(self.angle)
        return cx + dx * math.cos(t) - dy * math.sin(t), cy + dx * math.sin(t) + dy * math.cos(t)

    def corners(self) -> list[tuple[float, float]]:
        """Top-left, top-right, bottom-right, bottom-left of the crop, in image pixels."""
        return [self.to_image(u, v) for u, v in ((0, 0), (1, 0), (1, 1), (0, 1))]


def crop_square(face: Face, *, margin: float, align: bool = False) -> CropSquare:
    """The square `crop_face(image, face, margin=margin, align=align)` cuts (crop_face reads its
    side from here): the centre of the box, side `max(w, h) * (1 + margin)`, rounded corner."""
    x, y, w, h = face.box
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(1, round(max(w, h, 1) * (1.0 + margin)))
    return CropSquare(round(cx - side / 2.0), round(cy - side / 2.0), side, eye_angle(face) if align else 0.0)


@dataclass(frozen=True)
class CropRule:
    """How one model's face crops are cut, for photos, video frames and heatmaps alike: its
    input size (height, width), margin and alignment, read from the model's metadata
    (`CropRule.of(spec)`), so that a new input size changes one place."""

    input_size: tuple[int, int] = (CROP_SIZE[1], CROP_SIZE[0])  # (height, width)
    margin: float = DEFAULT_MARGIN
    align: bool = False

    @classmethod
    def of(cls, spec: object) -> CropRule:
        """The rule of a `modeling.spec.ModelSpec` (its input_size, face_margin, face_align)."""
        height, width = spec.input_size  # type: ignore[attr-defined]
        return cls((int(height), int(width)), float(spec.face_margin), bool(spec.face_align))  # type: ignore[attr-defined]

    def crop(self, image: Image.Image, face: Face) -> np.ndarray:
        """The model's uint8 (H, W, 3) input for one face."""
        from preprocessing.tensor import to_input_array

        height, width = self.input_size
        cut = crop_face(image, face, size=(width, height), margin=self.margin, align=self.align)
        return to_input_array(cut, self.input_size)

    def crops(self, image: Image.Image, faces: Sequence[Face]) -> np.ndarray:
        """uint8 (k, H, W, 3): one crop per face, in order."""
        if not faces:
            return np.zeros((0, *self.input_size, 3), np.uint8)
        return np.stack([self.crop(image, face) for face in faces])

    def square(self, face: Face) -> list[int]:
        """[left, top, side, side]: the square of `face`'s crop in the image's pixels (before
        the rotation, when aligned), which the crop's heatmap is laid over."""
        return list(crop_square(face, margin=self.margin, align=self.align).box)


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
