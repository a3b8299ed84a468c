"""Who may call the guarded routes, and how often: the client's address (behind trusted
proxies), an optional API key, per-client rate limits, and the cap on requests in flight.

All off unless set (DEEPFAKE_API_KEY, DEEPFAKE_RATE_LIMITS, ...). The limits count in memory,
per worker process: behind several workers or replicas each counts on its own, so a deployment
that needs one exact limit puts it at the ingress (or a shared limiter: `RateLimiter` is the
interface a shared backend implements); this one keeps a single instance from being
monopolised, as the old service's Flask-Limiter did.

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
import heapq
import hmac
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serving.errors import ASGIApp, Message, Overloaded, RateLimited, Receive, Scope, Send, Unauthorized

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
