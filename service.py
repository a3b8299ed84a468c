"""Deepfake detection: a BentoML bundle with the legacy Flask service's HTTP contract.

Two services. `FaceClassifier` holds the network and runs it on adaptive batches;
`DeepfakeDetector` is the public API: it reads uploads under its own policy, finds and crops the
faces, sends uint8 crops to the classifier (requests from many clients merge into one batch)
and answers in the legacy shape. Every public route is a row of the route table
(`serving/routes.py`): the legacy routes are methods on the mounted app, the Python client's
are `@bentoml.api` methods over the same pipeline, each one line here; the HTTP edge (caps,
deadlines, CORS, request ids, the key, limits, errors) is `serving/edge.py`'s, made from the
same table.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from fastapi import Request
from starlette.responses import JSONResponse, Response

from modeling.spec import DETECTOR_FILES_NAME, ModelSpec
from preprocessing.errors import InputError
from serving.access import CLIENT_KEY
from serving.bentoml_adapter import use_greedy_batching
from serving.edge import install
from serving.errors import JobStoreDown, ModelUnavailable, NotFound, Overloaded, QuotaExceeded
from serving.forms import form_kinds
from serving.multipart import Upload, read_form
from serving.observability import configure_logging, metrics
from serving.pipeline import DetectionPipeline, FaceSettings
from serving.provenance import ProvenanceReader
from serving.reports import health_report, health_response, job_report, model_info_report
from serving.routes import JOB_RESPONSES, ROUTES, answer, answer_json, app_route, finish_app, make_app
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
# The image and video forms (videos are spooled to the temp dir as they arrive).
FORMS = form_kinds(SETTINGS, Path(tempfile.gettempdir()))


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
        try:  # loads and warms up
            self.classifier = Classifier.load(
                Path(self.model_ref.path),
                self.spec,
                trust_code=SETTINGS.trust_model_code,
                precision=SETTINGS.precision,
            )
        except Exception as exc:  # noqa: BLE001 - reported by health (generically), not a crash loop
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
        return ModelDescription(**self.classifier.describe(), path=str(self.model_ref.tag))  # no paths


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
            "tiles": SETTINGS.face_tiles,
        }

    def _init_video(self) -> None:
        from serving.jobs import DiskJobStore, JobStore
        from serving.video_pipeline import VideoPipeline
        from serving.video_worker import VideoWorkerPool

        def pipeline(concurrency: int, timeout_s: float) -> VideoPipeline:
            return VideoPipeline(
                self.spec, str(self.model_ref.tag), self._predict,
                VideoWorkerPool(
                    concurrency,
                    detector=self.detector_name if SETTINGS.face_detection else None,
                    detector_options=self._detector_options(),
                ),
                SETTINGS.video_limits, timeout_s=timeout_s, max_faces=SETTINGS.max_faces,
                default_frames=SETTINGS.video_frames, full_every=SETTINGS.video_full_every,
                explain=self._explain, provenance=self.provenance,
            )  # fmt: skip

        # Decoder processes of their own for the synchronous route and for the jobs, so that
        # neither can starve the other; each pool starts with its first video.
        self.videos = pipeline(SETTINGS.video_concurrency, SETTINGS.video_timeout_s)
        self.job_videos = pipeline(SETTINGS.job_concurrency, SETTINGS.job_timeout_s)
        jobs_dir = Path(SETTINGS.jobs_dir or Path(tempfile.gettempdir()) / "deepfake-video-jobs")
        options: dict[str, Any] = dict(
            ttl_s=SETTINGS.job_ttl_s, max_jobs=SETTINGS.max_jobs, max_per_client=SETTINGS.max_jobs_per_client,
            max_queued_bytes=SETTINGS.jobs_max_bytes, max_running=SETTINGS.job_concurrency,
            heartbeat_s=SETTINGS.job_heartbeat_s, stale_after_s=SETTINGS.job_stale_after_s,
        )  # fmt: skip
        if SETTINGS.job_store:  # shared by every replica; the uploads stay here (serving/redis_store.py)
            from serving.redis_store import RedisJobStore

            self.jobs: JobStore = RedisJobStore(SETTINGS.redis_link(), jobs_dir, self._run_job, **options)
            logger.info("video jobs and rate limits shared through %s", SETTINGS.redis_link().where)
        else:
            self.jobs = DiskJobStore(jobs_dir, self._run_job, **options)

    @bentoml.on_startup
    async def _start_jobs(self) -> None:
        await self.jobs.start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        self.pipeline.close()
        await self.jobs.close()
        await self.videos.close()
        await self.job_videos.close()

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
        return health_report((await self._model_status()).ready)

    async def _model_info(self) -> ModelInfoResponse:
        try:
            described = await self.classifier.to_async.describe()
        except Exception as exc:  # noqa: BLE001 - the model service is not there to answer
            logger.warning("model info unavailable: %s", type(exc).__name__)
            raise ModelUnavailable() from None
        return model_info_report(self.spec, str(self.model_ref.tag), described)

    async def _from_form(self, request: Request, route: str) -> DetectResponse | AugmentedResponse:
        upload = await read_form(request.headers.raw, request.receive, FORMS["image"].policy)
        fields = FORMS["image"].parse(upload.fields)
        run = self.pipeline.detect if route == "detect" else self.pipeline.detect_augmented
        # The legacy routes: no face is a 422 unless asked or set otherwise (FaceSettings.required).
        required = self.pipeline.faces.required(fields["require_face"], legacy=True)
        return await run(upload.read(), required, fields["explain"])

    async def _video_form(self, request: Request) -> tuple[Upload, dict[str, Any]]:
        """The upload and its fields, every combination checked before any work starts."""
        upload = await read_form(request.headers.raw, request.receive, FORMS["video"].policy)
        try:
            return upload, FORMS["video"].parse(upload.fields)
        except BaseException:
            upload.discard()
            raise

    async def _detect_video(self, request: Request) -> VideoResponse:
        upload, params = await self._video_form(request)
        try:
            assert upload.path is not None
            return await self.videos.detect(upload.path, **params)
        finally:
            upload.discard()

    async def _run_job(self, path: Path, params: dict[str, Any], progress: Any) -> dict[str, Any]:
        result = await self.job_videos.detect(path, **params, progress=progress)
        return result.model_dump(mode="json")

    async def _submit_job(self, request: Request) -> JobResponse:
        from serving.jobs import JobQuotaExceeded, JobStoreFull, JobStoreUnavailable

        client = request.scope.get(CLIENT_KEY, "")
        try:
            await self.jobs.admit(client)  # quota and room, before the upload is read
            upload, params = await self._video_form(request)
            assert upload.path is not None
            job_id = await self.jobs.submit(upload.path, params, client=client)
        except JobQuotaExceeded:
            raise QuotaExceeded() from None
        except JobStoreFull:
            raise Overloaded("Too many video jobs are queued or running; retry later") from None
        except JobStoreUnavailable:
            raise JobStoreDown() from None
        return await self._job(job_id)

    async def _job(self, job_id: str, cancel: bool = False) -> JobResponse:
        from serving.jobs import JobNotFound, JobStoreUnavailable

        try:
            status = await (self.jobs.cancel(job_id) if cancel else self.jobs.status(job_id))
            result = await self.jobs.result(job_id) if status.state == "done" else None
        except JobNotFound:
            raise NotFound("No such video job (or its result has expired)") from None
        except JobStoreUnavailable:
            raise JobStoreDown() from None
        return job_report(status, result)

    # ---- The legacy routes, as the old backend served them (multipart field `file`); each
    # route's path, methods, form and guard are its row of the route table (serving/routes.py).
    @app_route(http, "detect", response_model=DetectResponse, summary="Judge every face in one image")
    async def legacy_detect(self, request: Request) -> Response:
        """The image is judged by its faces: its most-fake face decides."""
        return await answer_json(self._from_form(request, "detect"), "POST /api/v1/detect/")

    @app_route(
        http, "augmented", response_model=AugmentedResponse, summary="Judge seven variants of every face"
    )
    async def legacy_detect_augmented(self, request: Request) -> Response:
        """Seven test-time variants of every face crop in one model batch; a majority vote per face."""
        return await answer_json(self._from_form(request, "augmented"), "POST /api/v1/detect/augmented")

    @app_route(http, "video", response_model=VideoResponse, summary="Judge the faces of a short video")
    async def legacy_detect_video(self, request: Request) -> Response:
        """Sampled frames (default 32), faces on each, faces followed into tracks, each track
        judged from all its frames; the video by its most-fake track. Long videos: the jobs."""
        return await answer_json(self._detect_video(request), "POST /api/v1/detect/video")

    @app_route(http, "job_submit", status_code=202, response_model=JobResponse, summary="Start a video job")
    async def submit_video_job(self, request: Request) -> Response:
        """For long videos: answers at once with the job's id (202)."""
        return await answer_json(self._submit_job(request), "POST /api/v1/detect/video/jobs", status=202)

    @app_route(http, "job_status", response_model=JobResponse, responses=JOB_RESPONSES)
    async def get_video_job(self, job_id: str) -> Response:
        """The job's state and progress; its result once done (kept `DEEPFAKE_JOB_TTL_S`)."""
        return await answer_json(self._job(job_id), "GET /api/v1/detect/video/jobs")

    @app_route(http, "job_cancel", response_model=JobResponse, responses=JOB_RESPONSES)
    async def cancel_video_job(self, job_id: str) -> Response:
        """Stop the job (its decoder process is killed); a finished job is left as it is."""
        return await answer_json(self._job(job_id, cancel=True), "DELETE /api/v1/detect/video/jobs")

    @app_route(http, "health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def get_health(self) -> JSONResponse:
        """Whether the model can serve: 200, or 503 when it cannot."""
        return health_response(await self._health())

    @app_route(
        http, "model_info", response_model=ModelInfoResponse, responses={503: {"model": ErrorResponse}}
    )
    async def get_model_info(self) -> Response:
        """The truth about the served model, read from the model itself and its metadata."""
        return await answer_json(self._model_info(), "GET /api/v1/model/info")

    # ---- The Python client's routes (bentoml.SyncHTTPClient builds its methods from these).
    @bentoml.api(route=ROUTES.path("client_detect"))
    async def detect(
        self, file: Path, require_face: bool | None = None, explain: bool = False
    ) -> DetectResponse:
        """Judge every face in one image; the image by its most-fake face (see the legacy route)."""
        return await answer(self.pipeline.detect(file.read_bytes(), require_face, explain), "POST /detect")

    @bentoml.api(route=ROUTES.path("client_augmented"))
    async def detect_augmented(
        self, file: Path, require_face: bool | None = None, explain: bool = False
    ) -> AugmentedResponse:
        """Judge seven test-time variants of every face (one model batch) and vote per face."""
        return await answer(
            self.pipeline.detect_augmented(file.read_bytes(), require_face, explain), "POST /detect_augmented"
        )

    @bentoml.api(route=ROUTES.path("client_video"))
    async def detect_video(
        self, file: Path, frames: int | None = None, fps: float | None = None, explain: bool = False
    ) -> VideoResponse:
        """Judge the faces of a short video, track by track (see the legacy route)."""
        return await answer(self.videos.detect(file, frames, fps, explain=explain), "POST /detect_video")

    @bentoml.api(route=ROUTES.path("client_health"))
    async def health(self) -> HealthResponse:
        """Whether the model can serve."""
        return await self._health()

    @bentoml.api(route=ROUTES.path("client_model_info"))
    async def model_info(self) -> ModelInfoResponse:
        """The served model: tag, input shape, labels, output meaning, threshold, metrics, layers."""
        return await answer(self._model_info(), "POST /model_info")


finish_app(http, SETTINGS.ui_api_origins)  # the page, the docs, the fallback: after the routes
install(DeepfakeDetector, SETTINGS, FORMS)  # the edge (serving/edge.py), from the route table
