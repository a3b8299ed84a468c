"""Jobs (`serving.jobs`) for videos, run by a real worker pool (whole frames, no detector):
progress, results, failures, cancel (local and from another API worker), expiry, the bound
on jobs kept, orphans after a restart, and the upload deleted whatever happens."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from preprocessing.faces import CropRule
from serving.jobs import DiskJobStore, JobNotDone, JobNotFound, JobStatus, JobStoreFull, ProgressFn
from serving.video_worker import VideoRequest, VideoWorkerPool
from tests.videos import BackgroundLoop, alive, clip

SAMPLES = 6
T = TypeVar("T")


def runner_for(pool: VideoWorkerPool) -> Callable[[Path, dict[str, Any], ProgressFn], Any]:
    async def run(path: Path, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        request = VideoRequest(frames=SAMPLES, crop=CropRule((32, 32)), test_sleep_s=params.get("sleep", 0.0))
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


async def wait_for(read: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 60.0) -> T:
    """Poll `read()` until `check` holds for what it returned; that value."""
    deadline = time.monotonic() + timeout
    while not check(value := await read()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met: {value}")
        await asyncio.sleep(0.05)
    return value


def no_uploads(root: Path) -> bool:
    return not list(root.glob("*/upload*"))


def test_a_job_reports_progress_and_its_result(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, JobStatus, Any]:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool), progress_every_s=0) as store:
            spooled = upload(tmp_path)
            job_id = await store.submit(spooled, {"sleep": 1.0})
            assert not spooled.exists()  # handed over
            await wait_for(lambda: store.status(job_id), lambda s: s.total == SAMPLES)
            during = await store.status(job_id)
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            return during, await store.status(job_id), await store.result(job_id)

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
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path, "text.mp4"))
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            with pytest.raises(JobNotDone):
                await store.result(job_id)
            return await store.status(job_id)

    status = loop.run(scenario())
    assert status.state == "failed"
    assert status.error == {"status": 415, "code": "UNSUPPORTED_FORMAT", "message": status.error["message"]}
    assert no_uploads(tmp_path / "jobs")


def test_cancel_stops_the_work_and_its_worker(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> tuple[JobStatus, list[int]]:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: store.status(job_id), lambda s: s.total == SAMPLES)  # in the worker now
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
        async with (
            DiskJobStore(root, runner_for(pool)) as owner,
            DiskJobStore(root, runner_for(pool)) as other,
        ):
            job_id = await owner.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            asked = await other.cancel(job_id)  # only the marker: the work is not here
            await wait_for(lambda: other.status(job_id), lambda s: s.finished)
            return asked, await other.status(job_id)

    asked, final = loop.run(scenario())
    assert asked.state == "running" and asked.cancel_requested
    assert final.state == "cancelled"
    assert no_uploads(tmp_path / "jobs")


def test_results_expire_after_the_ttl(loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path) -> None:
    async def scenario() -> str:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool), ttl_s=0.5) as store:
            job_id = await store.submit(upload(tmp_path))
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            assert (await store.result(job_id))["frames"] == SAMPLES
            await asyncio.sleep(0.6)
            with pytest.raises(JobNotFound):
                await store.status(job_id)
            return job_id

    job_id = loop.run(scenario())
    assert not (tmp_path / "jobs" / job_id).exists()


def test_the_number_of_jobs_kept_is_bounded(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool), max_jobs=2) as store:
            first = await store.submit(upload(tmp_path))
            second = await store.submit(upload(tmp_path), {"sleep": 60})  # still running
            await wait_for(lambda: store.status(first), lambda s: s.finished)
            third = await store.submit(upload(tmp_path), {"sleep": 60})  # evicts the finished one
            with pytest.raises(JobNotFound):
                await store.status(first)
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
        async with DiskJobStore(root, runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path))
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
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
        async with DiskJobStore(root, runner_for(pool), stale_after_s=30) as store:
            return await store.status(orphan), await store.status(finished), await store.result(finished)

    lost, kept, result = loop.run(after())
    assert lost.state == "failed" and lost.error is not None and lost.error["code"] == "JOB_INTERRUPTED"
    assert kept.state == "done" and result["frames"] == SAMPLES
    assert no_uploads(root)


def test_malformed_ids_are_not_found(loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path) -> None:
    store = DiskJobStore(tmp_path / "jobs", runner_for(pool))

    async def scenario() -> None:
        for job_id in ("../../etc", "", "x" * 22 + "/..", "nope"):
            with pytest.raises(JobNotFound):
                await store.status(job_id)

    loop.run(scenario())


# -- a store that survives its files -----------------------------------------------------------

MALFORMED: dict[str, Callable[[Path], None]] = {
    "a list": lambda path: path.write_text("[1, 2, 3]"),
    "bad JSON": lambda path: path.write_text("{not json"),
    "invalid UTF-8": lambda path: path.write_bytes(b'{"job_id": "\xff\xfe"}'),
    "wrong types": lambda path: path.write_text(
        json.dumps({"job_id": path.parent.name, "state": "sleeping"})
    ),
    "another job's state": lambda path: path.write_text(json.dumps({"job_id": "B" * 22, "state": "done"})),
    "a folder in its place": lambda path: path.mkdir(),
}


def plant(root: Path, name: str, job_id: str) -> Path:
    """A job folder whose job.json is malformed in the named way (as another version, a
    crash or a person could leave it)."""
    folder = root / job_id
    folder.mkdir(parents=True)
    MALFORMED[name](folder / "job.json")
    return folder


def test_a_newer_versions_extra_keys_are_read() -> None:
    from serving.jobs import parse_status

    state = {**JobStatus("C" * 22, "done").__dict__, "added_in_a_later_version": {"x": 1}}
    assert parse_status("C" * 22, state).state == "done"


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_an_unreadable_job_is_gone_and_swept_and_the_store_starts(
    loop: BackgroundLoop,
    pool: VideoWorkerPool,
    tmp_path: Path,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "jobs"
    bad = "D" * 22
    folder = plant(root, name, bad)

    async def scenario() -> None:
        async with DiskJobStore(root, runner_for(pool)) as store:  # starting sweeps: never raises
            assert store.alive
            with pytest.raises(JobNotFound):
                await store.status(bad)
            job_id = await store.submit(upload(tmp_path))  # and the store works on
            await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            assert (await store.result(job_id))["frames"] == SAMPLES

    with caplog.at_level("WARNING", logger="deepfake.jobs"):
        loop.run(scenario())
    assert not folder.exists()  # swept
    assert sum(bad in r.getMessage() for r in caplog.records) == 1  # logged once


def test_the_maintenance_loop_survives_a_bad_job_appearing_at_run_time(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    """A job file of the wrong shape that appears while the server runs: the sweep meets it,
    and the loop goes on (heartbeats, cancels from another worker, expiry)."""
    root = tmp_path / "jobs"

    async def scenario() -> tuple[JobStatus, bool]:
        async with (
            DiskJobStore(root, runner_for(pool), ttl_s=1) as owner,
            DiskJobStore(root, runner_for(pool)) as other,
        ):
            plant(root, "a list", "E" * 22)
            plant(root, "wrong types", "F" * 22)
            await asyncio.sleep(0.6)  # several sweeps (every ttl/10, at least poll_s)
            job_id = await owner.submit(upload(tmp_path), {"sleep": 60})
            await wait_for(lambda: other.status(job_id), lambda s: s.state == "running")
            await other.cancel(job_id)  # only the marker: the owner's loop must see it
            final = await wait_for(lambda: other.status(job_id), lambda s: s.finished, timeout=10)
            return final, owner.alive

    final, alive = loop.run(scenario())
    assert alive and final.state == "cancelled"
    assert not (root / ("E" * 22)).exists() and not (root / ("F" * 22)).exists()


def test_any_error_in_maintenance_is_logged_and_the_loop_goes_on(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(DiskJobStore):
        failures = 3

        async def _ids(self) -> list[str]:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("the store's listing failed")
            return await super()._ids()

    async def scenario() -> bool:
        async with Flaky(tmp_path / "jobs", runner_for(pool), ttl_s=0.5, poll_s=0.05) as store:
            await wait_for(lambda: asyncio.sleep(0, store.failures), lambda left: left == 0)
            await asyncio.sleep(0.3)
            return store.alive

    with caplog.at_level("ERROR", logger="deepfake.jobs"):
        assert loop.run(scenario())
    assert any("maintenance" in r.getMessage() for r in caplog.records)


class FullDisk(DiskJobStore):
    """The store on a disk that fills up: its one write function raises ENOSPC, as the kernel
    does, for the files named in `full` (and only while they are named)."""

    full: set[str] = set()

    @classmethod
    def _write_file(cls, path: Path, text: str) -> None:
        if path.name in cls.full:
            import errno
            import os

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        DiskJobStore._write_file(path, text)


def test_a_full_disk_fails_the_job_not_the_worker(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    class Store(FullDisk):
        full = {"result.json"}

    async def scenario() -> tuple[JobStatus, JobStatus]:
        async with Store(tmp_path / "jobs", runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path))
            failed = await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            Store.full = set()  # room again: the next job is done
            job_id = await store.submit(upload(tmp_path))
            return failed, await wait_for(lambda: store.status(job_id), lambda s: s.finished)

    failed, done = loop.run(scenario())
    assert failed.state == "failed" and failed.error is not None and failed.error["code"] == "STORAGE_FULL"
    assert done.state == "done"
    assert no_uploads(tmp_path / "jobs")


def test_a_state_that_cannot_be_written_is_answered_from_memory_and_written_later(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    root = tmp_path / "jobs"

    class Store(FullDisk):
        full: set[str] = set()

    async def scenario() -> tuple[JobStatus, JobStatus]:
        async with Store(root, runner_for(pool)) as store:
            job_id = await store.submit(upload(tmp_path), {"sleep": 1.0})
            await wait_for(lambda: store.status(job_id), lambda s: s.state == "running")
            Store.full = {"result.json", "job.json"}  # the disk fills while it runs
            during = await wait_for(lambda: store.status(job_id), lambda s: s.finished)
            Store.full = set()
            await asyncio.sleep(0.5)  # the maintenance loop writes it
            return during, parse(root / job_id / "job.json")

    during, written = loop.run(scenario())
    assert during.state == written.state == "failed"
    assert during.error is not None and during.error["code"] == "STORAGE_FULL"


def parse(path: Path) -> JobStatus:
    from serving.jobs import parse_status

    return parse_status(path.parent.name, json.loads(path.read_text()))


def test_a_full_disk_at_submit_refuses_the_job_and_deletes_the_upload(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    from serving.jobs import JobStoreUnavailable

    class Store(FullDisk):
        full = {"job.json"}

    async def scenario() -> Path:
        async with Store(tmp_path / "jobs", runner_for(pool)) as store:
            spooled = upload(tmp_path)
            with pytest.raises(JobStoreUnavailable):
                await store.submit(spooled)
            return spooled

    assert not loop.run(scenario()).exists()
    assert not list((tmp_path / "jobs").iterdir())


# -- bounds per client and in bytes -------------------------------------------------------------


def test_each_client_has_a_quota_of_jobs_queued_or_running(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    from serving.jobs import JobQuotaExceeded

    async def scenario() -> None:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool), max_per_client=2) as store:
            jobs = [await store.submit(upload(tmp_path), {"sleep": 60}, client="10.0.0.1") for _ in range(2)]
            with pytest.raises(JobQuotaExceeded):
                await store.admit("10.0.0.1")  # before its upload is read
            refused = upload(tmp_path)
            with pytest.raises(JobQuotaExceeded):
                await store.submit(refused, client="10.0.0.1")
            assert not refused.exists()
            other = await store.submit(upload(tmp_path), client="10.0.0.2")  # another client is served
            await store.cancel(jobs[0])  # a finished job no longer counts
            await store.admit("10.0.0.1")
            for job_id in (jobs[1], other):
                await store.cancel(job_id)
            stored = json.loads((tmp_path / "jobs" / other / "job.json").read_text())
            assert "10.0.0.2" not in json.dumps(stored)  # the address is not kept

    loop.run(scenario())


def test_the_bytes_of_queued_uploads_are_bounded(
    loop: BackgroundLoop, pool: VideoWorkerPool, tmp_path: Path
) -> None:
    size = clip("moving.mp4").stat().st_size

    async def scenario() -> None:
        async with DiskJobStore(tmp_path / "jobs", runner_for(pool), max_queued_bytes=2 * size) as store:
            jobs = [await store.submit(upload(tmp_path), {"sleep": 60}) for _ in range(2)]
            with pytest.raises(JobStoreFull):
                await store.admit(size=1)
            refused = upload(tmp_path)
            with pytest.raises(JobStoreFull):
                await store.submit(refused)
            assert not refused.exists()
            for job_id in jobs:
                await store.cancel(job_id)
            await store.submit(upload(tmp_path))  # room again

    loop.run(scenario())
