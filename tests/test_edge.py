"""The HTTP edge (serving/edge.py): every answer, the edge's own included (413, 429, 504, ...),
has the legacy body, X-Request-ID and the CORS headers; an early answer is readable."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from preprocessing import errors
from serving.access import AccessMiddleware
from serving.edge import ENVELOPE_BYTES, EdgeMiddleware
from serving.errors import Unauthorized, error_response
from serving.settings import Settings
from tests.helpers import ServerProcess, image_bytes
from tests.inprocess import service_app

DETECT = "/api/v1/detect/"
ORIGIN = {"Origin": "https://front-end.example"}
JPEG = image_bytes("JPEG", size=(200, 150))
LIMIT = Settings.model_fields["max_upload_bytes"].default  # the servers here keep the default


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
        content=b"x" * (LIMIT + ENVELOPE_BYTES + 1),
        headers={**ORIGIN, "content-type": "multipart/form-data; boundary=b"},
    )
    assert_edge_answer(declared, 413, "FILE_TOO_LARGE")
    assert f"{LIMIT} bytes" in declared.json()["error"]  # the file limit, not the envelope's
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


class FakeClient:
    """The ASGI side of a client that sends `chunks` of body, one per receive() (a `gap_s`
    pause before each), then stalls if `stalls` (the last chunk says more is coming), and records
    what the middleware sends back, with how much of the body had been read by then."""

    def __init__(self, chunks: list[bytes], gap_s: float = 0.0, stalls: bool = False) -> None:
        self.chunks = chunks
        self.gap_s = gap_s
        self.stalls = stalls
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.received == len(self.chunks):
            await asyncio.sleep(3600)  # the client sends nothing more (and does not go away)
        await asyncio.sleep(self.gap_s)
        self.received += 1
        more = self.received < len(self.chunks) or self.stalls
        return {"type": "http.request", "body": self.chunks[self.received - 1], "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append({**message, "received_so_far": self.received})

    def scope(self, *extra: tuple[bytes, bytes]) -> dict[str, Any]:
        length = str(sum(map(len, self.chunks))).encode()
        return {
            "type": "http",
            "method": "POST",
            "path": DETECT,
            "headers": [(b"content-length", length), *extra],
        }


def edge(app: Any, **options: Any) -> EdgeMiddleware:
    settings = {"upload_timeout_s": 5.0, "request_timeout_s": 5.0, "drain_timeout_s": 5.0, **options}
    return EdgeMiddleware(app, file_limit=lambda _: 10_000, **settings)


async def refuse(scope: dict, receive: Any, send: Any) -> None:
    raise Unauthorized()


def test_an_early_answer_sends_its_head_drains_the_body_then_ends() -> None:
    """A route that answers before reading (here: a refused API key): the answer's head goes out
    at once, with Connection: close, then the rest of the upload is read and dropped, then the
    answer's body, so that a client that reads only after sending reads the answer."""
    client = FakeClient([b"a" * 1000] * 5)
    asyncio.run(edge(refuse)(client.scope(), client.receive, client.send))  # type: ignore[arg-type]
    start, body = client.sent
    assert start["type"] == "http.response.start" and start["status"] == 401
    assert start["received_so_far"] == 0 and (b"connection", b"close") in start["headers"]
    assert body["type"] == "http.response.body" and b'"UNAUTHORIZED"' in body["body"]
    assert body["received_so_far"] == len(client.chunks)  # all of it, before the answer ends


def test_the_drain_is_bounded_in_time_not_in_bytes() -> None:
    """A body far larger than the cap is drained while it keeps coming; one that stops coming is
    given up after drain_timeout_s, and the answer ends all the same."""
    large = FakeClient([b"a" * 100_000] * 50)  # 500x the cap of 10_000
    asyncio.run(edge(refuse)(large.scope(), large.receive, large.send))  # type: ignore[arg-type]
    assert large.sent[-1]["received_so_far"] == len(large.chunks)

    stalled = FakeClient([b"a" * 1000] * 2, stalls=True)
    started = time.monotonic()
    asyncio.run(edge(refuse, drain_timeout_s=0.3)(stalled.scope(), stalled.receive, stalled.send))  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 3.0
    assert [m["type"] for m in stalled.sent] == ["http.response.start", "http.response.body"]


def test_a_drain_stops_when_the_client_stops_sending_and_a_408_is_not_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drain gives up on a client that sends nothing more for DRAIN_IDLE_S (as nginx's
    lingering_timeout), long before drain_timeout_s; an upload that did not arrive in time
    (408) gets its answer at once: there is no body coming to wait for."""
    import serving.edge

    monkeypatch.setattr(serving.edge, "DRAIN_IDLE_S", 0.2)
    stalled = FakeClient([b"a" * 1000], stalls=True)
    started = time.monotonic()
    asyncio.run(edge(refuse, drain_timeout_s=30)(stalled.scope(), stalled.receive, stalled.send))  # type: ignore[arg-type]
    assert time.monotonic() - started < 5.0 and stalled.sent[-1]["type"] == "http.response.body"

    async def read_body(scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    slow = FakeClient([b"a" * 1000] * 3, gap_s=1.0)  # each piece later than the upload deadline
    started = time.monotonic()
    middleware = edge(read_body, upload_timeout_s=0.3, drain_timeout_s=30)
    asyncio.run(middleware(slow.scope(), slow.receive, slow.send))  # type: ignore[arg-type]
    start, body = slow.sent
    assert start["status"] == 408 and b'"REQUEST_TIMEOUT"' in body["body"]
    assert time.monotonic() - started < 5.0 and slow.received == 0


@pytest.mark.parametrize(("size", "status"), [(200_000, 413), (5_000, 401)], ids=["over-the-cap", "refused"])
def test_a_client_waiting_for_100_continue_gets_the_answer_instead(size: int, status: int) -> None:
    """Expect: 100-continue, answered before the body was asked for (a Content-Length over the
    cap, or a refused key): that answer instead of `100 Continue` (uvicorn sends it when the app
    first asks for the body: it never asks), and no wait for a body that will not come."""
    client = FakeClient([b"a" * size], stalls=True)
    scope = client.scope((b"expect", b"100-continue"))
    started = time.monotonic()
    asyncio.run(edge(refuse)(scope, client.receive, client.send))  # type: ignore[arg-type]
    start, body = client.sent
    assert start["status"] == status and (b"connection", b"close") in start["headers"]
    assert body["type"] == "http.response.body" and client.received == 0
    assert time.monotonic() - started < 2.0  # not the 5 s drain bound


def test_drains_are_capped_in_number_and_not_counted_in_flight() -> None:
    """While drains are under way, the in-flight cap (serving/access.py) has them all back; past
    `max_drains` an early answer goes out at once, undrained (Connection: close)."""

    async def answer_early(scope: dict, receive: Any, send: Any) -> None:
        await error_response(errors.bad_request("refused before reading"), "test")(scope, receive, send)

    access = AccessMiddleware(
        answer_early, guarded=lambda path: path == DETECT, api_key=None, max_in_flight=1
    )
    middleware = edge(access, max_drains=2)

    async def scenario() -> tuple[list[int], int, list[FakeClient]]:
        slow = [FakeClient([b"a" * 1000] * 20, gap_s=0.05) for _ in range(3)]
        tasks = [asyncio.create_task(middleware(c.scope(), c.receive, c.send)) for c in slow]  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        seen = (middleware.draining, access.in_flight)
        await asyncio.gather(*tasks)
        return [middleware.draining, *seen], access.in_flight, slow

    (after, draining, in_flight), in_flight_after, clients = asyncio.run(scenario())
    assert (draining, in_flight) == (2, 0)  # two drain, none of them holds an in-flight slot
    assert (after, in_flight_after) == (0, 0)
    undrained = [c for c in clients if c.sent[-1]["received_so_far"] < len(c.chunks)]
    assert len(undrained) == 1 and all(c.sent[0]["status"] == 400 for c in clients)


def test_an_upload_over_the_limit_is_answered_readably_over_http(server: ServerProcess) -> None:
    """Over a real connection: the client sends a little more than the limit and reads a 413."""
    body = b"\xff" * (LIMIT + ENVELOPE_BYTES + 1024 * 1024)
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


# Far past the byte bound the drain once had (4x the limit), as in the issue: a 60 MB upload.
LARGE = 60_000_000


def multipart_file(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A well-formed multipart body (boundary `b`) whose `file` part is `total` bytes, in pieces."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    for start in range(0, total, size):
        yield b"\xff" * min(size, total - start)
    yield b"\r\n--b--\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_http_client_sending_60_mb_reads_its_413(server: ServerProcess, framing: str) -> None:
    """Python's http.client writes the whole body before it reads a byte: the server must read
    it all (a 413 given at once, then a closed connection, reads as "Connection reset by peer").
    Chunked, the 413 comes when the stream passes the cap, with the rest still to come."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    headers = {"Content-Type": "multipart/form-data; boundary=b", **ORIGIN}
    try:
        if framing == "chunked":
            connection.request(
                "POST", DETECT, body=multipart_file(LARGE), headers=headers, encode_chunked=True
            )
        else:
            connection.request("POST", DETECT, body=b"".join(multipart_file(LARGE)), headers=headers)
        response = connection.getresponse()
        status, payload = response.status, json.loads(response.read())
        closing = response.getheader("connection")
    finally:
        connection.close()
    assert status == 413, payload
    assert payload["error_code"] == "FILE_TOO_LARGE" and payload["error"] and payload["timestamp"]
    assert f"{LIMIT} bytes" in payload["error"]
    assert closing == "close"


def curl(*args: str) -> tuple[int, int, dict[str, Any]]:
    """(status, body bytes curl sent, the answer's JSON) of one curl call."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run = subprocess.run(
            ["curl", "-sS", "-o", out.name, "-w", "%{http_code} %{size_upload}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        status, sent = run.stdout.split()
        return int(status), int(sent), json.loads(Path(out.name).read_bytes())


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command-line tool")
def test_curl_over_the_limit_reads_the_413_and_keeps_its_body(server: ServerProcess, tmp_path: Path) -> None:
    """curl asks `Expect: 100-continue` before a large body: the 413 is its answer instead of
    `100 Continue`, so the body never travels (twice the limit: well within what the server
    would read and drop). Told not to ask (`Expect:` empty), curl sends the body and reads the
    413 after it, 60 MB as well."""
    upload = tmp_path / "large.jpg"
    upload.write_bytes(b"\xff" * (2 * LIMIT))
    # --expect100-timeout: wait for the answer as long as it takes (a busy machine is slow).
    status, sent, payload = curl(
        "--expect100-timeout",
        "60",
        "-H",
        "Expect: 100-continue",
        "-F",
        f"file=@{upload}",
        server.url + DETECT,
    )
    assert (status, payload["error_code"]) == (413, "FILE_TOO_LARGE")
    assert sent == 0  # the body stayed with the client

    upload.write_bytes(b"\xff" * LARGE)
    status, sent, payload = curl("-H", "Expect:", "-F", f"file=@{upload}", server.url + DETECT)
    assert (status, payload["error_code"]) == (413, "FILE_TOO_LARGE")
    assert sent > LARGE  # the whole multipart body went, and was read
