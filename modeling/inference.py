"""The served network behind one call: uint8 image batches in, raw sigmoid outputs out.

Used by the model service and, unchanged, by the in-process benchmark, so that the two
measure the same thing. The runtime and precision are the stored model's metadata
(`ModelSpec.runtime`, `.precision`; see modeling/optimized.py): a LiteRT model is served
without importing TensorFlow at all."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modeling.spec import ModelSpec

logger = logging.getLogger("deepfake")


def stored_file(spec: ModelSpec) -> str:
    """Where model_import.py put the network inside a stored model's folder."""
    return "saved_model" if spec.file_format == "saved_model" else "model.keras"


class Classifier:
    def __init__(
        self,
        network: Callable[[np.ndarray], np.ndarray],
        spec: ModelSpec,
        summary: dict[str, Any],
        served: dict[str, Any] | None = None,
        keras_model: Any = None,
        model_dir: Path | None = None,
        trust_code: bool = False,
    ) -> None:
        self.network = network  # normalised float32 batch -> raw outputs
        self._keras_model = keras_model  # the float32 Keras model, when it is loaded already
        self._model_dir = model_dir
        self.spec = spec
        self.summary = summary  # input_shape, layers, parameters
        self.served = served or {"runtime": spec.runtime, "precision": spec.precision}
        self._trust_code = trust_code

    @classmethod
    def load(
        cls,
        model_dir: Path,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        trust_code: bool = False,
        precision: str = "auto",
        flags: set[str] | None = None,
    ) -> Classifier:
        """`threads`: LiteRT's and ONNX Runtime's (default: every core); TensorFlow keeps its
        process-wide setting. `precision`: which stored precision serves (the `precision`
        setting): `auto` picks from this CPU's `flags` (default: /proc/cpuinfo's;
        modeling.optimized.pick_precision), any other must be stored (ValueError if not). A
        model stored before `ModelSpec.precisions` serves its one precision under `auto`.
        `trust_code`: the operator's word (DEEPFAKE_TRUST_MODEL_CODE) that a model imported with
        --trust-code may run its code; without it such a model is refused (PermissionError),
        whatever its metadata says. Keras' safe_mode is off only when both say so."""
        model_dir = Path(model_dir)
        if (spec.trusted_code or spec.file_format == "saved_model") and not trust_code:
            raise PermissionError(
                "this model was imported with --trust-code (its file can run code); serve it only "
                "if you trust it, with DEEPFAKE_TRUST_MODEL_CODE=true"
            )
        picked_by, stored = "the import", spec.stored_precisions()
        if spec.precisions or precision != "auto":
            from modeling.optimized import cpu_flags, pick_precision

            choice = pick_precision(stored, cpu_flags() if flags is None else flags, precision)
            picked_by = "the CPU's flags" if precision == "auto" else "the precision setting"
            fields = {"precision": choice.precision, "runtime": choice.runtime, "optimized_file": choice.file,
                      "optimized_sha256": choice.sha256, "acceptance": choice.acceptance}  # fmt: skip
            spec = spec.model_copy(update=fields)
        if spec.runtime in ("litert", "onnxruntime"):
            classifier = cls._load_file(model_dir, spec, threads)
        else:
            classifier = cls._load_tensorflow(model_dir, spec, trust_code)
        classifier._trust_code = trust_code
        classifier.served["picked_by"] = picked_by
        classifier.served["stored"] = [entry.precision for entry in stored]
        if spec.acceptance is not None and classifier.served["precision"] == spec.precision:
            classifier.served["acceptance"] = spec.acceptance.model_dump()
        classifier(np.zeros((1, *spec.input_size, 3), np.uint8))  # warm-up: build the graph now
        return classifier

    @classmethod
    def from_keras(cls, model: Any, spec: ModelSpec) -> Classifier:
        """A Keras model already in memory, served as fp32 TensorFlow (benchmarks, tests)."""
        from modeling.optimized import network_summary

        served = {"runtime": "tensorflow", "precision": "fp32", "file": "(in memory)"}
        return cls(
            lambda x: model.predict_on_batch(x), spec, network_summary(model), served, keras_model=model
        )

    @classmethod
    def _load_file(cls, model_dir: Path, spec: ModelSpec, threads: int | None) -> Classifier:
        """The optimized file beside the Keras file, on its runtime (LiteRT or ONNX Runtime)."""
        from artifacts import require_sha256
        from modeling.optimized import NETWORK_FILE, LiteRTNetwork, ONNXNetwork

        path = model_dir / spec.optimized_file
        require_sha256(path, spec.optimized_sha256)
        network = (ONNXNetwork if spec.runtime == "onnxruntime" else LiteRTNetwork)(path, threads)
        summary = json.loads((model_dir / NETWORK_FILE).read_text())
        served = {"runtime": spec.runtime, "precision": spec.precision, "file": spec.optimized_file,
                  "threads": network.threads}  # fmt: skip
        return cls(network, spec, summary, served, model_dir=model_dir)

    @classmethod
    def _load_tensorflow(cls, model_dir: Path, spec: ModelSpec, trust_code: bool = False) -> Classifier:
        from modeling.loading import load_classifier
        from modeling.optimized import BF16Network, bf16_native, network_summary

        model = load_classifier(
            model_dir / stored_file(spec), safe_mode=not (trust_code and spec.trusted_code)
        )
        served: dict[str, Any] = {"runtime": "tensorflow", "precision": "fp32", "file": stored_file(spec)}
        network: Callable[[np.ndarray], np.ndarray] = lambda x: model.predict_on_batch(x)  # noqa: E731
        if spec.precision == "bf16":
            if bf16_native():
                network = BF16Network(model)
                served["precision"] = "bf16"
            else:  # emulated bf16 is slower than fp32; fp32 is what the gate compared against
                served["note"] = "bf16 imported, fp32 served: this CPU has no native bf16"
                logger.warning("model %s: %s", spec.source.get("file", ""), served["note"])
        return cls(network, spec, network_summary(model), served, keras_model=model, model_dir=model_dir)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) float32 raw outputs."""
        from preprocessing.tensor import normalize

        x = normalize(images, self.spec.normalization)
        return np.asarray(self.network(x), dtype=np.float32).reshape(len(images))

    def differentiable(self) -> Any:
        """The float32 Keras model gradients can flow through (heatmaps, modeling/explain.py):
        the served one, or, for an optimized file (LiteRT), the Keras file stored beside it,
        loaded the first time it is asked for."""
        if self._keras_model is None:
            from modeling.loading import load_classifier

            assert self._model_dir is not None
            path = self._model_dir / stored_file(self.spec)
            self._keras_model = load_classifier(
                path, safe_mode=not (self._trust_code and self.spec.trusted_code)
            )
        return self._keras_model

    def describe(self) -> dict[str, Any]:
        """input_shape, layers, parameters; and `served`: runtime, precision, file, threads."""
        return {**self.summary, "served": self.served}
