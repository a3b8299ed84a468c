"""Who may call the detect routes: an optional API key and a per-client rate limit.

Both are off unless set (DEEPFAKE_API_KEY, DEEPFAKE_RATE_LIMITS). The rate limit counts in
memory, per worker process: behind several workers or replicas each counts on its own, so a
deployment that needs one exact limit puts it at the ingress; this one keeps a single
instance from being monopolised, as the old service's Flask-Limiter did."""

from __future__ import annotations

import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from serving.errors import ASGIApp, Overloaded, RateLimited, Receive, Scope, Send, Unauthorized

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


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


class FixedWindowLimiter:
    """Counts requests per client in fixed windows, one per limit; bounded memory."""

    def __init__(
        self,
        limits: tuple[RateLimit, ...],
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.max_clients = max_clients
        self.clock = clock
        # client -> [(window start, count) per limit]
        self._windows: OrderedDict[str, list[tuple[float, int]]] = OrderedDict()

    def hit(self, client: str) -> int | None:
        """Count one request; None if allowed, else seconds until the client may retry."""
        now = self.clock()
        windows = self._windows.pop(client, None) or [(now, 0)] * len(self.limits)
        windows = [
            (start, count) if now - start < lim.seconds else (now, 0)
            for (start, count), lim in zip(windows, self.limits, strict=True)
        ]
        self._windows[client] = windows
        if len(self._windows) > self.max_clients:
            self._windows.popitem(last=False)  # forget the least recently seen client
        blocked = [
            start + lim.seconds - now
            for (start, count), lim in zip(windows, self.limits, strict=True)
            if count >= lim.count
        ]
        if blocked:
            return max(1, int(max(blocked) + 0.999))
        self._windows[client] = [(start, count + 1) for start, count in windows]
        return None


class AccessMiddleware:
    """On `guarded` paths: API key (Bearer), rate limit, and a cap on requests in flight, so
    that overload is a quick 503 with Retry-After instead of a queue that grows until every
    request times out. Probes, health and docs stay open. Refusals are raised as typed errors;
    the edge (serving/edge.py) answers them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        guarded: tuple[str, ...],
        api_key: str | None,
        rate_limits: str,
        trust_forwarded_for: bool = False,
        max_in_flight: int = 0,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight  # 0: no cap
        self.in_flight = 0
        self.guarded = guarded
        self.api_key = api_key.encode() if api_key else None
        limits = parse_rate_limits(rate_limits)
        self.limiter = FixedWindowLimiter(limits) if limits else None
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.guarded or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if self.api_key is not None:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                raise Unauthorized()
        if self.limiter is not None:
            retry_after = self.limiter.hit(self._client(scope, headers))
            if retry_after is not None:
                raise RateLimited(retry_after)
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            raise Overloaded()
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _client(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        if self.trust_forwarded_for and (forwarded := headers.get(b"x-forwarded-for")):
            return forwarded.split(b",")[0].strip().decode("latin-1")
        client = scope.get("client")
        return client[0] if client else "unknown"
