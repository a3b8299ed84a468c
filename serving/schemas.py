"""Request and response bodies of the public routes (they make the OpenAPI spec).

Every field of the legacy Flask service is kept (CONTRACT.md); new ones are marked as such.
Labels are lower case everywhere: "real" or "fake"."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Label = Literal["real", "fake"]


class DebugInfo(BaseModel):
    input_shape: list[int] = Field(description="Shape of the tensor sent to the model, e.g. [1, 160, 160, 3]")
    raw_prediction: float = Field(description="The model's raw sigmoid output; see output_meaning")
    output_meaning: str = Field(description="What the raw output is the probability of (new)")


class FaceResult(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in pixels of the upright image")
    detector_score: float
    prediction: Label
    confidence: float = Field(description="Probability of this face's label")
    fake_probability: float


class DetectResponse(BaseModel):
    """The top-level verdict describes the image: its most-fake face (or the whole image)."""

    prediction: Label
    confidence: float = Field(description="Probability of the predicted label, 0..1")
    processing_time: float = Field(description="Seconds spent on the request in the server")
    debug_info: DebugInfo
    fake_probability: float = Field(description="P(fake) of the image: its most-fake face (new)")
    model_tag: str = Field(description="The served model (new)")
    face_detected: bool = Field(description="False: no face found, the whole image was judged (new)")
    faces: list[FaceResult] = Field(description="Every face judged, largest first (new)")


class AugmentedPrediction(BaseModel):
    augmentation_type: str
    prediction: Label
    confidence: float
    fake_probability: float = Field(description="P(fake) for this variant (new)")


class AugmentedDebugInfo(BaseModel):
    predictions_below_threshold: int = Field(
        description="Variants judged fake (for a P(real) model: raw output below the threshold)"
    )
    total_predictions: int
    threshold: float = Field(description="The image is fake when P(fake) >= threshold")
    input_size: list[int] = Field(description="[height, width] of the model input")


class AugmentedResponse(BaseModel):
    """Legacy fields describe the deciding (most-fake) face; `faces` has each face's vote."""

    original_prediction: DetectResponse
    augmented_predictions: list[AugmentedPrediction]
    consensus_prediction: Label = Field(description="Majority vote of the seven variants")
    average_confidence: float = Field(
        description="Mean probability of the consensus label over the seven variants"
    )
    processing_time: float
    debug_info: AugmentedDebugInfo
    face_detected: bool = Field(description="False: no face found, the whole image was judged (new)")
    faces: list[FaceResult] = Field(
        description="Per face: the seven variants' consensus, mean confidence and mean P(fake) (new)"
    )


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
    threshold: float
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


class ErrorResponse(BaseModel):
    error: str = Field(description="The legacy message (exact old strings for MISSING_FILE, EMPTY_FILE)")
    error_code: str
    timestamp: str
    details: str | None = Field(None, description="More on the error, where there is more to say")


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
