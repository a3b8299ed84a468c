"""The ONNX graph of the default CLIP classifier (modeling/onnx_export.py), run by ONNX Runtime
in float32, against the Keras model it was written from: the same P(fake) on the gate's crops,
with and without the SmoothQuant factors the int8 precision folds into it. The real committed
model (the pinned CLIP weights and the committed head), never a stand-in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modeling.optimized import CALIBRATION_BATCH, CropSet, load_crops, p_fake, predict
from modeling.spec import ModelSpec
from tests.test_precision import committed_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# float32 rounding in a different order (ONNX Runtime's kernels against TensorFlow's) through
# twelve blocks and a calibrated head: far below the gate's 0.03, far above a wrong graph's.
FLOAT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def clip_model() -> tuple[Any, ModelSpec]:
    return committed_model()


@pytest.fixture(scope="module")
def gate_images(clip_model: tuple[Any, ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
    """The gate's images (evaluation crops and fixtures) and their fp32 Keras P(fake)."""
    model, spec = clip_model
    crops = CropSet.from_folder()
    images = np.concatenate(
        [load_crops(crops.evaluation, spec.input_size), load_crops(crops.fixtures, spec.input_size)]
    )
    keras_p = p_fake(
        predict(lambda x: np.asarray(model.predict_on_batch(x)).reshape(len(x)), images, spec), spec
    )
    return images, keras_p


@pytest.fixture(scope="module")
def exported(clip_model: tuple[Any, ModelSpec]) -> bytes:
    from modeling.onnx_export import export_onnx

    return export_onnx(clip_model[0])


def _onnx_p_fake(onnx_model: bytes, images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    from modeling.optimized import ONNXNetwork

    return p_fake(predict(ONNXNetwork(onnx_model), images, spec), spec)


def test_onnx_graph_answers_like_the_keras_model(
    clip_model: tuple[Any, ModelSpec], gate_images: tuple[np.ndarray, np.ndarray], exported: bytes
) -> None:
    import onnx

    from modeling.clip import ClipBlock

    model, spec = clip_model
    images, keras_p = gate_images
    change = np.abs(_onnx_p_fake(exported, images, spec) - keras_p)
    assert change.max() <= FLOAT_TOLERANCE, change.max()
    # every block's linear layers are named by their Keras layer (what the quantizer excludes by)
    names = {node.name for node in onnx.load_from_string(exported).graph.node}
    blocks = [layer.name for layer in model.layers if isinstance(layer, ClipBlock)]
    assert blocks and all(f"{b}/{part}" in names for b in blocks for part in ("qkv", "out", "fc1", "fc2"))
    assert keras_p.std() > 0.1  # the crops span both answers: a constant graph would fail above


def test_smoothing_leaves_the_float_graph_unchanged(
    clip_model: tuple[Any, ModelSpec], gate_images: tuple[np.ndarray, np.ndarray], exported: bytes
) -> None:
    """SmoothQuant's factors move each outlier channel's scale from a linear layer's input into
    its weights: in float the function is the same. Factors far from 1 (alpha 0.8), so that a
    factor applied on one side only would show."""
    from modeling.onnx_export import activation_maxima, export_onnx, smoothing_factors
    from preprocessing.tensor import normalize

    model, spec = clip_model
    images, keras_p = gate_images
    calibration = normalize(
        load_crops(CropSet.from_folder().calibration, spec.input_size), spec.normalization
    )
    batches = [calibration[i : i + CALIBRATION_BATCH] for i in range(0, len(calibration), CALIBRATION_BATCH)]
    factors = smoothing_factors(model, activation_maxima(exported, batches), alpha=0.8)
    assert max(float(np.abs(np.log(f)).max()) for f in factors.values()) > np.log(4)
    change = np.abs(_onnx_p_fake(export_onnx(model, factors), images, spec) - keras_p)
    assert change.max() <= FLOAT_TOLERANCE, change.max()


def test_a_model_the_exporter_cannot_write_is_refused_by_name() -> None:
    import keras

    from modeling.onnx_export import ExportUnsupported, export_onnx

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)  # not a patch embedding
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x)))
    with pytest.raises(ExportUnsupported, match="stem"):
        export_onnx(model)
