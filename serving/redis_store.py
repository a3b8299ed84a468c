"""Video jobs shared by every replica through Redis (DEEPFAKE_JOB_STORE=redis://host:port/db):
`RedisJobStore`, the backend beside `DiskJobStore` (serving/jobs.py: the routes and the job
runner are the same; only the storage methods differ).

What lives where:

    deepfake:job:<id>          the job's state (the JSON of job.json), expiring natively:
                               `ttl_s` after it finished (PXAT), `ttl_s + stale_after_s` after
                               the owner's last write while it is queued or running
    deepfake:job:<id>:lease    the owner's heartbeat: written every `heartbeat_s`, expiring
                               after `stale_after_s` (Redis's clock decides, not the replicas')
    deepfake:job:<id>:result   the result, once done (expires with the state)
    deepfake:job:<id>:cancel   a cancel request, written by whichever replica was asked
    deepfake:jobs              every job's id (a sorted set by creation time; pruned by the sweep)
    deepfake:jobs:active       the queued and running jobs: id -> "<client hash> <upload bytes>"

The upload stays on the replica that received it (`uploads/<id>/upload.<ext>`) and the job
runs there: no 100 MiB values in Redis. Any replica answers status, result and cancel; the
owner sees a cancel within `poll_s`. A job whose lease has expired (its owner was killed, or
lost its network) is marked failed, JOB_INTERRUPTED, by whichever replica reads it first (a
status poll, or any replica's sweep, at most every `stale_after_s`). A replica that stops
(SIGTERM) marks its own running jobs interrupted at once (`JobStore.close`).

Bounds across replicas. Exact (checked and taken in one Lua script, atomically): the jobs
queued or running (`max_jobs`), a client's quota (`max_per_client`) and the bytes of queued
uploads (`max_queued_bytes`). Approximate: the finished jobs kept under `max_jobs` (the
replica that submits evicts the oldest; results also expire by themselves after `ttl_s`).
An orphan counts against its client until it is marked failed.

Records are checked as job files are: a value of the wrong shape (not UTF-8, not JSON, the
wrong fields or types, another job's state, a hash where a string belongs) is logged once,
answered as not found and deleted. A job whose owner wrote a state finished elsewhere (it was
marked interrupted while its owner was cut off) stops: the finished state stands.

Redis down or slow: every call is bounded (serving/redis_link.py, DEEPFAKE_REDIS_TIMEOUT_S) and
raises `JobStoreUnavailable`, which the routes answer 503 JOB_STORE_UNAVAILABLE with
Retry-After; the jobs running here go on (progress writes are skipped, a result and a final
state are kept in memory and written once Redis answers), and the client reconnects by itself.
Redis restarted without its data: each owner writes its running jobs' state, lease and quota
entry again with its next heartbeat; finished jobs and their results are lost (404).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from serving.jobs import (
    _ID,
    JobNotFound,
    JobQuotaExceeded,
    JobStatus,
    JobStore,
    JobStoreFull,
    JobStoreUnavailable,
    Runner,
    client_hash,
    parse_status,
)
from serving.redis_link import PREFIX, RedisLink, RedisUnavailable

logger = logging.getLogger("deepfake.jobs")
T = TypeVar("T")

INDEX = PREFIX + "jobs"
ACTIVE = PREFIX + "jobs:active"
# Written by every replica at start (no expiry): missing, Redis has lost its data (a restart
# without persistence). For a few heartbeats after that is found, a job not found is answered
# 503 (retry), not 404: its owner is writing it again.
SINCE = PREFIX + "since"
RECOVERING = PREFIX + "recovering"

# Admission and creation in one step: the bounds are counted over the active jobs of every
# replica and the job is added before any other script runs. Entries of the wrong shape are
# not counted (the sweep deletes them).
# KEYS: active, state, lease, index. ARGV: id, state JSON, client, bytes, max_jobs,
# max_per_client, max_bytes, state px, lease px, created (ms), dry ('1': check only).
CREATE = """
local entries = redis.call('HGETALL', KEYS[1])
local active, mine, bytes = 0, 0, 0
for i = 1, #entries, 2 do
  local client, size = string.match(entries[i + 1], '^(%x*) (%d+)$')
  if client then
    active = active + 1
    if client == ARGV[3] then mine = mine + 1 end
    bytes = bytes + tonumber(size)
  end
end
if tonumber(ARGV[6]) > 0 and ARGV[3] ~= '' and mine >= tonumber(ARGV[6]) then return 'quota' end
if tonumber(ARGV[7]) > 0 and bytes + tonumber(ARGV[4]) > tonumber(ARGV[7]) then return 'bytes' end
if active >= tonumber(ARGV[5]) then return 'full' end
if ARGV[11] == '1' then return 'ok' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[8])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[9])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[1])
return 'ok'
"""

# A job's state written. Never over a finished state (another replica ended the job: its
# word stands). A missing or unreadable state is written only by the job's owner (Redis lost
# it: a restart without its data). Active: the lease and the quota entry with it; finished:
# the lease and the quota entry go, the result and the cancel flag expire with the state.
# KEYS: state, lease, result, cancel, active, index. ARGV: id, JSON, final ('1'/'0'),
# expiry (final: PXAT ms; active: PX ms), lease px, own ('1'/'0'), client, bytes, created (ms).
SAVE = """
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' and current.err then return 'bad' end
local readable = false
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' then
    readable = true
    local state = doc['state']
    if state == 'done' or state == 'failed' or state == 'cancelled' then return 'finished' end
  end
end
if not readable and ARGV[6] ~= '1' then return 'gone' end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[4])
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIREAT', KEYS[3], ARGV[4])
  redis.call('PEXPIREAT', KEYS[4], ARGV[4])
  redis.call('HDEL', KEYS[5], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[7] .. ' ' .. ARGV[8])
end
redis.call('ZADD', KEYS[6], ARGV[9], ARGV[1])
return 'ok'
"""

# The result, unless the job was finished elsewhere. KEYS: state, result. ARGV: JSON, px.
SAVE_RESULT = """
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' then
    local state = doc['state']
    if state == 'done' or state == 'failed' or state == 'cancelled' then return 'finished' end
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'ok'
"""


class RedisJobStore(JobStore):
    """Jobs in Redis, uploads in a local folder (see the module docstring)."""

    def __init__(
        self, link: RedisLink, uploads: str | os.PathLike[str], runner: Runner, **options: Any
    ) -> None:
        super().__init__(runner, **options)
        self.link = link
        self.uploads = Path(uploads)
        self._pending_results: dict[str, Any] = {}  # done here, not yet written (Redis down)
        self._down = False  # in an outage (logged once when it starts, once when it ends)

    def __repr__(self) -> str:
        return f"RedisJobStore({self.link.where})"

    # -- Redis, bounded ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        try:
            value = await self.link.call(fn)
        except RedisUnavailable as exc:
            if not self._down:
                self._down = True
                logger.warning("the job store cannot reach Redis (%s); job routes answer 503", exc)
            raise JobStoreUnavailable(f"the job store cannot reach Redis ({self.link.where})") from None
        if self._down:
            self._down = False
            logger.info("the job store reaches Redis again (%s)", self.link.where)
        return value

    async def _script(self, source: str, keys: list[str], args: list[Any]) -> str:
        async def run(client: Any) -> Any:
            return await client.register_script(source)(keys=keys, args=args)

        answer = await self._call(run)
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def _key(self, job_id: str, part: str = "") -> str:
        if not _ID.match(job_id or ""):
            raise JobNotFound(job_id)
        return f"{PREFIX}job:{job_id}" + (f":{part}" if part else "")

    def _keep_ms(self) -> int:
        """How long a queued or running job's records live after their last write."""
        return int((self.ttl_s + self.stale_after_s) * 1000)

    # -- admission --------------------------------------------------------------------------------

    async def admit(self, client: str = "", size: int = 0) -> None:
        if self._closing:
            raise JobStoreUnavailable("this server is stopping; another one takes the job")
        status = JobStatus("-" * 22, "queued", client=client_hash(client), upload_bytes=size)
        self._refusal(await self._admission(status, dry=True))

    async def _admission(self, status: JobStatus, *, dry: bool) -> str:
        keys = [ACTIVE, f"{PREFIX}job:{status.job_id}", f"{PREFIX}job:{status.job_id}:lease", INDEX]
        args = [
            status.job_id, json.dumps(self._stored(status)), status.client, status.upload_bytes,
            self.max_jobs, self.max_per_client, self.max_queued_bytes, self._keep_ms(),
            int(self.stale_after_s * 1000), int(status.created_at * 1000), "1" if dry else "0",
        ]  # fmt: skip
        return await self._script(CREATE, keys, args)

    def _refusal(self, answer: str) -> None:
        if answer == "quota":
            raise JobQuotaExceeded(f"{self.max_per_client} jobs of this client are queued or running")
        if answer == "bytes":
            raise JobStoreFull(f"{self.max_queued_bytes} bytes of uploads are queued or running")
        if answer == "full":
            raise JobStoreFull(f"{self.max_jobs} jobs are queued or running")

    # -- storage ----------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        self.uploads.mkdir(parents=True, exist_ok=True)
        await self._call(lambda client: client.set(SINCE, b"1", nx=True))

    async def _create(self, status: JobStatus, upload: Path) -> None:
        self._key(status.job_id)
        self._refusal(await self._admission(status, dry=False))
        folder = self.uploads / status.job_id
        try:
            folder.mkdir(parents=True)
            shutil.move(upload, folder / f"upload{upload.suffix[:16]}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                await self._remove(status.job_id)
            raise

    async def _load(self, job_id: str) -> JobStatus:
        key, lease = self._key(job_id), self._key(job_id, "lease")

        async def read(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(lease)
                pipe.exists(SINCE, RECOVERING)
                return await pipe.execute(raise_on_error=False)

        raw, lease_ms, marks = await self._call(read)
        if raw is None:
            await self._not_found(job_id, marks)
        try:
            if isinstance(raw, Exception):  # WRONGTYPE: a hash, a list... in its place
                raise ValueError(f"not a string ({type(raw).__name__})")
            status = parse_status(job_id, json.loads(raw.decode("utf-8")))
        except ValueError as exc:  # not UTF-8 (UnicodeDecodeError), not JSON, the wrong shape
            await self._unreadable(job_id, f"{type(exc).__name__}: {exc}")
        if not status.finished:  # the lease, by Redis's clock: its age, or stale if it is gone
            alive = isinstance(lease_ms, int) and lease_ms > 0
            age = self.stale_after_s - lease_ms / 1000 if alive else self.stale_after_s + 1
            status.heartbeat = time.time() - age
        return status

    async def _not_found(self, job_id: str, marks: Any) -> NoReturn:
        """JobNotFound, unless Redis lost its data a moment ago (see SINCE)."""
        if marks == 0:  # neither mark: found empty now
            self._log_once(
                "lost",
                f"Redis ({self.link.where}) has lost its data (restarted without persistence?): running "
                "jobs are written again by their owners, finished ones are gone",
                level=logging.WARNING,
            )
            recover_ms = int((3 * self.heartbeat_s + 1) * 1000)

            async def mark(client: Any) -> None:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.set(RECOVERING, b"1", px=recover_ms, nx=True)
                    pipe.set(SINCE, b"1", nx=True)
                    await pipe.execute()

            await self._call(mark)
            raise JobStoreUnavailable("Redis lost its data; the jobs are being written again")
        if marks == 2:  # both marks: found empty a moment ago
            raise JobStoreUnavailable("Redis lost its data; the jobs are being written again")
        raise JobNotFound(job_id)

    async def _unreadable(self, job_id: str, why: str) -> NoReturn:
        self._log_once(
            f"unreadable:{job_id}", f"job {job_id} is unreadable ({why}); deleting it", level=logging.WARNING
        )
        await self._remove(job_id)
        raise JobNotFound(job_id)

    def _stored(self, status: JobStatus) -> dict[str, Any]:
        data = asdict(status)
        data["cancel_requested"] = False  # derived from the cancel key on read
        return data

    async def _save(self, status: JobStatus) -> None:
        job_id = status.job_id
        keys = [self._key(job_id, part) for part in ("", "lease", "result", "cancel")] + [ACTIVE, INDEX]
        if job_id in self._pending_results and status.finished:
            await self._write_result(job_id, self._pending_results[job_id])
        # This process runs it, or finished it and could not write that yet: it may write the
        # state again if Redis lost it.
        own = status.owner == self.owner and (job_id in self._tasks or job_id in self._unsaved)
        if status.finished:
            expiry = int((status.expires_at or time.time() + self.ttl_s) * 1000)
        else:
            expiry = self._keep_ms()
        args = [
            job_id, json.dumps(self._stored(status)), "1" if status.finished else "0", expiry,
            int(self.stale_after_s * 1000), "1" if own else "0", status.client, status.upload_bytes,
            int(status.created_at * 1000),
        ]  # fmt: skip
        answer = await self._script(SAVE, keys, args)
        if answer == "bad":
            await self._unreadable(job_id, "not a string")
        if answer == "finished":  # ended elsewhere: it stops here too, its final state stands
            task = self._tasks.get(job_id)
            if task is not None and not status.finished:
                logger.warning("job %s was finished by another replica; stopping it here", job_id)
                task.cancel(msg="cancel")
            raise JobNotFound(job_id)
        if answer == "gone":
            raise JobNotFound(job_id)
        if status.finished:
            self._pending_results.pop(job_id, None)

    async def _save_result(self, job_id: str, result: Any) -> None:
        try:
            await self._write_result(job_id, result)
        except JobStoreUnavailable:
            # Kept here and written with the final state once Redis answers (`_save`).
            self._pending_results[job_id] = result

    async def _write_result(self, job_id: str, result: Any) -> None:
        keys = [self._key(job_id), self._key(job_id, "result")]
        if await self._script(SAVE_RESULT, keys, [json.dumps(result), self._keep_ms()]) == "finished":
            raise JobNotFound(job_id)

    async def _load_result(self, job_id: str) -> Any:
        if job_id in self._pending_results:
            return self._pending_results[job_id]
        key = self._key(job_id, "result")

        async def read(client: Any) -> Any:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                return (await pipe.execute(raise_on_error=False))[0]

        raw = await self._call(read)
        if raw is None:
            raise JobNotFound(job_id)
        try:
            if isinstance(raw, Exception):
                raise ValueError(f"not a string ({type(raw).__name__})")
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            return await self._unreadable(job_id, f"its result: {type(exc).__name__}: {exc}")

    async def _remove(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel(msg="cancel")
        self._unsaved.pop(job_id, None)
        self._pending_results.pop(job_id, None)
        keys = [self._key(job_id, part) for part in ("", "lease", "result", "cancel")]

        async def remove(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(*keys)
                pipe.zrem(INDEX, job_id)
                pipe.hdel(ACTIVE, job_id)
                await pipe.execute()

        shutil.rmtree(self.uploads / job_id, ignore_errors=True)
        await self._call(remove)

    async def _remove_debris(self, job_id: str, now: float) -> None:
        # An id without a state: its records expired (or Redis lost them). Creation is one
        # script, so this is never a submit in progress.
        if job_id not in self._tasks:
            await self._remove(job_id)

    async def _ids(self) -> list[str]:
        members = await self._call(lambda client: client.zrange(INDEX, 0, -1))
        ids, debris = [], []
        for member in members:
            text = member.decode("utf-8", "replace")
            (ids if _ID.match(text) else debris).append(text)
        if debris:
            self._log_once("debris", f"{len(debris)} malformed job ids in {INDEX}; deleting them")
            await self._call(lambda client: client.zrem(INDEX, *debris))
        return ids

    async def _request_cancel(self, job_id: str) -> None:
        key = self._key(job_id, "cancel")
        await self._call(lambda client: client.set(key, b"1", px=self._keep_ms()))

    async def _cancel_requested(self, job_id: str) -> bool:
        key = self._key(job_id, "cancel")
        return bool(await self._call(lambda client: client.exists(key)))

    def _upload_path(self, job_id: str) -> Path:
        folder = self.uploads / job_id if _ID.match(job_id or "") else self.uploads / "-"
        matches = sorted(folder.glob("upload*")) if folder.is_dir() else []
        return matches[0] if matches else folder / "upload"

    # -- the sweep --------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """The shared records (expired, orphaned, unreadable: `JobStore.sweep`), then the quota
        entries of jobs that are no longer queued or running, then this replica's uploads of
        jobs that are finished or gone (a process of this host that was killed left them)."""
        await super().sweep()
        entries: dict[bytes, bytes] = await self._call(lambda client: client.hgetall(ACTIVE))
        stale = []
        for raw_id, value in entries.items():
            job_id = raw_id.decode("utf-8", "replace")
            if job_id in self._running:
                continue
            try:
                if not _ID.match(job_id) or len(value.split()) != 2:
                    raise JobNotFound(job_id)
                if (await self._load(job_id)).finished:
                    raise JobNotFound(job_id)
            except JobNotFound:
                stale.append(raw_id)
        if stale:
            await self._call(lambda client: client.hdel(ACTIVE, *stale))
        await self._sweep_uploads()

    async def _sweep_uploads(self) -> None:
        try:
            folders = [p for p in self.uploads.iterdir() if _ID.match(p.name) and p.name not in self._tasks]
        except OSError:
            return
        now = time.time()
        for folder in folders:
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime < self.stale_after_s:
                    continue  # a submit of another process of this host, in progress
            try:
                finished = (await self._load(folder.name)).finished
            except JobNotFound:
                finished = True
            if finished:
                shutil.rmtree(folder, ignore_errors=True)
