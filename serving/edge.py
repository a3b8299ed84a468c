"""The HTTP edge: what every request passes before the routes, as plain ASGI middlewares added
with BentoML's public `add_asgi_middleware` (outermost first):

    RequestIdMiddleware   X-Request-ID on every answer (the client's own, or a new one)
    CORSMiddleware        Starlette's, so that every answer below it carries the CORS headers
    EdgeMiddleware        body caps (413, drained first so that browsers read it), upload
                          deadline (408), request deadline (504), errors -> legacy body
    AccessMiddleware      API key, rate limit, in-flight cap (serving/access.py)
    ClientRoutePolicy     the upload policy for the Python client's routes, checked before
                          BentoML parses them

Nothing here reads another framework's answer: errors are exceptions (serving/errors.py)
rendered by one function, and an answer that has started is never rewritten."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from preprocessing import errors
from preprocessing.errors import InputError
from serving.errors import (
    ASGIApp,
    Message,
    Receive,
    RequestTimeout,
    Scope,
    Send,
    ServiceError,
    UploadTimeout,
    send_error,
    unexpected,
)
from serving.forms import FormKind
from serving.multipart import encode_form, read_empty_json, read_form
from serving.observability import request_id_var

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
# Room for the multipart envelope (boundaries, part headers, text fields) around the file.
ENVELOPE_BYTES = 64 * 1024


def _where(scope: Scope) -> str:
    return f"{scope.get('method', '')} {scope.get('path', '')}"


class RequestIdMiddleware:
    """The request's id: the client's X-Request-ID when it is a plain token, else a new one.
    It tags the request's log lines and is on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


@dataclass
class _Body:
    """How much of the request body has arrived, against its cap and deadline."""

    limit: int
    deadline: float
    received: int = 0
    done: bool = False


class EdgeMiddleware:
    """Caps, deadlines and the legacy error answer for everything inside it.

    - The body is capped per route: `file_limit(path)`, the largest file the route takes, plus
      room for the multipart envelope. A declared Content-Length over it is answered 413 at
      once, a streamed body when it passes the cap.
    - Any answer that starts before the client finished sending (413, 401, 429, ...) first
      reads and drops the rest of the body, up to `drain_bytes`, so that the client reads the
      answer instead of a reset connection (Chromium reports a reset as "Failed to fetch").
    - An upload not complete after `upload_timeout_s` answers 408; a request not answered after
      `request_timeout_s` answers 504, both in the legacy shape.
    - An InputError or ServiceError raised inside (by the middlewares below, or by a body read)
      becomes its legacy answer; anything else is a logged 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        file_limit: Callable[[str], int],
        drain_bytes: int,
        upload_timeout_s: float,
        request_timeout_s: float,
        untimed: tuple[str, ...] = ("/metrics",),
    ) -> None:
        self.app = app
        self.file_limit = file_limit
        self.drain_bytes = drain_bytes
        self.upload_timeout_s = upload_timeout_s
        self.request_timeout_s = request_timeout_s
        self.untimed = untimed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        file_limit = self.file_limit(scope["path"])
        body = _Body(file_limit + ENVELOPE_BYTES, loop.time() + self.upload_timeout_s)
        body.done = not chunked and declared in (b"", b"0")
        started = False

        async def capped_receive() -> Message:
            if body.done:
                return await receive()  # past the body: only a disconnect is left to wait for
            try:
                message = await asyncio.wait_for(receive(), max(body.deadline - loop.time(), 0.001))
            except TimeoutError:
                raise UploadTimeout(self.upload_timeout_s) from None
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.done = not message.get("more_body", False)
                if body.received > body.limit:
                    raise errors.file_too_large(file_limit)
            return message

        async def drained_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                left = int(declared) - body.received if declared.isdigit() else 0
                if not body.done and (left > self.drain_bytes or not await self._drain(receive, body, loop)):
                    # Could not read it all: say so, and let the server close the connection.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if declared.isdigit() and int(declared) > body.limit:
            await send_error(drained_send, errors.file_too_large(file_limit), _where(scope))
            return
        task = asyncio.ensure_future(self.app(scope, capped_receive, drained_send))
        timeout = None if scope["path"] in self.untimed else self.request_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        except TimeoutError:
            if started:  # an answer is on its way: let it finish
                await task
                return
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await send_error(drained_send, RequestTimeout(self.request_timeout_s), _where(scope))
        except (InputError, ServiceError) as exc:
            if not started:
                await send_error(drained_send, exc, _where(scope))
        except Exception as exc:  # noqa: BLE001 - a fault of ours: logged, answered, never a dead worker
            if not started:
                await send_error(drained_send, unexpected(exc, _where(scope)), _where(scope))

    async def _drain(self, receive: Receive, body: _Body, loop: asyncio.AbstractEventLoop) -> bool:
        """Read and drop the rest of the body; False if it could not be read in bounds."""
        budget = self.drain_bytes
        while not body.done:
            remaining = body.deadline - loop.time()
            if budget <= 0 or remaining <= 0:
                return False
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                return False
            if message["type"] != "http.request":
                return False
            budget -= len(message.get("body", b""))
            body.done = not message.get("more_body", False)
        return True


class ClientRoutePolicy:
    """The Python client's routes (`@bentoml.api`, parsed by BentoML) under the same upload
    policy as the legacy routes: the body is read and checked here first, its fields parsed and
    checked as the legacy routes check them (serving/forms.py: BentoML's own validation of a
    bad value was a 500), and BentoML is handed a clean copy (safe filename, declared fields
    only, plain values). `routes[path]` is the route's form kind, or None for a route that takes
    no input (JSON `{}` or nothing)."""

    BOUNDARY = "deepfake-edge-boundary-7f3a1c"

    def __init__(self, app: ASGIApp, *, routes: dict[str, FormKind | None]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        kind = self.routes[scope["path"]]
        headers = scope.get("headers", [])
        if kind is None:
            await read_empty_json(headers, receive)
            body, content_type = b"{}", b"application/json"
        else:
            upload = await read_form(headers, receive, kind.policy)
            try:
                upload.fields = kind.encode(upload.fields)
                body = encode_form(upload, self.BOUNDARY)
            finally:
                upload.discard()
            content_type = f"multipart/form-data; boundary={self.BOUNDARY}".encode()
        kept = [
            (k, v) for k, v in headers if k not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        scope = {
            **scope,
            "headers": [*kept, (b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
