"""The service's own ASGI app in the test process, no `bentoml serve`: for route, shape, schema
and error-body tests. The model service runs in the same process (BentoML resolves
`bentoml.depends` to a local instance), with a real small Keras model from the test store.

Each variant is service.py imported afresh under its settings (they are read at import), so
one test session can hold the default app and, say, one with an API key side by side.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
from starlette.testclient import TestClient

from tests.helpers import ROOT, free_port

_count = itertools.count()


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_service(env: dict[str, str]) -> ModuleType:
    """service.py as a fresh module, with `env` (DEEPFAKE_* settings) in force while it loads."""
    from serving.settings import get_settings

    name = f"service_variant_{next(_count)}"
    with _environment(env):
        get_settings.cache_clear()
        spec = importlib.util.spec_from_file_location(name, ROOT / "service.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    get_settings.cache_clear()
    return module


@contextlib.contextmanager
def service_app(env: dict[str, str], *, bentoml_metrics: bool = False) -> Iterator[TestClient]:
    """A TestClient on the service's ASGI app, started (lifespan) and stopped around the block.

    BentoML registers its request metrics in the process-wide Prometheus registry once per app,
    so all variants but one run with them off (`bentoml_metrics`)."""
    module = load_service(env)
    if not bentoml_metrics:
        module.DeepfakeDetector.config["metrics"] = {"enabled": False}
    with TestClient(module.DeepfakeDetector.to_asgi(), raise_server_exceptions=False) as client:
        yield client


class ThreadServer:
    """The service's ASGI app behind uvicorn (the server BentoML's workers run) in a thread of
    this process: real HTTP for a real browser, without a process start; the model service
    runs in process. For page tests: batching and faults need `bentoml serve`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ThreadServer:
        import uvicorn

        module = load_service(self.env)
        module.DeepfakeDetector.config["metrics"] = {"enabled": False}
        config = uvicorn.Config(
            module.DeepfakeDetector.to_asgi(),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)
