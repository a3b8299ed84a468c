"""Jobs for long videos, next to the synchronous route: `submit` answers at once with an id,
the work runs in the background of the API worker that took it, and any API worker answers
`status`, `result` and `cancel` for it. asyncio only; the work itself is the `runner` given
(the lead's: a VideoPipeline of its own, the model, tracks, the response).

Two layers. `JobStore` is what the routes use (`admit`, `submit`, `status`, `result`,
`cancel`) and what runs the jobs (`finish`, `sweep`, the maintenance loop: cancels, progress,
heartbeats, expiry); it keeps its state through a handful of storage methods (`_create`,
`_load`, `_save`, ...), all async, that a backend implements. `DiskJobStore` is the backend
on a folder every API worker of one machine shares; `RedisJobStore` (serving/redis_store.py,
DEEPFAKE_JOB_STORE) the one every replica shares; the routes do not change.

On disk, one folder per job under `root`:

    <root>/<id>/job.json     state, progress, times, owner, heartbeat, error (written by the
                             owner only, atomically: a temporary file renamed over it)
    <root>/<id>/upload.<ext> the video while the job waits or runs; deleted once processed,
                             whatever happens (done, failed, cancelled, refused, orphaned)
    <root>/<id>/result.json  the result, once done
    <root>/<id>/cancel       a cancel request, written by whichever worker was asked

Every write goes through one function (`DiskJobStore._write_file`).

States: queued -> running -> done | failed | cancelled. Progress is the runner's (done,
total), kept in memory and written by the maintenance loop at most every `progress_every_s`.
A finished job is deleted `ttl_s` after it finished (status then says not found).

Bounds (each refusal raises before any work, most of them before the upload is read: see
`admit`): at most `max_jobs` jobs kept (submitting past it first drops expired jobs, then the
oldest finished ones; `JobStoreFull` if all are queued or running); at most `max_per_client`
queued or running per client (`JobQuotaExceeded`); at most `max_queued_bytes` of uploads
waiting or running (`JobStoreFull`). Ids are 22 random URL-safe characters (128 bits): the id
is what lets a client see a result (the routes also ask for the API key when one is set).

Whatever is on disk, the store does not fail: a job whose state cannot be read or has the
wrong shape (bad JSON, a list, wrong types, invalid UTF-8, a folder in its place) is logged
once, answered as not found and deleted; start-up never raises; the maintenance loop survives
every error (logged, at most once a minute per kind). A write that fails (a full disk) fails
the job, not the worker: a result that cannot be stored ends the job `failed` with
STORAGE_FULL, and a state that cannot be written is kept in memory, answered from there by this
worker and written again by the maintenance loop.

Several API workers (DEEPFAKE_API_WORKERS > 1, or several hosts on a shared volume): a job
runs in the process that took it; status and result are read by any of them; cancel writes
the marker, which the owner polls every `poll_s` (it then cancels the task, which kills the
video worker process). The owner writes a heartbeat every `heartbeat_s`; a queued or running
job whose heartbeat is older than `stale_after_s` has lost its owner: the next sweep by any
worker marks it failed (JOB_INTERRUPTED) and deletes its upload. The bounds are checked
without a lock across processes, so with k workers each can be passed by k - 1 jobs.

What a restart keeps and loses: it keeps every finished job (status and result, until its
TTL) and every id; it loses the queued and running jobs (their work was in the process
that stopped): they are reported failed with JOB_INTERRUPTED once their heartbeat is stale
(`stale_after_s` after the stop), and their uploads are deleted; the client submits again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from preprocessing.errors import InputError
from serving.errors import ServiceError

logger = logging.getLogger("deepfake.jobs")

State = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[State, ...] = ("done", "failed", "cancelled")
ProgressFn = Callable[[int, int], None]
# (the upload's path, the submit's params, progress) -> a JSON-serialisable result
Runner = Callable[[Path, dict[str, Any], ProgressFn], Awaitable[Any]]

_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
STATE_FILE, RESULT_FILE, CANCEL_FILE = "job.json", "result.json", "cancel"
LOG_EVERY_S = 60.0  # the same maintenance error is logged at most this often


class JobNotFound(KeyError):
    """No such job: never submitted, expired, unreadable, or a malformed id."""


class JobNotDone(RuntimeError):
    """The job has no result (yet, or it failed or was cancelled)."""


class JobStoreFull(RuntimeError):
    """No room: `max_jobs` jobs are queued or running, or `max_queued_bytes` are waiting."""


class JobQuotaExceeded(JobStoreFull):
    """This client has `max_per_client` jobs queued or running already."""


class JobStoreUnavailable(OSError):
    """The store cannot take or answer now: its storage refused a write (a full disk), cannot
    be reached (Redis down or slow), or this server is stopping. An OSError, as every storage
    failure is: the job runner treats it as one (a progress write is skipped, a final state
    is kept in memory and written again)."""


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
    client: str = ""  # a hash of the client's address (the per-client quota); never the address
    upload_bytes: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_STATUS = TypeAdapter(JobStatus)
_FIELDS = frozenset(f.name for f in dataclasses.fields(JobStatus))


def parse_status(job_id: str, data: Any) -> JobStatus:
    """A job's stored state, checked; ValueError if it is not one. Keys this version does not
    know (a newer version's) are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"a job's state is an object, not {type(data).__name__}")
    try:
        status = _STATUS.validate_python({k: v for k, v in data.items() if k in _FIELDS})
    except ValidationError as exc:
        raise ValueError(f"bad job state: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from None
    if status.job_id != job_id:
        raise ValueError("the state names another job")
    return status


def client_hash(client: str) -> str:
    """What a job keeps of its client: enough to count its jobs, not its address."""
    return hashlib.sha256(client.encode("utf-8", "replace")).hexdigest()[:16] if client else ""


def storage_full() -> dict[str, Any]:
    return {
        "status": 507,
        "code": "STORAGE_FULL",
        "message": "The server had no room to keep this job's result; submit again later",
    }


class JobStore(abc.ABC):
    """The routes' interface to video jobs, and the runner of this process's jobs. Storage is
    the subclass's: the abstract methods at the end, each async (a network store's calls are
    I/O)."""

    def __init__(
        self,
        runner: Runner,
        *,
        ttl_s: float = 3600.0,
        max_jobs: int = 100,
        max_per_client: int = 0,
        max_queued_bytes: int = 0,
        max_running: int = 1,
        heartbeat_s: float = 2.0,
        stale_after_s: float = 30.0,
        poll_s: float = 0.25,
        progress_every_s: float = 0.5,
    ) -> None:
        self.runner = runner
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_per_client = max_per_client  # 0: no per-client bound
        self.max_queued_bytes = max_queued_bytes  # 0: no bound
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(max_running)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, JobStatus] = {}  # this process's unfinished jobs, as they are now
        self._unsaved: dict[str, JobStatus] = {}  # finished here, not yet written (a full disk)
        self._maintenance: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}  # what was logged when (throttles repeated errors)
        self._closing = False
        self._chores: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep once (expired, orphaned and unreadable jobs), then keep heartbeats, cancels,
        progress and expiry. Never raises: a store that cannot start is logged, and its
        routes answer from what they find."""
        try:
            await self._prepare()
            await self.sweep()
        except Exception:  # noqa: BLE001 - the server starts whatever the store holds
            logger.exception("the job store could not sweep at start; serving on")
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        self._stop_taking_jobs_on_sigterm()

    def _stop_taking_jobs_on_sigterm(self) -> None:
        """SIGTERM (a scale-down, a roll-out) reaches this process and its decoder processes at
        once (BentoML stops a worker's children with it): from then on this store takes no job,
        and a running job that fails was interrupted (JOB_INTERRUPTED, written for every worker
        and replica to read), not failed by its video; `close` then ends the rest. Chained
        before the server's own handler; only in the main thread, where handlers live."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # no graceful stop to chain to (SIG_DFL, SIG_IGN)
            return

        def stopping(sig: int, frame: FrameType | None) -> None:
            self._closing = True
            previous(sig, frame)

        signal.signal(signal.SIGTERM, stopping)

    async def close(self) -> None:
        """Stop taking jobs, stop the maintenance and this process's jobs (they end failed,
        JOB_INTERRUPTED, written where every worker and replica reads them)."""
        self._closing = True
        if self._maintenance:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        for task in list(self._tasks.values()):
            task.cancel(msg="shutdown")
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for job_id in list(self._running):
            await self._finish_unstarted(job_id, "failed")

    async def __aenter__(self) -> JobStore:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def alive(self) -> bool:
        """Whether the maintenance loop runs (it should, until `close`)."""
        return self._maintenance is not None and not self._maintenance.done()

    # -- the API ---------------------------------------------------------------------------------

    async def admit(self, client: str = "", size: int = 0) -> None:
        """Raise what `submit` would for this client and size, before the upload is read."""
        if self._closing:
            raise JobStoreUnavailable("this server is stopping; another one takes the job")
        try:
            statuses = await self._statuses()
        except OSError as exc:
            self._log_once("admit", f"the job store cannot be listed: {type(exc).__name__}: {exc}")
            raise JobStoreUnavailable("the job store cannot take a job now") from None
        active = [s for s in statuses if not s.finished]
        if self.max_per_client and client:
            mine = client_hash(client)
            if sum(s.client == mine for s in active) >= self.max_per_client:
                raise JobQuotaExceeded(f"{self.max_per_client} jobs of this client are queued or running")
        if self.max_queued_bytes and sum(s.upload_bytes for s in active) + size > self.max_queued_bytes:
            raise JobStoreFull(f"{self.max_queued_bytes} bytes of uploads are queued or running")
        if len(active) >= self.max_jobs:
            raise JobStoreFull(f"{self.max_jobs} jobs are queued or running")

    async def submit(
        self, upload: str | os.PathLike[str], params: dict[str, Any] | None = None, client: str = ""
    ) -> str:
        """Take over `upload` (moved into the job; deleted whatever happens, also when the
        store refuses it) and queue the job; returns its id at once."""
        upload = Path(upload)
        try:
            size = upload.stat().st_size
            await self._make_room()
            await self.admit(client, size)
            job_id = secrets.token_urlsafe(16)
            now = time.time()
            status = JobStatus(
                job_id, "queued", created_at=now, owner=self.owner, heartbeat=now, params=params or {},
                client=client_hash(client), upload_bytes=size,
            )  # fmt: skip
            await self._create(status, upload)
        except OSError as exc:
            upload.unlink(missing_ok=True)
            self._log_once("submit", f"a job could not be stored: {type(exc).__name__}: {exc}")
            raise JobStoreUnavailable("the job store cannot take a job now") from None
        except BaseException:
            upload.unlink(missing_ok=True)
            raise
        self._running[job_id] = status
        task = asyncio.get_running_loop().create_task(self._run(status))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._ended(job_id))
        return job_id

    async def status(self, job_id: str) -> JobStatus:
        """The job's state and progress (any API worker); JobNotFound if expired or unreadable."""
        if job_id in self._unsaved:
            return dataclasses.replace(self._unsaved[job_id])
        status = await self._load(job_id)
        if status.expires_at is not None and status.expires_at <= time.time():
            await self._remove(job_id)
            raise JobNotFound(job_id)
        if not status.finished and self._stale(status):
            status = await self._interrupt(status)
        status.cancel_requested = status.cancel_requested or await self._cancel_requested(job_id)
        return status

    async def result(self, job_id: str) -> Any:
        """The result of a done job; JobNotDone while it is not (see `status` for why)."""
        status = await self.status(job_id)
        if status.state != "done":
            raise JobNotDone(f"job {job_id} is {status.state}")
        return await self._load_result(job_id)

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask the job to stop. The owner (this or another worker) stops it within `poll_s`;
        a finished job is left as it is. Returns the status as it is now."""
        status = await self.status(job_id)
        if status.finished:
            return status
        try:
            await self._request_cancel(job_id)
        except OSError as exc:
            self._log_once("cancel", f"a cancel could not be stored: {type(exc).__name__}: {exc}")
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel(msg="cancel")
            await asyncio.gather(task, return_exceptions=True)
            await self._finish_unstarted(job_id, "cancelled")
        return await self.status(job_id)

    async def finish(self, status: JobStatus, state: State, error: dict[str, Any] | None = None) -> None:
        """End a job: its final state, kept `ttl_s`. A state that cannot be written (a full
        disk) is kept in memory and written again by the maintenance loop."""
        now = time.time()
        status.state, status.error = state, error
        status.finished_at, status.expires_at, status.heartbeat = now, now + self.ttl_s, now
        self._running.pop(status.job_id, None)
        try:
            await self._save(status)
        except JobNotFound:  # deleted meanwhile (expiry, eviction)
            self._unsaved.pop(status.job_id, None)
        except OSError as exc:
            self._log_once("finish", f"job {status.job_id}'s state could not be written: {exc}")
            self._unsaved[status.job_id] = status
        else:
            self._unsaved.pop(status.job_id, None)

    async def sweep(self) -> None:
        """Delete expired jobs; mark orphaned ones (stale heartbeat) failed, uploads deleted;
        delete unreadable ones (logged once by `_load`) and debris."""
        now = time.time()
        for job_id in await self._ids():
            try:
                status = await self._load(job_id)
            except JobNotFound:
                await self._remove_debris(job_id, now)
                continue
            try:
                if status.expires_at is not None and status.expires_at <= now:
                    await self._remove(job_id)
                elif not status.finished and self._stale(status):
                    await self._interrupt(status)
            except Exception:  # noqa: BLE001 - one job's trouble is not the others'
                self._log_once("sweep", f"job {job_id} could not be swept", exc_info=True)

    # -- the work --------------------------------------------------------------------------------

    async def _run(self, status: JobStatus) -> None:
        job_id = status.job_id
        upload = self._upload_path(job_id)
        try:
            async with self._slots:
                if await self._cancel_requested(job_id):
                    raise asyncio.CancelledError
                status.state, status.started_at = "running", time.time()
                with contextlib.suppress(OSError, JobNotFound):  # progress; the end is what counts
                    await self._save(status)

                def progress(done: int, total: int) -> None:
                    status.done, status.total = done, total  # written by the maintenance loop

                result = await self.runner(upload, dict(status.params), progress)
            try:
                await self._save_result(job_id, result)
            except JobNotFound:
                return  # deleted meanwhile
            except OSError as exc:
                self._log_once("result", f"job {job_id}'s result could not be written: {exc}")
                await self.finish(status, "failed", storage_full())
            else:
                await self.finish(status, "done")
        except asyncio.CancelledError as exc:
            shutdown = "shutdown" in (exc.args or ())
            if shutdown:
                await self.finish(status, "failed", _interrupted("the server stopped"))
                raise
            await self.finish(status, "cancelled")
        except Exception as exc:  # noqa: BLE001 - a job's failure is its result, not the server's crash
            if self._closing:  # its decoder was stopped with the server (SIGTERM): not the video's fault
                await self.finish(status, "failed", _interrupted("the server stopped"))
            elif isinstance(exc, InputError | ServiceError):  # the video's fault, or a typed answer
                error = {"status": exc.status, "code": exc.code, "message": exc.message}
                await self.finish(status, "failed", error)
            else:
                logger.exception("job %s failed", job_id)
                error = {"status": 500, "code": "INTERNAL", "message": "The job failed"}
                await self.finish(status, "failed", error)
        finally:
            self._running.pop(job_id, None)
            upload.unlink(missing_ok=True)

    def _ended(self, job_id: str) -> None:
        """A job's task is done. One cancelled before it ever ran (its body never started) is
        finished here."""
        self._tasks.pop(job_id, None)
        if job_id in self._running and not self._closing:
            chore = asyncio.get_running_loop().create_task(self._finish_unstarted(job_id))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    async def _finish_unstarted(self, job_id: str, state: State | None = None) -> None:
        status = self._running.pop(job_id, None)
        if status is None:  # it ran, and finished itself
            return
        self._upload_path(job_id).unlink(missing_ok=True)
        if state is None:
            state = "cancelled" if await self._cancel_requested(job_id) else "failed"
        await self.finish(status, state, None if state == "cancelled" else _interrupted("the server stopped"))

    async def _maintain(self) -> None:
        last = {"beat": time.monotonic(), "sweep": time.monotonic(), "progress": 0.0}
        # Often enough that an orphan is marked failed within stale_after_s of going stale.
        sweep_every = max(min(self.ttl_s / 10, 60.0, self.stale_after_s), self.poll_s)
        chores: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("cancels", 0.0, self._poll_cancels),
            ("unsaved", 0.0, self._write_unsaved),
            ("progress", self.progress_every_s, self._write_progress),
            ("beat", self.heartbeat_s, self._beat),
            ("sweep", sweep_every, self.sweep),
        ]
        while True:
            await asyncio.sleep(self.poll_s)
            for name, every, chore in chores:
                now = time.monotonic()
                if every and now - last.get(name, 0.0) < every:
                    continue
                last[name] = now
                try:
                    await chore()
                except JobStoreUnavailable as exc:  # an outage (Redis down): said once, no traceback
                    self._log_once(
                        f"maintenance:{name}", f"job maintenance ({name}) waits: {exc}", level=logging.WARNING
                    )
                except Exception:  # noqa: BLE001 - the loop outlives every error; logged
                    self._log_once(f"maintenance:{name}", f"job maintenance ({name}) failed", exc_info=True)

    async def _poll_cancels(self) -> None:
        for job_id, task in list(self._tasks.items()):
            if await self._cancel_requested(job_id):
                task.cancel(msg="cancel")

    async def _write_unsaved(self) -> None:
        for status in list(self._unsaved.values()):
            await self.finish(status, status.state, status.error)

    async def _write_progress(self) -> None:
        for status in list(self._running.values()):
            if status.state == "running":
                with contextlib.suppress(JobNotFound):
                    await self._save(status)

    async def _beat(self) -> None:
        for status in list(self._running.values()):
            status.heartbeat = time.time()
            with contextlib.suppress(JobNotFound):
                await self._save(status)

    # -- room ------------------------------------------------------------------------------------

    async def _statuses(self) -> list[JobStatus]:
        statuses = []
        for job_id in await self._ids():
            with contextlib.suppress(JobNotFound):
                statuses.append(self._running.get(job_id) or await self._load(job_id))
        return statuses

    async def _make_room(self) -> None:
        if len(await self._ids()) < self.max_jobs:
            return
        await self.sweep()
        statuses = await self._statuses()
        finished = sorted((s for s in statuses if s.finished), key=lambda s: s.finished_at or 0.0)
        excess = len(statuses) - self.max_jobs + 1
        for status in finished[: max(excess, 0)]:
            await self._remove(status.job_id)
        if len(statuses) - min(len(finished), max(excess, 0)) >= self.max_jobs:
            raise JobStoreFull(f"{self.max_jobs} jobs are queued or running")

    def _stale(self, status: JobStatus) -> bool:
        if status.owner == self.owner and status.job_id in self._tasks:
            return False
        return time.time() - status.heartbeat > self.stale_after_s

    async def _interrupt(self, status: JobStatus) -> JobStatus:
        """An orphaned job (its owner stopped): failed, upload deleted."""
        self._upload_path(status.job_id).unlink(missing_ok=True)
        if await self._cancel_requested(status.job_id):
            await self.finish(status, "cancelled")
        else:
            await self.finish(status, "failed", _interrupted("the API worker running it stopped"))
        return status

    def _log_once(
        self, kind: str, message: str, *, exc_info: bool = False, level: int = logging.ERROR
    ) -> None:
        """Log `message`, unless the same kind was logged in the last LOG_EVERY_S."""
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[kind] = now
        logger.log(level, "%s", message, exc_info=exc_info)

    # -- storage: a backend's ----------------------------------------------------------------------

    async def _prepare(self) -> None:  # noqa: B027 - optional: most backends need nothing
        """Make the storage ready (at start; may raise, which is logged)."""

    @abc.abstractmethod
    async def _create(self, status: JobStatus, upload: Path) -> None:
        """Store a new job and take over its upload (OSError: no room)."""

    @abc.abstractmethod
    async def _load(self, job_id: str) -> JobStatus:
        """The job's stored state. JobNotFound if there is none, or if it cannot be read or has
        the wrong shape (then logged once and removed)."""

    @abc.abstractmethod
    async def _save(self, status: JobStatus) -> None:
        """Replace the job's state (JobNotFound if the job is gone; OSError: no room)."""

    @abc.abstractmethod
    async def _save_result(self, job_id: str, result: Any) -> None:
        """Store the job's result (JobNotFound if the job is gone; OSError: no room)."""

    @abc.abstractmethod
    async def _load_result(self, job_id: str) -> Any:
        """The stored result; JobNotFound if it is gone or unreadable."""

    @abc.abstractmethod
    async def _remove(self, job_id: str) -> None:
        """Delete the job and everything of it; its task here, if any, is cancelled."""

    @abc.abstractmethod
    async def _remove_debris(self, job_id: str, now: float) -> None:
        """A job id without a readable state (a submit in progress, or debris): delete it once
        it is older than `stale_after_s`."""

    @abc.abstractmethod
    async def _ids(self) -> list[str]:
        """Every stored job's id."""

    @abc.abstractmethod
    async def _request_cancel(self, job_id: str) -> None:
        """Record a cancel request that the owner (any process) will see."""

    @abc.abstractmethod
    async def _cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was requested."""

    @abc.abstractmethod
    def _upload_path(self, job_id: str) -> Path:
        """Where the job's upload is (a local file: the job runs in the process that took it)."""


class DiskJobStore(JobStore):
    """Jobs in a folder every API worker shares (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], runner: Runner, **options: Any) -> None:
        super().__init__(runner, **options)
        self.root = Path(root)

    async def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _folder(self, job_id: str) -> Path:
        if not _ID.match(job_id or ""):
            raise JobNotFound(job_id)
        return self.root / job_id

    async def _create(self, status: JobStatus, upload: Path) -> None:
        folder = self._folder(status.job_id)
        folder.mkdir(parents=True)
        try:
            shutil.move(upload, folder / f"upload{upload.suffix[:16]}")
            self._write_state(status)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def _load(self, job_id: str) -> JobStatus:
        path = self._folder(job_id) / STATE_FILE
        try:
            text = path.read_bytes().decode("utf-8")
            return parse_status(job_id, json.loads(text))
        except (FileNotFoundError, NotADirectoryError):
            raise JobNotFound(job_id) from None
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, the wrong shape
            why = f"{type(exc).__name__}: {exc}"
            self._log_once(
                f"unreadable:{job_id}",
                f"job {job_id} is unreadable ({why}); deleting it",
                level=logging.WARNING,
            )
            await self._remove(job_id)
            raise JobNotFound(job_id) from None

    async def _save(self, status: JobStatus) -> None:
        self._write_state(status)

    async def _save_result(self, job_id: str, result: Any) -> None:
        self._write_file(self._folder(job_id) / RESULT_FILE, json.dumps(result))

    async def _load_result(self, job_id: str) -> Any:
        try:
            return json.loads((self._folder(job_id) / RESULT_FILE).read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):
                logger.warning("job %s's result is unreadable (%s); deleting the job", job_id, exc)
                await self._remove(job_id)
            raise JobNotFound(job_id) from None

    async def _remove(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel(msg="cancel")
        self._unsaved.pop(job_id, None)
        folder = self._folder(job_id)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                folder.unlink()

    async def _remove_debris(self, job_id: str, now: float) -> None:
        with contextlib.suppress(OSError):
            if now - self._folder(job_id).stat().st_mtime > self.stale_after_s:
                await self._remove(job_id)

    async def _ids(self) -> list[str]:
        try:
            return [p.name for p in self.root.iterdir() if _ID.match(p.name)]
        except FileNotFoundError:
            return []

    async def _request_cancel(self, job_id: str) -> None:
        self._write_file(self._folder(job_id) / CANCEL_FILE, "")

    async def _cancel_requested(self, job_id: str) -> bool:
        return (self._folder(job_id) / CANCEL_FILE).exists()

    def _upload_path(self, job_id: str) -> Path:
        folder = self._folder(job_id)
        matches = sorted(folder.glob("upload*")) if folder.is_dir() else []
        return matches[0] if matches else folder / "upload"

    def _write_state(self, status: JobStatus) -> None:
        data = asdict(status)
        data["cancel_requested"] = False  # derived from the marker file on read
        self._write_file(self._folder(status.job_id) / STATE_FILE, json.dumps(data))

    @staticmethod
    def _write_file(path: Path, text: str) -> None:
        """The one function that writes a job's files: atomically (a temporary file renamed
        over the old one). JobNotFound if the job's folder is gone; OSError (ENOSPC, ...)
        otherwise, the temporary file removed."""
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            with open(temporary, "x", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, path)
        except (FileNotFoundError, NotADirectoryError):
            raise JobNotFound(path.parent.name) from None
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def _interrupted(why: str) -> dict[str, Any]:
    return {
        "status": 503,
        "code": "JOB_INTERRUPTED",
        "message": f"The job was interrupted ({why}); submit again",
    }
