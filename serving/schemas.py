"""Request and response bodies of the public routes (they make the OpenAPI spec).

Every field of the legacy Flask service is kept with its legacy value and casing (CONTRACT.md):
`prediction` is "real"/"fake", `consensus_prediction` "REAL"/"FAKE". New fields are marked so.
Probabilities are served with the decision at 0.5 (ModelSpec.logit)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from serving.provenance import Provenance

Label = Literal["real", "fake"]
Verdict = Literal["likely_fake", "uncertain", "likely_real", "no_face"]
# photo: faces were looked for (`faces`); face_crop: the upload is about the model's input size,
# a crop around a face, judged as one; whole_image: face detection is off (a server setting).
InputKind = Literal["photo", "face_crop", "whole_image"]

VERDICT = (
    "What a person may conclude (new): likely_fake / likely_real outside the model's uncertain band "
    "of P(fake), uncertain inside it, no_face when nothing was judged"
)
# Provenance (serving/provenance.py, README "Provenance"): what the file declares, beside the model.
PROVENANCE = "What the file itself declares about its making: Content Credentials, XMP, watermarks (new)"
REASON = (
    "Why the verdict is not the model's (new): a valid manifest from a trusted signer declares AI "
    "generation; null when the verdict is the model's"
)
MODEL_VERDICT = "The model's own verdict, whatever the provenance says (new)"


class DebugInfo(BaseModel):
    input_shape: list[int] = Field(description="Shape of the tensor sent to the model, e.g. [1, 160, 160, 3]")
    raw_prediction: float | None = Field(
        description="The model's raw sigmoid output for the deciding face (null: nothing was judged)"
    )
    output_meaning: str = Field(description="What the raw output is the probability of (new)")


class Heatmap(BaseModel):
    """Where in the face the model looked for its "fake" decision (Grad-CAM), as a PNG to lay
    over the photo, semi-transparent, at `box` (the square the face crop was cut from)."""

    png: str = Field(description="Base64 RGBA PNG (64 x 64): colour and opacity grow with the evidence")
    box: list[int] = Field(description="[x, y, side, side] in image pixels; may extend past the edges")
    map_size: list[int] = Field(description="[rows, columns] of the model's own map (its layer's cells)")


class Explanation(BaseModel):
    method: str = Field(description="How the heatmaps were made")
    model: str = Field(description="Which model the heatmaps are of; the verdicts are the served model's")


class FaceResult(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in pixels of the upright image")
    detector_score: float | None = Field(
        description="The face detector's score (null for a face crop upload)"
    )
    prediction: Label
    confidence: float = Field(description="Probability of this face's label, >= 0.5")
    fake_probability: float = Field(description="P(fake) of this face; fake when >= 0.5")
    verdict: Verdict = Field(description=VERDICT)
    heatmap: Heatmap | None = Field(None, description="With explain=true (new)")


class DetectResponse(BaseModel):
    """The top-level verdict describes the image: its most-fake face, against a bar raised with
    the number of faces, so that a real group photo is not called fake for one face in twenty."""

    prediction: Label
    confidence: float = Field(description="Probability of the predicted label, 0.5..1")
    processing_time: float = Field(description="Seconds spent on the request in the server")
    debug_info: DebugInfo
    fake_probability: float | None = Field(
        description="P(fake) of the image; fake when >= 0.5; null when no face was judged (new)"
    )
    verdict: Verdict = Field(description=VERDICT)
    model_tag: str = Field(description="The served model (new)")
    face_detected: bool = Field(description="A face was found in the upload (new)")
    input_kind: InputKind = Field(description="How the upload was judged (new)")
    face_count: int = Field(description="Faces judged (new)")
    fake_faces: int = Field(description="Faces whose own verdict is fake (new)")
    image_size: list[int] = Field(description="[width, height] of the upright image, as `box` reads it (new)")
    faces: list[FaceResult] = Field(description="Every face judged, largest first (new)")
    explanation: Explanation | None = Field(None, description="With explain=true (new)")
    provenance: Provenance | None = Field(None, description=PROVENANCE)
    reason: str | None = Field(None, description=REASON)
    model_verdict: Verdict | None = Field(None, description=MODEL_VERDICT)


class AugmentedPrediction(BaseModel):
    augmentation_type: str
    prediction: Label
    confidence: float
    fake_probability: float = Field(description="P(fake) for this variant (new)")


class AugmentedDebugInfo(BaseModel):
    predictions_below_threshold: int = Field(
        description="Variants judged fake (the old service counted P(real) < 0.5)"
    )
    total_predictions: int
    threshold: float = Field(description="The decision point of the served P(fake): 0.5")
    input_size: list[int] = Field(description="[height, width] of the model input")


class AugmentedFace(FaceResult):
    """A face's seven variants: their consensus, mean confidence and mean P(fake)."""

    variants_fake: int = Field(description="Variants judged fake, of 7 (new)")
    spread: float = Field(description="Standard deviation of the variants' P(fake) (new)")


class AugmentedResponse(BaseModel):
    """Legacy fields describe the deciding (most-fake) face; `faces` has each face's vote."""

    original_prediction: DetectResponse
    augmented_predictions: list[AugmentedPrediction]
    consensus_prediction: Literal["REAL", "FAKE"] = Field(
        description="Majority vote of the seven variants, upper case as the old service sent it"
    )
    consensus: Label = Field(description="The same, lower case like every other label (new)")
    average_confidence: float = Field(
        description="Mean probability of the consensus label over the seven variants"
    )
    processing_time: float
    debug_info: AugmentedDebugInfo
    verdict: Verdict = Field(description=VERDICT + "; uncertain when the variants split")
    face_detected: bool = Field(description="A face was found in the upload (new)")
    faces: list[AugmentedFace] = Field(description="Per face: its seven variants' vote (new)")
    provenance: Provenance | None = Field(None, description=PROVENANCE)
    reason: str | None = Field(None, description=REASON)
    model_verdict: Verdict | None = Field(None, description=MODEL_VERDICT)


class ErrorResponse(BaseModel):
    error: str = Field(description="The legacy message (exact old strings for MISSING_FILE, EMPTY_FILE)")
    error_code: str
    timestamp: str
    details: str | None = Field(None, description="More on the error, where there is more to say")


class VideoStats(BaseModel):
    duration_s: float
    fps: float
    width: int = Field(description="Upright frame width (after the rotation tag)")
    height: int
    rotation: int = Field(description="Degrees the stored frames were turned to be upright")
    codec: str
    container: str
    frames_sampled: int
    frames_decoded: int
    frames_failed: int
    strategy: str = Field(description="How the sampled frames were reached: seek or one pass")
    full_face_detections: int = Field(
        0,
        description="Sampled frames the full face detector ran on; on the others each face was "
        "looked for near its last box, plus a glance at the whole frame for a face entering",
    )


class VideoTimings(BaseModel):
    decode_s: float = Field(description="Probing and decoding the sampled frames (in the worker)")
    faces_s: float = Field(description="Face detection and crops (in the worker)")
    model_s: float = Field(
        description="Wall time with this video's crops at the model (overlapping the decoding; "
        "batches at the model at once count once)"
    )
    total_s: float


class TrackFrameResult(BaseModel):
    time: float = Field(description="Seconds from the start of the video")
    box: list[int] = Field(description="[x, y, width, height] in upright frame pixels")
    fake_probability: float


class TrackResult(BaseModel):
    """One face followed across the sampled frames, judged from all of them."""

    track_id: int
    prediction: Label
    fake_probability: float = Field(description="Mean P(fake) over the track's frames")
    fake_share: float = Field(description="Share of its frames judged fake")
    verdict: Verdict = Field(description=VERDICT)
    frame_count: int
    counted: bool = Field(description="Long enough to take part in the video's verdict")
    start_s: float
    end_s: float
    frames: list[TrackFrameResult]
    heatmap: Heatmap | None = Field(
        None, description="With explain=true: on the track's most-fake frame (new)"
    )
    heatmap_time: float | None = Field(None, description="The time of that frame (new)")


class VideoResponse(BaseModel):
    """The video by its tracks: the most-fake counted track, against the bar for that many."""

    prediction: Label
    confidence: float
    fake_probability: float | None = Field(description="P(fake) of the video; null when no face was seen")
    verdict: Verdict = Field(description=VERDICT)
    processing_time: float
    model_tag: str
    face_detected: bool
    track_count: int
    fake_tracks: int = Field(description="Tracks whose own verdict is fake")
    video: VideoStats
    timings: VideoTimings
    tracks: list[TrackResult]
    provenance: Provenance | None = Field(None, description=PROVENANCE + "; MP4/MOV Content Credentials")
    reason: str | None = Field(None, description=REASON)
    model_verdict: Verdict | None = Field(None, description=MODEL_VERDICT)


class JobResponse(BaseModel):
    """A video job: its state, its progress and, once done, its result."""

    job_id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    frames_done: int
    frames_total: int
    created_at: str
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="When the result is deleted")
    error: ErrorResponse | None = Field(None, description="Why it failed, in the legacy error shape")
    result: VideoResponse | None = None


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    model_loaded: bool
    timestamp: str = Field(description="ISO 8601, UTC")
    error: str | None = None
    error_code: str | None = Field(None, description="MODEL_UNAVAILABLE when unhealthy (new)")


class ModelInfoResponse(BaseModel):
    tag: str
    input_shape: list[int | None] = Field(description="The served network's input shape")
    image_size: list[int] = Field(description="[height, width] images are resized to")
    model_path: str
    labels: list[Label] = Field(description="Class index to label")
    output_meaning: str
    threshold: float = Field(description="The decision point of the served P(fake): 0.5")
    model_threshold: float = Field(
        description="The model's own threshold on its P(fake), mapped onto 0.5 by a change of prior (new)"
    )
    verdict_bands: dict[str, float] = Field(description="P(fake) bands of likely_real / likely_fake (new)")
    group: dict[str, Any] = Field(description="The rule for photos of several faces (new)")
    calibration: dict[str, Any] = Field(description="How the served probability was calibrated (new)")
    detector: str = Field(description="The face detector the model's training crops came from (new)")
    backbone: str = Field("", description="The network the classifier is built on, e.g. clip-vit-b16 (new)")
    precision: str = Field(description="fp32, bf16, fp16 or int8: what the model service runs (new)")
    runtime: str = Field(description="tensorflow, litert or onnxruntime (new)")
    acceptance: dict[str, Any] | None = Field(
        None, description="The gate the served precision passed at import, against fp32 (new; null for fp32)"
    )
    normalization: str
    placeholder: bool = Field(description="True for an untrained stand-in model")
    description: str
    layer_count: int
    layers: list[str]
    parameters: int
    metrics: dict[str, Any]
    card: dict[str, Any]
    source: dict[str, Any]
    frameworks: dict[str, str]


class ModelStatus(BaseModel):
    """The model service's answer to `status`: can it serve, and if not, why."""

    ready: bool
    error: str | None = None


class ModelDescription(BaseModel):
    """What the loaded network says of itself (the model service's `describe`)."""

    input_shape: list[int | None]
    layers: list[str]
    parameters: int
    path: str
    served: dict[str, Any] = Field(default_factory=dict, description="runtime, precision, file, threads")
