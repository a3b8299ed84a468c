"""The data path of one request:
upload -> decode/validate -> faces -> crops (uint8 tensors) -> model (batched) -> verdicts.

The model call is injected (`predict`), so the same pipeline runs behind the HTTP service
(where it reaches the batched model service) and in-process (benchmarks). The CPU-bound
part (`prepare`) runs in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from modeling.explain import heatmap_png, unpack_maps
from modeling.spec import DECISION_POINT, ModelSpec, Verdict
from preprocessing import errors
from preprocessing import faces as face_defaults
from preprocessing.augment import VARIANTS, tta_variants
from preprocessing.decode import DecodeLimits, decode_upload
from preprocessing.faces import CropRule, Face, FaceDetector, clip_box
from preprocessing.tensor import to_input_array
from serving.observability import record_verdict
from serving.provenance import Provenance, ProvenanceReader
from serving.provenance import reason as provenance_reason
from serving.schemas import (
    AugmentedDebugInfo,
    AugmentedFace,
    AugmentedPrediction,
    AugmentedResponse,
    DebugInfo,
    DetectResponse,
    Explanation,
    FaceResult,
    Heatmap,
    InputKind,
)
from serving.verdicts import ImageJudgement, judge_faces, vote

T = TypeVar("T")

# uint8 (N, H, W, 3) -> raw sigmoid outputs (N,); Explain: -> maps packed by modeling.explain
Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]
Explain = Callable[[np.ndarray], Awaitable[np.ndarray]]
EXPLANATION = Explanation(
    method="Grad-CAM of the decision toward fake (modeling/explain.py), positive evidence only",
    model="the served network's float32 Keras weights (the verdicts are the served precision's: model_info)",
)


@dataclass(frozen=True)
class FaceSettings:
    """How faces are found for a request (the server's settings; the detector has its own)."""

    require: bool | None = None  # no face: 422 NO_FACE (True), an answer (False), by route (None)
    max_faces: int = face_defaults.DEFAULT_MAX_FACES

    def required(self, asked: bool | None, *, legacy: bool) -> bool:
        """Whether a photo with no face answers 422 NO_FACE: as the request asked (its form
        field `require_face`), else as the server is set, else by route: yes on the legacy
        routes (their clients read any 200 as a verdict: the old front end shows it as "REAL
        50 %"), no on the Python client's routes (whose answer says `verdict: "no_face"`)."""
        if asked is not None:
            return asked
        return legacy if self.require is None else self.require


# Large JPEGs decode straight to at least this size: enough for the detectors (BlazeFace
# searches a 576 px copy, MTCNN a 640 px one) and for crops of small faces, at a fraction of
# a full decode.
DRAFT_SIDE = 1280


@dataclass(frozen=True)
class Prepared:
    """What the model is shown: one crop per face, the upload itself when it is a face crop (or
    face detection is off), or nothing when no face was found."""

    crops: list[np.ndarray]  # (H, W, 3) uint8 each
    faces: list[Face]  # the faces the crops were cut from (empty unless kind is "photo")
    image_size: tuple[int, int]  # (width, height) of the decoded, upright image
    kind: InputKind
    provenance: Provenance | None = None  # what the file declares (serving/provenance.py)


# An upload at most this large on its longer side, and about square, is a crop the client cut
# around one face: it is judged as one, as it is, face found or not. The old front end sends its
# crop at 160x160 (CONTRACT.md); about twice that leaves room for clients that crop a little
# larger. A fact of the clients, not of the model: a model with a larger input does not make
# larger photos face crops.
FACE_CROP_MAX_SIDE = 320
FACE_CROP_MAX_ASPECT = 1.5


def is_face_crop(size: tuple[int, int]) -> bool:
    """Whether an upload of `size` (width, height) is judged as a face crop."""
    width, height = size
    longest, shortest = max(width, height), min(width, height)
    return longest <= FACE_CROP_MAX_SIDE and longest <= FACE_CROP_MAX_ASPECT * shortest


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
        explain: Explain | None = None,
        provenance: ProvenanceReader | None = None,
    ) -> None:
        self.spec = spec
        self.crop_rule = CropRule.of(spec)  # the one face -> crop -> heatmap path, as videos use it
        self.explain = explain
        self.provenance = provenance
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
        """Decode, find faces, crop. CPU-bound: call it off the event loop. Raises InputError
        (422 NO_FACE for a photo with no face when `require_face`; None: the Python client's
        routes' default, `FaceSettings.required`)."""
        height, width = self.spec.input_size
        if self.detector is None:
            image = decode_upload(data, self.limits, draft_size=(width, height))
            return Prepared(
                [to_input_array(image, self.spec.input_size)], [], image.size, "whole_image",
                self._provenance(data, image),
            )  # fmt: skip
        image = decode_upload(data, self.limits, draft_size=(DRAFT_SIDE, DRAFT_SIDE))
        provenance = self._provenance(data, image)
        if is_face_crop(image.size):
            crop = to_input_array(image, self.spec.input_size)
            return Prepared([crop], [], image.size, "face_crop", provenance)
        faces = self.detector.detect(image, max_faces=self.faces.max_faces)
        # A trusted declaration of AI generation is a verdict even with no face (README, "Provenance").
        decided = provenance is not None and provenance.decides
        if not faces and self.faces.required(require_face, legacy=False) and not decided:
            raise errors.no_face(FACE_CROP_MAX_SIDE)
        crops = list(self.crop_rule.crops(image, faces))
        return Prepared(crops, faces, image.size, "photo", provenance)

    def _provenance(self, data: bytes, image: Image.Image) -> Provenance | None:
        """What the upload declares (it never raises: a hostile manifest is reported invalid)."""
        return self.provenance.read_image(data, image) if self.provenance is not None else None

    def _boxes(self, prepared: Prepared) -> list[tuple[list[int], float | None]]:
        """(box, detector score) of each crop: the face's, or the whole upload's."""
        if prepared.kind != "photo":  # the upload itself was the crop
            width, height = prepared.image_size
            return [([0, 0, width, height], None)]
        return [(list(clip_box(face.box, prepared.image_size)), face.score) for face in prepared.faces]

    async def _heatmaps(self, prepared: Prepared, crops: np.ndarray) -> list[Heatmap]:
        """One heatmap per crop, from one batched call, each with the square it lies over."""
        if self.explain is None:
            raise errors.InputError(422, "EXPLAIN_UNAVAILABLE", "This server computes no heatmaps")
        packed = await self.explain(crops)
        if prepared.kind == "photo":
            squares = [self.crop_rule.square(face) for face in prepared.faces]
        else:  # the whole upload was the crop (stretched to the model's input)
            squares = [[0, 0, *prepared.image_size]]
        maps = await self._off_loop(
            lambda: [(cells, heatmap_png(laid)) for cells, laid in unpack_maps(packed)]
        )
        return [
            Heatmap(png=base64.b64encode(png).decode(), box=box, map_size=list(cells))
            for (cells, png), box in zip(maps, squares, strict=True)
        ]

    def _detect_response(
        self,
        prepared: Prepared,
        judged: ImageJudgement | None,
        started: float,
        heatmaps: list[Heatmap] | None = None,
    ) -> DetectResponse:
        """The image's answer; `judged` None: no face, nothing was shown to the model."""
        height, width = self.spec.input_size
        image = judged.image if judged else None
        model_verdict = image.verdict if image else "no_face"
        # A trusted signed declaration of AI generation decides: the legacy fields say "fake" at
        # 1.0 (the file's own word, not a probability); P(fake) stays the model's.
        why = provenance_reason(prepared.provenance)
        return DetectResponse(
            # No face: no evidence either way, so the legacy label is the one that accuses no
            # one, at the confidence of a coin; `verdict` says why (README, "No face").
            prediction="fake" if why else image.prediction if image else "real",
            confidence=1.0 if why else image.confidence if image else 0.5,
            processing_time=time.perf_counter() - started,
            debug_info=DebugInfo(
                input_shape=[len(prepared.crops), height, width, 3],
                raw_prediction=image.raw if image else None,
                output_meaning=self.spec.output_meaning,
            ),
            fake_probability=image.fake_probability if image else None,
            verdict="likely_fake" if why else model_verdict,
            model_tag=self.model_tag,
            face_detected=bool(prepared.faces),
            input_kind=prepared.kind,
            face_count=len(judged.faces) if judged else 0,
            fake_faces=judged.fake_faces if judged else 0,
            image_size=list(prepared.image_size),
            faces=[
                _face_result(box, score, verdict, heatmaps[i] if heatmaps else None)
                for i, ((box, score), verdict) in enumerate(
                    zip(self._boxes(prepared), judged.faces, strict=True)
                )
            ]
            if judged
            else [],
            explanation=EXPLANATION if heatmaps else None,
            provenance=prepared.provenance,
            reason=why,
            model_verdict=model_verdict,
        )

    async def detect(
        self, data: bytes, require_face: bool | None = None, explain: bool = False
    ) -> DetectResponse:
        started = time.perf_counter()
        prepared = await self._off_loop(self.prepare, data, require_face)
        judged, heatmaps = None, None
        if prepared.crops:
            crops = np.stack(prepared.crops)
            if explain:  # the verdicts stay the served model's; the maps come beside them
                raw, heatmaps = await asyncio.gather(self.predict(crops), self._heatmaps(prepared, crops))
            else:
                raw = await self.predict(crops)  # all faces: one call, batched
            judged = judge_faces(self.spec, [float(r) for r in raw])
        response = self._detect_response(prepared, judged, started, heatmaps)
        record_verdict("detect", response.verdict, len(prepared.faces))
        return response

    def augmented_batch(self, data: bytes, require_face: bool | None = None) -> tuple[Prepared, np.ndarray]:
        """The seven variants of every crop, crop-major: (7 * crops, H, W, 3)."""
        prepared = self.prepare(data, require_face)
        variants = [
            np.asarray(variant, dtype=np.uint8)
            for crop in prepared.crops
            for _, variant in tta_variants(Image.fromarray(crop))
        ]
        height, width = self.spec.input_size
        return prepared, np.stack(variants) if variants else np.zeros((0, height, width, 3), np.uint8)

    async def detect_augmented(
        self, data: bytes, require_face: bool | None = None, explain: bool = False
    ) -> AugmentedResponse:
        started = time.perf_counter()
        prepared, batch = await self._off_loop(self.augmented_batch, data, require_face)
        if not prepared.crops:
            response = self._no_face_augmented(prepared, started)
            record_verdict("detect_augmented", response.verdict, 0)
            return response
        names = list(VARIANTS)
        heatmaps = None
        if explain:  # maps of the original crops, beside the variants' batch
            scored, heatmaps = await asyncio.gather(
                self.predict(batch), self._heatmaps(prepared, np.stack(prepared.crops))
            )
        else:
            scored = await self.predict(batch)  # every variant of every face: one batch
        raw = [float(r) for r in scored]
        per_crop = [raw[i : i + len(names)] for i in range(0, len(raw), len(names))]
        # Each face's own vote; the legacy fields follow the most-fake face, judged against the
        # bar for a photo of this many faces (as detect judges the image).
        votes = [vote(self.spec, crop) for crop in per_crop]
        deciding = max(range(len(votes)), key=lambda i: votes[i].fake_probability)
        image = vote(self.spec, per_crop[deciding], self.spec.group_shift(len(votes)))
        why = provenance_reason(prepared.provenance)
        record_verdict("detect_augmented", "likely_fake" if why else image.verdict, len(prepared.faces))
        originals = judge_faces(self.spec, [crop[0] for crop in per_crop])
        return AugmentedResponse(
            original_prediction=self._detect_response(prepared, originals, started, heatmaps),
            augmented_predictions=[
                AugmentedPrediction(
                    augmentation_type=name,
                    prediction=v.prediction,
                    confidence=v.confidence,
                    fake_probability=v.fake_probability,
                )
                for name, v in zip(names[1:], image.variants[1:], strict=True)
            ],
            consensus_prediction="FAKE" if why or image.consensus == "fake" else "REAL",
            consensus="fake" if why else image.consensus,
            average_confidence=1.0 if why else image.average_confidence,
            processing_time=time.perf_counter() - started,
            debug_info=AugmentedDebugInfo(
                predictions_below_threshold=image.fakes,
                total_predictions=len(image.variants),
                threshold=DECISION_POINT,
                input_size=list(self.spec.input_size),
            ),
            verdict="likely_fake" if why else image.verdict,
            face_detected=bool(prepared.faces),
            provenance=prepared.provenance,
            reason=why,
            model_verdict=image.verdict,
            faces=[
                AugmentedFace(
                    box=box,
                    detector_score=score,
                    prediction=v.consensus,
                    confidence=v.average_confidence,
                    fake_probability=v.fake_probability,
                    verdict=v.verdict,
                    variants_fake=v.fakes,
                    spread=v.spread,
                    heatmap=heatmaps[i] if heatmaps else None,
                )
                for i, ((box, score), v) in enumerate(zip(self._boxes(prepared), votes, strict=True))
            ],
        )

    def _no_face_augmented(self, prepared: Prepared, started: float) -> AugmentedResponse:
        """No face, nothing judged: the legacy fields at their non-accusing values (see detect),
        unless the file's trusted provenance decides."""
        why = provenance_reason(prepared.provenance)
        return AugmentedResponse(
            original_prediction=self._detect_response(prepared, None, started),
            augmented_predictions=[],
            consensus_prediction="FAKE" if why else "REAL",
            consensus="fake" if why else "real",
            average_confidence=1.0 if why else 0.5,
            processing_time=time.perf_counter() - started,
            debug_info=AugmentedDebugInfo(
                predictions_below_threshold=0,
                total_predictions=0,
                threshold=DECISION_POINT,
                input_size=list(self.spec.input_size),
            ),
            verdict="likely_fake" if why else "no_face",
            face_detected=False,
            faces=[],
            provenance=prepared.provenance,
            reason=why,
            model_verdict="no_face",
        )


def _face_result(
    box: list[int], score: float | None, verdict: Verdict, heatmap: Heatmap | None
) -> FaceResult:
    return FaceResult(
        box=box,
        detector_score=score,
        prediction=verdict.prediction,
        confidence=verdict.confidence,
        fake_probability=verdict.fake_probability,
        verdict=verdict.verdict,
        heatmap=heatmap,
    )
