"""The data path of one request:
upload -> decode/validate -> faces -> crops (uint8 tensors) -> model (batched) -> verdicts.

The model call is injected (`predict`), so the same pipeline runs behind the HTTP service
(where it reaches the batched model service) and in-process (benchmarks). The CPU-bound
part (`prepare`) runs in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from modeling.spec import ModelSpec, Verdict
from preprocessing import errors
from preprocessing import faces as face_defaults
from preprocessing.augment import VARIANTS, tta_variants
from preprocessing.decode import DecodeLimits, decode_upload
from preprocessing.faces import Face, FaceDetector, clip_box, crop_face
from preprocessing.tensor import to_input_array
from serving.observability import record_verdict
from serving.schemas import (
    AugmentedDebugInfo,
    AugmentedPrediction,
    AugmentedResponse,
    DebugInfo,
    DetectResponse,
    FaceResult,
)

T = TypeVar("T")

# uint8 (N, H, W, 3) -> raw sigmoid outputs (N,)
Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class FaceSettings:
    """How faces are found for a request (the server's settings)."""

    require: bool = False  # no face: 422 NO_FACE
    max_faces: int = face_defaults.DEFAULT_MAX_FACES
    min_score: float = face_defaults.DEFAULT_MIN_SCORE
    max_side: int = face_defaults.DEFAULT_MAX_SIDE  # detection runs on a copy at most this large


@dataclass(frozen=True)
class Prepared:
    """What the model is shown: one crop per face, or the whole image when there is none."""

    crops: list[np.ndarray]  # (H, W, 3) uint8 each
    faces: list[Face]  # empty: the single crop is the whole image
    image_size: tuple[int, int]  # (width, height) of the decoded, upright image


class DetectionPipeline:
    def __init__(
        self,
        spec: ModelSpec,
        model_tag: str,
        limits: DecodeLimits,
        predict: Predict,
        detector: FaceDetector | None = None,
        faces: FaceSettings | None = None,
        decode_concurrency: int = 2,
    ) -> None:
        self.spec = spec
        self.model_tag = model_tag
        self.limits = limits
        self.predict = predict
        self.detector = detector
        self.faces = faces or FaceSettings()
        # Decoding runs on a few threads of its own: a large image takes ~3 bytes a pixel,
        # several times over, and glibc keeps what a thread freed in that thread's arena, so
        # the number of decoding threads bounds the memory (16 concurrent 40 MP PNGs took the
        # API worker to 2.5 GB on the shared default executor).
        self._executor = ThreadPoolExecutor(max_workers=decode_concurrency, thread_name_prefix="decode")

    async def _off_loop(self, func: Callable[..., T], *args: object) -> T:
        # The request's context (its id, for log lines) goes along into the worker thread.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, func, *args)

    def close(self) -> None:
        """Stop the decode threads (the service's shutdown hook)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def prepare(self, data: bytes, require_face: bool | None = None) -> Prepared:
        """Decode, find faces, crop. CPU-bound: call it off the event loop. Raises InputError."""
        height, width = self.spec.input_size
        if self.detector is None:
            image = decode_upload(data, self.limits, draft_size=(width, height))
            return Prepared([to_input_array(image, self.spec.input_size)], [], image.size)
        # Large JPEGs decode straight to about twice the detection size: enough for the
        # detector and for crops of small faces, at a fraction of a full decode.
        side = 2 * self.faces.max_side
        image = decode_upload(data, self.limits, draft_size=(side, side))
        faces = self.detector.detect(
            image,
            max_side=self.faces.max_side,
            min_score=self.faces.min_score,
            max_faces=self.faces.max_faces,
        )
        if faces:
            crops = [
                to_input_array(
                    crop_face(
                        image,
                        face,
                        size=(width, height),
                        margin=self.spec.face_margin,
                        align=self.spec.face_align,
                    ),
                    self.spec.input_size,
                )
                for face in faces
            ]
            return Prepared(crops, faces, image.size)
        if self.faces.require if require_face is None else require_face:
            raise errors.no_face()
        return Prepared([to_input_array(image, self.spec.input_size)], [], image.size)

    def _face_results(self, prepared: Prepared, verdicts: list[Verdict]) -> list[FaceResult]:
        return [
            FaceResult(
                box=list(clip_box(face.box, prepared.image_size)),
                detector_score=face.score,
                prediction=verdict.prediction,
                confidence=verdict.confidence,
                fake_probability=verdict.fake_probability,
            )
            for face, verdict in zip(prepared.faces, verdicts, strict=False)
        ]

    def _detect_response(self, prepared: Prepared, verdicts: list[Verdict], started: float) -> DetectResponse:
        # The image is as fake as its most-fake face.
        deciding = max(verdicts, key=lambda v: v.fake_probability)
        return DetectResponse(
            prediction=deciding.prediction,
            confidence=deciding.confidence,
            processing_time=time.perf_counter() - started,
            debug_info=DebugInfo(
                input_shape=[len(prepared.crops), *prepared.crops[0].shape],
                raw_prediction=deciding.raw,
                output_meaning=self.spec.output_meaning,
            ),
            fake_probability=deciding.fake_probability,
            model_tag=self.model_tag,
            face_detected=bool(prepared.faces),
            faces=self._face_results(prepared, verdicts),
        )

    async def detect(self, data: bytes, require_face: bool | None = None) -> DetectResponse:
        started = time.perf_counter()
        prepared = await self._off_loop(self.prepare, data, require_face)
        raw = await self.predict(np.stack(prepared.crops))  # all faces: one call, batched
        response = self._detect_response(prepared, [self.spec.judge(float(r)) for r in raw], started)
        record_verdict("detect", response.prediction, len(prepared.faces))
        return response

    def augmented_batch(self, data: bytes, require_face: bool | None = None) -> tuple[Prepared, np.ndarray]:
        """The seven variants of every crop, crop-major: (7 * crops, H, W, 3)."""
        prepared = self.prepare(data, require_face)
        variants = [
            np.asarray(variant, dtype=np.uint8)
            for crop in prepared.crops
            for _, variant in tta_variants(Image.fromarray(crop))
        ]
        return prepared, np.stack(variants)

    async def detect_augmented(self, data: bytes, require_face: bool | None = None) -> AugmentedResponse:
        started = time.perf_counter()
        prepared, batch = await self._off_loop(self.augmented_batch, data, require_face)
        raw = await self.predict(batch)  # every variant of every face as one batch
        names = list(VARIANTS)
        per_crop = [
            [self.spec.judge(float(r)) for r in raw[i : i + len(names)]]
            for i in range(0, len(raw), len(names))
        ]
        votes = [self._vote(verdicts) for verdicts in per_crop]
        deciding = max(range(len(votes)), key=lambda i: votes[i][2])
        consensus, average, _ = votes[deciding]
        verdicts = per_crop[deciding]
        fakes = sum(v.prediction == "fake" for v in verdicts)
        consensus_faces = [
            Verdict(label, confidence, p_fake, float("nan")) for label, confidence, p_fake in votes
        ]
        record_verdict("detect_augmented", consensus, len(prepared.faces))
        return AugmentedResponse(
            original_prediction=self._detect_response(prepared, [v[0] for v in per_crop], started),
            augmented_predictions=[
                AugmentedPrediction(
                    augmentation_type=name,
                    prediction=v.prediction,
                    confidence=v.confidence,
                    fake_probability=v.fake_probability,
                )
                for name, v in zip(names[1:], verdicts[1:], strict=True)
            ],
            consensus_prediction=consensus,
            average_confidence=average,
            processing_time=time.perf_counter() - started,
            debug_info=AugmentedDebugInfo(
                predictions_below_threshold=fakes,
                total_predictions=len(verdicts),
                threshold=self.spec.threshold,
                input_size=list(self.spec.input_size),
            ),
            face_detected=bool(prepared.faces),
            faces=self._face_results(prepared, consensus_faces),
        )

    @staticmethod
    def _vote(verdicts: list[Verdict]) -> tuple[str, float, float]:
        """Majority label, mean probability of that label, mean P(fake)."""
        fakes = sum(v.prediction == "fake" for v in verdicts)
        label = "fake" if fakes * 2 > len(verdicts) else "real"
        p_fake = float(np.mean([v.fake_probability for v in verdicts]))
        return label, (p_fake if label == "fake" else 1.0 - p_fake), p_fake
