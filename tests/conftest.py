"""Shared fixtures. Tests use a store of their own (never the project's .bentoml/) and build
the small models they need.

Two ways to reach the service:
- `app`: its ASGI app in this process (tests/inprocess.py) with a small real Keras model, for
  routes, shapes, schemas and error bodies: fast, no process start;
- `server`: ONE real `bentoml serve` subprocess for the whole session, for what needs real
  processes: batching, faults, load, the Python client, raw HTTP.
"""

from __future__ import annotations

import os
import tempfile

# Before anything imports bentoml: BENTOML_HOME is read once, at import.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-test-store-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tests.helpers import ServerProcess, build_legacy_facenet_like, build_slow_classifier  # noqa: E402
from tests.inprocess import service_app  # noqa: E402
from tests.videos import BackgroundLoop  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def face_detector_files() -> str:
    """BlazeFace's model file in the test store: the service serves with it (model_import.py
    puts it there for `make serve`)."""
    from model_import import import_face_detector

    return import_face_detector()


@pytest.fixture(scope="session")
def legacy_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legacy-style FaceNet file: .h5, named `scaling`/`l2_normalize` Lambdas, P(real)."""
    path = tmp_path_factory.mktemp("models") / "facenet_real_fake_classifier_2Stage_2.h5"
    build_legacy_facenet_like().save(path)
    return path


@pytest.fixture(scope="session")
def served_tag(legacy_h5: Path) -> str:
    from model_import import import_model

    return import_model(legacy_h5, output="p_real", metrics={"roc_auc": 0.5, "note": "test"})


@pytest.fixture(scope="session")
def slow_tag(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A classifier that keeps the model service busy for tens of ms a call, as FaceNet does:
    concurrent requests then queue behind it and merge into batches."""
    from model_import import import_model

    path = tmp_path_factory.mktemp("slow") / "slow.keras"
    build_slow_classifier().save(path)
    return import_model(path, name="slow_classifier")


@pytest.fixture(scope="session")
def app(served_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service's ASGI app in this process, default settings, the small legacy model; its
    video jobs in a folder of the session's (not the machine's shared default)."""
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_JOBS_DIR": str(tmp_path_factory.mktemp("jobs"))}
    with service_app(env, bentoml_metrics=True) as client:
        yield client


@pytest.fixture(scope="module")
def loop() -> Iterator[BackgroundLoop]:
    """An event loop on a thread for one test module's async fixtures (video worker pools)."""
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="module")
def pool(loop: BackgroundLoop) -> Iterator[Any]:  # serving.video_worker.VideoWorkerPool
    """One video decoder process with the test hooks (a stalling decoder) and no face detector:
    what the job stores' tests run their jobs on."""
    from serving.video_worker import VideoWorkerPool

    workers: VideoWorkerPool = VideoWorkerPool(1, detector=None, test_hooks=True)
    loop.run(workers.start())
    yield workers
    loop.run(workers.close())


@pytest.fixture(scope="session")
def server_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared server's TMPDIR: BentoML writes the Python client's uploads there."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="session")
def server(slow_tag: str, server_tmp: Path) -> Iterator[ServerProcess]:
    """The one shared `bentoml serve`: default settings but a 1.5 s upload deadline (the
    stalled-upload tests), the slow model (so that batches form), a TMPDIR of its own."""
    env = {"DEEPFAKE_MODEL_TAG": slow_tag, "DEEPFAKE_UPLOAD_TIMEOUT_S": "1.5", "TMPDIR": str(server_tmp)}
    with ServerProcess(env=env) as running:
        yield running
