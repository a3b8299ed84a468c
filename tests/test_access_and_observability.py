"""API key, rate limit, request ids, JSON logs and domain metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from serving.access import FixedWindowLimiter, RateLimit, parse_rate_limits
from tests.helpers import FIXTURES, ServerProcess, image_bytes
from tests.inprocess import service_app

FACE = ("face.jpg", (FIXTURES / "astronaut.jpg").read_bytes(), "image/jpeg")


def test_rate_limit_parsing() -> None:
    assert parse_rate_limits("200/day, 50/hour") == (RateLimit(200, 86400), RateLimit(50, 3600))
    assert parse_rate_limits("") == ()
    with pytest.raises(ValueError):
        parse_rate_limits("50 per hour")


def test_fixed_windows_per_client() -> None:
    now = [0.0]
    limiter = FixedWindowLimiter((RateLimit(2, 60), RateLimit(3, 3600)), clock=lambda: now[0])
    assert [limiter.hit("a"), limiter.hit("a")] == [None, None]
    assert limiter.hit("a") == 60  # minute window full
    assert limiter.hit("b") is None  # other clients are not affected
    now[0] = 61
    assert limiter.hit("a") is None  # a new minute; the hour now holds 3
    now[0] = 125
    assert limiter.hit("a") == 3600 - 125  # the hour window is full
    small = FixedWindowLimiter((RateLimit(1, 60),), max_clients=2, clock=lambda: now[0])
    for client in "xyz":
        small.hit(client)
    assert len(small._windows) == 2  # bounded memory


@pytest.fixture(scope="module")
def guarded_server(served_tag: str) -> Iterator[TestClient]:
    """The service in process, with an API key and a rate limit."""
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_API_KEY": "s3cret", "DEEPFAKE_RATE_LIMITS": "3/minute"}
    with service_app(env) as app:
        yield app


def test_api_key_guards_detect_but_not_probes(guarded_server: TestClient) -> None:
    anonymous = guarded_server.post("/api/v1/detect/", files={"file": FACE})
    assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "UNAUTHORIZED"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = guarded_server.post(
        "/api/v1/detect/", files={"file": FACE}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert guarded_server.post("/detect", files={"file": FACE}).status_code == 401  # the client's too
    for path in ("/livez", "/readyz", "/api/v1/detect/health", "/api/v1/model/info", "/api/v1/docs"):
        assert guarded_server.get(path).status_code == 200, path


def test_rate_limit_answers_429_with_retry_after(guarded_server: TestClient) -> None:
    key = {"Authorization": "Bearer s3cret"}
    statuses = [
        guarded_server.post("/api/v1/detect/", files={"file": FACE}, headers=key).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    limited = guarded_server.post("/api/v1/detect/augmented", files={"file": FACE}, headers=key)
    assert limited.status_code == 429 and limited.json()["error_code"] == "RATE_LIMITED"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert guarded_server.get("/api/v1/detect/health").status_code == 200  # health is never limited


def test_request_id_on_every_answer_and_in_json_logs(server: ServerProcess) -> None:
    ok = server.post("/api/v1/detect/", files={"file": FACE})
    bad = server.post("/api/v1/detect/", files={"file": ("a.txt", b"hello", "text/plain")})
    get = server.get("/api/v1/detect/health")
    ids = [r.headers.get("x-request-id") for r in (ok, bad, get)]
    assert all(ids) and len(set(ids)) == 3
    # The client's own id is kept (to follow a request across systems); a malformed one is not.
    assert (
        server.get("/livez", headers={"X-Request-ID": "abc-123.X_9"}).headers["x-request-id"] == "abc-123.X_9"
    )
    assert server.get("/livez", headers={"X-Request-ID": "a b;c"}).headers["x-request-id"] != "a b;c"
    # Whole lines only: the server may be writing the last one as we read.
    written = server.log(tail=10**7).rpartition("\n")[0]
    lines = [json.loads(line) for line in written.splitlines() if line.startswith("{")]
    assert lines, "no JSON log lines"
    assert {"time", "level", "message"} <= set(lines[-1])
    assert ids[0] in {line.get("request_id") for line in lines}


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_domain_metrics(server: ServerProcess) -> None:
    before = server.get("/metrics").text
    body = server.post("/api/v1/detect/", files={"file": FACE}).json()
    server.post("/api/v1/detect/", files={"file": ("a.txt", b"hello", "text/plain")})
    server.post("/api/v1/detect/augmented", files={"file": ("x.png", image_bytes("PNG"), "image/png")})
    after = server.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert grew("deepfake_predictions_total", route="detect", verdict=body["verdict"]) == 1
    assert grew("deepfake_predictions_total", route="detect_augmented") == 1
    assert grew("deepfake_rejected_requests_total", status="415", error_code="UNSUPPORTED_FORMAT") == 1
    assert grew("deepfake_faces_per_image_count") == 2
    assert grew("deepfake_model_batch_images_sum") == 1 + 7  # one face, then seven variants
    assert grew("deepfake_model_batch_seconds_count") >= 1


def test_requests_past_the_in_flight_cap_get_503_with_retry_after() -> None:
    import asyncio

    from serving.access import AccessMiddleware

    release = asyncio.Event()

    async def slow_app(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    from serving.edge import EdgeMiddleware

    access = AccessMiddleware(slow_app, guarded=("/d",), api_key=None, rate_limits="", max_in_flight=2)
    middleware = EdgeMiddleware(
        access, file_limit=lambda path: 1024, upload_timeout_s=5, request_timeout_s=5, drain_timeout_s=5
    )

    async def call() -> tuple[int, dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/d", "method": "POST", "headers": []}
        await middleware(scope, None, send)  # type: ignore[arg-type]
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario() -> list[tuple[int, dict]]:
        calls = [asyncio.create_task(call()) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    assert sorted(status for status, _ in results) == [200, 200, 503, 503, 503]
    assert all(headers[b"retry-after"] == b"2" for status, headers in results if status == 503)
    assert access.in_flight == 0
