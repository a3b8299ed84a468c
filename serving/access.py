"""Who may call the guarded routes, and how often: the client's address (behind trusted
proxies), an optional API key, per-client rate limits, and the cap on requests in flight.

All off unless set (DEEPFAKE_API_KEY, DEEPFAKE_RATE_LIMITS, ...). Where the rate limits count:
with DEEPFAKE_JOB_STORE set to Redis, in Redis (`RedisFixedWindowLimiter`), shared by every
worker and replica, so N replicas allow the limit once, not N times; without it, in memory per
worker process (`FixedWindowLimiter`), which keeps a single instance from being monopolised, as
the old service's Flask-Limiter did. While Redis cannot answer, the shared limiter counts in
memory (logged once per outage) and image requests go on.

The in-flight cap (DEEPFAKE_MAX_IN_FLIGHT) and the decoder pools stay per worker process on
purpose: they bound what this process holds (memory for uploads and decoded images, CPU, its
own queue), which no other replica can see or relieve; a shared cap would let a busy replica
refuse work that an idle one could do, and the autoscaler scales on each pod's own load.

The client. The peer address of the connection, unless DEEPFAKE_TRUST_FORWARDED_FOR is set and
the peer is one of DEEPFAKE_TRUSTED_PROXIES (CIDRs): then X-Forwarded-For is read from the right
(each proxy appends the address it saw) and the client is the first entry that is not itself a
trusted proxy; the entries left of it are the client's own writing and are ignored. An IPv6
client is counted by its /64, the block one machine is usually given, so that its own
addresses do not each get a limit of their own.

Order, on a guarded route: the rate limit first (on routes that take work, every request
counts, a wrong key too), then the key (a client past DEEPFAKE_KEY_FAILURE_LIMITS of wrong keys
is answered 429 before its key is checked, on every guarded route), then the in-flight cap (work
only), which counts a request only once its body has arrived: a client that sends its body
slowly holds a connection, not a slot meant for work. Which routes are guarded, and which take
work (an upload to judge), is the route table's (serving/routes.py): a job's status or cancel is
guarded, but polling it is not rate limited.
"""

from __future__ import annotations

import abc
import hashlib
import heapq
import hmac
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from serving.errors import ASGIApp, Message, Overloaded, RateLimited, Receive, Scope, Send, Unauthorized

logger = logging.getLogger("deepfake.access")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
CLIENT_KEY = "deepfake.client"  # the scope key the client's identity is kept under, for the routes
DEFAULT_TRUSTED_PROXIES = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True)
class RateLimit:
    count: int
    seconds: int


def parse_rate_limits(text: str) -> tuple[RateLimit, ...]:
    """'200/day,50/hour' -> limits. Empty text: no limit."""
    limits = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)s?", part)
        if not match:
            raise ValueError(f"bad rate limit {part!r}: expected e.g. '50/hour'")
        limits.append(RateLimit(int(match.group(1)), UNITS[match.group(2)]))
    return tuple(limits)


def parse_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs ('10.0.0.0/8', '::1/128', or a bare address) -> networks; ValueError on a bad one."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip())


# -- the client ------------------------------------------------------------------------------------


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry or a peer host as an address: '1.2.3.4', '1.2.3.4:80',
    '[::1]:80', '::1'; None if it is not one."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ClientAddress:
    """The client's identity for limits: see the module docstring."""

    def __init__(
        self, trust_forwarded_for: bool = False, trusted: Iterable[str] = DEFAULT_TRUSTED_PROXIES
    ) -> None:
        self.trust_forwarded_for = trust_forwarded_for
        self.trusted = parse_networks(trusted)

    def is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def __call__(self, scope: Scope) -> str:
        peer_host = (scope.get("client") or ("unknown", 0))[0]
        peer = _address(peer_host)
        if not self.trust_forwarded_for or not self.is_trusted(peer):
            return _key(peer) if peer is not None else peer_host
        values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"]
        entries = [entry.strip() for value in values for entry in value.split(",") if entry.strip()]
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                return entry[:64]  # what our proxy says it saw, even if it is not an address
            if not self.is_trusted(address):
                return _key(address)
        assert peer is not None
        return _key(_address(entries[0]) or peer) if entries else _key(peer)


# -- rate limits -------------------------------------------------------------------------------


class RateLimiter(abc.ABC):
    """Per-client counting. In memory here (`FixedWindowLimiter`); a limiter shared by every
    worker and replica implements the same two calls."""

    @abc.abstractmethod
    async def hit(self, client: str) -> int | None:
        """Count one request; None if allowed, else the seconds until the client may retry."""

    @abc.abstractmethod
    async def peek(self, client: str) -> int | None:
        """The seconds until the client may retry if it is at a limit now, else None (counts
        nothing)."""


Windows = list[tuple[float, int]]  # (window start, count) per limit


class FixedWindowLimiter(RateLimiter):
    """Counts requests per client in fixed windows, one per limit, in bounded memory.

    At most `max_clients` clients are counted; past that the least recently seen is forgotten,
    unless it is at a limit: a limited client moves to a second table (also at most
    `max_clients`, the soonest to be released dropped first), so that no number of new
    clients (spoofed, or an address block's worth) frees one that is limited."""

    def __init__(
        self,
        limits: tuple[RateLimit, ...],
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.max_clients = max_clients
        self.clock = clock
        self._windows: OrderedDict[str, Windows] = OrderedDict()  # least recently seen first
        self._limited: dict[str, tuple[float, Windows]] = {}  # evicted while limited: (until, windows)
        self._releases: list[tuple[float, str]] = []  # heap of (until, client) over _limited

    def __len__(self) -> int:
        return len(self._windows) + len(self._limited)

    async def hit(self, client: str) -> int | None:
        return self.count(client)

    async def peek(self, client: str) -> int | None:
        now = self.clock()
        windows = self._current(client, now, take=False)
        return self._retry_after(windows, now)

    def count(self, client: str) -> int | None:
        """`hit`, synchronously."""
        now = self.clock()
        windows = self._current(client, now, take=True)
        retry = self._retry_after(windows, now)
        if retry is None:
            windows = [(start, count + 1) for start, count in windows]
        self._windows[client] = windows
        self._evict(now)
        return retry

    def _current(self, client: str, now: float, *, take: bool) -> Windows:
        if client in self._limited:
            windows = self._limited.pop(client)[1] if take else self._limited[client][1]
        else:
            windows = (self._windows.pop(client, None) if take else self._windows.get(client)) or [
                (now, 0)
            ] * len(self.limits)
        return [
            (start, count) if now - start < lim.seconds else (now, 0)
            for (start, count), lim in zip(windows, self.limits, strict=True)
        ]

    def _retry_after(self, windows: Windows, now: float) -> int | None:
        until = self._limited_until(windows, now)
        return None if until is None else max(1, int(until - now + 0.999))

    def _limited_until(self, windows: Windows, now: float) -> float | None:
        full = [
            start + lim.seconds
            for (start, count), lim in zip(windows, self.limits, strict=True)
            if count >= lim.count and now - start < lim.seconds
        ]
        return max(full) if full else None

    def _evict(self, now: float) -> None:
        while len(self._windows) > self.max_clients:
            client, windows = self._windows.popitem(last=False)
            until = self._limited_until(windows, now)
            if until is not None:  # limited: kept, in the other table
                self._limited[client] = (until, windows)
                heapq.heappush(self._releases, (until, client))
        # Released clients leave the limited table; past its bound, the soonest released go.
        while self._releases and (self._releases[0][0] <= now or len(self._limited) > self.max_clients):
            until, client = heapq.heappop(self._releases)
            if client in self._limited and self._limited[client][0] == until:
                del self._limited[client]
        if len(self._releases) > 2 * len(self._limited) + 64:  # entries of clients that came back
            self._releases = [(until, client) for client, (until, _) in self._limited.items()]
            heapq.heapify(self._releases)


# Every limit counted and checked in one step, for one client: nothing is counted if any limit
# is reached (as FixedWindowLimiter). A counter of the wrong shape (not an integer, a hash) is
# deleted and counted from zero, and said so (the second value).
# KEYS[i]: limit i's counter for this client and window. ARGV[1]: '1' to count, '0' to peek;
# ARGV[1 + i]: limit i's count; ARGV[1 + n + i]: ms until limit i's window ends.
SHARED_COUNT = """
local n = #KEYS
local retry, repaired = -1, 0
for i = 1, n do
  local value = redis.pcall('GET', KEYS[i])
  local count = 0
  if type(value) == 'table' then
    redis.call('DEL', KEYS[i])
    repaired = 1
  elseif value then
    count = tonumber(value)
    if count == nil or count ~= math.floor(count) then
      redis.call('DEL', KEYS[i])
      count = 0
      repaired = 1
    end
  end
  if count >= tonumber(ARGV[1 + i]) then
    local left = tonumber(ARGV[1 + n + i])
    if left > retry then retry = left end
  end
end
if retry < 0 and ARGV[1] == '1' then
  for i = 1, n do
    redis.call('INCR', KEYS[i])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[1 + n + i]) end
  end
end
return {retry, repaired}
"""


@dataclass
class Outage:
    """Whether Redis is out for the limiters of one process (they share it: one log line per
    outage, and Redis is tried again every `retry_s`, not on every request)."""

    retry_s: float = 1.0
    down: bool = False
    retry_at: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic)


class RedisFixedWindowLimiter(RateLimiter):
    """Per-client counting shared by every worker and replica through Redis: one counter per
    limit, client and window, the windows aligned to the clock (so every replica counts in the
    same one; replicas' clocks agree to well under a second with NTP), counted and checked by
    one Lua script, each counter expiring at its window's end (a limited client stays limited
    until then, whatever else happens). Keys hold a hash of the client, never its address.

    While Redis cannot answer (down, slow past DEEPFAKE_REDIS_TIMEOUT_S, any error), `fallback`
    counts in this process; the outage is logged once when it starts and once when it ends, and
    Redis is tried again every `outage.retry_s`. Counts made during an outage stay local."""

    def __init__(
        self,
        link: Any,
        limits: tuple[RateLimit, ...],
        *,
        name: str,
        fallback: RateLimiter,
        outage: Outage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from serving.redis_link import PREFIX

        self.link = link  # serving.redis_link.RedisLink
        self.limits = limits
        self.name = name
        self.fallback = fallback
        self.outage = outage or Outage()
        self.clock = clock
        self._prefix = f"{PREFIX}rate:{name}"
        self._repaired_logged = 0.0

    async def hit(self, client: str) -> int | None:
        return await self._count(client, count=True)

    async def peek(self, client: str) -> int | None:
        return await self._count(client, count=False)

    async def _count(self, client: str, *, count: bool) -> int | None:
        outage = self.outage
        if outage.down and outage.clock() < outage.retry_at:
            return await (self.fallback.hit(client) if count else self.fallback.peek(client))
        try:
            retry = await self._shared(client, count)
        except Exception as exc:  # noqa: BLE001 - a limiter never fails a request: it counts here
            outage.retry_at = outage.clock() + outage.retry_s
            if not outage.down:
                outage.down = True
                logger.warning(
                    "rate limits: Redis (%s) cannot count (%s: %s); counting in this process until it "
                    "answers", self.link.where, type(exc).__name__, str(exc)[:120],
                )  # fmt: skip
            return await (self.fallback.hit(client) if count else self.fallback.peek(client))
        if outage.down:
            outage.down = False
            logger.warning("rate limits: Redis (%s) answers again; counting shared", self.link.where)
        return retry

    async def _shared(self, client: str, count: bool) -> int | None:
        now = self.clock()
        who = hashlib.sha256(client.encode("utf-8", "replace")).hexdigest()[:24]
        keys, counts, left = [], [], []
        for n, lim in enumerate(self.limits):
            window = int(now // lim.seconds)
            keys.append(f"{self._prefix}:{n}:{lim.seconds}:{window}:{who}")
            counts.append(lim.count)
            left.append(max(1, math.ceil(((window + 1) * lim.seconds - now) * 1000)))
        args = ["1" if count else "0", *counts, *left]

        async def run(redis: Any) -> Any:
            return await redis.register_script(SHARED_COUNT)(keys=keys, args=args)

        retry_ms, repaired = await self.link.call(run)
        if repaired and time.monotonic() - self._repaired_logged > 60:
            self._repaired_logged = time.monotonic()
            logger.warning("rate limits: a counter in Redis had the wrong shape; counted from zero")
        return None if int(retry_ms) < 0 else max(1, math.ceil(int(retry_ms) / 1000))


def make_limiter(
    limits: tuple[RateLimit, ...], max_clients: int, *, link: Any = None, name: str = "rate",
    outage: Outage | None = None,
) -> RateLimiter | None:  # fmt: skip
    """The limiter for `limits` (None when there are none): shared through Redis when `link`
    (a serving.redis_link.RedisLink) is given, with the in-process one as its fallback."""
    if not limits:
        return None
    local = FixedWindowLimiter(limits, max_clients)
    if link is None:
        return local
    return RedisFixedWindowLimiter(link, limits, name=name, fallback=local, outage=outage)


# -- the middleware ------------------------------------------------------------------------------


class AccessMiddleware:
    """On guarded paths: rate limit, API key (Bearer), and a cap on requests in flight, so that
    overload is a quick 503 with Retry-After instead of a queue that grows until every request
    times out. Probes, health and docs stay open. Every request gets its client's identity in
    `scope[CLIENT_KEY]` (for the per-client job quota). Refusals are raised as typed errors; the
    edge (serving/edge.py) answers them. `guarded(path)`: the key guards it; `work(path)`: it is
    rate limited and counted in flight (default: every guarded path)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        guarded: Callable[[str], bool],
        work: Callable[[str], bool] | None = None,
        api_key: str | None,
        limiter: RateLimiter | None = None,
        key_failures: RateLimiter | None = None,
        client: ClientAddress | None = None,
        max_in_flight: int = 0,
    ) -> None:
        self.app = app
        self.guarded = guarded
        self.work = work or guarded
        self.api_key = api_key.encode() if api_key else None
        self.limiter = limiter
        self.key_failures = key_failures
        self.client = client or ClientAddress()
        self.max_in_flight = max_in_flight  # 0: no cap
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope[CLIENT_KEY] = self.client(scope)
        if not self.guarded(scope["path"]) or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        work = self.work(scope["path"])
        if work and self.limiter is not None and (retry := await self.limiter.hit(client)) is not None:
            raise RateLimited(retry)
        if self.api_key is not None:
            if self.key_failures is not None and (retry := await self.key_failures.peek(client)) is not None:
                raise RateLimited(retry)
            if not self._key_matches(scope):
                if self.key_failures is not None:
                    await self.key_failures.hit(client)
                raise Unauthorized()
        if work:
            await self._counted(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _key_matches(self, scope: Scope) -> bool:
        assert self.api_key is not None
        value = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, holding an in-flight slot from the moment its body is complete."""
        if not self.max_in_flight:
            await self.app(scope, receive, send)
            return
        holding = False

        def take() -> None:
            nonlocal holding
            if self.in_flight >= self.max_in_flight:
                raise Overloaded()
            self.in_flight += 1
            holding = True

        async def counted_receive() -> Message:
            message = await receive()
            if not holding and message["type"] == "http.request" and not message.get("more_body", False):
                take()
            return message

        try:
            if not _has_body(scope):
                take()
            await self.app(scope, counted_receive, send)
        finally:
            if holding:
                self.in_flight -= 1


def _has_body(scope: Scope) -> bool:
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return True
    return headers.get(b"content-length", b"0").strip() not in (b"", b"0")
