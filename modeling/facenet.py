"""FaceNet's Inception-ResNet-v1 as a native Keras 3 functional model.

Laid out like the legacy Keras FaceNet files (`Conv2d_1a_3x3` ... `Block35_1_...`,
`Mixed_6a`, `Block17_*`, `Mixed_7a`, `Block8_*`, `AvgPool`, `Bottleneck`), so layer names map
one-to-one onto the TF-slim scopes of the original graph. Two deliberate differences:

* Convolutions carry a bias and no `BatchNormalization`: the frozen graph we copy weights from
  has batch norm folded into per-conv offsets. Only the bottleneck keeps its batch norm,
  because the graph does too.
* The input is an RGB image scaled to [0, 1], like our other legacy files; FaceNet's
  per-image prewhitening is the model's first layer.

The output is the 512-d, L2-normalised embedding.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from modeling.custom_objects import l2_normalize, prewhiten, scaling

EMBEDDING_SIZE = 512
# Residual scales of the original model (TF-slim `inception_resnet_v1`).
BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.1
BLOCK8_SCALE = 0.2
# Training-time dropout before the bottleneck (keep_prob 0.8); a no-op at inference.
DROPOUT_RATE = 0.2


def build_inception_resnet_v1(input_shape: tuple[int, int, int] = (160, 160, 3)) -> Any:
    """Return the untrained backbone: [0, 1] RGB batch in, 512-d unit embedding out."""
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Lambda(prewhiten, name="Prewhiten")(inputs)
    x = _stem(x)
    for idx in range(1, 6):
        x = _residual_block(x, "Block35", idx, BLOCK35_SCALE)
    x = _mixed_6a(x)
    for idx in range(1, 11):
        x = _residual_block(x, "Block17", idx, BLOCK17_SCALE)
    x = _mixed_7a(x)
    for idx in range(1, 6):
        x = _residual_block(x, "Block8", idx, BLOCK8_SCALE)
    # The last Block8 is unscaled and has no ReLU, as in the original.
    x = _residual_block(x, "Block8", 6, 1.0, activation=None)
    # The graph's 3x3 "AvgPool_1a_8x8" spans the whole map at 160 px: a global average.
    x = keras.layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = keras.layers.Dropout(DROPOUT_RATE, name="Dropout")(x)
    x = keras.layers.Dense(EMBEDDING_SIZE, use_bias=False, name="Bottleneck")(x)
    x = keras.layers.BatchNormalization(
        momentum=0.995, epsilon=0.001, scale=False, name="Bottleneck_BatchNorm"
    )(x)
    outputs = keras.layers.Lambda(l2_normalize, name="Embeddings")(x)
    return keras.Model(inputs, outputs, name="inception_resnet_v1")


def conv_relu(
    x: Any,
    filters: int,
    kernel_size: int | tuple[int, int],
    name: str,
    *,
    strides: int = 1,
    padding: str = "same",
    activation: str | None = "relu",
) -> Any:
    """Conv2D with bias (batch norm folded in), then the named activation."""
    import keras

    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=True, name=name)(
        x
    )
    if activation is None:
        return x
    return keras.layers.Activation(activation, name=f"{name}_Activation")(x)


def branch_name(prefix: str, branch: int, name: str) -> str:
    """Legacy layer naming: `<prefix>_Branch_<n>_<name>`."""
    return f"{prefix}_Branch_{branch}_{name}"


def _stem(x: Any) -> Any:
    import keras

    x = conv_relu(x, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = conv_relu(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = conv_relu(x, 64, 3, "Conv2d_2b_3x3")
    x = keras.layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = conv_relu(x, 80, 1, "Conv2d_3b_1x1", padding="valid")
    x = conv_relu(x, 192, 3, "Conv2d_4a_3x3", padding="valid")
    return conv_relu(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")


def _block_branches(x: Any, block_type: str, prefix: str) -> list[Any]:
    """The parallel branches of one Inception-ResNet A/B/C block."""
    b = partial(branch_name, prefix)
    if block_type == "Block35":
        b0 = conv_relu(x, 32, 1, b(0, "Conv2d_1x1"))
        b1 = conv_relu(x, 32, 1, b(1, "Conv2d_0a_1x1"))
        b1 = conv_relu(b1, 32, 3, b(1, "Conv2d_0b_3x3"))
        b2 = conv_relu(x, 32, 1, b(2, "Conv2d_0a_1x1"))
        b2 = conv_relu(b2, 32, 3, b(2, "Conv2d_0b_3x3"))
        b2 = conv_relu(b2, 32, 3, b(2, "Conv2d_0c_3x3"))
        return [b0, b1, b2]
    if block_type == "Block17":
        b0 = conv_relu(x, 128, 1, b(0, "Conv2d_1x1"))
        b1 = conv_relu(x, 128, 1, b(1, "Conv2d_0a_1x1"))
        b1 = conv_relu(b1, 128, (1, 7), b(1, "Conv2d_0b_1x7"))
        b1 = conv_relu(b1, 128, (7, 1), b(1, "Conv2d_0c_7x1"))
        return [b0, b1]
    if block_type == "Block8":
        b0 = conv_relu(x, 192, 1, b(0, "Conv2d_1x1"))
        b1 = conv_relu(x, 192, 1, b(1, "Conv2d_0a_1x1"))
        b1 = conv_relu(b1, 192, (1, 3), b(1, "Conv2d_0b_1x3"))
        b1 = conv_relu(b1, 192, (3, 1), b(1, "Conv2d_0c_3x1"))
        return [b0, b1]
    raise ValueError(f"unknown block type {block_type!r}")


def _residual_block(x: Any, block_type: str, idx: int, scale: float, activation: str | None = "relu") -> Any:
    """`x + scale * Conv1x1(concat(branches))`, then ReLU (legacy `_inception_resnet_block`)."""
    import keras

    prefix = f"{block_type}_{idx}"
    mixed = keras.layers.Concatenate(axis=-1, name=f"{prefix}_Concatenate")(
        _block_branches(x, block_type, prefix)
    )
    up = conv_relu(mixed, x.shape[-1], 1, f"{prefix}_Conv2d_1x1", activation=None)
    # Named function + arguments, not a Python lambda: the file stays loadable in safe mode.
    up = keras.layers.Lambda(scaling, arguments={"scale": scale}, name=f"{prefix}_Scaling")(up)
    x = keras.layers.Add(name=f"{prefix}_ScaleSum")([x, up])
    if activation is None:
        return x
    return keras.layers.Activation(activation, name=f"{prefix}_Activation")(x)


def _mixed_6a(x: Any) -> Any:
    """Reduction-A: 35x35 -> 17x17 in the original paper's terms."""
    import keras

    b = partial(branch_name, "Mixed_6a")
    b0 = conv_relu(x, 384, 3, b(0, "Conv2d_1a_3x3"), strides=2, padding="valid")
    b1 = conv_relu(x, 192, 1, b(1, "Conv2d_0a_1x1"))
    b1 = conv_relu(b1, 192, 3, b(1, "Conv2d_0b_3x3"))
    b1 = conv_relu(b1, 256, 3, b(1, "Conv2d_1a_3x3"), strides=2, padding="valid")
    pool = keras.layers.MaxPooling2D(3, strides=2, name=b(2, "MaxPool_1a_3x3"))(x)
    return keras.layers.Concatenate(axis=-1, name="Mixed_6a")([b0, b1, pool])


def _mixed_7a(x: Any) -> Any:
    """Reduction-B: 17x17 -> 8x8 in the original paper's terms."""
    import keras

    b = partial(branch_name, "Mixed_7a")
    b0 = conv_relu(x, 256, 1, b(0, "Conv2d_0a_1x1"))
    b0 = conv_relu(b0, 384, 3, b(0, "Conv2d_1a_3x3"), strides=2, padding="valid")
    b1 = conv_relu(x, 256, 1, b(1, "Conv2d_0a_1x1"))
    b1 = conv_relu(b1, 256, 3, b(1, "Conv2d_1a_3x3"), strides=2, padding="valid")
    b2 = conv_relu(x, 256, 1, b(2, "Conv2d_0a_1x1"))
    b2 = conv_relu(b2, 256, 3, b(2, "Conv2d_0b_3x3"))
    b2 = conv_relu(b2, 256, 3, b(2, "Conv2d_1a_3x3"), strides=2, padding="valid")
    pool = keras.layers.MaxPooling2D(3, strides=2, name=b(3, "MaxPool_1a_3x3"))(x)
    return keras.layers.Concatenate(axis=-1, name="Mixed_7a")([b0, b1, b2, pool])
