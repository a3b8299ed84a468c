"""A graceful stop across the two services.

On SIGTERM (`bentoml serve` passes it to every worker at once) each worker's server stops
taking connections and finishes the requests it has. The API worker's requests still need the
model service after that, for as long as they decode and find faces; so the model worker keeps
serving until it has had no call for `idle_s` (at most `max_s`), and only then stops the way its
server would have stopped at once. Its own requests in flight finish as before.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("deepfake")


def stop_when_idle(last_call: Callable[[], float], *, idle_s: float, max_s: float) -> bool:
    """Defer this process's SIGTERM handler until `last_call()` is `idle_s` old (bounded by
    `max_s`). Only in the main thread, where signal handlers live; True if installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return False

    def deferred(sig: int, frame: FrameType | None) -> None:
        deadline = time.monotonic() + max_s
        logger.info("SIGTERM: serving until idle for %.1f s (at most %.0f s)", idle_s, max_s)

        def check() -> None:
            now = time.monotonic()
            if now - last_call() >= idle_s or now >= deadline:
                stop(sig, frame)
            else:
                timer = threading.Timer(0.1, check)
                timer.daemon = True
                timer.start()

        check()

    signal.signal(signal.SIGTERM, deferred)
    return True
