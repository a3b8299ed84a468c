"""Domain metrics (Prometheus, next to BentoML's own on /metrics) and JSON logs.

Metrics are created on first use, inside the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR
when a worker starts, after the service module is imported, and a client created earlier
would count in a private registry that /metrics never shows."""

from __future__ import annotations

import contextvars
import functools
import logging
from dataclasses import dataclass
from typing import Any

# The request's id (serving/edge.py sets it); log lines of that request carry it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@dataclass(frozen=True)
class DomainMetrics:
    predictions: Any  # Counter: verdicts by route and verdict
    faces: Any  # Histogram: faces found per image
    rejected: Any  # Counter: error answers by status and error code
    batch_seconds: Any  # Histogram: model time per batch
    batch_images: Any  # Histogram: images per model batch (faces and variants included)


@functools.cache
def metrics() -> DomainMetrics:
    from prometheus_client import Counter, Histogram

    return DomainMetrics(
        predictions=Counter("deepfake_predictions", "Verdicts given, by route", ["route", "verdict"]),
        faces=Histogram(
            "deepfake_faces_per_image", "Faces found per image", buckets=(0, 1, 2, 3, 5, 10, 20, 50)
        ),
        rejected=Counter(
            "deepfake_rejected_requests", "Error answers, by status and code", ["status", "error_code"]
        ),
        batch_seconds=Histogram(
            "deepfake_model_batch_seconds",
            "Model time per batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
        batch_images=Histogram(
            "deepfake_model_batch_images",
            "Images per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
    )


def record_verdict(route: str, verdict: str, faces: int) -> None:
    metrics().predictions.labels(route=route, verdict=verdict).inc()
    metrics().faces.observe(faces)


def current_trace_id() -> str | None:
    """The OpenTelemetry trace id of the current request (it spans both services), if any."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class _RequestIds(logging.Filter):
    """Adds the request id (as in the X-Request-ID header) and the trace id to a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.trace_id = current_trace_id()
        return True


def configure_logging(log_format: str) -> None:
    """JSON lines on BentoML's handlers (log_format "json"), and INFO for our own logger."""
    logging.getLogger("deepfake").setLevel(logging.INFO)
    if log_format != "json":
        return
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(component)s %(name)s %(message)s %(request_id)s %(trace_id)s",
        rename_fields={"asctime": "time", "levelname": "level"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        # BentoML's text-format helpers, already in the fields above
        reserved_attrs=[*RESERVED_ATTRS, "levelname_bracketed", "trace_msg"],
    )
    for name in ("", "bentoml"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
            handler.addFilter(_RequestIds())
