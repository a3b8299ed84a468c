"""Server settings, read once from environment variables (prefix `DEEPFAKE_`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from preprocessing.decode import DecodeLimits

DEFAULT_MODEL_NAME = "deepfake_classifier"


def _int(name: str, default: int) -> int:
    value = os.environ.get(f"DEEPFAKE_{name}")
    return default if value in (None, "") else int(value)


def _str(name: str, default: str) -> str:
    return os.environ.get(f"DEEPFAKE_{name}") or default


@dataclass(frozen=True)
class Settings:
    model_tag: str = field(default_factory=lambda: _str("MODEL_TAG", f"{DEFAULT_MODEL_NAME}:latest"))
    max_upload_bytes: int = field(default_factory=lambda: _int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024))
    max_image_pixels: int = field(default_factory=lambda: _int("MAX_IMAGE_PIXELS", 40_000_000))
    # Adaptive batching of the model service.
    max_batch_size: int = field(default_factory=lambda: _int("MAX_BATCH_SIZE", 64))
    max_latency_ms: int = field(default_factory=lambda: _int("MAX_LATENCY_MS", 10_000))
    request_timeout_s: int = field(default_factory=lambda: _int("REQUEST_TIMEOUT_S", 60))
    api_workers: int = field(default_factory=lambda: _int("API_WORKERS", 1))
    cors_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(o.strip() for o in _str("CORS_ORIGINS", "*").split(","))
    )

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_image_pixels)


SETTINGS = Settings()
