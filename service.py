"""Deepfake detection: a BentoML bundle with the legacy Flask service's HTTP contract.

Two services. `FaceClassifier` holds the network and runs it on adaptive batches;
`DeepfakeDetector` is the public API: it reads uploads under its own policy, finds and crops the
faces, sends uint8 crops to the classifier (requests from many clients merge into one batch)
and answers in the legacy shape. The legacy routes live on the mounted app (`serving/routes.py`);
the Python client's routes are `@bentoml.api` methods over the same pipeline; the HTTP edge
(caps, deadlines, CORS, request ids, errors) is in `serving/edge.py`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
from fastapi import Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from modeling.spec import ModelSpec
from serving.access import AccessMiddleware
from serving.bentoml_adapter import use_greedy_batching
from serving.edge import ClientRoutePolicy, EdgeMiddleware, RequestIdMiddleware
from serving.errors import ModelUnavailable, Overloaded
from serving.multipart import FormPolicy, parse_bool, read_form
from serving.observability import configure_logging, metrics
from serving.pipeline import DetectionPipeline, FaceSettings
from serving.reports import health_report, model_info_report
from serving.routes import (
    ERROR_RESPONSES,
    REQUIRE_FACE,
    add_docs_and_fallback,
    answer,
    answer_json,
    form_body,
    make_app,
)
from serving.schemas import (
    AugmentedResponse,
    DetectResponse,
    ErrorResponse,
    HealthResponse,
    ModelDescription,
    ModelInfoResponse,
    ModelStatus,
)
from serving.settings import get_settings
from serving.shutdown import stop_when_idle
from serving.ui import add_ui

logger = logging.getLogger("deepfake")
SETTINGS = get_settings()
configure_logging(SETTINGS.log_format)
if SETTINGS.batch_policy == "greedy":
    use_greedy_batching()

# Only these are retried once: the inter-service connection dropped, not a model fault.
RETRYABLE = (ConnectionError, TimeoutError, aiohttp.ClientConnectionError)
# BentoML's own request timeout stays behind the edge's, so the edge's legacy 504 comes first.
BACKSTOP_TIMEOUT_S = SETTINGS.request_timeout_s + 10
http = make_app()
IMAGE_FORM = FormPolicy(max_file_bytes=SETTINGS.max_upload_bytes, fields=frozenset({"require_face"}))


@bentoml.service(
    name="face_classifier",
    workers=1,
    traffic={"timeout": BACKSTOP_TIMEOUT_S},
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
        self.last_call = time.monotonic()
        try:
            self.classifier = Classifier.load(Path(self.model_ref.path), self.spec)  # loads and warms up
        except Exception as exc:  # noqa: BLE001 - reported by health, not a crash loop
            self.error = f"model {self.model_ref.tag} failed to load: {type(exc).__name__}: {exc}"
            logger.error(self.error)

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    @bentoml.on_startup
    def _drain_on_stop(self) -> None:
        # The API worker's requests in flight at SIGTERM still need this service (serving/shutdown.py).
        stop_when_idle(lambda: self.last_call, idle_s=2.0, max_s=SETTINGS.request_timeout_s)

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) images to the raw sigmoid outputs (N,)."""
        self.last_call = time.monotonic()
        if self.classifier is None:
            # A 500, where a call shed by the batching queue is a 503: the API tells them apart.
            raise bentoml.exceptions.InternalServerError(self.error or "model not loaded")
        started = time.perf_counter()
        raw = self.classifier(images)
        metrics().batch_seconds.observe(time.perf_counter() - started)
        metrics().batch_images.observe(len(images))
        return raw

    @bentoml.api
    def status(self) -> ModelStatus:
        return ModelStatus(ready=self.classifier is not None, error=self.error)

    @bentoml.api
    def describe(self) -> ModelDescription:
        if self.classifier is None:
            raise bentoml.exceptions.InternalServerError(self.error or "model not loaded")
        return ModelDescription(**self.classifier.describe(), path=str(self.model_ref.path))


@bentoml.service(
    name="deepfake_detector",
    workers=SETTINGS.api_workers,
    traffic={"timeout": BACKSTOP_TIMEOUT_S},
    http={"cors": {"enabled": False}},  # CORS is the edge's: on every answer, errors included
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
        faces = FaceSettings(
            require=SETTINGS.require_face,
            max_faces=SETTINGS.max_faces,
            min_score=SETTINGS.face_min_score,
            max_side=SETTINGS.detect_max_side,
        )
        self.pipeline = DetectionPipeline(
            self.spec, str(self.model_ref.tag), SETTINGS.limits, self._predict, detector, faces,
            SETTINGS.decode_concurrency,
        )  # fmt: skip

    async def __is_ready__(self) -> bool:
        return (await self._model_status()).ready

    @bentoml.on_startup
    def _own_routes(self) -> None:
        # The mounted routes get `self` from BentoML's current service, which is process-wide:
        # bind this app's routes to this instance (a process can hold several apps, as tests do).
        http.dependency_overrides[bentoml.get_current_service] = lambda: self

    @bentoml.on_shutdown
    def _stop_decoding(self) -> None:
        self.pipeline.close()

    async def _predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            try:
                return await self.classifier.to_async.predict(batch)
            except RETRYABLE:
                logger.warning("model service connection failed; retrying once")
                return await self.classifier.to_async.predict(batch)
        except bentoml.exceptions.ServiceUnavailable:
            # The batching queue shed the call: it would not finish within max_latency_ms.
            raise Overloaded() from None
        except (bentoml.exceptions.BentoMLException, *RETRYABLE) as exc:
            raise ModelUnavailable(details=f"{type(exc).__name__}") from None

    async def _model_status(self) -> ModelStatus:
        """The model service's `status`; unreachable counts as not ready."""
        try:
            return await self.classifier.to_async.status()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the model is "unhealthy"
            return ModelStatus(ready=False, error=f"model service unreachable: {type(exc).__name__}")

    async def _health(self) -> HealthResponse:
        status = await self._model_status()
        return health_report(status.ready, status.error)

    async def _model_info(self) -> ModelInfoResponse:
        try:
            described = await self.classifier.to_async.describe()
        except Exception as exc:  # noqa: BLE001 - the model service is not there to answer
            logger.warning("model info unavailable: %s", type(exc).__name__)
            raise ModelUnavailable() from None
        return model_info_report(self.spec, str(self.model_ref.tag), described)

    async def _from_form(self, request: Request, route: str) -> DetectResponse | AugmentedResponse:
        upload = await read_form(request.headers.raw, request.receive, IMAGE_FORM)
        require_face = parse_bool("require_face", upload.fields.get("require_face"))
        run = self.pipeline.detect if route == "detect" else self.pipeline.detect_augmented
        return await run(upload.read(), require_face)

    # ---- The legacy routes, as the old backend served them (multipart field `file`).
    @http.post(
        "/api/v1/detect/",
        response_model=DetectResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=form_body({"require_face": REQUIRE_FACE}),
        summary="Judge every face in one image",
    )
    @http.post("/api/v1/detect", include_in_schema=False)
    async def legacy_detect(self, request: Request) -> Response:
        """The image is judged by its faces: its most-fake face decides."""
        return await answer_json(self._from_form(request, "detect"), "POST /api/v1/detect/")

    @http.post(
        "/api/v1/detect/augmented",
        response_model=AugmentedResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=form_body({"require_face": REQUIRE_FACE}),
        summary="Judge seven test-time variants of every face, and vote",
    )
    @http.post("/api/v1/detect/augmented/", include_in_schema=False)
    async def legacy_detect_augmented(self, request: Request) -> Response:
        """Seven variants of every face crop in one model batch; a majority vote per face."""
        return await answer_json(self._from_form(request, "augmented"), "POST /api/v1/detect/augmented")

    @http.get(
        "/api/v1/detect/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}}
    )
    async def get_health(self) -> JSONResponse:
        """Whether the model can serve: 200, or 503 when it cannot."""
        health = await self._health()
        return JSONResponse(
            health.model_dump(exclude_none=True), status_code=200 if health.model_loaded else 503
        )

    @http.get(
        "/api/v1/model/info", response_model=ModelInfoResponse, responses={503: {"model": ErrorResponse}}
    )
    async def get_model_info(self) -> Response:
        """The truth about the served model, read from the model itself and its metadata."""
        return await answer_json(self._model_info(), "GET /api/v1/model/info")

    # ---- The Python client's routes (bentoml.SyncHTTPClient builds its methods from these).
    @bentoml.api(route="/detect")
    async def detect(self, file: Path, require_face: bool | None = None) -> DetectResponse:
        """Judge every face in one image; the image by its most-fake face (see the legacy route)."""
        return await answer(self.pipeline.detect(file.read_bytes(), require_face), "POST /detect")

    @bentoml.api(route="/detect_augmented")
    async def detect_augmented(self, file: Path, require_face: bool | None = None) -> AugmentedResponse:
        """Judge seven test-time variants of every face (one model batch) and vote per face."""
        return await answer(
            self.pipeline.detect_augmented(file.read_bytes(), require_face), "POST /detect_augmented"
        )

    @bentoml.api(route="/health")
    async def health(self) -> HealthResponse:
        """Whether the model can serve."""
        return await self._health()

    @bentoml.api(route="/model_info")
    async def model_info(self) -> ModelInfoResponse:
        """The served model: tag, input shape, labels, output meaning, threshold, metrics, layers."""
        return await answer(self._model_info(), "POST /model_info")


CLIENT_ROUTES: dict[str, FormPolicy | None] = {
    "/detect": IMAGE_FORM,
    "/detect_augmented": IMAGE_FORM,
    "/health": None,
    "/model_info": None,
}
PROBES = ("/livez", "/healthz", "/readyz", "/metrics", "/schema.json")
add_ui(http)  # the page for people at /ui/ (before the fallback, which must stay last)
add_docs_and_fallback(
    http, [*((path, {"POST"}) for path in CLIENT_ROUTES), *((path, {"GET", "HEAD"}) for path in PROBES)]
)
# Outermost first (see serving/edge.py).
DeepfakeDetector.add_asgi_middleware(RequestIdMiddleware)
DeepfakeDetector.add_asgi_middleware(
    CORSMiddleware,
    allow_origins=list(SETTINGS.cors_origins),
    allow_methods=["GET", "POST", "OPTIONS"],
    allow_headers=["*"],
    expose_headers=["Retry-After", "X-Request-ID"],
)
DeepfakeDetector.add_asgi_middleware(
    EdgeMiddleware,
    file_limit=lambda path: SETTINGS.max_upload_bytes,
    drain_bytes=4 * SETTINGS.max_upload_bytes,
    upload_timeout_s=SETTINGS.upload_timeout,
    request_timeout_s=SETTINGS.request_timeout_s,
)
DeepfakeDetector.add_asgi_middleware(
    AccessMiddleware,
    guarded=("/api/v1/detect/", "/api/v1/detect", "/api/v1/detect/augmented", "/api/v1/detect/augmented/",
             "/detect", "/detect_augmented"),
    api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None,
    rate_limits=SETTINGS.rate_limits,
    trust_forwarded_for=SETTINGS.trust_forwarded_for,
    max_in_flight=SETTINGS.max_in_flight,
)  # fmt: skip
DeepfakeDetector.add_asgi_middleware(ClientRoutePolicy, routes=CLIENT_ROUTES)
