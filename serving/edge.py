"""The HTTP edge: what every request passes before the routes, as plain ASGI middlewares added
with BentoML's public `add_asgi_middleware` (outermost first), by `install`, from the route
table (serving/routes.py) and the settings:

    RequestIdMiddleware   X-Request-ID on every answer (the client's own, or a new one)
    CORSMiddleware        Starlette's, so that every answer below it carries the CORS headers
    EdgeMiddleware        body caps (413, the body drained so that every client reads it),
                          upload deadline (408), request deadline (504), errors -> legacy body
    AccessMiddleware      API key, rate limit, in-flight cap (serving/access.py)
    ClientRoutePolicy     the upload policy for the Python client's routes, checked before
                          BentoML parses them

Below them all, uvicorn closes connections whose headers do not arrive in time
(serving/bentoml_adapter.py `use_header_timeout`, also called by `install`).

Nothing here reads another framework's answer: errors are exceptions (serving/errors.py)
rendered by one function, and an answer that has started is never rewritten."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from preprocessing import errors
from preprocessing.errors import InputError
from serving.errors import (
    ASGIApp,
    Message,
    NotFound,
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
from serving.multipart import MAX_JSON_BYTES, encode_form, read_empty_json, read_form
from serving.observability import request_id_var

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
# A decoded path with a control character (a %0A, ...) matches no route: Starlette's mount of our
# app does not take it (its pattern stops at a newline) and would answer a plain-text 404.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
    asked: bool = False  # the app asked for the body (uvicorn then sends `100 Continue`)
    timed_out: bool = False  # the client did not send it in time (408): nothing to wait for


# What nginx calls lingering: an answer given before the body was read keeps reading and dropping
# the body for at most `drain_timeout_s` (nginx's lingering_time is 30 s), and stops when the
# client sends nothing for DRAIN_IDLE_S (nginx's lingering_timeout is 5 s), at most MAX_DRAINS
# requests at a time per worker; past that, the answer goes out at once and the connection closes.
DRAIN_IDLE_S = 5.0
MAX_DRAINS = 32


class EdgeMiddleware:
    """Caps, deadlines and the legacy error answer for everything inside it.

    - The body is capped per route: `file_limit(path)`, the largest file the route takes, plus
      room for the multipart envelope. A declared Content-Length over it is answered 413 at
      once, a streamed body when it passes the cap.
    - An answer that starts before the client finished sending (413, 401, 429, a malformed
      form, ...) is an early answer: its head goes out at once, with `Connection: close`; then
      the rest of the body is read and dropped, for up to `drain_timeout_s` (a time bound, not
      a byte bound: a large upload is read as long as it keeps coming, as nginx's
      lingering_time and lingering_timeout); then its body goes out and the connection closes.
      A 408 (the upload did not arrive in time) is not drained. A client that writes
      its whole body before reading (Python's http.client) so reads the answer instead of a reset
      connection, and so does Chromium ("Failed to fetch" otherwise); curl stops sending when
      it sees the head. At most `max_drains` requests drain at a time; past that the answer
      goes out at once. The drain runs after the routes are done with the request, so that it
      is never counted as work in flight (serving/access.py).
    - A request that waits for `100 Continue` (`Expect: 100-continue`) and is answered before
      it was asked for its body gets the answer instead: its body never travels.
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
        upload_timeout_s: float,
        request_timeout_s: float,
        drain_timeout_s: float,
        max_drains: int = MAX_DRAINS,
        untimed: tuple[str, ...] = ("/metrics",),
    ) -> None:
        self.app = app
        self.file_limit = file_limit
        self.upload_timeout_s = upload_timeout_s
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.max_drains = max_drains
        self.draining = 0  # requests draining now (this worker's event loop only)
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
        waits_for_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        started = False
        held: list[Message] | None = None  # an early answer's body, sent after the drain

        async def capped_receive() -> Message:
            body.asked = True
            if body.done:
                return await receive()  # past the body: only a disconnect is left to wait for
            try:
                message = await asyncio.wait_for(receive(), max(body.deadline - loop.time(), 0.001))
            except TimeoutError:
                body.timed_out = True
                raise UploadTimeout(self.upload_timeout_s) from None
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.done = not message.get("more_body", False)
                if body.received > body.limit:
                    raise errors.file_too_large(file_limit)
            return message

        async def edge_send(message: Message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if not body.done:  # an early answer: its head now, its body after the drain
                    held = []
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif held is not None:
                held.append(message)
                return
            await send(message)

        if _CONTROL.search(scope["path"]):
            await send_error(edge_send, NotFound(), _where(scope))
        elif declared.isdigit() and int(declared) > body.limit:
            await send_error(edge_send, errors.file_too_large(file_limit), _where(scope))
        else:
            await self._respond(scope, capped_receive, edge_send, lambda: started)
        if held is not None:  # the routes are done with the request: drain, then the answer's body
            early, held = held, None
            await self._drain(receive, body, waits_for_continue and not body.asked, loop)
            for message in early:
                await send(message)

    async def _respond(self, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]) -> None:
        """The app's answer under the request deadline, or the legacy answer of its error."""
        task = asyncio.ensure_future(self.app(scope, receive, send))
        timeout = None if scope["path"] in self.untimed else self.request_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        except TimeoutError:
            if started():  # an answer is on its way: let it finish
                await task
                return
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await send_error(send, RequestTimeout(self.request_timeout_s), _where(scope))
        except (InputError, ServiceError) as exc:
            if not started():
                await send_error(send, exc, _where(scope))
        except Exception as exc:  # noqa: BLE001 - a fault of ours: logged, answered, never a dead worker
            if not started():
                await send_error(send, unexpected(exc, _where(scope)), _where(scope))

    async def _drain(
        self, receive: Receive, body: _Body, waits_for_continue: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Read and drop the rest of the body, for at most `drain_timeout_s`, while it keeps
        coming (DRAIN_IDLE_S). Not for a client still waiting for `100 Continue` (it sends no
        body now), nor one that did not send it in time (its 408), nor past `max_drains`."""
        if body.done or body.timed_out or waits_for_continue or self.draining >= self.max_drains:
            return
        self.draining += 1
        try:
            deadline = loop.time() + self.drain_timeout_s
            while not body.done:
                try:
                    message = await asyncio.wait_for(receive(), min(deadline - loop.time(), DRAIN_IDLE_S))
                except TimeoutError:
                    return
                if message["type"] != "http.request":
                    return  # the client is gone
                body.done = not message.get("more_body", False)
        finally:
            self.draining -= 1


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


def install(service: Any, settings: Any, forms: Mapping[str, FormKind]) -> None:
    """The public service's edge, outermost first, every fact from the route table: the body
    limit of each path (its form's; a path without one: a small JSON body), the guarded paths,
    the paths that are work, the client routes' forms. `settings`: serving/settings.py's."""
    from starlette.middleware.cors import CORSMiddleware

    from serving.access import AccessMiddleware, ClientAddress, Outage, make_limiter, parse_rate_limits
    from serving.bentoml_adapter import use_header_timeout
    from serving.routes import ROUTES

    use_header_timeout(settings.header_timeout_s)
    file_limits = {name: form.policy.max_file_bytes for name, form in forms.items()}
    file_limits["none"] = MAX_JSON_BYTES  # a route without an upload: at most an empty JSON body
    rate, failures = parse_rate_limits(settings.rate_limits), parse_rate_limits(settings.key_failure_limits)
    # With a shared store (Redis), the limits count there, for every replica (serving/access.py).
    shared = {"link": settings.redis_link(), "outage": Outage()} if settings.job_store else {}
    client_routes = {
        path: forms[route.form] if route.work else None
        for route in ROUTES.served_by("bentoml")
        if "POST" in route.methods
        for path in route.paths
    }
    service.add_asgi_middleware(RequestIdMiddleware)
    service.add_asgi_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=sorted({m for route in ROUTES for m in route.methods} | {"OPTIONS"}),
        allow_headers=["*"],
        expose_headers=["Retry-After", "X-Request-ID"],
    )
    service.add_asgi_middleware(
        EdgeMiddleware,
        file_limit=lambda path: file_limits[ROUTES.form(path)],
        upload_timeout_s=settings.upload_timeout,
        request_timeout_s=settings.request_timeout_s,
        drain_timeout_s=settings.drain_timeout_s,
    )
    service.add_asgi_middleware(
        AccessMiddleware,
        guarded=ROUTES.guarded,
        work=ROUTES.work,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        limiter=make_limiter(rate, settings.rate_limit_clients, name="rate", **shared),
        key_failures=make_limiter(failures, settings.rate_limit_clients, name="key-failures", **shared),
        client=ClientAddress(settings.trust_forwarded_for, settings.trusted_proxies),
        max_in_flight=settings.max_in_flight,
    )
    service.add_asgi_middleware(ClientRoutePolicy, routes=client_routes)
