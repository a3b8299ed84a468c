"""Issue 23 ("Scale out for real") with real processes: two `bentoml serve` replicas (each its
own BENTOML_HOME around the test store, its own temp and jobs folders, as two pods have) share
one real redis-server through DEEPFAKE_JOB_STORE, the setting the README documents, behind a
trusted proxy (loopback: each test names its clients in X-Forwarded-For).

- a job submitted on one replica is polled, fetched and cancelled on the other, and a client's
  job quota counts across both;
- the rate limit holds across both (counted once, in Redis);
- Redis killed and restarted under load: image requests are all answered, the job routes
  answer 503 JOB_STORE_UNAVAILABLE with Retry-After meanwhile, each replica logs the outage
  once, and the running job is followed again once Redis is back;
- the API worker that owns a job killed (SIGKILL, with its decoder): the other replica
  reports the job failed (JOB_INTERRUPTED) within the heartbeat bound;
- a replica stopped (SIGTERM): its running job is reported interrupted on the other at once.

The tests run in this order and share the two servers (the last two kill a part of them)."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import FIXTURES, ServerProcess
from tests.redis_server import PASSWORD, RedisServer, redis_binary
from tests.videos import X264, clip, scene_moving, write_video

RATE = 3  # per hour, per client, for the whole fleet
STALE_AFTER_S = 4.0  # DEEPFAKE_JOB_STALE_AFTER_S: the heartbeat bound
GRACE_S = 75  # terminationGracePeriodSeconds / stop_grace_period in deploy/
LONG_FRAMES = 1200  # the long job's frames, every one sampled (DEEPFAKE_VIDEO_MAX_FRAMES on the replicas)
DETECT = "/api/v1/detect/"
JOBS = "/api/v1/detect/video/jobs"
FACE = (FIXTURES / "astronaut.jpg").read_bytes()
_clients = itertools.count(1)


def new_client() -> str:
    """A client address no other request of this file uses (TEST-NET-2, then 198.18/15)."""
    n = next(_clients)
    return f"198.18.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    redis_binary()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    served_tag: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    def replica(name: str) -> ServerProcess:
        env = {
            "DEEPFAKE_MODEL_TAG": served_tag,
            "DEEPFAKE_JOB_STORE": redis_server.url,
            "DEEPFAKE_JOBS_DIR": str(tmp_path_factory.mktemp(f"jobs-{name}")),
            "TMPDIR": str(tmp_path_factory.mktemp(f"tmp-{name}")),
            "DEEPFAKE_RATE_LIMITS": f"{RATE}/hour",
            "DEEPFAKE_TRUST_FORWARDED_FOR": "true",  # the proxy: loopback, the default
            "DEEPFAKE_MAX_JOBS_PER_CLIENT": "1",
            "DEEPFAKE_JOB_STALE_AFTER_S": str(STALE_AFTER_S),
            # Redis is killed here, never slowed (a refused connection fails at once): a timeout
            # the busy CI machine cannot reach, so that a slow answer under load is not a second
            # outage (0.5 s was, once, in a clean CI run: "limits down" logged twice).
            "DEEPFAKE_REDIS_TIMEOUT_S": "2.0",
            "DEEPFAKE_VIDEO_MAX_FRAMES": str(LONG_FRAMES),
        }
        return ServerProcess(env=env, ready_timeout=300)

    servers = (replica("a"), replica("b"))
    with ThreadPoolExecutor(2) as starting:  # both start at once: half the wait
        started = [starting.submit(server.__enter__) for server in servers]
        errors = [f.exception() for f in started]
    try:
        if any(errors):
            raise RuntimeError(f"a replica did not start: {errors}")
        yield servers
    finally:
        for server in servers:
            server.__exit__()
    for server in servers:
        assert PASSWORD not in server.log(tail=10**7), "the Redis URL reached a log"


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LONG_FRAMES frames, each sampled: a job that runs long enough (a minute or more, even on a
    quiet machine) to be caught running, and still running once an outage is over."""
    n = LONG_FRAMES
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return write_video(path, (scene_moving(i, n) for i in range(n)), options=X264)


def submit(server: ServerProcess, video: Path, frames: int, client: str) -> httpx.Response:
    return server.post(
        JOBS,
        files={"file": ("v.mp4", video.read_bytes(), "video/mp4")},
        data={"frames": str(frames)},
        headers={"X-Forwarded-For": client},
    )


def job(server: ServerProcess, job_id: str) -> httpx.Response:
    return server.get(f"{JOBS}/{job_id}")


def cancel(server: ServerProcess, job_id: str) -> httpx.Response:
    return httpx.delete(f"{server.url}{JOBS}/{job_id}", timeout=60)


def wait_for_state(
    server: ServerProcess,
    job_id: str,
    states: tuple[str, ...],
    timeout: float = 120,
    seen: Counter[int] | None = None,
) -> dict[str, Any]:
    """Poll until the job is in one of `states`; `seen` counts the statuses answered."""
    deadline = time.monotonic() + timeout
    while True:
        answer = job(server, job_id)
        if seen is not None:
            seen[answer.status_code] += 1
        if answer.status_code == 200 and answer.json()["state"] in states:
            return answer.json()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not {states}: {answer.status_code} {answer.text[:300]}")
        time.sleep(0.2)


def test_a_job_submitted_on_one_replica_is_followed_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    submitted = submit(a, clip("moving.mp4"), 3, new_client())
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    done = wait_for_state(b, job_id, ("done", "failed"))
    assert done["state"] == "done", done
    on_a, on_b = job(a, job_id).json(), job(b, job_id).json()
    assert on_a["result"] == on_b["result"] == done["result"]
    assert on_b["result"]["video"]["frames_sampled"] == 3
    finished = cancel(b, job_id)  # a finished job is left as it is, on either replica
    assert (finished.status_code, finished.json()["state"]) == (200, "done")


def test_a_job_is_cancelled_through_the_other_replica_and_its_client_quota_spans_both(
    replicas: tuple[ServerProcess, ServerProcess], long_video: Path
) -> None:
    a, b = replicas
    client = new_client()
    submitted = submit(a, long_video, LONG_FRAMES, client)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    wait_for_state(b, job_id, ("running",))
    second = submit(b, clip("moving.mp4"), 3, client)  # the quota is 1, counted in Redis
    assert (second.status_code, second.json()["error_code"]) == (429, "JOB_QUOTA_EXCEEDED"), second.text
    asked = cancel(b, job_id)
    assert asked.status_code == 200 and asked.json()["state"] in ("running", "cancelled"), asked.text
    final = wait_for_state(a, job_id, ("cancelled", "done", "failed"), timeout=30)
    assert final["state"] == "cancelled"
    assert job(b, job_id).json()["state"] == "cancelled"
    again = submit(b, clip("moving.mp4"), 3, client)  # a cancelled job no longer counts
    assert again.status_code == 202, again.text


def test_the_rate_limit_holds_across_both_replicas(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    client = new_client()
    answers = [
        server.post(
            DETECT, files={"file": ("a.jpg", FACE, "image/jpeg")}, headers={"X-Forwarded-For": client}
        )
        for server in itertools.islice(itertools.cycle(replicas), RATE + 3)
    ]
    assert [r.status_code for r in answers] == [200] * RATE + [429] * 3  # once for the fleet, not per replica
    assert all(0 < int(r.headers["retry-after"]) <= 3600 for r in answers[RATE:])


def outage_lines(server: ServerProcess) -> Counter[str]:
    log = server.log(tail=10**7)
    return Counter(
        {
            "limits down": log.count("rate limits: Redis") - log.count("answers again; counting shared"),
            "limits back": log.count("answers again; counting shared"),
        }
    )


def test_redis_killed_and_restarted_under_load(
    replicas: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, long_video: Path
) -> None:
    """Image requests keep coming to both replicas (a new client each, so no limit is
    reached); Redis is killed for a few seconds, then started again, empty."""
    a, b = replicas
    before = [outage_lines(server) for server in replicas]
    submitted = submit(b, long_video, LONG_FRAMES, new_client())
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    wait_for_state(a, job_id, ("running",))

    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load(server: ServerProcess) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                answer = http.post(
                    DETECT,
                    files={"file": ("a.jpg", FACE, "image/jpeg")},
                    headers={"X-Forwarded-For": new_client()},
                )
                statuses[answer.status_code] += 1

    threads = [threading.Thread(target=load, args=(server,)) for server in (a, b, a, b)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        redis_server.kill()
        down = [job(a, job_id), job(b, job_id), submit(a, clip("moving.mp4"), 3, new_client())]
        time.sleep(3.0)  # the load goes on without Redis
        down.append(cancel(a, job_id))
        redis_server.start()  # empty: the owner writes its running job again
        recovering: Counter[int] = Counter()
        back = wait_for_state(a, job_id, ("running",), timeout=30, seen=recovering)
        time.sleep(2.0)  # past the limiters' retry: they count in Redis again
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    for answer in down:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error_code"] == "JOB_STORE_UNAVAILABLE" and answer.headers["retry-after"]
        assert set(answer.json()) >= {"error", "error_code", "timestamp"}
    assert statuses[200] > 0 and set(statuses) == {200}, statuses  # images were never refused
    assert back["frames_total"] == LONG_FRAMES
    assert set(recovering) <= {200, 503}, recovering  # never "no such job" while it is written again
    cancelled = cancel(a, job_id)  # and the owner hears a cancel again
    assert cancelled.status_code == 200, cancelled.text
    assert wait_for_state(b, job_id, ("cancelled", "done", "failed"), timeout=30)["state"] == "cancelled"
    for server, earlier in zip(replicas, before, strict=True):
        lines = outage_lines(server)
        assert lines["limits down"] - earlier["limits down"] == 1, server.log()  # once per outage
        assert lines["limits back"] - earlier["limits back"] == 1, server.log()


def owner_pid(redis_server: RedisServer, job_id: str) -> int:
    """The API worker that runs a job: its state's `owner` is host:pid:nonce."""
    state = json.loads(redis_server.client().get(f"deepfake:job:{job_id}"))
    return int(state["owner"].split(":")[1])


def test_the_owner_killed_mid_job_leaves_a_failed_job_on_the_other_replica(
    replicas: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, long_video: Path
) -> None:
    a, b = replicas
    submitted = submit(b, long_video, LONG_FRAMES, new_client())
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    wait_for_state(a, job_id, ("running",))
    worker = psutil.Process(owner_pid(redis_server, job_id))
    doomed = [worker, *worker.children(recursive=True)]  # with its decoder, as an OOM kill takes a pod
    for process in doomed:
        process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    psutil.wait_procs(doomed, timeout=10)
    failed = wait_for_state(a, job_id, ("failed", "done", "cancelled"), timeout=60)
    took = time.monotonic() - killed
    assert failed["state"] == "failed" and failed["error"]["error_code"] == "JOB_INTERRUPTED", failed
    assert took < STALE_AFTER_S + 15, took  # the heartbeat bound (and slack for a loaded machine)


def test_a_replica_stopping_interrupts_its_jobs_on_every_replica(
    replicas: tuple[ServerProcess, ServerProcess], long_video: Path
) -> None:
    a, b = replicas
    deadline = time.monotonic() + 240  # B's API worker, killed above, is started again by its server
    while not _ready(b):
        assert time.monotonic() < deadline, b.log()
        time.sleep(0.5)
    submitted = submit(a, long_video, LONG_FRAMES, new_client())
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    wait_for_state(b, job_id, ("running",))
    assert a.process is not None
    a.process.send_signal(signal.SIGTERM)  # a scale-down
    stopping = time.monotonic()
    failed = wait_for_state(b, job_id, ("failed", "done", "cancelled"), timeout=GRACE_S)
    took = time.monotonic() - stopping
    assert failed["state"] == "failed" and failed["error"]["error_code"] == "JOB_INTERRUPTED", failed
    # Written by the stopping replica itself (not found stale later), within the grace period.
    assert "the server stopped" in failed["error"]["error"] and took < GRACE_S, (failed, took)
    a.process.wait(timeout=GRACE_S)


def _ready(server: ServerProcess) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
