"""MTCNN (mtcnn 1.0.0 on TensorFlow) as a `preprocessing.faces.FaceDetector`.

Importing this module imports TensorFlow (mtcnn does): `preprocessing.detectors.load_detector`
imports it only when "mtcnn" is asked for.

Choices, measured on the face-api group photos, scikit-image's astronaut and the openpeople
portraits and emotion sheets (bench/face_detection.py):

* `MTCNN_MAX_SIDE = 640`: detection runs on a copy whose long side is at most 640 px. Recall on
  those photos (201 of 203 faces) was the same from 480 to 1920 px (the two misses, a profile
  and a face looking down, are missed at every size); a face is still found when its box is
  about 2 % of the long side (60 px in a 3000 px photo). 1024 px finds 40 px faces there but
  takes ~1.7x as long, 1920 px ~4x. Measured by face size on the face-api photos shrunk onto
  a canvas (bench/face_detection.py): 37 % of faces of 1.5-2 % of the long side found, 52 %
  of 2-2.5 %, 83 % of 2.5-4 %, 85-96 % above (profiles and faces looking down are missed).
* MTCNN's own thresholds stay at their defaults (P/R/O-Net 0.6/0.7/0.8, the paper's values)
  and `min_face_size` stays at 20: mtcnn 1.0.0 builds its image pyramid from the image size
  alone, so a larger `min_face_size` shrinks the last levels below PNet's 12 px window and the
  library then swallows the error and reports *no faces at all*. The smallest face is set by
  the max side instead.
* `MTCNN_MIN_SCORE = 0.9` on the final (O-Net) score: the false positives we saw (a dress
  pattern, a shelf behind a selfie) scored 0.83-0.93 and appeared only at some scales; true
  faces scored >= 0.92 except one face looking down (0.83-0.95).
* Compiled: mtcnn calls its P/R/O-Nets eagerly, layer by layer, and Python overhead was 70 % of
  detection time. Each network runs as one tf.function instead (one generic trace: the
  pyramid's shapes vary): 70 instead of 146 ms per fixture photo, identical faces. The
  compiled networks reach mtcnn through its public constructor arguments (stage instances
  given to `MTCNN(stages=...)`, each built with `model=`): nothing of mtcnn is reassigned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from mtcnn import MTCNN
from mtcnn.network.onet import ONet
from mtcnn.network.pnet import PNet
from mtcnn.network.rnet import RNet
from mtcnn.stages import StageONet, StagePNet, StageRNet
from mtcnn.stages.base import StageBase
from mtcnn.utils.tensorflow import load_weights
from PIL import Image

from preprocessing.faces import DEFAULT_MAX_FACES, LANDMARK_NAMES, Face, downscale, drop_nested

MTCNN_MAX_SIDE = 640
MTCNN_MIN_SCORE = 0.9

# MTCNN keyword arguments, pinned so a library default change cannot move our results.
# min_face_size must stay <= 20 with mtcnn 1.0.0 (see the module docstring).
MTCNN_PARAMS: dict[str, float] = {
    "min_face_size": 20,
    "scale_factor": 0.709,
    "threshold_pnet": 0.6,
    "threshold_rnet": 0.7,
    "threshold_onet": 0.8,
}


def compiled_network(network_class: type, weights: str) -> Callable[[Any], Any]:
    """One of mtcnn's networks with its packaged weights (as its stage builds it), as one
    tf.function with a generic trace."""
    network = network_class()
    network.build()
    network.set_weights(load_weights(weights))
    return tf.function(lambda x: network(x, training=False), reduce_retracing=True)


class CompiledPNet(StagePNet):
    """mtcnn's P-Net stage, run with a compiled network: the stage's own `__call__`, the
    network handed to the base class constructor instead of the eager Keras model."""

    def __init__(self) -> None:
        StageBase.__init__(
            self, stage_name="Stage PNET", stage_id=1, model=compiled_network(PNet, "pnet.lz4")
        )


class CompiledRNet(StageRNet):
    def __init__(self) -> None:
        StageBase.__init__(
            self, stage_name="Stage RNET", stage_id=2, model=compiled_network(RNet, "rnet.lz4")
        )


class CompiledONet(StageONet):
    def __init__(self) -> None:
        StageBase.__init__(
            self, stage_name="Stage ONET", stage_id=3, model=compiled_network(ONet, "onet.lz4")
        )


class MtcnnDetector:
    """MTCNN, loaded once (~2 s with the TensorFlow import; its weights ship in the wheel).

    `detect` may be called from several threads on one instance: it keeps no state between
    calls (tests/test_faces.py checks that concurrent calls give the sequential results).
    """

    name = "mtcnn"

    def __init__(
        self,
        *,
        max_side: int = MTCNN_MAX_SIDE,
        min_score: float = MTCNN_MIN_SCORE,
        compiled: bool = True,
        device: str = "CPU:0",
    ) -> None:
        if max_side < 1:
            raise ValueError("max_side must be >= 1")
        self.max_side, self.min_score = max_side, min_score
        stages = (
            [CompiledPNet(), CompiledRNet(), CompiledONet()] if compiled else "face_and_landmarks_detection"
        )
        self.mtcnn: Any = MTCNN(stages=stages, device=device)

    def detect(
        self,
        image: Image.Image,
        *,
        max_faces: int = DEFAULT_MAX_FACES,
        max_side: int | None = None,
        min_score: float | None = None,
    ) -> list[Face]:
        """Faces in an image, largest first (ties: higher score), at most `max_faces`.

        Large photos are searched on a copy whose long side is `max_side` (the detector's by
        default); boxes and landmarks are mapped back to `image`'s pixels.
        """
        max_side = self.max_side if max_side is None else max_side
        min_score = self.min_score if min_score is None else min_score
        if max_side < 1 or max_faces < 0:
            raise ValueError("max_side must be >= 1 and max_faces >= 0")
        if min(image.size) < 1:
            return []
        small, scale = downscale(image, max_side)
        rows = self.mtcnn.detect_faces(
            np.asarray(small),
            fit_to_image=False,  # keep boxes centred on faces cut by the border
            limit_boundaries_landmarks=False,
            box_format="xyxy",
            output_type="numpy",  # the "json" output rounds landmarks to whole pixels
            **MTCNN_PARAMS,
        )
        faces = [mtcnn_row_to_face(row, 1.0 / scale) for row in np.asarray(rows, dtype=np.float64)]
        faces = [face for face in faces if face.score >= min_score]
        faces.sort(key=lambda face: (-face.area, -face.score, face.box))
        return drop_nested(faces)[:max_faces]

    def detect_many(
        self, images: Sequence[Image.Image], *, max_faces: int = DEFAULT_MAX_FACES
    ) -> list[list[Face]]:
        """`detect` on each image. One at a time: mtcnn's own batch mode (a list of images) pads
        every image to the largest; on the ten fixture photos it found the same faces but took
        342 instead of 276 ms a photo (one run, a loaded 2-core machine)."""
        return [self.detect(image, max_faces=max_faces) for image in images]


def mtcnn_row_to_face(row: np.ndarray, factor: float) -> Face:
    """mtcnn 1.0.0's numpy row (image index, x1, y1, x2, y2, score, then the five landmark x's
    and the five y's in LANDMARK_NAMES order; tests check it against its json output), scaled
    by `factor` into a Face."""
    x1, y1, x2, y2 = (float(v) * factor for v in row[1:5])
    xs, ys = row[6:11] * factor, row[11:16] * factor
    landmarks = {name: (float(x), float(y)) for name, x, y in zip(LANDMARK_NAMES, xs, ys, strict=True)}
    box = (round(x1), round(y1), max(1, round(x2 - x1)), max(1, round(y2 - y1)))
    return Face(box=box, score=float(row[5]), landmarks=landmarks)
