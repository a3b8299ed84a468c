"""The data path of one request: upload -> decode/validate -> tensor -> model -> verdict.

The model call is injected (`predict`), so the same pipeline runs behind the HTTP service
(where it reaches the batched model service) and in-process (benchmarks)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import numpy as np
from PIL import Image

from modeling.spec import ModelSpec, Verdict
from preprocessing.augment import tta_variants
from preprocessing.decode import DecodeLimits, decode_upload
from preprocessing.tensor import to_input_array
from serving.schemas import (
    AugmentedDebugInfo,
    AugmentedPrediction,
    AugmentedResponse,
    DebugInfo,
    DetectResponse,
)

# uint8 (N, H, W, 3) -> raw sigmoid outputs (N,)
Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]


class DetectionPipeline:
    def __init__(self, spec: ModelSpec, model_tag: str, limits: DecodeLimits, predict: Predict):
        self.spec = spec
        self.model_tag = model_tag
        self.limits = limits
        self.predict = predict

    def decode(self, data: bytes) -> Image.Image:
        height, width = self.spec.input_size
        return decode_upload(data, self.limits, draft_size=(width, height))

    def tensor(self, data: bytes) -> np.ndarray:
        """Decode and resize: one (H, W, 3) uint8 array. CPU-bound: call it in a thread."""
        return to_input_array(self.decode(data), self.spec.input_size)

    def _result(self, verdict: Verdict, batch_shape: tuple[int, ...], started: float) -> DetectResponse:
        return DetectResponse(
            prediction=verdict.prediction,
            confidence=verdict.confidence,
            processing_time=time.perf_counter() - started,
            debug_info=DebugInfo(
                input_shape=list(batch_shape),
                raw_prediction=verdict.raw,
                output_meaning=self.spec.output_meaning,
            ),
            fake_probability=verdict.fake_probability,
            model_tag=self.model_tag,
        )

    async def detect(self, data: bytes) -> DetectResponse:
        started = time.perf_counter()
        batch = (await asyncio.to_thread(self.tensor, data))[np.newaxis]
        raw = await self.predict(batch)
        return self._result(self.spec.judge(float(raw[0])), batch.shape, started)

    def augmented_batch(self, data: bytes) -> tuple[list[str], np.ndarray]:
        image = Image.fromarray(self.tensor(data))
        names, variants = zip(*tta_variants(image), strict=True)
        return list(names), np.stack([np.asarray(v, dtype=np.uint8) for v in variants])

    async def detect_augmented(self, data: bytes) -> AugmentedResponse:
        started = time.perf_counter()
        names, batch = await asyncio.to_thread(self.augmented_batch, data)
        raw = await self.predict(batch)  # the seven variants as one batch
        verdicts = [self.spec.judge(float(r)) for r in raw]
        votes = Counter(v.prediction for v in verdicts)
        consensus = "fake" if votes["fake"] > votes["real"] else "real"
        average = float(
            np.mean([v.confidence if v.prediction == consensus else 1 - v.confidence for v in verdicts])
        )
        return AugmentedResponse(
            original_prediction=self._result(verdicts[0], (1, *batch.shape[1:]), started),
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
                predictions_below_threshold=votes["fake"],
                total_predictions=len(verdicts),
                threshold=self.spec.threshold,
                input_size=list(self.spec.input_size),
            ),
        )
