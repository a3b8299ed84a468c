"""A small, untrained stand-in classifier with the legacy FaceNet layout.

It exercises the same import and serving path as a real FaceNet file (named `scaling` and
`l2_normalize` Lambda layers, [0, 1] input, one sigmoid output meaning P(real)) and is named
in its metadata as an untrained placeholder. Tests build it in seconds."""

from __future__ import annotations

from typing import Any

from modeling.custom_objects import l2_normalize, scaling


def build_placeholder(input_size: tuple[int, int] = (160, 160), seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*input_size, 3), name="input_1")
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="Conv2d_1a_3x3")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="Conv2d_2a_3x3")(x)
    branch = keras.layers.Conv2D(32, 3, padding="same", name="Block35_1_Conv2d_1x1")(x)
    branch = keras.layers.Lambda(scaling, arguments={"scale": 0.17}, name="Block35_1_ScaleSum")(branch)
    x = keras.layers.Add(name="Block35_1_Add")([x, branch])
    x = keras.layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = keras.layers.Dense(32, name="Bottleneck")(x)
    x = keras.layers.Lambda(l2_normalize, name="normalize")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="real_fake")(x)
    return keras.Model(inputs, outputs, name="placeholder_facenet")
