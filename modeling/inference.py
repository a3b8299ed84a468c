"""The served network behind one call: uint8 image batches in, raw sigmoid outputs out.

Used by the model service and, unchanged, by the in-process benchmark, so that the two
measure the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modeling.spec import ModelSpec


def stored_file(spec: ModelSpec) -> str:
    """Where model_import.py put the network inside a stored model's folder."""
    return "saved_model" if spec.file_format == "saved_model" else "model.keras"


class Classifier:
    def __init__(self, model: Any, spec: ModelSpec) -> None:
        self.model = model
        self.spec = spec

    @classmethod
    def load(cls, model_dir: Path, spec: ModelSpec) -> Classifier:
        from modeling.loading import load_classifier

        model = load_classifier(Path(model_dir) / stored_file(spec), safe_mode=not spec.trusted_code)
        classifier = cls(model, spec)
        classifier(np.zeros((1, *spec.input_size, 3), np.uint8))  # warm-up: build the graph now
        return classifier

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) float32 raw outputs."""
        from preprocessing.tensor import normalize

        x = normalize(images, self.spec.normalization)
        return np.asarray(self.model.predict_on_batch(x), dtype=np.float32).reshape(len(images))

    def differentiable(self) -> Any:
        """The Keras model gradients can flow through (heatmaps, modeling/explain.py)."""
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.model.inputs[0].shape),
            "layers": [layer.name for layer in self.model.layers],
            "parameters": int(self.model.count_params()),
        }
