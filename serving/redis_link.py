"""The one connection to Redis that the replicas share (DEEPFAKE_JOB_STORE=redis://...): the job
store (serving/redis_store.py) and the shared rate limits (serving/access.py) call it.

- The URL is a secret (it may carry a password): it is kept as a SecretStr, and what logs and
  errors name is `where`: host, port and database only. `rediss://` (TLS) is accepted.
- Every call is bounded: the socket's connect and read timeouts and an outer deadline are all
  `timeout_s` (DEEPFAKE_REDIS_TIMEOUT_S), with one quick retry (a pooled connection that a
  Redis restart closed is replaced at once). A Redis that is down, slow, loading its data,
  out of memory or read-only raises `RedisUnavailable`; the caller answers for it (the job
  routes a 503, the rate limits their in-process fallback).
- Reconnecting is the client's own: a call after an outage opens a new connection; scripts
  that a restarted Redis no longer has are loaded again.

The client is made lazily in the event loop that first uses it (one per loop: a redis.asyncio
connection belongs to its loop), so that importing the service never connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import SecretStr

T = TypeVar("T")
SCHEMES = ("redis", "rediss")
PREFIX = "deepfake:"  # every key this bundle writes starts with it (one deployment per database)
MAX_CONNECTIONS = 32  # per worker process: calls are short (one script or a few commands)


class RedisUnavailable(ConnectionError):
    """Redis did not answer in time, or answered that it cannot serve (loading, OOM, ...)."""


def check_url(url: str) -> str:
    """`url` if it names a Redis server (redis:// or rediss://, a host, a port number, a
    database number); ValueError otherwise. The message never contains the URL (a secret)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL like redis://host:6379/0 (the port is not a number)") from None
    if parts.scheme not in SCHEMES:
        raise ValueError("a Redis URL starts with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ValueError("a Redis URL names a host: redis://host:6379/0")
    if port == 0:
        raise ValueError("a Redis URL's port is 1-65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError("a Redis URL's path is a database number: redis://host:6379/0")
    return url


def describe(url: str) -> str:
    """What logs may say of the URL: 'redis host:port/db' (TLS: 'rediss ...'), never the
    user or password."""
    parts = urlsplit(url)
    return f"{parts.scheme} {parts.hostname}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    return (
        exceptions.ConnectionError,  # refused, reset, closed; includes BusyLoadingError
        exceptions.TimeoutError,
        TimeoutError,
        OSError,
    )


def _is_unavailable_response(exc: BaseException) -> bool:
    """Redis's refusals that say the server, not the command, is the trouble."""
    from redis import exceptions

    if isinstance(exc, exceptions.ReadOnlyError | exceptions.BusyLoadingError):
        return True
    text = str(exc)
    return isinstance(exc, exceptions.ResponseError) and text.startswith(
        ("OOM", "LOADING", "MASTERDOWN", "READONLY", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "BUSY")
    )


class RedisLink:
    """A lazily made client for one URL, every call bounded by `timeout_s`."""

    def __init__(self, url: SecretStr | str, timeout_s: float) -> None:
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        check_url(self._url.get_secret_value())
        self.where = describe(self._url.get_secret_value())
        self.timeout_s = timeout_s
        self._clients: dict[int, Any] = {}  # id(loop) -> redis.asyncio.Redis

    def __repr__(self) -> str:
        return f"RedisLink({self.where})"

    def client(self) -> Any:
        """This event loop's client (made on first use; connects on its first call)."""
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            if len(self._clients) > 16:  # loops that are gone (tests make many)
                self._clients.clear()
            # A burst of requests waits for a free connection (within the timeout) rather
            # than failing as an outage would; one quick retry replaces a connection that a
            # Redis restart closed.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url.get_secret_value(),
                max_connections=MAX_CONNECTIONS,
                timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 1),
                decode_responses=False,
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            self._clients[id(loop)] = client
        return client

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(client)`, within `timeout_s` (plus the one retry's connect); RedisUnavailable if
        Redis cannot answer. Other Redis errors (a wrong type, a script's error) propagate."""
        from redis import exceptions

        try:
            async with asyncio.timeout(self.timeout_s * 2):
                return await fn(self.client())
        except exceptions.ResponseError as exc:
            if _is_unavailable_response(exc):
                raise RedisUnavailable(f"{self.where}: {type(exc).__name__}: {str(exc)[:80]}") from None
            raise
        except _unavailable_errors() as exc:
            raise RedisUnavailable(f"{self.where}: {type(exc).__name__}: {_safe(exc)}") from None

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):  # another loop's client, or already closed
                await client.aclose()
                await client.connection_pool.disconnect()


def _safe(exc: BaseException) -> str:
    """An exception's text, short (redis-py names host and port, never the password)."""
    return str(exc)[:120] or "no answer"


@functools.cache
def shared_link(url: str, timeout_s: float) -> RedisLink:
    """The process's link for a URL: the job store and the limiters share its connections."""
    return RedisLink(SecretStr(url), timeout_s)
