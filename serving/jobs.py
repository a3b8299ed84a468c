"""Jobs for long videos, next to the synchronous route: `submit` answers at once with an id,
the work runs in the background of the API worker that took it, and any API worker answers
`status`, `result` and `cancel` for it. asyncio only; the work itself is the `runner` given
(the lead's: VideoWorkerPool.analyze, the model, tracks, the response).

State is on disk, one folder per job under `root` (a folder every API worker shares):

    <root>/<id>/job.json     state, progress, times, owner, heartbeat, error (written by the
                             owner only, atomically: a temporary file renamed over it)
    <root>/<id>/upload.<ext> the video while the job waits or runs; deleted once processed,
                             whatever happens (done, failed, cancelled, refused, orphaned)
    <root>/<id>/result.json  the result, once done
    <root>/<id>/cancel       a cancel request, written by whichever worker was asked

States: queued -> running -> done | failed | cancelled. Progress is the runner's
(done, total), written at most every `progress_every_s`. A finished job is deleted
`ttl_s` after it finished (status then says not found); at most `max_jobs` jobs are kept:
submitting past that first drops expired jobs, then the oldest finished ones, and is refused
(`JobStoreFull`, for a 503) if all of them are still queued or running. Ids are 22 random
URL-safe characters (128 bits): the id is what lets a client see a result.

Several API workers (DEEPFAKE_API_WORKERS > 1, or several hosts on a shared volume): a job
runs in the process that took it; status and result are read from the folder by any of
them; cancel writes the marker, which the owner polls every `poll_s` (it then cancels the
task, which kills the video worker process). The owner writes a heartbeat every
`heartbeat_s`; a queued or running job whose heartbeat is older than `stale_after_s` has
lost its owner: the next sweep by any worker marks it failed (JOB_INTERRUPTED) and deletes
its upload. The job count bound is checked without a lock across processes, so with k
workers it can be passed by k - 1 jobs.

What a restart keeps and loses: it keeps every finished job (status and result, until its
TTL) and every id; it loses the queued and running jobs (their work was in the process
that stopped): they are reported failed with JOB_INTERRUPTED once their heartbeat is stale
(`stale_after_s` after the stop), and their uploads are deleted; the client submits again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from preprocessing.errors import InputError

logger = logging.getLogger("deepfake.jobs")

State = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[State, ...] = ("done", "failed", "cancelled")
ProgressFn = Callable[[int, int], None]
# (the upload's path, the submit's params, progress) -> a JSON-serialisable result
Runner = Callable[[Path, dict[str, Any], ProgressFn], Awaitable[Any]]

_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
STATE_FILE, RESULT_FILE, CANCEL_FILE = "job.json", "result.json", "cancel"


class JobNotFound(KeyError):
    """No such job: never submitted, expired, or a malformed id."""


class JobNotDone(RuntimeError):
    """The job has no result (yet, or it failed or was cancelled)."""


class JobStoreFull(RuntimeError):
    """`max_jobs` jobs are queued or running; try later."""


@dataclass
class JobStatus:
    job_id: str
    state: State
    done: int = 0
    total: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # finished_at + ttl
    error: dict[str, Any] | None = None  # {"status", "code", "message"} when failed
    cancel_requested: bool = False
    owner: str = ""
    heartbeat: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        runner: Runner,
        *,
        ttl_s: float = 3600.0,
        max_jobs: int = 100,
        max_running: int = 1,
        heartbeat_s: float = 2.0,
        stale_after_s: float = 30.0,
        poll_s: float = 0.25,
        progress_every_s: float = 0.5,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(max_running)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._maintenance: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep once (expired and orphaned jobs), then keep heartbeats, cancels and expiry."""
        self.sweep()
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        """Stop the maintenance and this process's jobs (they end failed, JOB_INTERRUPTED)."""
        if self._maintenance:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        for task in list(self._tasks.values()):
            task.cancel(msg="shutdown")
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def __aenter__(self) -> JobStore:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- the API ---------------------------------------------------------------------------------

    async def submit(self, upload: str | os.PathLike[str], params: dict[str, Any] | None = None) -> str:
        """Take over `upload` (moved into the job's folder; deleted whatever happens, also when
        the store is full) and queue the job; returns its id at once."""
        upload = Path(upload)
        try:
            self._make_room()
        except JobStoreFull:
            upload.unlink(missing_ok=True)
            raise
        job_id = secrets.token_urlsafe(16)
        folder = self.root / job_id
        folder.mkdir()
        try:
            shutil.move(upload, folder / f"upload{upload.suffix[:16]}")
        except BaseException:
            upload.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        now = time.time()
        status = JobStatus(
            job_id, "queued", created_at=now, owner=self.owner, heartbeat=now, params=params or {}
        )
        self._write(status)
        task = asyncio.get_running_loop().create_task(self._run(status))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return job_id

    def status(self, job_id: str) -> JobStatus:
        """The job's state and progress, from disk (any API worker); JobNotFound if expired."""
        status = self._read(job_id)
        if status.expires_at is not None and status.expires_at <= time.time():
            self._delete(job_id)
            raise JobNotFound(job_id)
        if not status.finished and self._stale(status):
            status = self._interrupt(status)
        status.cancel_requested = status.cancel_requested or (self.root / job_id / CANCEL_FILE).exists()
        return status

    def result(self, job_id: str) -> Any:
        """The result of a done job; JobNotDone while it is not (see `status` for why)."""
        status = self.status(job_id)
        if status.state != "done":
            raise JobNotDone(f"job {job_id} is {status.state}")
        try:
            return json.loads((self.root / job_id / RESULT_FILE).read_text())
        except FileNotFoundError:
            raise JobNotFound(job_id) from None

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask the job to stop. The owner (this or another worker) stops it within `poll_s`;
        a finished job is left as it is. Returns the status as it is now."""
        status = self.status(job_id)
        if status.finished:
            return status
        (self.root / job_id / CANCEL_FILE).touch()
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel(msg="cancel")
            await asyncio.gather(task, return_exceptions=True)
        return self.status(job_id)

    def sweep(self) -> None:
        """Delete expired jobs; mark orphaned ones (stale heartbeat) failed, uploads deleted."""
        now = time.time()
        for folder in self._folders():
            try:
                status = self._read(folder.name)
            except JobNotFound:
                # A folder without a readable state: a submit in progress, or debris.
                with contextlib.suppress(FileNotFoundError):
                    if now - folder.stat().st_mtime > self.stale_after_s:
                        shutil.rmtree(folder, ignore_errors=True)
                continue
            if status.expires_at is not None and status.expires_at <= now:
                self._delete(status.job_id)
            elif not status.finished and self._stale(status):
                self._interrupt(status)

    # -- the work --------------------------------------------------------------------------------

    async def _run(self, status: JobStatus) -> None:
        job_id = status.job_id
        upload = self._upload(job_id)
        try:
            async with self._slots:
                if (self.root / job_id / CANCEL_FILE).exists():
                    raise asyncio.CancelledError
                status.state, status.started_at = "running", time.time()
                self._write(status)
                last_write = 0.0

                def progress(done: int, total: int) -> None:
                    nonlocal last_write
                    status.done, status.total = done, total
                    now = time.monotonic()
                    if now - last_write >= self.progress_every_s or done >= total:
                        last_write = now
                        status.heartbeat = time.time()
                        self._write(status)

                result = await self.runner(upload, dict(status.params), progress)
            self._atomic_write(self.root / job_id / RESULT_FILE, json.dumps(result))
            self._finish(status, "done")
        except asyncio.CancelledError as exc:
            shutdown = "shutdown" in (exc.args or ())
            if shutdown:
                self._finish(status, "failed", _interrupted("the server stopped"))
            else:
                self._finish(status, "cancelled")
            if shutdown:
                raise
        except InputError as exc:
            self._finish(status, "failed", {"status": exc.status, "code": exc.code, "message": exc.message})
        except Exception:  # noqa: BLE001 - a job's failure is its result, not the server's crash
            logger.exception("job %s failed", job_id)
            self._finish(status, "failed", {"status": 500, "code": "INTERNAL", "message": "The job failed"})
        finally:
            upload.unlink(missing_ok=True)

    def _finish(self, status: JobStatus, state: State, error: dict[str, Any] | None = None) -> None:
        now = time.time()
        status.state, status.error = state, error
        status.finished_at, status.expires_at, status.heartbeat = now, now + self.ttl_s, now
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (expiry, eviction)
            self._write(status)

    async def _maintain(self) -> None:
        last_beat = last_sweep = time.monotonic()
        sweep_every = max(min(self.ttl_s / 10, 60.0), self.poll_s)
        while True:
            await asyncio.sleep(self.poll_s)
            for job_id, task in list(self._tasks.items()):
                if (self.root / job_id / CANCEL_FILE).exists():
                    task.cancel(msg="cancel")
            now = time.monotonic()
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                self._beat()
            if now - last_sweep >= sweep_every:
                last_sweep = now
                self.sweep()

    def _beat(self) -> None:
        for job_id in list(self._tasks):
            try:
                status = self._read(job_id)
            except JobNotFound:
                continue
            if not status.finished:
                status.heartbeat = time.time()
                with contextlib.suppress(FileNotFoundError):
                    self._write(status)

    # -- room ------------------------------------------------------------------------------------

    def _make_room(self) -> None:
        folders = self._folders()
        if len(folders) < self.max_jobs:
            return
        self.sweep()
        statuses = []
        for folder in self._folders():
            with contextlib.suppress(JobNotFound):
                statuses.append(self._read(folder.name))
        finished = sorted((s for s in statuses if s.finished), key=lambda s: s.finished_at or 0.0)
        excess = len(statuses) - self.max_jobs + 1
        for status in finished[: max(excess, 0)]:
            self._delete(status.job_id)
        if len(statuses) - min(len(finished), max(excess, 0)) >= self.max_jobs:
            raise JobStoreFull(f"{self.max_jobs} jobs are queued or running")

    # -- disk ------------------------------------------------------------------------------------

    def _folders(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and _ID.match(p.name)]

    def _upload(self, job_id: str) -> Path:
        matches = sorted((self.root / job_id).glob("upload*"))
        return matches[0] if matches else self.root / job_id / "upload"

    def _read(self, job_id: str) -> JobStatus:
        if not _ID.match(job_id or ""):
            raise JobNotFound(job_id)
        try:
            data = json.loads((self.root / job_id / STATE_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            raise JobNotFound(job_id) from None
        return JobStatus(**data)

    def _write(self, status: JobStatus) -> None:
        data = asdict(status)
        data["cancel_requested"] = False  # derived from the marker file on read
        self._atomic_write(self.root / status.job_id / STATE_FILE, json.dumps(data))

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        temporary.write_text(text)
        os.replace(temporary, path)

    def _delete(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel(msg="cancel")
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def _stale(self, status: JobStatus) -> bool:
        if status.owner == self.owner and status.job_id in self._tasks:
            return False
        return time.time() - status.heartbeat > self.stale_after_s

    def _interrupt(self, status: JobStatus) -> JobStatus:
        """An orphaned job (its owner stopped): failed, upload deleted."""
        self._upload(status.job_id).unlink(missing_ok=True)
        cancelled = (self.root / status.job_id / CANCEL_FILE).exists()
        if cancelled:
            self._finish(status, "cancelled")
        else:
            self._finish(status, "failed", _interrupted("the API worker running it stopped"))
        return status


def _interrupted(why: str) -> dict[str, Any]:
    return {
        "status": 503,
        "code": "JOB_INTERRUPTED",
        "message": f"The job was interrupted ({why}); submit again",
    }
