"""model_import.py: what it accepts, what it refuses, and the metadata it records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_import import ImportRefused, import_default, import_model
from modeling.spec import ModelSpec
from tests.helpers import ROOT, build_legacy_facenet_like


def _stored(tag: str):  # noqa: ANN202
    import bentoml

    return bentoml.models.get(tag)


def _spec(tag: str) -> ModelSpec:
    return ModelSpec.from_metadata(_stored(tag).info.metadata)


def test_legacy_h5_with_custom_functions_imports_without_flags(legacy_h5: Path) -> None:
    tag = import_model(legacy_h5, metrics={"roc_auc": 0.9})
    spec = _spec(tag)
    assert spec.labels == ("fake", "real") and spec.output_meaning == "P(real)"
    assert spec.input_size == (64, 64) and spec.normalization == "zero_one" and spec.threshold == 0.5
    assert spec.source["format"] == "h5" and len(spec.source["sha256"]) == 64
    assert spec.source["file"] == legacy_h5.name
    assert set(spec.frameworks) == {"tensorflow", "keras", "bentoml"}
    assert spec.metrics == {"roc_auc": 0.9} and not spec.trusted_code
    # stored once as .keras, and it loads back with safe_mode on
    from modeling.loading import load_classifier

    model = load_classifier(Path(_stored(tag).path_of("model.keras")))
    assert {"scaling", "l2_normalize"} <= {
        layer.get_config().get("function", {}).get("config")
        for layer in model.layers
        if layer.__class__.__name__ == "Lambda"
    }


def test_keras_file_with_other_output_and_normalisation(tmp_path: Path) -> None:
    path = tmp_path / "p_fake.keras"
    build_legacy_facenet_like(32).save(path)
    tag = import_model(path, output="p_fake", normalization="minus_one_one", threshold=0.3)
    spec = _spec(tag)
    assert spec.labels == ("real", "fake") and spec.output_meaning == "P(fake)"
    assert spec.normalization == "minus_one_one" and spec.threshold == 0.3 and spec.input_size == (32, 32)


def test_saved_model_folder_imports_and_predicts_the_same(tmp_path: Path) -> None:
    model = build_legacy_facenet_like(32)
    model.export(tmp_path / "exported", verbose=False)
    assert "--trust-code" in _refusal(tmp_path / "exported")  # a graph runs as it is
    tag = import_model(tmp_path / "exported", trust_code=True)
    assert _spec(tag).file_format == "saved_model"
    from modeling.loading import load_classifier

    served = load_classifier(Path(_stored(tag).path_of("saved_model")))
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(served(x)), np.asarray(model(x)), atol=1e-6)


def _refusal(path: Path, **options: object) -> str:
    with pytest.raises(ImportRefused) as caught:
        import_model(path, **options)
    return str(caught.value)


def test_refuses_files_that_are_not_models(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    assert "cannot load" in _refusal(text)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x00")
    assert "expected a .keras or .h5" in _refusal(other)
    assert "no such file" in _refusal(tmp_path / "missing.keras")
    (tmp_path / "folder").mkdir()
    assert "not a SavedModel" in _refusal(tmp_path / "folder")


def test_refuses_models_that_are_not_binary_image_classifiers(tmp_path: Path) -> None:
    import keras

    image = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(image)
    cases = {
        "softmax3.keras": keras.Model(image, keras.layers.Dense(3, activation="softmax")(pooled)),
        "two_outputs.keras": keras.Model(
            image, [keras.layers.Dense(1)(pooled), keras.layers.Dense(1)(pooled)]
        ),
        "vector_input.keras": keras.Model(
            v := keras.Input((10,)), keras.layers.Dense(1, activation="sigmoid")(v)
        ),
        "any_size.keras": keras.Model(
            a := keras.Input((None, None, 3)),
            keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(a)),
        ),
        "not_probability.keras": keras.Model(
            image, keras.layers.Dense(1, bias_initializer="ones", kernel_initializer="ones")(pooled)
        ),
    }
    expected = {
        "softmax3.keras": "one sigmoid output",
        "two_outputs.keras": "one input and one output",
        "vector_input.keras": "fixed (height, width, 3) image input",
        "any_size.keras": "fixed (height, width, 3) image input",
        "not_probability.keras": "not a probability",
    }
    for name, model in cases.items():
        model.save(tmp_path / name)
        assert expected[name] in _refusal(tmp_path / name), name


def _lambda_model(path: Path) -> None:
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)  # Python bytecode in the file
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)).save(path)


def test_safe_mode_refuses_code_unless_trusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lambda.keras"
    _lambda_model(path)
    assert "--trust-code" in _refusal(path)
    tag = import_model(path, trust_code=True)
    assert _spec(tag).trusted_code
    assert "WARNING" in capsys.readouterr().err


def test_cli_refuses_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04garbage")
    run = subprocess.run(
        [sys.executable, "model_import.py", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "model_import: refused:" in run.stderr and "Traceback" not in run.stderr


def test_the_facenet_model_imports_by_name() -> None:
    """The FaceNet model (models/facenet, the default before the CLIP model) imports beside the
    default by its name."""
    import bentoml

    from modeling.default import FACENET_MODEL_VERSION

    tag = import_default("facenet_test", if_missing=True, which="facenet", precision="fp32")
    spec = _spec(tag)
    assert spec.backbone == "facenet" and not spec.placeholder and spec.card["licence_note"]
    assert import_default("facenet_test", if_missing=True, which="facenet", precision="fp32") == tag
    assert bentoml.models.get(tag).info.labels["default_recipe"] == FACENET_MODEL_VERSION


def test_default_import_is_idempotent() -> None:
    """The default (the CLIP model) as `make model` imports it: its recipe's `auto` (bf16 where
    the CPU has it natively and the gate accepts it, else fp32), at its recipe's input size."""
    from modeling.default import read_recipe
    from modeling.optimized import bf16_native

    first = import_default("default_test", if_missing=True)
    assert import_default("default_test", if_missing=True) == first
    spec = _spec(first)
    assert not spec.placeholder and spec.card["licence_note"] and spec.metrics
    recipe = read_recipe()
    size = recipe["backbone"]["input_size"]
    assert spec.backbone == "clip-vit-b16" and tuple(spec.input_size) == (size, size)
    assert spec.precision == ("bf16" if bf16_native() and "bf16" in recipe["precision_auto"] else "fp32")
    assert spec.precision == "fp32" or (spec.acceptance is not None and spec.acceptance.accepted)
