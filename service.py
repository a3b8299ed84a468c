"""Deepfake detection: a BentoML bundle with the legacy Flask service's HTTP contract.

Two services. `FaceClassifier` holds the network and runs it on adaptive batches;
`DeepfakeDetector` is the public API: it decodes uploads, sends uint8 tensors to the
classifier (requests from many clients merge into one batch) and answers in the legacy shape.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from modeling.spec import ModelSpec
from preprocessing.errors import InputError
from serving.access import AccessMiddleware
from serving.batching import use_greedy_batching
from serving.errors import LegacyHTTPMiddleware, error_response, input_error_response, overloaded_response
from serving.hardening import harden_multipart
from serving.observability import configure_logging, metrics
from serving.openapi import document_errors
from serving.pipeline import DetectionPipeline
from serving.reports import health_report, model_info_report
from serving.schemas import (
    AugmentedResponse,
    DetectResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfoResponse,
)
from serving.settings import SETTINGS

logger = logging.getLogger("deepfake")
harden_multipart()
configure_logging(SETTINGS.log_format)
if SETTINGS.batch_policy == "greedy":
    use_greedy_batching()

# Only these are retried once: the inter-service connection dropped, not a model fault.
RETRYABLE = (ConnectionError, TimeoutError, aiohttp.ClientConnectionError)


@bentoml.service(
    name="face_classifier",
    workers=1,
    traffic={"timeout": SETTINGS.request_timeout_s},
    # The default inter-service session is recycled every 100 requests and drops calls in
    # flight under load; keep one session for the life of the worker.
    runner_connection={"max_requests": 10**9, "max_age": 10.0**9},
)
class FaceClassifier:
    model_ref = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        from modeling.inference import Classifier

        self.spec = ModelSpec.from_metadata(self.model_ref.info.metadata)
        self.error: str | None = None
        self.classifier: Classifier | None = None
        try:
            self.classifier = Classifier.load(Path(self.model_ref.path), self.spec)  # loads and warms up
        except Exception as exc:  # noqa: BLE001 - reported by health, not a crash loop
            self.error = f"model {self.model_ref.tag} failed to load: {type(exc).__name__}: {exc}"
            logger.error(self.error)

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) images to the raw sigmoid outputs (N,)."""
        if self.classifier is None:
            raise bentoml.exceptions.ServiceUnavailable(self.error or "model not loaded")
        started = time.perf_counter()
        raw = self.classifier(images)
        metrics().batch_seconds.observe(time.perf_counter() - started)
        metrics().batch_images.observe(len(images))
        return raw

    @bentoml.api
    def status(self) -> dict[str, Any]:
        return {"ready": self.classifier is not None, "error": self.error}

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        if self.classifier is None:
            return {"error": self.error}
        return {**self.classifier.describe(), "path": str(self.model_ref.path)}


def model_unavailable() -> JSONResponse:
    return error_response(
        503, "MODEL_UNAVAILABLE", "The model cannot serve right now; retry later", {"Retry-After": "5"}
    )


http = FastAPI(
    title="Deepfake detection (legacy GET routes)", docs_url=None, redoc_url=None, openapi_url=None
)


@bentoml.service(
    name="deepfake_detector",
    workers=SETTINGS.api_workers,
    traffic={"timeout": SETTINGS.request_timeout_s},
    http={
        "cors": {
            "enabled": True,
            "access_control_allow_origins": list(SETTINGS.cors_origins),
            "access_control_allow_methods": ["GET", "POST", "OPTIONS"],
            "access_control_allow_headers": ["*"],
        }
    },
)
@bentoml.asgi_app(http, path="/")
class DeepfakeDetector:
    model_ref = bentoml.models.BentoModel(SETTINGS.model_tag)  # metadata only: weights load in FaceClassifier
    classifier = bentoml.depends(FaceClassifier)

    def __init__(self) -> None:
        self.spec = ModelSpec.from_metadata(self.model_ref.info.metadata)
        detector = None
        if SETTINGS.face_detection:
            from preprocessing.faces import FaceDetector

            detector = FaceDetector()
        self.pipeline = DetectionPipeline(
            self.spec,
            str(self.model_ref.tag),
            SETTINGS.limits,
            self._predict,
            detector,
            SETTINGS.faces,
            SETTINGS.decode_concurrency,
        )

    async def _predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            return await self.classifier.to_async.predict(batch)
        except RETRYABLE:
            logger.warning("model service connection failed; retrying once")
            return await self.classifier.to_async.predict(batch)

    async def _run(self, file: Path, require_face: bool | None, route: Any) -> Any:
        try:
            return await route(file.read_bytes(), require_face)
        except InputError as exc:
            return input_error_response(exc)
        except bentoml.exceptions.ServiceUnavailable as exc:
            # Both a model that never loaded and a call the model service shed (its queue
            # would not drain within max_latency_ms) come back as a bare 503: ask which.
            if (await self._model_status())["ready"]:
                logger.warning("model service shed the call: at capacity")
                return overloaded_response()
            logger.warning("model service unavailable: %s", exc)
            return model_unavailable()
        except RETRYABLE as exc:
            logger.warning("model service unavailable: %s", exc)
            return model_unavailable()

    @bentoml.api(route="/api/v1/detect/")
    async def detect(self, file: Path, require_face: bool | None = None) -> DetectResponse:
        """Judge every face in one image; the image is as fake as its most-fake face.

        Multipart form: `file`, and optionally `require_face` (true: no face is a 422
        NO_FACE; false: the whole image is judged; default: the server's setting)."""
        return await self._run(file, require_face, self.pipeline.detect)

    @bentoml.api(route="/api/v1/detect/augmented")
    async def detect_augmented(self, file: Path, require_face: bool | None = None) -> AugmentedResponse:
        """Judge seven test-time variants of every face (one model batch) and vote per face."""
        return await self._run(file, require_face, self.pipeline.detect_augmented)

    async def _model_status(self) -> dict[str, Any]:
        """The model service's `status`; unreachable counts as not ready."""
        try:
            return await self.classifier.to_async.status()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the model is "unhealthy"
            return {"ready": False, "error": f"model service unreachable: {type(exc).__name__}"}

    async def _health(self) -> HealthResponse:
        status = await self._model_status()
        return health_report(bool(status["ready"]), status["error"])

    async def _model_info(self) -> ModelInfoResponse | JSONResponse:
        try:
            described = await self.classifier.to_async.describe()
        except Exception as exc:  # noqa: BLE001 - the model service is not there to answer
            described = {"error": f"model service unreachable: {type(exc).__name__}"}
        if "error" in described:
            logger.warning("model info unavailable: %s", described["error"])
            return model_unavailable()
        return model_info_report(self.spec, str(self.model_ref.tag), described)

    @bentoml.api(route="/api/v1/detect/health")
    async def health(self) -> HealthResponse:
        """Whether the model can serve (GET at the same path answers 503 when it cannot)."""
        return await self._health()

    @bentoml.api(route="/api/v1/model/info")
    async def model_info(self) -> ModelInfoResponse:
        """The truth about the served model, read from the model itself and its metadata."""
        return await self._model_info()

    # Legacy GET routes (BentoML API routes are POST only). They call the helpers above, not
    # the API methods: an API method called from inside the service goes through HTTP again.
    @http.get(
        "/api/v1/detect/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}}
    )
    async def get_health(self) -> JSONResponse:
        health = await self._health()
        status = 200 if health.model_loaded else 503
        return JSONResponse(health.model_dump(exclude_none=True), status_code=status)

    @http.get(
        "/api/v1/model/info", response_model=ModelInfoResponse, responses={503: {"model": ErrorResponse}}
    )
    async def get_model_info(self) -> Any:
        return await self._model_info()

    @http.get("/api/v1/docs", include_in_schema=False)
    async def swagger_ui(self) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/docs.json",
            title="Deepfake detection API",
            swagger_js_url="/static_content/swagger-ui-bundle.js",
            swagger_css_url="/static_content/swagger-ui.css",
            swagger_favicon_url="/static_content/favicon-light-32x32.png",
        )


# Outermost first: the legacy edge (aliases, body cap, error shape, request id), then access.
DeepfakeDetector.add_asgi_middleware(
    LegacyHTTPMiddleware,
    aliases={"/api/v1/detect": "/api/v1/detect/", "/api/v1/detect/augmented/": "/api/v1/detect/augmented"},
    max_body_bytes=SETTINGS.max_upload_bytes + 64 * 1024,  # room for the multipart envelope
    body_timeout_s=SETTINGS.upload_timeout,
)
DeepfakeDetector.add_asgi_middleware(
    AccessMiddleware,
    guarded=("/api/v1/detect/", "/api/v1/detect/augmented"),
    api_key=SETTINGS.api_key,
    rate_limits=SETTINGS.rate_limits,
    trust_forwarded_for=SETTINGS.trust_forwarded_for,
    max_in_flight=SETTINGS.max_in_flight,
)
document_errors("deepfake_detector", ("/api/v1/detect/", "/api/v1/detect/augmented"))
