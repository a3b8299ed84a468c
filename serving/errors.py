"""Error bodies in the legacy shape, `{"error", "error_code", "timestamp"}`, for every route.

BentoML and Starlette answer some faults themselves (validation errors, unknown routes, wrong
methods) in their own shapes; `LegacyHTTPMiddleware` rewrites those so that clients see one
shape, and caps the request body before any of it is parsed."""

from __future__ import annotations

import asyncio
import json
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

# Codes for answers the framework gives on its own; our own faults carry their own code.
STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "FILE_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
    504: "TIMEOUT",
}


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat()


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": message, "error_code": code, "timestamp": utc_timestamp()}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


# At capacity: the in-flight cap (serving/access.py) and a call the model service shed.
OVERLOADED = ("SERVICE_OVERLOADED", "The service is at capacity; retry shortly")
OVERLOADED_RETRY_AFTER_S = 2


def overloaded_response() -> JSONResponse:
    return error_response(503, *OVERLOADED, {"Retry-After": str(OVERLOADED_RETRY_AFTER_S)})


def input_error_response(exc: InputError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message)


def _framework_error(status: int, body: bytes) -> dict[str, str]:
    """Legacy body for an error the framework wrote in its own shape."""
    code = STATUS_CODES.get(status, f"HTTP_{status}")
    message = body.decode("utf-8", "replace").strip() or code
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]  # BentoML 1.4 wraps 4xx bodies in a one-element list
    if isinstance(data, dict):
        if "error_code" in data:
            return data
        message = str(data.get("error") or data.get("detail") or message)
        details = data.get("detail") if "error" in data else None
        if isinstance(details, list) and details:
            details = [d for d in details if isinstance(d, dict)]
            message += ": " + "; ".join(
                f"{'.'.join(map(str, d.get('loc', [])))} {d.get('msg', '')}".strip() for d in details
            )
            missing = [d["loc"][-1] for d in details if d.get("type") == "missing" and d.get("loc")]
            if missing:  # a required form field is absent: legacy MISSING_FILE for `file`
                code = f"MISSING_{str(missing[0]).upper()}"
                message = f"No {missing[0]} provided (multipart form field '{missing[0]}')"
    if status >= 500:
        message = "The server failed to answer this request; see the server log"
    return error_body(code, message)


class LegacyHTTPMiddleware:
    """Path aliases, a request-body cap, every error in the legacy shape (and counted), and
    an X-Request-ID header on every answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        aliases: dict[str, str],
        max_body_bytes: int,
        body_timeout_s: float,
        passthrough: tuple[str, ...] = ("/livez", "/readyz", "/healthz", "/metrics"),
    ) -> None:
        self.app = app
        self.aliases = aliases
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.passthrough = passthrough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.passthrough:
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.aliases:
            path = self.aliases[scope["path"]]
            scope = {**scope, "path": path, "raw_path": path.encode()}

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            _count_rejected(413, "FILE_TOO_LARGE")
            await self._send_error(send, 413, "FILE_TOO_LARGE", self._too_large())
            return

        received = 0
        too_large = stalled = body_done = False
        # A deadline for the whole body, not an idle timeout: a client trickling a byte a
        # second must not hold a worker slot until the request timeout.
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def capped_receive() -> Message:
            nonlocal received, too_large, stalled, body_done
            if body_done:  # past the body, receive() only waits for a disconnect
                return await receive()
            try:
                remaining = body_deadline - asyncio.get_running_loop().time()
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                # A stalled upload: stop waiting; the parser sees a disconnect, the answer is a 408.
                stalled = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Stop reading; the parser sees a disconnect and the answer below is a 413.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400 and not (too_large or stalled):
                    await send({**message, "headers": [*message.get("headers", []), *_request_id_header()]})
                else:
                    start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            if too_large:
                status, body = 413, error_body("FILE_TOO_LARGE", self._too_large())
            elif stalled:
                status = 408
                body = error_body(
                    "REQUEST_TIMEOUT", f"The upload did not complete in {self.body_timeout_s:g} s"
                )
            else:
                status = start["status"]
                body = _framework_error(status, b"".join(chunks))
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            _count_rejected(status, body["error_code"])
            await send_json(send, status, body, [*headers, *_request_id_header()])

        await self.app(scope, capped_receive, rewriting_send)

    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_body_bytes} bytes"

    async def _send_error(self, send: Send, status: int, code: str, message: str) -> None:
        await send_json(send, status, error_body(code, message), _request_id_header())


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        *headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _request_id_header() -> list[tuple[bytes, bytes]]:
    """The request id that also tags this request's log lines, for every answer."""
    from serving.observability import current_request_id

    request_id = current_request_id()
    return [(b"x-request-id", request_id.encode())] if request_id else []


def _count_rejected(status: int, code: str) -> None:
    from serving.observability import metrics

    metrics().rejected.labels(status=str(status), error_code=code).inc()
