"""The HTTP edge (serving/edge.py): every answer, the edge's own included (413, 429, 504, ...),
has the legacy body, X-Request-ID and the CORS headers; an early answer is readable."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from serving.edge import EdgeMiddleware
from serving.errors import Unauthorized
from tests.helpers import ServerProcess, image_bytes
from tests.inprocess import service_app

DETECT = "/api/v1/detect/"
ORIGIN = {"Origin": "https://front-end.example"}
JPEG = image_bytes("JPEG", size=(200, 150))


def assert_edge_answer(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and body["error"] and body["timestamp"], body
    assert response.headers["x-request-id"]
    assert response.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()


@pytest.fixture(scope="module")
def guarded(served_tag: str) -> Iterator[TestClient]:
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_API_KEY": "k3y", "DEEPFAKE_RATE_LIMITS": "3/minute"}
    with service_app(env) as app:
        yield app


def test_413_and_429_carry_cors_for_a_cross_origin_request(app: TestClient, guarded: TestClient) -> None:
    declared = app.post(
        DETECT,
        content=b"x" * (11 * 1024 * 1024),
        headers={**ORIGIN, "content-type": "multipart/form-data; boundary=b"},
    )
    assert_edge_answer(declared, 413, "FILE_TOO_LARGE")
    assert "10485760 bytes" in declared.json()["error"]  # the file limit, not the envelope's
    key = {**ORIGIN, "Authorization": "Bearer k3y"}
    assert_edge_answer(
        guarded.post(DETECT, files={"file": ("a.jpg", JPEG)}, headers=ORIGIN), 401, "UNAUTHORIZED"
    )
    # The refused request above counted: two more are allowed this minute.
    answers = [guarded.post(DETECT, files={"file": ("a.jpg", JPEG)}, headers=key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert_edge_answer(answers[2], 429, "RATE_LIMITED")
    assert answers[2].headers["retry-after"]


def test_a_request_past_the_request_timeout_answers_the_legacy_body(slow_tag: str) -> None:
    """The slow model takes hundreds of ms for seven variants: past a 50 ms request timeout."""
    env = {
        "DEEPFAKE_MODEL_TAG": slow_tag,
        "DEEPFAKE_FACE_DETECTION": "false",
        "DEEPFAKE_REQUEST_TIMEOUT_S": "0.05",
    }
    with service_app(env) as app:
        response = app.post("/api/v1/detect/augmented", files={"file": ("a.jpg", JPEG)}, headers=ORIGIN)
        assert_edge_answer(response, 504, "TIMEOUT")
        assert app.get("/livez").status_code == 200  # and serving on


def test_an_early_answer_waits_for_the_body_it_did_not_read() -> None:
    """A route that answers before reading (here: a refused API key) still has the rest of the
    upload read and dropped first, so that the client reads the answer, not a reset."""
    chunks = [b"a" * 1000] * 5
    received: list[int] = []
    sent: list[dict[str, Any]] = []

    async def refuse(scope: dict, receive: Any, send: Any) -> None:
        raise Unauthorized()

    async def receive() -> dict[str, Any]:
        received.append(len(received))
        more = len(received) < len(chunks)
        return {"type": "http.request", "body": chunks[len(received) - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append({**message, "received_so_far": len(received)})

    edge = EdgeMiddleware(
        refuse, file_limit=lambda _: 10_000, drain_bytes=10_000, upload_timeout_s=5, request_timeout_s=5
    )
    scope = {"type": "http", "method": "POST", "path": DETECT, "headers": [(b"content-length", b"5000")]}
    asyncio.run(edge(scope, receive, send))  # type: ignore[arg-type]
    start = sent[0]
    assert start["status"] == 401 and start["received_so_far"] == 5  # all of it, before the answer
    assert (b"connection", b"close") not in start["headers"]


def test_an_upload_over_the_limit_is_answered_readably_over_http(server: ServerProcess) -> None:
    """Over a real connection: the client sends 12 MB against a 10 MiB limit and reads a 413."""
    body = b"\xff" * (12 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {DETECT} HTTP/1.1\r\nHost: x\r\nOrigin: https://front-end.example\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.sendall(body)  # a server that did not read it would reset this connection
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head[:200]
    assert b"access-control-allow-origin: *" in head.lower()
    assert b'"FILE_TOO_LARGE"' in payload
