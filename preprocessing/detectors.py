"""The face detectors by name: BlazeFace (no TensorFlow) or MTCNN (TensorFlow), each with its
own defaults (preprocessing/blazeface.py, preprocessing/mtcnn_detector.py), behind the one
interface of preprocessing.faces.FaceDetector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from preprocessing.faces import FaceDetector

DETECTORS: tuple[str, ...] = ("blazeface", "mtcnn")


def load_detector(
    name: str,
    *,
    model_dir: Path | None = None,
    min_score: float | None = None,
    max_side: int | None = None,
    tiles: str = "when_needed",
) -> FaceDetector:
    """A detector by name (one of DETECTORS), with its own defaults; load it once and share it.

    "blazeface" imports no TensorFlow; its model file comes from `model_dir` (the model store's
    copy, which `model_import.py` puts there) or is fetched into .cache/blazeface. "mtcnn"
    imports TensorFlow; `max_side` is its working size. `min_score`: the detector's own
    threshold unless given (the two score on different scales). `tiles` (BlazeFace):
    "when_needed" or "always" (BlazeFaceDetector's `tiles_when_needed`)."""
    score = {} if min_score is None else {"min_score": min_score}
    if name == "blazeface":
        from preprocessing.blazeface import DEFAULT_CACHE_DIR, BlazeFaceDetector

        if tiles not in ("when_needed", "always"):
            raise ValueError(f"tiles: 'when_needed' or 'always', not {tiles!r}")
        return BlazeFaceDetector(
            cache_dir=model_dir or DEFAULT_CACHE_DIR, tiles_when_needed=tiles == "when_needed", **score
        )
    if name == "mtcnn":
        from preprocessing.mtcnn_detector import MtcnnDetector

        return MtcnnDetector(**score, **({} if max_side is None else {"max_side": max_side}))
    raise ValueError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")


def warm_up(detector: FaceDetector) -> None:
    """One detection on noise in both orientations: MTCNN's tf.functions trace on first use
    (~2 s), which would otherwise land on the first request."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((640, 360), (360, 640))
    ]
    detector.detect_many(images)
