"""Server settings: one validated model, read once from environment variables (`DEEPFAKE_*`).

A bad value stops the start with one line naming the variable (`load_settings`). Each default
is defined once: here, or where the fact lives (decode limits in preprocessing/decode.py, face
detection in preprocessing/faces.py) and referenced from here. The README's settings table is
generated from this model (`python -m serving.settings`) and a test keeps the two in step.

A setting that bounds what a client can make the server do carries the threat it answers
(`limit(...)`, in the field's schema as "threat"); SECURITY.md's table of limits is generated
from those (`python -m serving.settings security`), and a test keeps that in step too.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modeling.spec import DEFAULT_MODEL_NAME
from preprocessing import faces, video
from preprocessing.decode import DecodeLimits
from preprocessing.face_tracking import FULL_EVERY
from serving.access import DEFAULT_TRUSTED_PROXIES, parse_networks, parse_rate_limits
from serving.provenance import ProvenanceOptions, load_trust_anchors
from serving.redis_link import RedisLink, check_url, shared_link

ENV_PREFIX = "DEEPFAKE_"
_LIMITS = DecodeLimits()
_VIDEO = video.VideoLimits()
THREAT = "threat"


def limit(default: Any, threat: str, **options: Any) -> Any:
    """A setting that bounds what clients can make the server do, and the threat it answers."""
    return Field(default, json_schema_extra={THREAT: threat}, **options)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    model_tag: str = Field(f"{DEFAULT_MODEL_NAME}:latest", description="the model to serve from the store")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="which of the model's stored precisions serves: `auto` picks from the CPU's flags (bf16 "
        "where native, else int8 where VNNI, else fp32); another must be stored (model_info: `precision`)",
    )
    max_upload_bytes: int = limit(
        _LIMITS.max_bytes,
        "memory and disk filled by one upload (checked from Content-Length and as it streams: 413)",
        gt=0,
        description="largest image upload, in bytes",
    )
    max_image_pixels: int = limit(
        _LIMITS.max_pixels,
        "decompression bombs: a small file that decodes to gigabytes (read from the header, before "
        "any pixel is decoded: 413)",
        gt=0,
        description="largest image, width x height",
    )
    max_batch_size: int = Field(
        64, gt=0, le=1024, description="adaptive batching: most images per model call"
    )
    # BentoML answers 503 for a queued call it expects to finish later than this. Its estimate
    # counts calls, not images: with faces, one call can carry 16 crops. 10 s gave 59 503s
    # in 512 requests at 64 clients (p99 10.4 s); half the request timeout leaves room.
    max_latency_ms: int = Field(
        30_000,
        gt=0,
        description="adaptive batching: a queued call expected to finish later than this is answered "
        "`503 SERVICE_OVERLOADED`",
    )
    batch_policy: Literal["greedy", "bentoml"] = Field(
        "greedy",
        description="`greedy`: a batch starts as soon as the model is free; `bentoml`: BentoML's learned "
        "wait (serving/bentoml_adapter.py)",
    )
    request_timeout_s: float = limit(
        60.0,
        "a request that would hold its worker for ever (answered `504 TIMEOUT`)",
        gt=0,
        description="a request not answered by then gets `504 TIMEOUT`",
    )
    upload_timeout_s: float | None = limit(
        None,
        "slow uploads (a body sent a byte at a time) holding connections and spool space",
        gt=0,
        description="an upload not complete by then answers `408 REQUEST_TIMEOUT` (unset: half "
        "the request timeout)",
    )
    header_timeout_s: float = limit(
        10.0,
        "slow headers (Slowloris: a request line and headers never finished) holding connections",
        gt=0,
        le=30,
        description="a connection whose request line and headers are not complete by then is "
        "closed (serving/bentoml_adapter.py)",
    )
    drain_timeout_s: float = limit(
        30.0,
        "a client that keeps sending after an early answer (413, 401, 429, ...) holding its "
        "connection (the rest of its upload is read and dropped this long, then the connection closes)",
        gt=0,
        description="an answer given before the upload was read (413, 401, 429, ...) first reads and "
        "drops the rest of it for up to this long (as nginx's lingering_time), so that every client "
        "reads the answer",
    )
    api_workers: int = Field(1, gt=0, le=64, description="worker processes of the public service")
    face_detection: bool = Field(True, description="find faces first; `false` judges the whole image")
    require_face: bool | None = Field(
        None,
        description="a photo with no face: `true` answers `422 NO_FACE` on every route, `false` an answer "
        "with `verdict: no_face` on every route (unset: `422` on the legacy `/api/v1/detect*` routes, "
        "whose clients read any 200 as a verdict; the answer on `/detect`, `/detect_augmented`); the "
        "form field `require_face` overrides it per request",
    )
    max_faces: int = limit(
        faces.DEFAULT_MAX_FACES,
        "a crowd photo turned into a huge model batch (per image and per video frame)",
        gt=0,
        le=100,
        description="faces judged per image (largest first)",
    )
    face_detector: Literal["blazeface", "mtcnn"] | None = Field(
        None,
        description="`blazeface` or `mtcnn` (unset: the one the model's training crops came from, its "
        "metadata's `detector`; a different one is served with a warning)",
    )
    face_min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="detector score a face needs (unset: the detector's own, 0.6 / 0.9)"
    )
    face_tiles: Literal["when_needed", "always"] = Field(
        "when_needed",
        description="BlazeFace only: `always` searches every photo in tiles too (before 2026-12: ~20 "
        "model inputs a photo); `when_needed` leaves them out when the whole photo shows only large "
        "faces (a portrait: 2-5 inputs), the same faces on the bench photos",
    )
    detect_max_side: int | None = Field(
        None,
        ge=64,
        le=4096,
        description="MTCNN only: detection runs on a copy at most this large (unset: 640)",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = limit(
        ("*",),
        "other web sites' pages calling the API with their visitors' browsers",
        description="allowed origins, comma separated",
    )
    ui_api_origins: Annotated[tuple[str, ...], NoDecode] = limit(
        (),
        "a link to the page (`/ui/?api=...`) that sends the key a person types into it to another server",
        description="other API origins the page at `/ui/` may talk to (`?api=`), comma separated; "
        "empty: its own only",
    )
    api_key: SecretStr | None = limit(
        None,
        "anyone who can reach the service using it",
        description="when set, the guarded routes (detect, video, jobs) need `Authorization: Bearer "
        "<key>` (probes, health, info, docs stay open)",
    )
    rate_limits: str = limit(
        "",
        "one client monopolising the service; wrong keys count too",
        description="per-client limits on the guarded routes, e.g. `200/day,50/hour` (the old "
        "service's); counted per worker process, or once for every replica with `DEEPFAKE_JOB_STORE`; "
        "empty: off",
    )
    key_failure_limits: str = limit(
        "30/minute,300/day",
        "guessing the API key",
        description="per-client limits on wrong API keys; past them `429` before the key is checked",
    )
    rate_limit_clients: int = limit(
        100_000,
        "memory filled by counting many (spoofed) clients; a limited client is never forgotten to make room",
        gt=0,
        description="clients counted per worker process and limit table",
    )
    trust_forwarded_for: bool = limit(
        False,
        "a client choosing its own address (and so its own rate limit) with `X-Forwarded-For`",
        description="take the client address from `X-Forwarded-For`, when the peer is a trusted proxy",
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = limit(
        DEFAULT_TRUSTED_PROXIES,
        "a client choosing its own address: only these peers' `X-Forwarded-For` is read, and the "
        "client is its rightmost entry that is not one of them",
        description="CIDRs of the proxies in front of the service, comma separated",
    )
    max_in_flight: int = limit(
        128,
        "overload: a queue that grows until every request times out (a request counts once its "
        "body has arrived, so slow uploads do not hold the slots)",
        ge=0,
        description="guarded requests in flight per API worker; past it `503 SERVICE_OVERLOADED` with "
        "`Retry-After` (0: no cap)",
    )
    # A 40 MP PNG takes ~0.3 GB to decode; the number of threads bounds that memory.
    decode_concurrency: int = limit(
        2,
        "memory: a 40 Mpx image takes ~0.3 GB to decode",
        gt=0,
        le=64,
        description="threads that decode and find faces per API worker (bounds decode memory)",
    )
    # Video: the sync route for short clips, jobs for long ones (README, "Video").
    video_max_bytes: int = limit(
        _VIDEO.max_bytes,
        "disk filled by one upload (videos are spooled to disk as they arrive: 413)",
        gt=0,
        description="largest video upload, in bytes",
    )
    video_max_duration_s: float = limit(
        _VIDEO.max_duration_s,
        "decoding time: a small file that declares hours (read from the header: 413)",
        gt=0,
        description="longest video, read from its header before decoding",
    )
    video_max_frame_pixels: int = limit(
        _VIDEO.max_frame_pixels,
        "decoder memory: a frame that declares gigapixels (read from the header: 413)",
        gt=0,
        description="largest video frame, width x height, from the header",
    )
    video_frames: int = Field(
        video.DEFAULT_FRAMES, gt=0, description="frames sampled from a video when the request names none"
    )
    video_full_every: int = Field(
        FULL_EVERY,
        ge=1,
        le=1000,
        description="the full face detector on every n-th sampled frame (and the first, and when a "
        "face is lost or enters); the faces are tracked in between. 1: full detection on every frame",
    )
    video_max_frames: int = limit(
        _VIDEO.max_frames,
        "work and memory per video (`frames` or `fps` asking for more gets this many)",
        gt=0,
        le=2000,
        description="most frames one video request may sample",
    )
    video_concurrency: int = limit(
        1,
        "CPU and memory taken by videos from image requests (more video requests wait, a few, then `503`)",
        gt=0,
        le=16,
        description="decoder processes of the synchronous video route per API worker",
    )
    job_concurrency: int = limit(
        1,
        "jobs and the synchronous route starving each other: jobs have decoder processes of their own",
        gt=0,
        le=16,
        description="decoder processes of the video jobs per API worker: jobs run at once",
    )
    video_timeout_s: float = limit(
        45.0,
        "a video that stalls its decoder (the process is killed)",
        gt=0,
        description="a synchronous video not decoded by then answers `422 VIDEO_TIMEOUT`",
    )
    job_timeout_s: float = limit(
        900.0,
        "a job that holds its decoder for ever (the process is killed)",
        gt=0,
        description="a video job not decoded by then fails `VIDEO_TIMEOUT`",
    )
    jobs_dir: str = Field(
        "",
        description="where video jobs keep their state and uploads, shared by the API workers (empty: "
        "a folder in the temp dir); with `DEEPFAKE_JOB_STORE`, only this replica's uploads",
    )
    job_store: SecretStr | None = Field(
        None,
        description="unset: video jobs on disk (`DEEPFAKE_JOBS_DIR`) and rate limits counted per worker "
        "process; `redis://[:password@]host:port/db` (or `rediss://`, TLS): jobs and rate limits "
        'shared by every replica through Redis (README, "Several replicas"); a secret, never logged',
    )
    redis_timeout_s: float = limit(
        1.0,
        "a slow or unreachable Redis holding requests: each call gives up after this (job routes answer "
        "`503 JOB_STORE_UNAVAILABLE`, rate limits count in the process meanwhile)",
        gt=0,
        le=30,
        description="the longest one call to Redis may take (connecting, or its answer)",
    )
    job_stale_after_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="a queued or running job whose owner (an API worker, a replica) has not "
        "heartbeated for this long is marked failed `JOB_INTERRUPTED` (owners heartbeat every fifth "
        "of it, at most every 2 s)",
    )
    job_ttl_s: float = limit(
        3600.0,
        "disk filled by results nobody fetches",
        gt=0,
        description="a finished job's result is deleted this long after",
    )
    max_jobs: int = limit(
        100,
        "disk and queue filled by jobs (past it, finished jobs are dropped, oldest first, then `503`)",
        gt=0,
        description="video jobs kept (queued, running and finished)",
    )
    max_jobs_per_client: int = limit(
        3,
        "one client monopolising the job queue (`429 JOB_QUOTA_EXCEEDED`, checked before the upload is read)",
        ge=0,
        description="video jobs one client may have queued or running (0: no bound)",
    )
    jobs_max_bytes: int = limit(
        1024**3,
        "disk filled by queued uploads (`503`)",
        ge=0,
        description="bytes of uploads of queued and running jobs, all clients (0: no bound)",
    )
    # Provenance beside the verdict (serving/provenance.py, README "Provenance").
    provenance: bool = Field(
        True,
        description="read each upload's provenance (C2PA Content Credentials, the IPTC digital source "
        "type in XMP, known watermarks) and report it beside the verdict",
    )
    provenance_trust_anchors: str = limit(
        "",
        "who may set a verdict: a valid manifest signed under one of these CAs that declares AI generation "
        "makes it `likely_fake` whatever the model says (none by default)",
        description="a PEM file of the certificate authorities to trust: a valid manifest signed under one "
        "of them that declares AI generation makes the verdict `likely_fake` (empty: none, nothing is "
        "trusted, provenance never changes a verdict)",
    )
    provenance_remote_manifests: bool = limit(
        False,
        "requests from the server to URLs the uploader chose (SSRF): off, a manifest a file only points "
        "to is reported, not fetched; OCSP is never fetched",
        description="fetch a C2PA manifest that a file only points to: a request to a URL the uploader "
        "chose, from the server (off: reported, not fetched)",
    )
    provenance_watermarks: bool = Field(
        True, description="look for the known invisible watermarks in each image's pixels (~2.5 ms an image)"
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="`json` lines (with `request_id`, `trace_id`) or BentoML's `text`"
    )
    trust_model_code: bool = limit(
        False,
        "a model archive running code in the server: whether Keras' `safe_mode` may be off (and a "
        "SavedModel's graph run) is the operator's choice here, never the archive's",
        description="serve a model imported with `--trust-code` (loaded with Keras `safe_mode` off)",
    )

    @field_validator("cors_origins", "ui_api_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("ui_api_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from serving.ui import api_origin

        for origin in value:
            if api_origin(origin) != origin:
                raise ValueError(f"{origin!r} is not an origin like https://api.example.com[:port]")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)  # raises ValueError naming the bad one
        return value

    @field_validator("rate_limits", "key_failure_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)  # raises ValueError with the bad part
        return value

    @field_validator("job_store")
    @classmethod
    def _check_job_store(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # set but empty: the disk store
        check_url(value.get_secret_value())  # its message never holds the URL
        return value

    @field_validator("provenance_trust_anchors")
    @classmethod
    def _check_trust_anchors(cls, value: str) -> str:
        if value:
            try:
                load_trust_anchors(value)
            except (OSError, ValueError) as exc:
                raise ValueError(f"not a readable PEM file of certificates: {exc}") from None
        return value

    @property
    def provenance_options(self) -> ProvenanceOptions:
        return ProvenanceOptions(
            enabled=self.provenance,
            trust_anchors=load_trust_anchors(self.provenance_trust_anchors)
            if self.provenance_trust_anchors
            else None,
            remote_manifests=self.provenance_remote_manifests,
            watermarks=self.provenance_watermarks,
        )

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A header token: a key with spaces or control characters is a typo (a file's trailing
        # newline, a pasted placeholder), refused at start rather than never matching.
        if value is None or value.get_secret_value() == "":
            return None  # set but empty: no key, as before
        if not re.fullmatch(r"[\x21-\x7e]+", value.get_secret_value()):
            raise ValueError(
                "an API key is printable ASCII without spaces (generate one: openssl rand -hex 32)"
            )
        return value

    @property
    def upload_timeout(self) -> float:
        return self.upload_timeout_s or self.request_timeout_s / 2

    @property
    def job_heartbeat_s(self) -> float:
        return min(2.0, self.job_stale_after_s / 5)

    def redis_link(self) -> RedisLink:
        """The process's connection to `job_store` (set), shared by the job store and limits."""
        assert self.job_store is not None
        return shared_link(self.job_store.get_secret_value(), self.redis_timeout_s)

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_image_pixels)

    @property
    def video_limits(self) -> video.VideoLimits:
        return video.VideoLimits(
            max_bytes=self.video_max_bytes,
            max_duration_s=self.video_max_duration_s,
            max_frame_pixels=self.video_max_frame_pixels,
            max_frames=self.video_max_frames,
        )


class SettingsError(SystemExit):
    """A bad setting: the one-line message names the variable; the start stops."""


SECRET_FIELDS = frozenset({"api_key", "job_store"})


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "*"
    name = ENV_PREFIX + field.upper()
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    shown = "'(hidden)'" if field in SECRET_FIELDS else repr(first.get("input"))
    return f"bad setting {name}={shown}: {first['msg']}{more}"


@functools.cache
def get_settings() -> Settings:
    """The server's settings; a bad value raises SettingsError (exit status 2) with one line."""
    try:
        return Settings()
    except ValidationError as exc:
        message = _explain(exc)
        print(f"deepfake: {message}", file=sys.stderr)
        raise SettingsError(2) from None


def _shown_default(field: Any) -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, tuple):
        default = ",".join(default)
    if default in (None, ""):
        return "unset"
    return f"`{str(default).lower() if isinstance(default, bool) else default}`"


def markdown_table() -> str:
    """The README's settings table, from the model itself."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_shown_default(field)} | {field.description} |")
    return "\n".join(rows)


def threat_of(field: Any) -> str | None:
    extra = field.json_schema_extra
    return extra.get(THREAT) if isinstance(extra, dict) else None  # type: ignore[return-value]


def security_table() -> str:
    """SECURITY.md's table of limits: every setting that bounds a client, and why."""
    rows = ["| setting | default | the threat it answers |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if (threat := threat_of(field)) is not None:
            rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_shown_default(field)} | {threat} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(security_table() if sys.argv[1:] == ["security"] else markdown_table())
