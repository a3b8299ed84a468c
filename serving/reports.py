"""Bodies of the health and model-info routes, from what the model service reports."""

from __future__ import annotations

from modeling.spec import DECISION_POINT, ModelSpec
from serving.errors import utc_timestamp
from serving.schemas import HealthResponse, ModelDescription, ModelInfoResponse


def health_report(ready: bool, error: str | None) -> HealthResponse:
    return HealthResponse(
        status="healthy" if ready else "unhealthy",
        model_loaded=ready,
        timestamp=utc_timestamp(),
        error=error,
        error_code=None if ready else "MODEL_UNAVAILABLE",
    )


def model_info_report(spec: ModelSpec, tag: str, described: ModelDescription) -> ModelInfoResponse:
    """`described` is what the loaded network says of itself (FaceClassifier.describe)."""
    return ModelInfoResponse(
        tag=tag,
        input_shape=described.input_shape,
        image_size=list(spec.input_size),
        model_path=described.path,
        labels=list(spec.labels),
        output_meaning=spec.output_meaning,
        threshold=DECISION_POINT,
        model_threshold=spec.threshold,
        verdict_bands=spec.verdict_bands.model_dump(),
        group=spec.group.model_dump(),
        calibration=spec.calibration,
        detector=spec.detector,
        backbone=spec.backbone,
        precision=described.served.get("precision", spec.precision),
        runtime=described.served.get("runtime", spec.runtime),
        acceptance=spec.acceptance.model_dump() if spec.acceptance else None,
        normalization=spec.normalization,
        placeholder=spec.placeholder,
        description=spec.description,
        layer_count=len(described.layers),
        layers=described.layers,
        parameters=described.parameters,
        metrics=spec.metrics,
        card=spec.card,
        source=spec.source,
        frameworks=spec.frameworks,
    )
