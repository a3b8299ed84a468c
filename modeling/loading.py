"""Load a Keras classifier from a `.keras` file, a legacy `.h5` file or a SavedModel folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeling.custom_objects import CUSTOM_OBJECTS

SAVED_MODEL_ENDPOINTS = ("serving_default", "serve")


def load_classifier(path: Path, *, safe_mode: bool = True) -> Any:
    """Return a `keras.Model`; a SavedModel folder is wrapped in an inference-only layer.

    The project's registered layers (the CLIP encoder's, `modeling.clip`) are known to Keras
    once their module is imported: they load with `safe_mode` on."""
    import keras

    import modeling.clip  # noqa: F401 - registers the CLIP layers with Keras

    path = Path(path)
    if path.is_dir():
        return _load_saved_model(path)
    return keras.models.load_model(path, compile=False, safe_mode=safe_mode, custom_objects=CUSTOM_OBJECTS)


def _load_saved_model(path: Path) -> Any:
    import keras
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    endpoint = next((e for e in SAVED_MODEL_ENDPOINTS if e in loaded.signatures), None)
    if endpoint is None:
        raise ValueError(f"SavedModel has no {' or '.join(SAVED_MODEL_ENDPOINTS)} signature")
    args, kwargs = loaded.signatures[endpoint].structured_input_signature
    specs = [*args, *kwargs.values()]
    if len(specs) != 1:
        raise ValueError(f"SavedModel signature takes {len(specs)} inputs, expected 1")
    inputs = keras.Input(shape=tuple(specs[0].shape[1:]), dtype=specs[0].dtype)
    outputs = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(f"SavedModel signature has {len(outputs)} outputs, expected 1")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)
