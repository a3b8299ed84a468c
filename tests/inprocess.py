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
from collections.abc import Iterator
from types import ModuleType

from starlette.testclient import TestClient

from tests.helpers import ROOT

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
