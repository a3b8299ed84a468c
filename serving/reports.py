"""Bodies of the health, model-info and job routes, from what the model service and the job
store report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from modeling.spec import DECISION_POINT, ModelSpec
from serving.errors import utc_timestamp
from serving.schemas import (
    ErrorResponse,
    HealthResponse,
    JobResponse,
    ModelDescription,
    ModelInfoResponse,
    VideoResponse,
)

# What health says when the model cannot serve: why (an exception's text, a path) is in the
# server log only.
NOT_READY = "The model cannot serve; the server log says why"


def health_report(ready: bool) -> HealthResponse:
    return HealthResponse(
        status="healthy" if ready else "unhealthy",
        model_loaded=ready,
        timestamp=utc_timestamp(),
        error=None if ready else NOT_READY,
        error_code=None if ready else "MODEL_UNAVAILABLE",
    )


def health_response(health: HealthResponse) -> JSONResponse:
    """The legacy health answer: 200, or 503 when the model cannot serve."""
    return JSONResponse(health.model_dump(exclude_none=True), status_code=200 if health.model_loaded else 503)


def job_report(status: Any, result: Any | None) -> JobResponse:
    """A video job's answer from its stored state (serving/jobs.JobStatus) and result."""

    def when(seconds: float | None) -> str | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()

    error = status.error
    return JobResponse(
        job_id=status.job_id,
        state=status.state,
        frames_done=status.done,
        frames_total=status.total,
        created_at=when(status.created_at) or "",
        finished_at=when(status.finished_at),
        expires_at=when(status.expires_at),
        error=ErrorResponse(
            error=error["message"], error_code=error["code"], timestamp=when(status.finished_at) or ""
        )
        if error
        else None,
        result=VideoResponse.model_validate(result) if result is not None else None,
    )


def model_info_report(spec: ModelSpec, tag: str, described: ModelDescription) -> ModelInfoResponse:
    """`described` is what the loaded network says of itself (FaceClassifier.describe); its
    `path` is the model's tag (the contract's `model_path` field), never a path on the server."""
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
        acceptance=described.served.get("acceptance"),
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
