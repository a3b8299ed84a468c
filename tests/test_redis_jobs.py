"""The shared job store (`serving.redis_store.RedisJobStore`) and the shared rate limits
(`serving.access.RedisFixedWindowLimiter`) against a real redis-server (one per test, on a free
port in a temp folder), with jobs run by a real video worker pool. Two stores on one Redis are
two replicas: each has its own uploads folder and runs its own jobs.

The servers themselves, two `bentoml serve` on one Redis: tests/test_scale_out.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.access import FixedWindowLimiter, Outage, RateLimit, RedisFixedWindowLimiter
from serving.jobs import (
    JobNotDone,
    JobNotFound,
    JobQuotaExceeded,
    JobStatus,
    JobStoreFull,
    JobStoreUnavailable,
)
from serving.redis_link import RedisLink
from serving.redis_store import ACTIVE, INDEX, RedisJobStore
from serving.video_worker import VideoWorkerPool
from tests.redis_server import PASSWORD, RedisServer
from tests.test_video_jobs import SAMPLES, runner_for, upload, wait_for
from tests.videos import BackgroundLoop, alive, clip

TIMEOUT_S = 0.5  # DEEPFAKE_REDIS_TIMEOUT_S of these stores


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_password_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The URL is a secret: whatever these tests make the store and limiters log, never it."""
    caplog.set_level(logging.INFO)
    yield
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]


def replica(server: RedisServer, pool: VideoWorkerPool, folder: Path, **options: Any) -> RedisJobStore:
    """A store as one replica has it: its own uploads folder, the shared Redis."""
    return RedisJobStore(RedisLink(server.url, TIMEOUT_S), folder, runner_for(pool), **options)


def key(job_id: str, part: str = "") -> str:
    return f"deepfake:job:{job_id}" + (f":{part}" if part else "")


def test_a_job_submitted_on_one_replica_is_answered_by_another(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, JobStatus, JobStatus, Any, Any]:
        async with (
            replica(redis_server, pool, tmp_path / "a", progress_every_s=0) as a,
            replica(redis_server, pool, tmp_path / "b") as b,
        ):
            job_id = await a.submit(upload(tmp_path), {"sleep": 1.0}, client="10.0.0.1")
            during = await wait_for(
                lambda: b.status(job_id), lambda s: s.total == SAMPLES and s.done < SAMPLES
            )
            done = await wait_for(lambda: b.status(job_id), lambda s: s.finished)
            return job_id, during, done, await b.result(job_id), await a.result(job_id)

    job_id, during, done, on_b, on_a = loop.run(scenario())
    assert during.state == "running"
    assert (done.state, done.done, done.error) == ("done", SAMPLES, None)
    assert on_b == on_a and on_b["frames"] == SAMPLES
    assert not list((tmp_path / "a").glob("*/upload*"))
    redis = redis_server.client()
    # Expiry is Redis's own: the state and the result go when the TTL says, the lease is gone.
    for part in ("", "result"):
        assert 3590_000 < redis.pttl(key(job_id, part)) <= 3600_000
    assert redis.exists(key(job_id, "lease")) == 0
    assert redis.hlen(ACTIVE) == 0  # no longer counted against its client
    stored = redis.get(key(job_id)).decode()
    assert "10.0.0.1" not in stored  # a hash of the client, never its address


def test_a_cancel_sent_to_another_replica_stops_the_owner(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, JobStatus, list[int]]:
        async with (
            replica(redis_server, pool, tmp_path / "a") as owner,
            replica(redis_server, pool, tmp_path / "b") as other,
        ):
            job_id = await owner.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: other.status(job_id), lambda s: s.total == SAMPLES)
            busy = pool.pids
            asked = await other.cancel(job_id)  # only the flag: the work is on the owner
            final = await wait_for(lambda: other.status(job_id), lambda s: s.finished, timeout=10)
            return asked, final, busy

    asked, final, busy = loop.run(scenario())
    assert asked.state == "running" and asked.cancel_requested
    assert final.state == "cancelled"
    assert not any(alive(pid) for pid in busy)
    assert not list((tmp_path / "a").glob("*/upload*"))


def test_quotas_and_bounds_hold_across_replicas_submitting_at_once(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Six submits of one client at once, three on each replica, against a quota of two:
    exactly two are taken (the check and the take are one script); the refused uploads are
    deleted; another client is served; the bytes bound holds the same way."""
    size = clip("moving.mp4").stat().st_size

    async def scenario() -> tuple[list[Any], list[Any], list[Path]]:
        options = {"max_per_client": 2, "max_queued_bytes": 4 * size}
        async with (
            replica(redis_server, pool, tmp_path / "a", **options) as a,
            replica(redis_server, pool, tmp_path / "b", **options) as b,
        ):
            spooled = [upload(tmp_path) for _ in range(6)]
            results = await asyncio.gather(
                *(
                    (a if n % 2 else b).submit(path, {"sleep": 60}, client="10.0.0.7")
                    for n, path in enumerate(spooled)
                ),
                return_exceptions=True,
            )
            with pytest.raises(JobQuotaExceeded):
                await b.admit("10.0.0.7")  # before an upload is read, on either replica
            # Other clients: room for two more uploads' bytes, then full, however many ask.
            others = await asyncio.gather(
                *(
                    (a if n % 2 else b).submit(upload(tmp_path), {"sleep": 60}, client=f"10.0.1.{n}")
                    for n in range(4)
                ),
                return_exceptions=True,
            )
            for job_id in [r for r in results + others if isinstance(r, str)]:
                await a.cancel(job_id)
            return results, others, spooled

    results, others, spooled = loop.run(scenario())
    assert sum(isinstance(r, str) for r in results) == 2
    assert all(isinstance(r, JobQuotaExceeded) for r in results if not isinstance(r, str))
    assert sum(isinstance(r, str) for r in others) == 2
    assert all(type(r) is JobStoreFull for r in others if not isinstance(r, str))
    assert not any(path.exists() for path in spooled)  # taken over or deleted, never left
    assert redis_server.client().hlen(ACTIVE) == 0


def test_a_job_whose_owner_stops_heartbeating_fails_on_every_replica(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The owner's maintenance stops (as if its process froze): its lease expires after
    `stale_after_s`, another replica marks the job failed, and when the owner's work ends the
    failed state stands (the owner does not overwrite it)."""
    timing = {"stale_after_s": 1.5, "heartbeat_s": 0.3}

    async def scenario() -> tuple[JobStatus, float, JobStatus]:
        async with (
            replica(redis_server, pool, tmp_path / "a", **timing) as owner,
            replica(redis_server, pool, tmp_path / "b", **timing) as other,
        ):
            job_id = await owner.submit(upload(tmp_path), {"sleep": 4})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            assert owner._maintenance is not None
            owner._maintenance.cancel()  # no more heartbeats
            frozen = time.monotonic()
            failed = await wait_for(lambda: other.status(job_id), lambda s: s.finished, timeout=20)
            took = time.monotonic() - frozen
            await wait_for(lambda: asyncio.sleep(0, job_id in owner._tasks), lambda running: not running)
            with pytest.raises(JobNotDone):
                await other.result(job_id)
            return failed, took, await other.status(job_id)

    failed, took, after = loop.run(scenario())
    assert failed.state == "failed" and failed.error is not None
    assert failed.error["code"] == "JOB_INTERRUPTED"
    assert took < 1.5 + 0.3 + 5  # the stale bound, and some slack for a loaded machine
    assert after.state == "failed" and after.error == failed.error  # the owner's "done" did not win


# -- records of the wrong shape --------------------------------------------------------------------

BAD = "D" * 22


def plant_state(redis: Any, how: str) -> None:
    state = {**JobStatus(BAD, "running").__dict__}
    if how == "a list":
        redis.rpush(key(BAD), "x")
    elif how == "a hash":
        redis.hset(key(BAD), "state", "done")
    elif how == "bad JSON":
        redis.set(key(BAD), "{not json")
    elif how == "invalid UTF-8":
        redis.set(key(BAD), b'{"job_id": "\xff\xfe"}')
    elif how == "a JSON list":
        redis.set(key(BAD), "[1, 2]")
    elif how == "wrong types":
        redis.set(key(BAD), json.dumps({**state, "state": "sleeping", "done": "many"}))
    elif how == "another job's state":
        redis.set(key(BAD), json.dumps({**state, "job_id": "B" * 22}))
    redis.zadd(INDEX, {BAD: 1})
    redis.hset(ACTIVE, BAD, "zz not-a-number")


SHAPES = [
    "a list",
    "a hash",
    "bad JSON",
    "invalid UTF-8",
    "a JSON list",
    "wrong types",
    "another job's state",
]


@pytest.mark.parametrize("how", SHAPES)
def test_a_record_of_the_wrong_shape_is_logged_once_and_gone(
    loop: BackgroundLoop,
    pool: VideoWorkerPool,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    redis = redis_server.client()
    plant_state(redis, how)
    redis.zadd(INDEX, {"not an id": 2})

    async def scenario() -> None:
        async with replica(redis_server, pool, tmp_path / "a") as store:  # starting sweeps: never raises
            assert store.alive
            for _ in range(2):
                with pytest.raises(JobNotFound):
                    await store.status(BAD)
            job_id = await store.submit(upload(tmp_path))  # and the store works on
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            assert (await store.result(job_id))["frames"] == SAMPLES

    loop.run(scenario())
    assert redis.exists(key(BAD)) == 0 and redis.zscore(INDEX, BAD) is None
    assert redis.zscore(INDEX, "not an id") is None and not redis.hexists(ACTIVE, BAD)
    assert sum(BAD in r.getMessage() for r in caplog.records) == 1


def test_a_result_of_the_wrong_shape_is_logged_and_gone(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> str:
        async with replica(redis_server, pool, tmp_path / "a") as store:
            job_id = await store.submit(upload(tmp_path))
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            redis_server.client().set(key(job_id, "result"), b"\xff{")
            with pytest.raises(JobNotFound):
                await store.result(job_id)
            with pytest.raises(JobNotFound):
                await store.status(job_id)
            return job_id

    job_id = loop.run(scenario())
    assert redis_server.client().exists(key(job_id), key(job_id, "result")) == 0


# -- Redis down or slow --------------------------------------------------------------------------


def test_redis_down_or_stalled_is_a_quick_answer_and_running_jobs_survive_a_restart(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Every call is bounded: with Redis stopped (SIGSTOP: it accepts and never answers) or
    killed, the routes' calls raise JobStoreUnavailable within the timeout's bound. A job that
    was running goes on; Redis restarted without its data, the owner writes the job's state
    again, and another replica then follows it to its result. Meanwhile a job not found is
    "unavailable" (retry), not "not found", for a few heartbeats."""

    async def timed(call: Any) -> float:
        started = time.monotonic()
        with pytest.raises(JobStoreUnavailable):
            await call
        return time.monotonic() - started

    async def scenario() -> tuple[list[float], JobStatus, Any]:
        async with (
            replica(redis_server, pool, tmp_path / "a", heartbeat_s=0.2) as owner,
            replica(redis_server, pool, tmp_path / "b", heartbeat_s=0.2) as other,
        ):
            job_id = await owner.submit(upload(tmp_path), {"sleep": 6})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            redis_server.pause()
            took = [await timed(other.status(job_id)), await timed(other.admit("10.0.0.9"))]
            redis_server.resume()
            redis_server.kill()
            took += [await timed(other.status(job_id)), await timed(other.cancel(job_id))]
            spooled = upload(tmp_path)
            took.append(await timed(other.submit(spooled)))
            assert not spooled.exists()  # a refused upload is deleted
            redis_server.start()  # empty: no persistence
            never = "Z" * 22
            for _ in range(2):  # found empty: for 3 heartbeats + 1 s, a missing job may be coming back
                with pytest.raises(JobStoreUnavailable):
                    await other.status(never)
            await wait_for(lambda: _status_or_none(other, job_id), lambda s: s is not None, timeout=10)
            await asyncio.sleep(3 * 0.2 + 1)
            with pytest.raises(JobNotFound):
                await other.status(never)
            done = await wait_for(lambda: other.status(job_id), lambda s: s.finished, timeout=30)
            return took, done, await other.result(job_id)

    took, done, result = loop.run(scenario())
    assert all(t < 4 * TIMEOUT_S + 1 for t in took), took
    assert done.state == "done" and result["frames"] == SAMPLES


async def _status_or_none(store: RedisJobStore, job_id: str) -> JobStatus | None:
    try:
        return await store.status(job_id)
    except (JobNotFound, JobStoreUnavailable):
        return None


@pytest.mark.parametrize("outage", ["stalled", "restarted empty"])
def test_a_result_made_while_redis_is_down_is_written_once_it_answers(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path, outage: str
) -> None:
    """The job ends while Redis cannot be reached: this replica answers it from memory, and
    writes its end and result once Redis answers (also into a Redis that lost everything)."""

    async def scenario() -> tuple[JobStatus, Any, JobStatus, Any]:
        async with (
            replica(redis_server, pool, tmp_path / "a", heartbeat_s=0.2) as owner,
            replica(redis_server, pool, tmp_path / "b") as other,
        ):
            job_id = await owner.submit(upload(tmp_path), {"sleep": 1})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            stalled = outage == "stalled"
            redis_server.pause() if stalled else redis_server.kill()  # the job ends meanwhile
            try:
                await wait_for(lambda: asyncio.sleep(0, job_id in owner._unsaved), bool, timeout=30)
                here, mine = await owner.status(job_id), await owner.result(job_id)  # from memory
            finally:
                redis_server.resume() if stalled else redis_server.start()
            there = await wait_for(
                lambda: _status_or_none(other, job_id), lambda s: s is not None and s.finished, timeout=30
            )
            assert there is not None
            return here, mine, there, await other.result(job_id)

    here, mine, there, result = loop.run(scenario())
    assert here.state == there.state == "done"
    assert mine == result and result["frames"] == SAMPLES


def test_a_stopping_replica_takes_no_job_and_interrupts_its_own(
    loop: BackgroundLoop, pool: VideoWorkerPool, redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> JobStatus:
        async with replica(redis_server, pool, tmp_path / "b") as other:
            owner = replica(redis_server, pool, tmp_path / "a")
            await owner.start()
            job_id = await owner.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            closing = asyncio.ensure_future(owner.close())
            await asyncio.sleep(0)
            with pytest.raises(JobStoreUnavailable):
                await owner.admit("10.0.0.3")
            await closing
            return await other.status(job_id)

    status = loop.run(scenario())
    assert status.state == "failed" and status.error is not None
    assert status.error["code"] == "JOB_INTERRUPTED" and "stopped" in status.error["message"]


# -- the shared rate limits ------------------------------------------------------------------------

LIMITS = (RateLimit(3, 3600), RateLimit(100, 86400))


def shared_limiter(server: RedisServer, outage: Outage | None = None) -> RedisFixedWindowLimiter:
    return RedisFixedWindowLimiter(
        RedisLink(server.url, TIMEOUT_S), LIMITS, name="rate", fallback=FixedWindowLimiter(LIMITS),
        outage=outage,
    )  # fmt: skip


def test_the_rate_limit_is_counted_once_across_replicas(
    loop: BackgroundLoop, redis_server: RedisServer
) -> None:
    a, b = shared_limiter(redis_server), shared_limiter(redis_server)

    async def scenario() -> tuple[list[int | None], int | None, int | None]:
        answers = [await (a if n % 2 else b).hit("198.51.100.1") for n in range(5)]
        return answers, await a.peek("198.51.100.1"), await b.hit("198.51.100.2")

    answers, peeked, other = loop.run(scenario())
    assert answers[:3] == [None] * 3
    assert all(isinstance(r, int) and 0 < r <= 3600 for r in answers[3:])
    assert peeked is not None and other is None
    keys = [k.decode() for k in redis_server.client().keys("deepfake:rate:*")]
    assert keys and not any("198.51.100" in k for k in keys)  # a hash of the client, not its address
    assert all(0 < redis_server.client().pttl(k) <= 86400_000 for k in keys)  # gone with their window


def test_a_burst_from_two_replicas_is_counted_exactly_and_never_as_an_outage(
    loop: BackgroundLoop, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Far more requests at once than connections in a replica's pool: they wait for one
    (within the timeout), none falls back to counting in the process, and the limit lets
    exactly its count through (the check and the count are one script)."""
    from serving.redis_link import MAX_CONNECTIONS

    limits = (RateLimit(3 * MAX_CONNECTIONS, 3600),)

    def limiter() -> RedisFixedWindowLimiter:
        # A timeout the machine's load cannot reach: 128 calls queue for 32 connections here, and
        # on a busy 2-core CI machine the last of them waited past 0.5 s (the fallback then
        # counted them in the process: 217 let through). What is tested is the waiting, not 0.5 s.
        link = RedisLink(redis_server.url, 10 * TIMEOUT_S)
        return RedisFixedWindowLimiter(link, limits, name="rate", fallback=FixedWindowLimiter(limits))

    a, b = limiter(), limiter()

    async def burst() -> list[int | None]:
        n = 4 * MAX_CONNECTIONS  # per replica
        return await asyncio.gather(*(x.hit("198.51.100.20") for x in (a, b) for _ in range(n)))

    answers = loop.run(burst())
    assert sum(r is None for r in answers) == limits[0].count
    assert not [r for r in caplog.records if "cannot count" in r.getMessage()]


def test_a_counter_of_the_wrong_shape_is_counted_from_zero(
    loop: BackgroundLoop, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = shared_limiter(redis_server)
    loop.run(limiter.hit("198.51.100.3"))
    redis = redis_server.client()
    hour, day = sorted(redis.keys("deepfake:rate:*"))  # deepfake:rate:rate:<n>:... (n: the limit)
    redis.set(hour, "many")
    redis.delete(day)
    redis.hset(day, "x", "1")
    answers = [loop.run(limiter.hit("198.51.100.3")) for _ in range(4)]
    assert answers[:3] == [None] * 3 and answers[3] is not None
    assert any("wrong shape" in r.getMessage() for r in caplog.records)


def test_without_redis_the_limits_count_in_the_process_logged_once_per_outage(
    loop: BackgroundLoop, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage(retry_s=0.2)
    limiter = shared_limiter(redis_server, outage)
    redis_server.kill()

    def outage_lines() -> int:
        return sum("cannot count" in r.getMessage() for r in caplog.records)

    answers = []
    for _ in range(5):
        answers.append(loop.run(limiter.hit("198.51.100.4")))
        time.sleep(0.1)  # past retry_s: Redis is tried again, still down
    assert answers[:3] == [None] * 3 and answers[3] is not None  # the local count still limits
    assert outage_lines() == 1
    redis_server.start()
    time.sleep(0.3)
    assert loop.run(limiter.hit("198.51.100.5")) is None  # counted in Redis again
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert redis_server.client().keys("deepfake:rate:*")
    redis_server.pause()  # a Redis that never answers: bounded, then local
    try:
        started = time.monotonic()
        assert loop.run(limiter.hit("198.51.100.6")) is None
        assert time.monotonic() - started < 4 * TIMEOUT_S + 1
    finally:
        redis_server.resume()
    assert outage_lines() == 2  # a second outage, a second line


def test_the_url_is_never_shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from serving.settings import Settings, SettingsError, get_settings

    url = f"rediss://:{PASSWORD}@redis.example:6380/3"
    monkeypatch.setenv("DEEPFAKE_JOB_STORE", url)
    settings = Settings()
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
    link = settings.redis_link()
    assert link.where == "rediss redis.example:6380/3" and PASSWORD not in repr(link)
    for bad in (f"http://:{PASSWORD}@h:1/0", f"redis://:{PASSWORD}@h:1/zero", f"redis://:{PASSWORD}@:1/0"):
        monkeypatch.setenv("DEEPFAKE_JOB_STORE", bad)
        get_settings.cache_clear()
        with pytest.raises(SettingsError):
            get_settings()
        get_settings.cache_clear()
        message = capsys.readouterr().err
        assert "DEEPFAKE_JOB_STORE" in message and PASSWORD not in message
