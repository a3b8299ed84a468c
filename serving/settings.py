"""Server settings: one validated model, read once from environment variables (`DEEPFAKE_*`).

A bad value stops the start with one line naming the variable (`load_settings`). Each default
is defined once: here, or where the fact lives (decode limits in preprocessing/decode.py, face
detection in preprocessing/faces.py) and referenced from here. The README's settings table is
generated from this model (`python -m serving.settings`) and a test keeps the two in step.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modeling.spec import DEFAULT_MODEL_NAME
from preprocessing import faces, video
from preprocessing.decode import DecodeLimits
from serving.access import parse_rate_limits
from serving.provenance import ProvenanceOptions, load_trust_anchors

ENV_PREFIX = "DEEPFAKE_"
_LIMITS = DecodeLimits()
_VIDEO = video.VideoLimits()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    model_tag: str = Field(f"{DEFAULT_MODEL_NAME}:latest", description="the model to serve from the store")
    max_upload_bytes: int = Field(_LIMITS.max_bytes, gt=0, description="largest image upload, in bytes")
    max_image_pixels: int = Field(_LIMITS.max_pixels, gt=0, description="largest image, width x height")
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
    request_timeout_s: float = Field(
        60.0, gt=0, description="a request not answered by then gets `504 TIMEOUT`"
    )
    upload_timeout_s: float | None = Field(
        None,
        gt=0,
        description="an upload not complete by then answers `408 REQUEST_TIMEOUT` (unset: half "
        "the request timeout)",
    )
    drain_timeout_s: float = Field(
        30.0,
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
    max_faces: int = Field(
        faces.DEFAULT_MAX_FACES, gt=0, le=100, description="faces judged per image (largest first)"
    )
    face_detector: Literal["blazeface", "mtcnn"] | None = Field(
        None,
        description="`blazeface` or `mtcnn` (unset: the one the model's training crops came from, its "
        "metadata's `detector`; a different one is served with a warning)",
    )
    face_min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="detector score a face needs (unset: the detector's own, 0.6 / 0.9)"
    )
    detect_max_side: int | None = Field(
        None,
        ge=64,
        le=4096,
        description="MTCNN only: detection runs on a copy at most this large (unset: 640)",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*",), description="allowed origins, comma separated"
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, the detect routes need `Authorization: Bearer <key>` (probes, health, info, "
        "docs stay open)",
    )
    rate_limits: str = Field(
        "",
        description="per-client limits on the detect routes, e.g. `200/day,50/hour` (the old service's); "
        "counted per worker process; empty: off",
    )
    trust_forwarded_for: bool = Field(
        False, description="take the client address from `X-Forwarded-For` (only behind a proxy you run)"
    )
    max_in_flight: int = Field(
        128,
        ge=0,
        description="detect requests in flight per API worker; past it `503 SERVICE_OVERLOADED` with "
        "`Retry-After` (0: no cap)",
    )
    # A 40 MP PNG takes ~0.3 GB to decode; the number of threads bounds that memory.
    decode_concurrency: int = Field(
        2, gt=0, le=64, description="threads that decode and find faces per API worker (bounds decode memory)"
    )
    # Video: the sync route for short clips, jobs for long ones (README, "Video").
    video_max_bytes: int = Field(_VIDEO.max_bytes, gt=0, description="largest video upload, in bytes")
    video_max_duration_s: float = Field(
        _VIDEO.max_duration_s, gt=0, description="longest video, read from its header before decoding"
    )
    video_max_frame_pixels: int = Field(
        _VIDEO.max_frame_pixels, gt=0, description="largest video frame, width x height, from the header"
    )
    video_frames: int = Field(
        video.DEFAULT_FRAMES, gt=0, description="frames sampled from a video when the request names none"
    )
    video_max_frames: int = Field(
        _VIDEO.max_frames, gt=0, le=2000, description="most frames one video request may sample"
    )
    video_concurrency: int = Field(
        1, gt=0, le=16, description="video decoder processes per API worker: videos decoded at once"
    )
    video_timeout_s: float = Field(
        45.0, gt=0, description="a synchronous video not decoded by then answers `422 VIDEO_TIMEOUT`"
    )
    job_timeout_s: float = Field(
        900.0, gt=0, description="a video job not decoded by then fails `VIDEO_TIMEOUT`"
    )
    jobs_dir: str = Field(
        "",
        description="where video jobs keep their state and uploads, shared by the API workers (empty: "
        "a folder in the temp dir)",
    )
    job_ttl_s: float = Field(3600.0, gt=0, description="a finished job's result is deleted this long after")
    max_jobs: int = Field(100, gt=0, description="video jobs kept (queued, running and finished)")
    # Provenance beside the verdict (serving/provenance.py, README "Provenance").
    provenance: bool = Field(
        True,
        description="read each upload's provenance (C2PA Content Credentials, the IPTC digital source "
        "type in XMP, known watermarks) and report it beside the verdict",
    )
    provenance_trust_anchors: str = Field(
        "",
        description="a PEM file of the certificate authorities to trust: a valid manifest signed under one "
        "of them that declares AI generation makes the verdict `likely_fake` (empty: none, nothing is "
        "trusted, provenance never changes a verdict)",
    )
    provenance_remote_manifests: bool = Field(
        False,
        description="fetch a C2PA manifest that a file only points to: a request to a URL the uploader "
        "chose, from the server (off: reported, not fetched)",
    )
    provenance_watermarks: bool = Field(
        True, description="look for the known invisible watermarks in each image's pixels (~2.5 ms an image)"
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="`json` lines (with `request_id`, `trace_id`) or BentoML's `text`"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)  # raises ValueError with the bad part
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

    @property
    def upload_timeout(self) -> float:
        return self.upload_timeout_s or self.request_timeout_s / 2

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


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else ENV_PREFIX + "*"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"bad setting {name}={first.get('input')!r}: {first['msg']}{more}"


@functools.cache
def get_settings() -> Settings:
    """The server's settings; a bad value raises SettingsError (exit status 2) with one line."""
    try:
        return Settings()
    except ValidationError as exc:
        message = _explain(exc)
        print(f"deepfake: {message}", file=sys.stderr)
        raise SettingsError(2) from None


def markdown_table() -> str:
    """The README's settings table, from the model itself."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = (
            "unset"
            if default in (None, "")
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
