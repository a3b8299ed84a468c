"""Functions that FaceNet-style Keras files reference by name.

Legacy FaceNet (Inception-ResNet-v1) files wrap residual scaling and the embedding's L2
normalisation in `Lambda` layers that name plain functions; our backbone also prewhitens its
[0, 1] input in one. Keras stores only the name, so loading such a file needs the same names
here. Passing them as `custom_objects` keeps `safe_mode=True` working: nothing is
deserialised from bytecode.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def scaling(x: Any, scale: float) -> Any:
    """Residual-branch scaling of Inception-ResNet blocks: `x * scale`."""
    return x * scale


def l2_normalize(x: Any, axis: int = -1) -> Any:
    """Unit-length embeddings, as FaceNet's `tf.nn.l2_normalize` (epsilon 1e-12)."""
    return tf.math.l2_normalize(x, axis=axis)


def prewhiten(x: Any) -> Any:
    """FaceNet's per-image prewhitening of a [0, 1] RGB batch, on 0..255 pixel values.

    `(x - mean) / max(std, 1 / sqrt(N))` per image, N = pixels x channels, exactly as
    `facenet.prewhiten`; the floor on std keeps flat images finite.
    """
    x = tf.cast(x, tf.float32) * 255.0
    axes = [1, 2, 3]
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    std = tf.math.reduce_std(x, axis=axes, keepdims=True)
    size = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    return (x - mean) / tf.maximum(std, tf.math.rsqrt(size))


CUSTOM_OBJECTS: dict[str, Any] = {
    "scaling": scaling,
    "l2_normalize": l2_normalize,
    "prewhiten": prewhiten,
}
