"""Errors as types, and the one legacy body every error answer has:
`{"error", "error_code", "timestamp"}` (+ `details` where there is more to say).

Faults of the client's upload are `preprocessing.errors.InputError`; the service's own answers
(access, overload, timeouts, routing) are the `ServiceError` subclasses below. Both carry their
status, code, message and headers; `error_response` / `send_error` turn either into the answer,
count it and log one line (never a traceback: a client fault is not a server fault)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from preprocessing.errors import InputError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("deepfake")


class ServiceError(Exception):
    """An answer of the service's own making, in the legacy error shape."""

    status = 500
    code = "INTERNAL_ERROR"
    message = "The server failed to answer this request; see the server log"

    def __init__(
        self, message: str | None = None, *, details: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or type(self).message
        super().__init__(self.message)
        self.details = details
        self.headers = {**self.default_headers(), **(headers or {})}

    def default_headers(self) -> dict[str, str]:
        return {}


class Unauthorized(ServiceError):
    status, code = 401, "UNAUTHORIZED"
    message = "A valid API key is required: 'Authorization: Bearer <key>'"

    def default_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class RateLimited(ServiceError):
    status, code = 429, "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many requests from this client; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


class Overloaded(ServiceError):
    """At capacity: the in-flight cap, or a call the model service shed."""

    status, code = 503, "SERVICE_OVERLOADED"
    message = "The service is at capacity; retry shortly"
    RETRY_AFTER_S = 2

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.RETRY_AFTER_S)}


class QuotaExceeded(ServiceError):
    """This client has as many video jobs queued or running as it may."""

    status, code = 429, "JOB_QUOTA_EXCEEDED"
    message = "This client has as many video jobs queued or running as it may; retry when one is done"
    RETRY_AFTER_S = 10

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.RETRY_AFTER_S)}


class JobStoreDown(ServiceError):
    """The video job store cannot answer now (Redis down or slow, a disk that refuses writes, or
    this server stopping): the job routes' 503; image routes never depend on it."""

    status, code = 503, "JOB_STORE_UNAVAILABLE"
    message = "Video jobs cannot be reached right now; retry shortly"
    RETRY_AFTER_S = 5

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.RETRY_AFTER_S)}


class StorageFull(ServiceError):
    """The server's disk refused a write (an upload being spooled, a job): not the client's fault."""

    status, code = 507, "INSUFFICIENT_STORAGE"
    message = "The server has no room for this upload now; retry later"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}


class ModelUnavailable(ServiceError):
    status, code = 503, "MODEL_UNAVAILABLE"
    message = "The model cannot serve right now; retry later"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class UploadTimeout(ServiceError):
    status, code = 408, "REQUEST_TIMEOUT"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The upload did not complete in {seconds:g} s", headers={"Connection": "close"})


class RequestTimeout(ServiceError):
    status, code = 504, "TIMEOUT"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request was not answered in {seconds:g} s; retry later")


class InternalError(ServiceError):
    """A fault of the server's own; `unexpected` logged it with its traceback already."""

    logged = True


class ClientDisconnected(ServiceError):
    """Nobody reads this answer; it is counted so that a vanished client is not a 5xx."""

    status, code = 400, "CLIENT_DISCONNECTED"
    message = "The client disconnected before the upload was complete"


class NotFound(ServiceError):
    status, code = 404, "NOT_FOUND"
    message = "No such route; see /api/v1/docs"


class MethodNotAllowed(ServiceError):
    status, code = 405, "METHOD_NOT_ALLOWED"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"This route takes {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})


AnyError = InputError | ServiceError


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat()


def legacy_body(error: AnyError) -> dict[str, str]:
    body = {"error": error.message, "error_code": error.code, "timestamp": utc_timestamp()}
    if error.details:
        body["details"] = error.details
    return body


def _record(error: AnyError, where: str) -> None:
    from serving.observability import metrics

    metrics().rejected.labels(status=str(error.status), error_code=error.code).inc()
    if getattr(error, "logged", False):
        return
    level = logging.INFO if error.status < 500 else logging.WARNING
    logger.log(level, "%d %s %s: %s", error.status, error.code, where, error.message)


def error_response(error: AnyError, where: str = "") -> JSONResponse:
    """The legacy answer for `error`, counted and logged in one line."""
    _record(error, where)
    return JSONResponse(legacy_body(error), status_code=error.status, headers=error.headers)


async def send_error(send: Send, error: AnyError, where: str = "") -> None:
    """`error_response` for code that speaks raw ASGI (the middlewares)."""
    _record(error, where)
    payload = json.dumps(legacy_body(error)).encode()
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def unexpected(exc: BaseException, where: str) -> InternalError:
    """A fault of the server's own: logged once with its traceback, answered as a plain 500."""
    logger.error("500 INTERNAL_ERROR %s: %s: %s", where, type(exc).__name__, exc, exc_info=exc)
    return InternalError()
