"""Server settings, read once from environment variables (prefix `DEEPFAKE_`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from preprocessing.decode import DecodeLimits

DEFAULT_MODEL_NAME = "deepfake_classifier"


@dataclass(frozen=True)
class FaceSettings:
    require: bool = False  # no face: 422 NO_FACE instead of judging the whole image
    max_faces: int = 20
    min_score: float = 0.9
    max_side: int = 640  # detection runs on a copy at most this large


def _int(name: str, default: int) -> int:
    value = os.environ.get(f"DEEPFAKE_{name}")
    return default if value in (None, "") else int(value)


def _str(name: str, default: str) -> str:
    return os.environ.get(f"DEEPFAKE_{name}") or default


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(f"DEEPFAKE_{name}", "").strip().lower()
    return default if not value else value in ("1", "true", "yes", "on")


def _float(name: str, default: float) -> float:
    value = os.environ.get(f"DEEPFAKE_{name}")
    return default if value in (None, "") else float(value)


@dataclass(frozen=True)
class Settings:
    model_tag: str = field(default_factory=lambda: _str("MODEL_TAG", f"{DEFAULT_MODEL_NAME}:latest"))
    max_upload_bytes: int = field(default_factory=lambda: _int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024))
    max_image_pixels: int = field(default_factory=lambda: _int("MAX_IMAGE_PIXELS", 40_000_000))
    # Adaptive batching of the model service.
    max_batch_size: int = field(default_factory=lambda: _int("MAX_BATCH_SIZE", 64))
    # BentoML answers 503 for a queued call it expects to finish later than this. Its estimate
    # counts calls, not images: with faces, one call can carry 16 crops. 10 s gave 59 503s
    # in 512 requests at 64 clients (p99 10.4 s); half the request timeout leaves room.
    max_latency_ms: int = field(default_factory=lambda: _int("MAX_LATENCY_MS", 30_000))
    batch_policy: str = field(default_factory=lambda: _str("BATCH_POLICY", "greedy"))  # or "bentoml"
    request_timeout_s: int = field(default_factory=lambda: _int("REQUEST_TIMEOUT_S", 60))
    # An upload not complete this long after it started answers 408 (default: half the
    # request timeout, so that it comes before BentoML's own 504).
    upload_timeout_s: float = field(default_factory=lambda: _float("UPLOAD_TIMEOUT_S", 0.0))
    api_workers: int = field(default_factory=lambda: _int("API_WORKERS", 1))
    # Faces: find them, judge each; the image verdict is the most-fake face.
    face_detection: bool = field(default_factory=lambda: _bool("FACE_DETECTION", True))
    require_face: bool = field(default_factory=lambda: _bool("REQUIRE_FACE", False))
    max_faces: int = field(default_factory=lambda: _int("MAX_FACES", 20))
    face_min_score: float = field(default_factory=lambda: _float("FACE_MIN_SCORE", 0.9))
    detect_max_side: int = field(default_factory=lambda: _int("DETECT_MAX_SIDE", 640))
    # Access: off unless set. API key as 'Authorization: Bearer <key>' on the detect routes;
    # per-client rate limits such as "200/day,50/hour" (the old service's defaults).
    api_key: str | None = field(default_factory=lambda: _str("API_KEY", "") or None)
    rate_limits: str = field(default_factory=lambda: _str("RATE_LIMITS", ""))
    trust_forwarded_for: bool = field(default_factory=lambda: _bool("TRUST_FORWARDED_FOR", False))
    # Detect requests in flight per API worker; past it: 503 SERVICE_OVERLOADED, Retry-After.
    max_in_flight: int = field(default_factory=lambda: _int("MAX_IN_FLIGHT", 128))
    # Threads that decode and find faces, per API worker: a 40 MP PNG takes ~0.3 GB to decode.
    decode_concurrency: int = field(default_factory=lambda: _int("DECODE_CONCURRENCY", 2))
    log_format: str = field(default_factory=lambda: _str("LOG_FORMAT", "json"))
    cors_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(o.strip() for o in _str("CORS_ORIGINS", "*").split(","))
    )

    @property
    def faces(self) -> FaceSettings:
        return FaceSettings(
            require=self.require_face,
            max_faces=self.max_faces,
            min_score=self.face_min_score,
            max_side=self.detect_max_side,
        )

    @property
    def upload_timeout(self) -> float:
        return self.upload_timeout_s or self.request_timeout_s / 2

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_image_pixels)


SETTINGS = Settings()
