"""Shared fixtures. Tests use a store of their own (never the project's .bentoml/) and build
the small models they need; the end-to-end server is a real `bentoml serve` subprocess."""

from __future__ import annotations

import os
import tempfile

# Before anything imports bentoml: BENTOML_HOME is read once, at import.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-test-store-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import ServerProcess, build_legacy_facenet_like  # noqa: E402


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
def server(served_tag: str) -> Iterator[ServerProcess]:
    with ServerProcess(env={"DEEPFAKE_MODEL_TAG": served_tag}) as running:
        yield running
