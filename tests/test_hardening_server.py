"""Issue 22 ("Hardening") against a real `bentoml serve`, as a deployer runs it: an API key, a
rate limit, X-Forwarded-For trusted from loopback (the proxy), a short header timeout, one job
per client. Each test was a finding of the review, reproduced against a running server:

- a connection that never finishes its headers was held open (45 s and counting);
- the limiter keyed on the leftmost X-Forwarded-For entry, which the client writes (6 of 6
  requests passed a 2/hour limit), and wrong keys were answered before it counted;
- clients drip-feeding their bodies held the in-flight slots meant for work (the detect routes
  answered 503);
- one client could queue every video job.

Every request here comes from 127.0.0.1, the trusted proxy: each test names its clients in
X-Forwarded-For (TEST-NET addresses), so that their limits do not meet.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import FIXTURES, ServerProcess
from tests.videos import clip

KEY = "server-h4rdening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RATE = 2  # per hour
HEADER_TIMEOUT_S = 2.0
DETECT = "/api/v1/detect/"
JOBS = "/api/v1/detect/video/jobs"
FACE = (FIXTURES / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="module")
def hardened(served_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "DEEPFAKE_MODEL_TAG": served_tag,
        "DEEPFAKE_JOBS_DIR": str(tmp_path_factory.mktemp("hardened-jobs")),
        "DEEPFAKE_API_KEY": KEY,
        "DEEPFAKE_RATE_LIMITS": f"{RATE}/hour",
        "DEEPFAKE_TRUST_FORWARDED_FOR": "true",  # DEEPFAKE_TRUSTED_PROXIES: loopback, the default
        "DEEPFAKE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "DEEPFAKE_MAX_JOBS_PER_CLIENT": "1",
    }
    with ServerProcess(env=env, ready_timeout=300) as running:
        yield running


def detect(server: ServerProcess, client: str, key: dict[str, str] = AUTH, spoof: str = "") -> httpx.Response:
    forwarded = f"{spoof}, {client}" if spoof else client
    return server.post(
        DETECT, files={"file": ("a.jpg", FACE, "image/jpeg")}, headers={**key, "X-Forwarded-For": forwarded}
    )


def test_a_connection_that_never_finishes_its_headers_is_closed(hardened: ServerProcess) -> None:
    for sent in (b"GET /livez HT", b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nContent-Ty"):
        with socket.create_connection(("127.0.0.1", hardened.port), timeout=HEADER_TIMEOUT_S + 10) as sock:
            started = time.monotonic()
            sock.sendall(sent)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1024):
                    pass
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 3, sent
    assert hardened.get("/livez").status_code == 200  # and whole requests are served


def test_the_client_is_the_rightmost_address_the_proxy_did_not_write(hardened: ServerProcess) -> None:
    """The client writes the left of X-Forwarded-For; our proxy appends what it saw."""
    statuses = [detect(hardened, "198.51.100.7", spoof=f"10.9.{n}.1").status_code for n in range(RATE + 3)]
    assert statuses == [200] * RATE + [429] * 3


def test_wrong_keys_count_and_are_limited_before_they_are_answered(hardened: ServerProcess) -> None:
    wrong = {"Authorization": "Bearer guess"}
    statuses = [detect(hardened, "198.51.100.8", key=wrong).status_code for _ in range(RATE + 2)]
    assert statuses == [401] * RATE + [429] * 2
    assert detect(hardened, "198.51.100.8").status_code == 429  # the right key, too late


def test_a_limited_client_stays_limited_after_1000_spoofed_clients(hardened: ServerProcess) -> None:
    for _ in range(RATE + 1):
        detect(hardened, "198.51.100.9")
    assert detect(hardened, "198.51.100.9").status_code == 429
    wrong = {"Authorization": "Bearer guess"}
    with httpx.Client(base_url=hardened.url, timeout=30) as client:
        for n in range(1000):  # each a new client to the limiter, each refused (401, cheap)
            client.post(
                DETECT,
                files={"file": ("a.jpg", b"x", "image/jpeg")},
                headers={**wrong, "X-Forwarded-For": f"203.0.{n // 250}.{n % 250}"},
            )
    assert detect(hardened, "198.51.100.9").status_code == 429


def test_clients_drip_feeding_their_bodies_do_not_take_the_slots_for_work(hardened: ServerProcess) -> None:
    """200 connections each send headers and a first byte of a 100 kB body, then wait; a detect
    sent meanwhile is answered 200 within 5 s."""
    head = (
        "POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "X-Forwarded-For: 192.0.2.{a}, 198.18.{b}.{c}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n-"
    )
    drips: list[socket.socket] = []
    try:
        for n in range(200):
            sock = socket.create_connection(("127.0.0.1", hardened.port), timeout=10)
            sock.sendall(head.format(key=KEY, a=n % 250, b=n // 250, c=n % 250 + 1).encode())
            drips.append(sock)
        time.sleep(1.0)  # every one of them has its headers read by now
        started = time.monotonic()
        answer = detect(hardened, "198.51.100.10")
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert took < 5, took
    finally:
        for sock in drips:
            sock.close()


def test_one_client_cannot_queue_every_job(hardened: ServerProcess, tmp_path: Path) -> None:
    """No per-client quota: one client could fill the job queue (100 jobs of up to 100 MiB)."""
    from tests.videos import X264, scene_moving, write_video

    n = 300  # a job long enough to be running still when the second is sent
    long = write_video(tmp_path / "long.mp4", (scene_moving(i, n) for i in range(n)), options=X264)

    def submit(client: str, video: Path, frames: int) -> httpx.Response:
        files = {"file": ("v.mp4", video.read_bytes(), "video/mp4")}
        headers = {**AUTH, "X-Forwarded-For": client}
        return hardened.post(JOBS, files=files, data={"frames": str(frames)}, headers=headers)

    first = submit("198.51.100.11", long, n)
    assert first.status_code == 202, first.text
    second = submit("198.51.100.11", clip("moving.mp4"), 3)
    assert (second.status_code, second.json()["error_code"]) == (429, "JOB_QUOTA_EXCEEDED"), second.text
    assert second.headers["retry-after"]
    other = submit("198.51.100.12", clip("moving.mp4"), 3)  # another client is served
    assert other.status_code == 202, other.text
    for job in (first, other):
        headers = {**AUTH, "X-Forwarded-For": "198.51.100.13"}
        httpx.delete(f"{hardened.url}{JOBS}/{job.json()['job_id']}", headers=headers, timeout=30)
