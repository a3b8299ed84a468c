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
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from fastapi import Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from modeling.spec import DETECTOR_FILES_NAME, ModelSpec
from preprocessing.errors import InputError
from serving.access import AccessMiddleware
from serving.bentoml_adapter import use_greedy_batching
from serving.edge import ClientRoutePolicy, EdgeMiddleware, RequestIdMiddleware
from serving.errors import ModelUnavailable, NotFound, Overloaded
from serving.multipart import FormPolicy, Upload, parse_bool, parse_number, read_form
from serving.observability import configure_logging, metrics
from serving.pipeline import DetectionPipeline, FaceSettings
from serving.provenance import ProvenanceReader
from serving.reports import health_report, model_info_report
from serving.routes import (
    ERROR_RESPONSES,
    EXPLAIN,
    FPS,
    FRAMES,
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
    JobResponse,
    ModelDescription,
    ModelInfoResponse,
    ModelStatus,
    VideoResponse,
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
IMAGE_FORM = FormPolicy(
    max_file_bytes=SETTINGS.max_upload_bytes, fields=frozenset({"require_face", "explain"})
)
# Videos stream to a temp file as they arrive (the decoder process reads it from there).
VIDEO_FORM = FormPolicy(
    max_file_bytes=SETTINGS.video_max_bytes,
    fields=frozenset({"frames", "fps", "explain"}),
    spool_dir=Path(tempfile.gettempdir()),
)
VIDEO_PATHS = ("/api/v1/detect/video", "/api/v1/detect/video/jobs", "/detect_video")


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
        self.explainer: Any = None  # built by the first heatmap asked for (a traced gradient pass)
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

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def explain(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) crops to their Grad-CAM maps toward "fake", packed for the API
        (modeling/explain.pack_maps): one forward and backward pass for the whole batch."""
        from modeling.explain import explainer_for_model, pack_maps

        self.last_call = time.monotonic()
        if self.classifier is None:
            raise bentoml.exceptions.InternalServerError(self.error or "model not loaded")
        if self.explainer is None:
            try:
                self.explainer = explainer_for_model(self.classifier.differentiable(), self.spec)
            except ValueError as exc:  # no layer to explain with: the client asked the impossible
                raise bentoml.exceptions.UnprocessableEntity(str(exc)) from None
        _, maps = self.explainer(images)
        return pack_maps(self.explainer, maps)

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
    detector_files = bentoml.models.BentoModel(f"{DETECTOR_FILES_NAME}:latest")  # BlazeFace's model file
    classifier = bentoml.depends(FaceClassifier)

    def __init__(self) -> None:
        from preprocessing.detectors import load_detector

        self.spec = ModelSpec.from_metadata(self.model_ref.info.metadata)
        self.detector_name = SETTINGS.face_detector or self.spec.detector or "blazeface"
        if SETTINGS.face_detector and self.spec.detector and SETTINGS.face_detector != self.spec.detector:
            logger.warning(
                "serving with the %s face detector, but %s's training crops came from %s: its crops, "
                "and so its verdicts, shift a little (README, 'Faces first')",
                SETTINGS.face_detector, self.model_ref.tag, self.spec.detector,
            )  # fmt: skip
        detector = None
        if SETTINGS.face_detection:
            detector = load_detector(self.detector_name, **self._detector_options())
        faces = FaceSettings(require=SETTINGS.require_face, max_faces=SETTINGS.max_faces)
        self.provenance = ProvenanceReader(SETTINGS.provenance_options)  # README, "Provenance"
        self.pipeline = DetectionPipeline(
            self.spec, str(self.model_ref.tag), SETTINGS.limits, self._predict, detector, faces,
            SETTINGS.decode_concurrency, explain=self._explain, provenance=self.provenance,
        )  # fmt: skip
        self._init_video()

    async def __is_ready__(self) -> bool:
        return (await self._model_status()).ready

    @bentoml.on_startup
    def _own_routes(self) -> None:
        # The mounted routes get `self` from BentoML's current service, which is process-wide:
        # bind this app's routes to this instance (a process can hold several apps, as tests do).
        http.dependency_overrides[bentoml.get_current_service] = lambda: self

    def _detector_options(self) -> dict[str, Any]:
        return {
            "model_dir": Path(self.detector_files.path),
            "min_score": SETTINGS.face_min_score,
            "max_side": SETTINGS.detect_max_side,
        }

    def _init_video(self) -> None:
        from serving.jobs import JobStore
        from serving.video_pipeline import VideoPipeline
        from serving.video_worker import VideoWorkerPool

        # The decoder processes start with the first video (a server that sees none keeps the memory).
        self.videos = VideoPipeline(
            self.spec, str(self.model_ref.tag), self._predict,
            VideoWorkerPool(
                SETTINGS.video_concurrency,
                detector=self.detector_name if SETTINGS.face_detection else None,
                detector_options=self._detector_options(),
            ),
            SETTINGS.video_limits, timeout_s=SETTINGS.video_timeout_s, max_faces=SETTINGS.max_faces,
            default_frames=SETTINGS.video_frames, explain=self._explain, provenance=self.provenance,
        )  # fmt: skip
        jobs_dir = Path(SETTINGS.jobs_dir or Path(tempfile.gettempdir()) / "deepfake-video-jobs")
        self.jobs = JobStore(jobs_dir, self._run_job, ttl_s=SETTINGS.job_ttl_s, max_jobs=SETTINGS.max_jobs)

    @bentoml.on_startup
    async def _start_jobs(self) -> None:
        await self.jobs.start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        self.pipeline.close()
        await self.jobs.close()
        await self.videos.close()

    async def _predict(self, batch: np.ndarray) -> np.ndarray:
        return await self._model_call("predict", batch)

    async def _explain(self, batch: np.ndarray) -> np.ndarray:
        return await self._model_call("explain", batch)

    async def _model_call(self, method: str, batch: np.ndarray) -> np.ndarray:
        call = getattr(self.classifier.to_async, method)
        try:
            try:
                return await call(batch)
            except RETRYABLE:
                logger.warning("model service connection failed; retrying once")
                return await call(batch)
        except bentoml.exceptions.ServiceUnavailable:
            # The batching queue shed the call: it would not finish within max_latency_ms.
            raise Overloaded() from None
        except bentoml.exceptions.UnprocessableEntity:
            raise InputError(
                422, "EXPLAIN_UNAVAILABLE", "This model has no layer to compute heatmaps on"
            ) from None
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
        asked = parse_bool("require_face", upload.fields.get("require_face"))
        explain = parse_bool("explain", upload.fields.get("explain")) or False
        run = self.pipeline.detect if route == "detect" else self.pipeline.detect_augmented
        # The legacy routes: no face is a 422 unless asked or set otherwise (FaceSettings.required).
        return await run(upload.read(), self.pipeline.faces.required(asked, legacy=True), explain)

    async def _video_form(self, request: Request) -> tuple[Upload, dict[str, Any]]:
        upload = await read_form(request.headers.raw, request.receive, VIDEO_FORM)
        try:
            frames = parse_number("frames", upload.fields.get("frames"), int, 1, 100_000)
            fps = parse_number("fps", upload.fields.get("fps"), float, 0.001, 240)
            explain = parse_bool("explain", upload.fields.get("explain")) or False
        except BaseException:
            upload.discard()
            raise
        # A request for more frames than the cap gets the cap (`video.frames_sampled` says so).
        frames = None if frames is None else min(int(frames), SETTINGS.video_max_frames)
        return upload, {"frames": frames, "fps": fps, "explain": explain}

    async def _detect_video(self, request: Request) -> VideoResponse:
        upload, params = await self._video_form(request)
        try:
            assert upload.path is not None
            return await self.videos.detect(upload.path, **params)
        finally:
            upload.discard()

    async def _run_job(self, path: Path, params: dict[str, Any], progress: Any) -> dict[str, Any]:
        result = await self.videos.detect(path, **params, progress=progress, timeout_s=SETTINGS.job_timeout_s)
        return result.model_dump(mode="json")

    async def _submit_job(self, request: Request) -> JobResponse:
        from serving.jobs import JobStoreFull

        upload, params = await self._video_form(request)
        assert upload.path is not None
        try:
            job_id = await self.jobs.submit(upload.path, params)
        except JobStoreFull:
            raise Overloaded("Too many video jobs are queued or running; retry later") from None
        return await self._job(job_id)

    async def _job(self, job_id: str) -> JobResponse:
        from serving.jobs import JobNotFound

        try:
            status = self.jobs.status(job_id)
            result = self.jobs.result(job_id) if status.state == "done" else None
        except JobNotFound:
            raise NotFound("No such video job (or its result has expired)") from None

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

    async def _cancel_job(self, job_id: str) -> JobResponse:
        from serving.jobs import JobNotFound

        try:
            await self.jobs.cancel(job_id)
        except JobNotFound:
            raise NotFound("No such video job (or its result has expired)") from None
        return await self._job(job_id)

    # ---- The legacy routes, as the old backend served them (multipart field `file`).
    @http.post(
        "/api/v1/detect/",
        response_model=DetectResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=form_body({"require_face": REQUIRE_FACE, "explain": EXPLAIN}),
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
        openapi_extra=form_body({"require_face": REQUIRE_FACE, "explain": EXPLAIN}),
        summary="Judge seven test-time variants of every face, and vote",
    )
    @http.post("/api/v1/detect/augmented/", include_in_schema=False)
    async def legacy_detect_augmented(self, request: Request) -> Response:
        """Seven variants of every face crop in one model batch; a majority vote per face."""
        return await answer_json(self._from_form(request, "augmented"), "POST /api/v1/detect/augmented")

    @http.post(
        "/api/v1/detect/video",
        response_model=VideoResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=form_body({"frames": FRAMES, "fps": FPS, "explain": EXPLAIN}),
        summary="Judge the faces of a short video, track by track",
    )
    async def legacy_detect_video(self, request: Request) -> Response:
        """Sampled frames (default 32), faces on each, faces followed into tracks, each track
        judged from all its frames; the video by its most-fake track. Long videos: the jobs."""
        return await answer_json(self._detect_video(request), "POST /api/v1/detect/video")

    @http.post(
        "/api/v1/detect/video/jobs",
        status_code=202,
        response_model=JobResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=form_body({"frames": FRAMES, "fps": FPS, "explain": EXPLAIN}),
        summary="Start a video job (for long videos): answers at once with its id",
    )
    async def submit_video_job(self, request: Request) -> Response:
        response = await answer_json(self._submit_job(request), "POST /api/v1/detect/video/jobs")
        if response.status_code == 200:
            response.status_code = 202
        return response

    @http.get(
        "/api/v1/detect/video/jobs/{job_id}",
        response_model=JobResponse,
        responses={404: {"model": ErrorResponse}},
    )
    async def get_video_job(self, job_id: str) -> Response:
        """The job's state and progress; its result once done (kept `DEEPFAKE_JOB_TTL_S`)."""
        return await answer_json(self._job(job_id), "GET /api/v1/detect/video/jobs")

    @http.delete(
        "/api/v1/detect/video/jobs/{job_id}",
        response_model=JobResponse,
        responses={404: {"model": ErrorResponse}},
    )
    async def cancel_video_job(self, job_id: str) -> Response:
        """Stop the job (its decoder process is killed); a finished job is left as it is."""
        return await answer_json(self._cancel_job(job_id), "DELETE /api/v1/detect/video/jobs")

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
    async def detect(
        self, file: Path, require_face: bool | None = None, explain: bool = False
    ) -> DetectResponse:
        """Judge every face in one image; the image by its most-fake face (see the legacy route)."""
        return await answer(self.pipeline.detect(file.read_bytes(), require_face, explain), "POST /detect")

    @bentoml.api(route="/detect_augmented")
    async def detect_augmented(
        self, file: Path, require_face: bool | None = None, explain: bool = False
    ) -> AugmentedResponse:
        """Judge seven test-time variants of every face (one model batch) and vote per face."""
        work = self.pipeline.detect_augmented(file.read_bytes(), require_face, explain)
        return await answer(work, "POST /detect_augmented")

    @bentoml.api(route="/detect_video")
    async def detect_video(
        self, file: Path, frames: int | None = None, fps: float | None = None
    ) -> VideoResponse:
        """Judge the faces of a short video, track by track (see the legacy route)."""
        frames = None if frames is None else min(frames, SETTINGS.video_max_frames)
        return await answer(self.videos.detect(file, frames, fps), "POST /detect_video")

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
    "/detect_video": VIDEO_FORM,
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
    allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
    allow_headers=["*"],
    expose_headers=["Retry-After", "X-Request-ID"],
)
DeepfakeDetector.add_asgi_middleware(
    EdgeMiddleware,
    file_limit=lambda path: SETTINGS.video_max_bytes if path in VIDEO_PATHS else SETTINGS.max_upload_bytes,
    upload_timeout_s=SETTINGS.upload_timeout,
    request_timeout_s=SETTINGS.request_timeout_s,
    drain_timeout_s=SETTINGS.drain_timeout_s,
)
DeepfakeDetector.add_asgi_middleware(
    AccessMiddleware,
    guarded=("/api/v1/detect/", "/api/v1/detect", "/api/v1/detect/augmented", "/api/v1/detect/augmented/",
             "/detect", "/detect_augmented", *VIDEO_PATHS),
    api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None,
    rate_limits=SETTINGS.rate_limits,
    trust_forwarded_for=SETTINGS.trust_forwarded_for,
    max_in_flight=SETTINGS.max_in_flight,
)  # fmt: skip
DeepfakeDetector.add_asgi_middleware(ClientRoutePolicy, routes=CLIENT_ROUTES)
