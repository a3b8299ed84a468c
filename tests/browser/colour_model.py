"""A small real Keras classifier whose verdict a test can choose by what it crops.

P(real) = sigmoid(GAIN * (mean(R - B) - MIN_WARMTH)) on [0, 1] pixels: warm crops (skin, the
orange suit) read real, neutral or blue ones (a black helmet, the flag's blue field) fake,
and a grey variant (R = B) always fake. So one server shows the old front end both a FAKE
and a REAL consensus, and a REAL one with a fake row (grayscale) among real ones: by design,
not by a random network's chance."""

from __future__ import annotations

from typing import Any

import numpy as np

GAIN = 100.0
# On astronaut.jpg the face crops' variants have mean R - B >= 0.08, the flag's blue field <= -0.05.
MIN_WARMTH = 0.05


def build_colour_model(size: int = 160) -> Any:
    """A legacy-layout file: (size, size, 3) input in [0, 1], one sigmoid output meaning P(real)."""
    import keras

    inputs = keras.Input(shape=(size, size, 3), name="input_1")
    channel_means = keras.layers.GlobalAveragePooling2D(name="channel_means")(inputs)
    head = keras.layers.Dense(1, activation="sigmoid", name="real_fake")
    outputs = head(channel_means)
    head.set_weights(
        [np.array([[GAIN], [0.0], [-GAIN]], dtype=np.float32), np.array([-GAIN * MIN_WARMTH], np.float32)]
    )
    return keras.Model(inputs, outputs, name="colour_classifier")
