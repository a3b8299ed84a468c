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
    assert [limiter.count("a"), limiter.count("a")] == [None, None]
    assert limiter.count("a") == 60  # minute window full
    assert limiter.count("b") is None  # other clients are not affected
    now[0] = 61
    assert limiter.count("a") is None  # a new minute; the hour now holds 3
    now[0] = 125
    assert limiter.count("a") == 3600 - 125  # the hour window is full
    small = FixedWindowLimiter((RateLimit(5, 60),), max_clients=2, clock=lambda: now[0])
    for client in "xyz":
        small.count(client)
    assert len(small) == 2  # bounded memory: none of them was limited


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
    """3/minute for this client, wrong keys included (the test above may have used some)."""
    key = {"Authorization": "Bearer s3cret"}
    statuses = [
        guarded_server.post("/api/v1/detect/", files={"file": FACE}, headers=key).status_code
        for _ in range(4)
    ]
    assert 429 in statuses and set(statuses[: statuses.index(429)]) <= {200}
    assert set(statuses[statuses.index(429) :]) == {429}
    wrong = guarded_server.post(
        "/api/v1/detect/", files={"file": FACE}, headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 429  # limited before its key is looked at
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

    access = AccessMiddleware(slow_app, guarded=lambda path: path == "/d", api_key=None, max_in_flight=2)
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


# -- the client behind proxies, and limits that hold ---------------------------------------------


def scope_from(peer: str, *forwarded: str, path: str = "/d", headers: tuple = ()) -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "client": (peer, 40000),
        "headers": [*((b"x-forwarded-for", value.encode()) for value in forwarded), *headers],
    }


@pytest.mark.parametrize(
    ("trust", "peer", "forwarded", "client"),
    [
        # Not trusting the header: the peer, whatever the client writes.
        (False, "127.0.0.1", ("6.6.6.6",), "127.0.0.1"),
        # A trusted proxy: the rightmost entry that is not a trusted proxy; the entries left of
        # it are the client's own writing.
        (True, "127.0.0.1", ("6.6.6.6, 198.51.100.7",), "198.51.100.7"),
        (True, "127.0.0.1", ("6.6.6.6", "198.51.100.7, 127.0.0.1"), "198.51.100.7"),
        (True, "10.1.2.3", ("198.51.100.7:5555, 10.0.0.9",), "198.51.100.7"),
        # Not from a trusted proxy: its header is not read.
        (True, "203.0.113.5", ("198.51.100.7",), "203.0.113.5"),
        # IPv6 by its /64; an IPv4-mapped address as IPv4.
        (True, "::1", ("2001:db8:1:2:aaaa::1",), "2001:db8:1:2::/64"),
        (False, "::ffff:192.0.2.1", (), "192.0.2.1"),
        # Everything trusted: the leftmost.
        (True, "127.0.0.1", ("10.0.0.1, 10.0.0.2",), "10.0.0.1"),
        (True, "127.0.0.1", (), "127.0.0.1"),
    ],
)
def test_the_client_behind_trusted_proxies(trust: bool, peer: str, forwarded: tuple, client: str) -> None:
    from serving.access import ClientAddress

    address = ClientAddress(trust, ("127.0.0.1/32", "::1/128", "10.0.0.0/8"))
    assert address(scope_from(peer, *forwarded)) == client


def test_a_limited_client_stays_limited_after_1000_spoofed_clients() -> None:
    """The limiter forgot its least recently seen client to make room: a flood of new keys
    freed a client at its limit. Now only clients under their limits make room."""
    now = [0.0]
    limiter = FixedWindowLimiter((RateLimit(2, 3600),), max_clients=50, clock=lambda: now[0])
    assert [limiter.count("victim") for _ in range(3)][2] is not None
    for n in range(1000):
        now[0] += 0.1
        limiter.count(f"spoofed-{n}")
    assert limiter.count("victim") is not None  # still limited
    assert len(limiter) <= 2 * 50  # and memory bounded
    now[0] += 3600  # its window passed: served again
    assert limiter.count("victim") is None


def test_many_limited_clients_keep_memory_bounded() -> None:
    now = [0.0]
    limiter = FixedWindowLimiter((RateLimit(1, 3600),), max_clients=10, clock=lambda: now[0])
    for n in range(500):
        now[0] += 1
        limiter.count(f"c{n}")
        limiter.count(f"c{n}")  # each at its limit
    assert len(limiter) <= 20 and len(limiter._releases) <= 2 * 20 + 64


def call(middleware: object, scope: dict, body: list[bytes] | None = None) -> tuple[int, dict]:
    """Run one request through an ASGI middleware: its status and headers."""
    import asyncio

    chunks = list(body or [])
    sent: list[dict] = []

    async def receive() -> dict:
        if not chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))  # type: ignore[operator]
    return sent[0]["status"], dict(sent[0]["headers"])


def guarded_stack(**options: object) -> tuple[object, object]:
    from serving.access import AccessMiddleware
    from serving.edge import EdgeMiddleware

    async def ok(scope: dict, receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    access = AccessMiddleware(ok, guarded=lambda path: path == "/d", **options)  # type: ignore[arg-type]
    edge = EdgeMiddleware(
        access, file_limit=lambda path: 1024, upload_timeout_s=5, request_timeout_s=5, drain_timeout_s=1
    )
    return edge, access


def test_wrong_keys_count_and_are_limited_before_they_are_answered() -> None:
    """A wrong key was answered 401 before the limiter ran: guessing keys was not limited."""
    limits = parse_rate_limits("3/hour")
    edge, _ = guarded_stack(api_key="right", limiter=FixedWindowLimiter(limits))
    wrong = (b"authorization", b"Bearer wrong")
    statuses = [call(edge, scope_from("192.0.2.1", headers=(wrong,)))[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    right = (b"authorization", b"Bearer right")
    assert call(edge, scope_from("192.0.2.1", headers=(right,)))[0] == 429  # that client is limited
    assert call(edge, scope_from("192.0.2.2", headers=(right,)))[0] == 200  # others are not


def test_wrong_keys_alone_are_limited_too() -> None:
    edge, _ = guarded_stack(api_key="right", key_failures=FixedWindowLimiter(parse_rate_limits("2/minute")))
    wrong, right = (b"authorization", b"Bearer wrong"), (b"authorization", b"Bearer right")
    statuses = [call(edge, scope_from("192.0.2.1", headers=(wrong,)))[0] for _ in range(3)]
    assert statuses == [401, 401, 429]
    assert call(edge, scope_from("192.0.2.1", headers=(right,)))[0] == 429  # not even tried
    assert call(edge, scope_from("192.0.2.9", headers=(right,)))[0] == 200


def test_a_slow_body_holds_no_in_flight_slot_until_it_has_arrived() -> None:
    """In-flight was counted from the headers: ~128 clients drip-feeding their uploads kept the
    detect routes at 503. Now a request counts once its body is complete."""
    import asyncio

    from serving.access import AccessMiddleware

    async def app(scope: dict, receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    access = AccessMiddleware(app, guarded=lambda path: True, api_key=None, max_in_flight=2)
    scope = scope_from("192.0.2.1", headers=((b"content-length", b"100"),))

    async def nowhere(message: dict) -> None:
        pass

    async def scenario() -> list[int]:
        never = asyncio.Event()

        def dripping_body() -> object:
            chunks = iter([{"type": "http.request", "body": b"x", "more_body": True}])

            async def receive() -> dict:
                if (chunk := next(chunks, None)) is not None:
                    return chunk
                await never.wait()  # the rest of the body never comes
                return {"type": "http.disconnect"}

            return receive

        drips = [asyncio.ensure_future(access(scope, dripping_body(), nowhere)) for _ in range(5)]
        await asyncio.sleep(0.05)
        statuses = []
        for _ in range(2):
            sent: list[dict] = []

            async def whole() -> dict:
                return {"type": "http.request", "body": b"x" * 100, "more_body": False}

            async def collect(message: dict, sent: list = sent) -> None:
                sent.append(message)

            await access(scope, whole, collect)
            statuses.append(sent[0]["status"])
        for task in drips:
            task.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
        return statuses

    assert asyncio.run(scenario()) == [200, 200]
    assert access.in_flight == 0
