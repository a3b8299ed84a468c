"""The one place that changes BentoML's behaviour from the inside: its adaptive batching wait
(`use_greedy_batching`), and the HTTP server it builds (`use_header_timeout`, below).

BentoML's CorkDispatcher holds a request back when its optimizer expects more to arrive: it
waits up to the *average queueing time of the last 50 batches*. Under load that average is
the time requests queued behind a busy model, so once the load stops a lone request still
waits that long, and its own wait keeps the average up (decaying by 5 % per 5-second refresh):
after a 64-client burst, concurrency-1 latency stayed well above its idle value.

On a CPU the model's cost grows with the batch (duration ~ a * n + b, with b small), so waiting
on purpose buys little. Greedy: dispatch whatever is queued as soon as the model is free;
batches still form under load, because requests pile up while a batch runs; max_batch_size and
max_latency_ms keep their meaning. BentoML has no public setting for this: configurable
batching strategies were proposed upstream and not merged
(https://github.com/bentoml/BentoML/pull/3630; "no major modifications will be made to
adaptive batching", https://github.com/bentoml/BentoML/pull/3664).

Guarded: it applies only to the BentoML version it was written and tested against; on any other
the server logs a warning and keeps BentoML's own policy. tests/test_bentoml_adapter.py fails the
day the patch stops taking effect. `DEEPFAKE_BATCH_POLICY=bentoml` keeps BentoML's policy.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

TESTED_BENTOML = "1.4.39"
logger = logging.getLogger("deepfake")


def use_greedy_batching() -> bool:
    """Make every CorkDispatcher's optimizer report no wait; True if it took effect."""
    if bentoml.__version__ != TESTED_BENTOML:
        logger.warning(
            "greedy batching is written for BentoML %s, not %s: keeping BentoML's batching wait",
            TESTED_BENTOML,
            bentoml.__version__,
        )
        return False
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer, "_greedy", False):
        return True
    refresh = Optimizer.trigger_refresh

    def trigger_refresh(self: Optimizer) -> None:
        refresh(self)  # keeps the duration model (o_a, o_b) used for max_latency_ms
        self.wait = 0.0  # never hold a request back on purpose

    Optimizer.trigger_refresh = trigger_refresh
    Optimizer._greedy = True
    return True


# -- the HTTP server's connections ---------------------------------------------------------------

TESTED_UVICORN = "0.55.0"


def use_header_timeout(seconds: float) -> bool:
    """Close a connection whose request line and headers are not complete `seconds` after it
    opened (or after the first byte of a later request on it), and leave the client's address
    to serving/access.py; True if it took effect.

    Why here: BentoML's HTTP worker (_bentoml_impl/worker/service.py) builds uvicorn's Config
    itself, with no hook, and uvicorn's h11 and httptools protocols have no timer for headers:
    only the keep-alive timer between requests, none before the first (a connection that sends
    half a request line was held 45 s and counting). The Config's `load` is wrapped to hand the
    server a subclass of the protocol it chose, with that timer. The same wrapper turns off
    uvicorn's own X-Forwarded-For handling (on by default, trusting 127.0.0.1): it rewrites the
    peer address before the app sees it, so the client could not be told from its proxy;
    DEEPFAKE_TRUST_FORWARDED_FOR and DEEPFAKE_TRUSTED_PROXIES decide that instead.

    Guarded like the batching wait: BentoML and uvicorn at the versions it was written and tested
    against (uvicorn is pinned in requirements.txt), else a warning and nothing changes.
    tests/test_bentoml_adapter.py fails the day it stops taking effect (a raw socket that sends
    half a request line is closed within the timeout)."""
    import uvicorn

    if bentoml.__version__ != TESTED_BENTOML or uvicorn.__version__ != TESTED_UVICORN:
        logger.warning(
            "the header timeout is written for BentoML %s with uvicorn %s, not %s with %s: connections "
            "that never finish their headers are not closed, and uvicorn reads X-Forwarded-For from "
            "127.0.0.1 itself",
            TESTED_BENTOML, TESTED_UVICORN, bentoml.__version__, uvicorn.__version__,
        )  # fmt: skip
        return False
    from uvicorn.config import Config

    Config._header_timeout_s = float(seconds)  # read at each load: the latest call wins
    if getattr(Config, "_deepfake_adapted", False):
        return True
    load = Config.load

    def adapted_load(self: Config) -> None:
        self.proxy_headers = False  # the client's address is serving/access.py's to decide
        load(self)
        self.http_protocol_class = _with_header_timeout(self.http_protocol_class)

    Config.load = adapted_load
    Config._deepfake_adapted = True
    return True


_TIMED: dict[type, type] = {}


def _with_header_timeout(protocol: type) -> type:
    """`protocol` (uvicorn's H11Protocol or HttpToolsProtocol) with a header timer; any other
    protocol class is returned as it is, with a warning."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    known: tuple[type, ...] = (H11Protocol,)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        known = (*known, HttpToolsProtocol)
    except ImportError:  # httptools is not installed
        pass
    if protocol in _TIMED.values():
        return protocol
    if protocol not in known:
        logger.warning("no header timeout for the HTTP protocol %s", protocol.__name__)
        return protocol
    if protocol not in _TIMED:
        _TIMED[protocol] = type(f"HeaderTimed{protocol.__name__}", (_HeaderTimeout, protocol), {})
    return _TIMED[protocol]


class _HeaderTimeout:
    """A mixin over uvicorn's HTTP protocol: a timer runs while the connection waits for a
    request's headers (from the connection's start, and from the first byte of each later
    request); when it fires, the connection is closed. uvicorn's own keep-alive timer still
    closes idle connections between requests."""

    transport: Any
    cycle: Any
    config: Any
    loop: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: Any = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._waiting_for_headers():
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.config._header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()
