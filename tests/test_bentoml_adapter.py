"""The one adapter of BentoML's internals (serving/bentoml_adapter.py): each of its two changes
must take effect on the versions it is written for, and fail this test the day it stops doing
so (the header timeout is also checked against a real `bentoml serve` in
tests/test_hardening_server.py)."""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import bentoml
import httpx
import pytest

from serving import bentoml_adapter
from tests.helpers import free_port


def test_greedy_batching_takes_effect() -> None:
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

    assert bentoml_adapter.use_greedy_batching() is True
    optimizer = Optimizer(max_latency=1.0)
    for n in range(1, 9):
        optimizer.log_outbound(n=n, wait=0.5, duration=0.01 * n + 0.002)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0.0  # the learned wait (0.5 s here) is gone
    assert 0.005 < optimizer.o_a < 0.02  # the duration model, which max_latency_ms uses, is kept
    # The dispatcher still decides to hold a request back by this very attribute.
    assert "self.optimizer.wait" in inspect.getsource(CorkDispatcher.controller)


def test_other_bentoml_versions_keep_their_own_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bentoml, "__version__", "9.9.9")
    assert bentoml_adapter.use_greedy_batching() is False


# -- the header timeout (and uvicorn's X-Forwarded-For left to us) --------------------------------


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[int]:
    """`app` behind uvicorn, as BentoML's worker builds it (Config, then Server), in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def closed_after(port: int, sent: bytes, wait_s: float) -> float | None:
    """Send `sent` and wait up to `wait_s` for the server to close: the seconds it took, or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        started = time.monotonic()
        if sent:
            sock.sendall(sent)
        try:
            while sock.recv(1024):
                pass
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - started


async def echo_client(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = json.dumps({"client": scope["client"][0]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def test_the_header_timeout_closes_slow_headers_and_serves_the_rest() -> None:
    assert bentoml_adapter.use_header_timeout(1.0) is True
    with uvicorn_server(echo_client) as port:
        # Half a request line, then nothing; a request line and half the headers; nothing at all.
        for sent in (b"GET /livez HT", b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a", b""):
            took = closed_after(port, sent, wait_s=6)
            assert took is not None and took < 1.0 + 2.0, (sent, took)
        # A whole request is answered; uvicorn did not take the client from X-Forwarded-For.
        answer = httpx.get(f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.9"})
        assert answer.json() == {"client": "127.0.0.1"}


def test_other_uvicorn_versions_are_left_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "__version__", "9.9.9")
    assert bentoml_adapter.use_header_timeout(1.0) is False
