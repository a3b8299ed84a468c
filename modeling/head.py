"""The real/fake classifier: the FaceNet backbone, a small head and a calibration layer.

    image [0, 1] 160x160 -> Inception-ResNet-v1 (legacy layer names, up to the 512-d embedding)
    [AvgPool 1792-d, Embeddings 512-d] -> Head_Features (concatenated) -> Head_Normalize
        -> Head_Input_Dropout -> Head_Dense (ReLU) -> Head_Dropout -> Head_Logit
        -> Calibration (sigmoid) = P(real)

The head reads the pooled features of the last block as well as the identity embedding: the
bottleneck is trained to keep identity and drop everything else, including much of what tells
a real face from a generated or blended one (on the default data a linear probe on the pooled
features beat one on the embedding alone by about 0.07 ROC AUC).

The output follows the legacy FaceNet classifiers: class 1 = real, so the sigmoid is P(real)
and files made here import with `model_import.py`'s defaults. `Calibration` is a 1x1 Dense
layer holding Platt scaling, `sigmoid(a * logit + b)`, fitted on validation data after
training: the served output is the calibrated probability, with no custom code in the file.

Training fine-tunes only the top of the backbone (`FINE_TUNED_LAYERS`: the last
Inception-ResNet block and the bottleneck; the bottleneck's batch norm stays frozen), so a
trained model is the public FaceNet weights plus a few MB: `save_trained_weights` writes
exactly those layers and the head, `load_trained_weights` puts them back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from artifacts import sha256_file

HEAD_UNITS = 128
HEAD_DROPOUT = 0.3
HEAD_FEATURES = ("AvgPool", "Embeddings")  # backbone layers the head reads
HEAD_INPUT_DROPOUT = 0.2
NORMALIZE_LAYER = "Head_Normalize"
LOGIT_LAYER = "Head_Logit"
CALIBRATION_LAYER = "Calibration"
HEAD_LAYERS = (NORMALIZE_LAYER, "Head_Dense", LOGIT_LAYER, CALIBRATION_LAYER)
# The linear head of a probe on frozen features (the CLIP models): standardise, one logit.
LINEAR_HEAD_LAYERS = (NORMALIZE_LAYER, LOGIT_LAYER, CALIBRATION_LAYER)
NORMALIZE_EPSILON = 1e-6
FROZEN_HEAD_LAYERS = (NORMALIZE_LAYER, CALIBRATION_LAYER)  # set by training, never by gradients
# Training caches this layer's output (3x3x1792 at 160 px): everything after it is cheap.
CUT_LAYER = "Block8_5_Activation"
# The backbone layers stage 2 fine-tunes: every conv of the last block, and the bottleneck.
FINE_TUNED_LAYERS = re.compile(r"^(Block8_6_.*|Bottleneck)$")
# Fine-tuned backbone weights are stored in float16 (half the size); the head in float32.
STORED_BACKBONE_DTYPE = np.float16


def add_head(backbone: Any, *, seed: int = 0, name: str = "facenet_real_fake") -> Any:
    """The classifier on `backbone` (image in, embedding out); calibration starts as identity."""
    import keras

    features = keras.layers.Concatenate(name="Head_Features")(
        [backbone.get_layer(name).output for name in HEAD_FEATURES]
    )
    # Fixed per-feature standardisation: a frozen batch norm whose statistics training sets
    # from the training features (`set_normalization`), read live from its variables.
    normalize = keras.layers.BatchNormalization(
        center=False, scale=False, epsilon=NORMALIZE_EPSILON, name=NORMALIZE_LAYER
    )
    normalize.trainable = False
    x = normalize(features)
    x = keras.layers.Dropout(HEAD_INPUT_DROPOUT, seed=seed, name="Head_Input_Dropout")(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu", kernel_initializer=init, name="Head_Dense")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, seed=seed + 1, name="Head_Dropout")(x)
    logit = keras.layers.Dense(
        1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1), name=LOGIT_LAYER
    )(x)
    calibration = keras.layers.Dense(1, activation="sigmoid", name=CALIBRATION_LAYER)
    calibration.trainable = False
    model = keras.Model(backbone.input, calibration(logit), name=name)
    set_calibration(model, 1.0, 0.0)
    return model


def set_calibration(model: Any, scale: float, offset: float) -> None:
    """Platt scaling inside the network: output = sigmoid(scale * logit + offset)."""
    layer = model.get_layer(CALIBRATION_LAYER)
    layer.set_weights([np.array([[scale]], np.float32), np.array([offset], np.float32)])


def set_normalization(model: Any, features: np.ndarray) -> None:
    """Standardise the head's input with the mean and variance of `features` (N, D)."""
    features = np.asarray(features, np.float64)
    layer = model.get_layer(NORMALIZE_LAYER)
    layer.set_weights([features.mean(axis=0).astype(np.float32), features.var(axis=0).astype(np.float32)])


def get_calibration(model: Any) -> tuple[float, float]:
    kernel, bias = model.get_layer(CALIBRATION_LAYER).get_weights()
    return float(kernel.reshape(())), float(bias.reshape(()))


def fine_tuned_layers(model: Any) -> list[Any]:
    return [layer for layer in model.layers if FINE_TUNED_LAYERS.match(layer.name) and layer.weights]


def trained_layers(model: Any) -> list[Any]:
    """Every layer whose weights training changes: the fine-tuned backbone top and the head."""
    return fine_tuned_layers(model) + [model.get_layer(name) for name in HEAD_LAYERS]


def freeze_for_fine_tuning(model: Any) -> None:
    """Only the fine-tuned backbone layers and the head's Dense layers stay trainable."""
    trainable = {layer.name for layer in trained_layers(model)} - set(FROZEN_HEAD_LAYERS)
    for layer in model.layers:
        layer.trainable = layer.name in trainable


def trained_weights(model: Any) -> dict[str, np.ndarray]:
    """`{layer/variable: array}` of the trained layers, in the dtype they are stored in."""
    head = set(HEAD_LAYERS)
    weights = {}
    for layer in trained_layers(model):
        dtype = np.float32 if layer.name in head else STORED_BACKBONE_DTYPE
        for variable in layer.weights:
            weights[f"{layer.name}/{variable.name}"] = np.asarray(variable.numpy(), dtype=dtype)
    return weights


def round_to_stored_precision(model: Any) -> None:
    """Give the model exactly the weights a save/load round trip would give it.

    Training calls this before calibrating, so calibration, threshold and metrics describe
    the weights that are committed, not their float32 originals.
    """
    load_weights_dict(model, trained_weights(model))


def save_trained_weights(model: Any, path: Path) -> str:
    """Write the trained layers to a compressed `.npz`; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **trained_weights(model))
    return sha256_file(path)


def load_trained_weights(model: Any, path: Path) -> None:
    with np.load(Path(path)) as stored:
        load_weights_dict(model, {key: stored[key] for key in stored.files})


def load_weights_dict(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Assign every trained layer's variables; raise on a missing, extra or misshapen one."""
    expected = {f"{layer.name}/{v.name}": v for layer in trained_layers(model) for v in layer.weights}
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise ValueError(f"trained weights do not match the model: missing {missing[:5]}, extra {extra[:5]}")
    for key, variable in expected.items():
        value = weights[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{key}: stored shape {value.shape} != model {tuple(variable.shape)}")
        variable.assign(np.asarray(value, dtype=np.float32))


def sub_models(model: Any, cut_layer: str = CUT_LAYER) -> dict[str, Any]:
    """Views of `model` that share its layers (training one trains the model itself).

    `features`: image -> cut activations; `top`: cut activations -> head logit;
    `head_input`: cut activations -> the head's input features; `head`: those -> head logit.
    """
    import keras

    cut = model.get_layer(cut_layer).output
    head_input = model.get_layer("Head_Features").output
    logit = model.get_layer(LOGIT_LAYER).output
    return {
        "features": keras.Model(model.input, cut, name="features"),
        "top": keras.Model(cut, logit, name="top"),
        "head_input": keras.Model(cut, head_input, name="head_input"),
        "head": keras.Model(head_input, logit, name="head"),
    }


# ---- the linear head (a probe on frozen features) -------------------------------------------


def linear_head(features: Any, *, seed: int = 0) -> Any:
    """`features` (N, D) -> Head_Normalize (a frozen batch norm holding the training features'
    mean and variance) -> Head_Logit (Dense 1: the logit of P(real)) -> Calibration (Dense 1x1 +
    sigmoid, Platt scaling) = P(real). Training sets every weight (`training.linear`)."""
    import keras

    normalize = keras.layers.BatchNormalization(
        center=False, scale=False, epsilon=NORMALIZE_EPSILON, name=NORMALIZE_LAYER
    )
    normalize.trainable = False
    logit = keras.layers.Dense(
        1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name=LOGIT_LAYER
    )(normalize(features))
    calibration = keras.layers.Dense(1, activation="sigmoid", name=CALIBRATION_LAYER)
    calibration.trainable = False
    return calibration(logit)


def build_linear_head(features_dim: int) -> Any:
    """The linear head alone, on a (N, features_dim) input; calibration starts as identity."""
    import keras

    inputs = keras.Input((features_dim,), name="head_features")
    model = keras.Model(inputs, linear_head(inputs), name="linear_head")
    set_calibration(model, 1.0, 0.0)
    return model


def linear_head_weights(model: Any) -> dict[str, np.ndarray]:
    """`{layer/variable: float32 array}` of the linear head's layers."""
    return {
        f"{name}/{variable.name}": np.asarray(variable.numpy(), np.float32)
        for name in LINEAR_HEAD_LAYERS
        for variable in model.get_layer(name).weights
    }


def load_linear_head_weights(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Assign the linear head's variables; raise on a missing, extra or misshapen one."""
    expected = {f"{n}/{v.name}": v for n in LINEAR_HEAD_LAYERS for v in model.get_layer(n).weights}
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise ValueError(f"head weights do not match the model: missing {missing}, extra {extra}")
    for key, variable in expected.items():
        value = np.asarray(weights[key], np.float32)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{key}: stored shape {value.shape} != model {tuple(variable.shape)}")
        variable.assign(value)
