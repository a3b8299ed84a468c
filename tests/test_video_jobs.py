"""Jobs (`serving.jobs`) for videos, run by a real worker pool (whole frames, no detector):
progress, results, failures, cancel (local and from another API worker), expiry, the bound
on jobs kept, orphans after a restart, and the upload deleted whatever happens."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.jobs import JobNotDone, JobNotFound, JobStatus, JobStore, JobStoreFull, ProgressFn
from serving.video_worker import VideoRequest, VideoWorkerPool
from tests.videos import BackgroundLoop, alive, clip

SAMPLES = 6


@pytest.fixture(scope="module")
def pool(loop: BackgroundLoop) -> Iterator[VideoWorkerPool]:
    workers = VideoWorkerPool(1, detector=None, test_hooks=True)
    loop.run(workers.start())
    yield workers
    loop.run(workers.close())


def runner_for(pool: VideoWorkerPool) -> Callable[[Path, dict[str, Any], ProgressFn], Any]:
    async def run(path: Path, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        request = VideoRequest(frames=SAMPLES, input_size=(32, 32), test_sleep_s=params.get("sleep", 0.0))
        analysis = await pool.analyze(
            path, request, timeout_s=120, progress=lambda p: progress(p.done, p.total)
        )
        return {"frames": len(analysis.frames), "worker_pid": analysis.worker_pid}

    return run


def upload(tmp_path: Path, name: str = "moving.mp4") -> Path:
    """A copy of a test clip, as the route would spool an upload (the store takes it over)."""
    path = tmp_path / f"spooled-{time.monotonic_ns()}{Path(name).suffix}"
    shutil.copyfile(clip(name), path)
    return path


async def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


def no_uploads(root: Path) -> bool:
    return not list(root.glob("*/upload*"))


def test_a_job_reports_progress_and_its_result(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, JobStatus, Any]:
        async with JobStore(tmp_path / "jobs", runner_for(pool), progress_every_s=0) as store:
            spooled = upload(tmp_path)
            job_id = await store.submit(spooled, {"sleep": 1.0})
            assert not spooled.exists()  # handed over
            await wait_for(lambda: store.status(job_id).total == SAMPLES)
            during = store.status(job_id)
            await wait_for(lambda: store.status(job_id).finished)
            return during, store.status(job_id), store.result(job_id)

    during, after, result = loop.run(scenario())
    assert during.state == "running" and during.done < SAMPLES
    assert (after.state, after.done, after.total, after.error) == ("done", SAMPLES, SAMPLES, None)
    assert after.started_at is not None and after.finished_at is not None
    assert after.expires_at == pytest.approx(after.finished_at + 3600)
    assert result["frames"] == SAMPLES
    assert no_uploads(tmp_path / "jobs")


def test_a_refused_video_fails_the_job_with_the_error(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> JobStatus:
        async with JobStore(tmp_path / "jobs", runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path, "text.mp4"))
            await wait_for(lambda: store.status(job_id).finished)
            with pytest.raises(JobNotDone):
                store.result(job_id)
            return store.status(job_id)

    status = loop.run(scenario())
    assert status.state == "failed"
    assert status.error == {"status": 415, "code": "UNSUPPORTED_FORMAT", "message": status.error["message"]}
    assert no_uploads(tmp_path / "jobs")


def test_cancel_stops_the_work_and_its_worker(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, list[int]]:
        async with JobStore(tmp_path / "jobs", runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: store.status(job_id).total == SAMPLES)  # in the worker now
            busy = pool.pids
            return await store.cancel(job_id), busy

    status, busy = loop.run(scenario())
    assert status.state == "cancelled" and status.cancel_requested
    assert not any(alive(pid) for pid in busy)
    assert no_uploads(tmp_path / "jobs")


def test_cancel_through_another_api_worker(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, JobStatus]:
        root = tmp_path / "jobs"
        async with JobStore(root, runner_for(pool)) as owner, JobStore(root, runner_for(pool)) as other:
            job_id = await owner.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: other.status(job_id).state == "running")
            asked = await other.cancel(job_id)  # only the marker: the work is not here
            await wait_for(lambda: other.status(job_id).finished)
            return asked, other.status(job_id)

    asked, final = loop.run(scenario())
    assert asked.state == "running" and asked.cancel_requested
    assert final.state == "cancelled"
    assert no_uploads(tmp_path / "jobs")


def test_results_expire_after_the_ttl(loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path) -> None:
    async def scenario() -> str:
        async with JobStore(tmp_path / "jobs", runner_for(pool), ttl_s=0.5) as store:
            job_id = await store.submit(upload(tmp_path))
            await wait_for(lambda: store.status(job_id).finished)
            assert store.result(job_id)["frames"] == SAMPLES
            await asyncio.sleep(0.6)
            with pytest.raises(JobNotFound):
                store.status(job_id)
            return job_id

    job_id = loop.run(scenario())
    assert not (tmp_path / "jobs" / job_id).exists()


def test_the_number_of_jobs_kept_is_bounded(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with JobStore(tmp_path / "jobs", runner_for(pool), max_jobs=2) as store:
            first = await store.submit(upload(tmp_path))
            second = await store.submit(upload(tmp_path), {"sleep": 60})  # still running
            await wait_for(lambda: store.status(first).finished)
            third = await store.submit(upload(tmp_path), {"sleep": 60})  # evicts the finished one
            with pytest.raises(JobNotFound):
                store.status(first)
            refused = upload(tmp_path)
            with pytest.raises(JobStoreFull):
                await store.submit(refused)  # two jobs queued or running
            assert not refused.exists()  # deleted even when refused
            for job_id in (second, third):
                await store.cancel(job_id)

    loop.run(scenario())
    assert no_uploads(tmp_path / "jobs")


def test_after_a_restart_orphaned_jobs_fail_and_finished_ones_stay(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    root = tmp_path / "jobs"

    async def before() -> str:
        async with JobStore(root, runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path))
            await wait_for(lambda: store.status(job_id).finished)
            return job_id

    finished = loop.run(before())
    # A job whose process died mid-way: running, its heartbeat a minute old, its upload there.
    orphan = "A" * 22
    (root / orphan).mkdir()
    shutil.copyfile(clip("moving.mp4"), root / orphan / "upload.mp4")
    stale = time.time() - 60
    state = JobStatus(orphan, "running", 3, SAMPLES, stale, stale, owner="gone:1:x", heartbeat=stale)
    (root / orphan / "job.json").write_text(json.dumps(state.__dict__))

    async def after() -> tuple[JobStatus, JobStatus, Any]:
        async with JobStore(root, runner_for(pool), stale_after_s=30) as store:
            return store.status(orphan), store.status(finished), store.result(finished)

    lost, kept, result = loop.run(after())
    assert lost.state == "failed" and lost.error is not None and lost.error["code"] == "JOB_INTERRUPTED"
    assert kept.state == "done" and result["frames"] == SAMPLES
    assert no_uploads(root)


def test_malformed_ids_are_not_found(loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs", runner_for(pool))
    for job_id in ("../../etc", "", "x" * 22 + "/..", "nope"):
        with pytest.raises(JobNotFound):
            store.status(job_id)
