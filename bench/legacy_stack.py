"""The old backend's serving stack, rebuilt for comparison (not its code): Flask under gunicorn,
1 worker x 4 threads, TensorFlow in eager mode, one `model.predict` per request, no face step,
the upload resized to the model's input. It serves the same classifier file the bundle serves.

    python bench/legacy_stack.py --model-tag deepfake_classifier:latest --port 5001

bench/suite.py starts it beside the bundle and loads both with bench/http_load.py (only the
detect route exists here; its answer keeps the old fields). Needs flask and gunicorn
(requirements-bench.txt)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE_ENV = "LEGACY_MODEL_FILE"


def create_app() -> Any:
    """The Flask app: the model is loaded once per worker, as the old service did."""
    import numpy as np
    import tensorflow as tf
    from flask import Flask, jsonify, request
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from modeling.loading import load_classifier

    tf.config.run_functions_eagerly(True)  # as the old backend configured TensorFlow
    model = load_classifier(Path(os.environ[MODEL_FILE_ENV]), safe_mode=False)
    height, width = (int(n) for n in model.inputs[0].shape[1:3])
    app = Flask("legacy")

    @app.post("/api/v1/detect/")
    def detect() -> Any:
        if "file" not in request.files:
            return jsonify({"error": "No file provided", "error_code": "MISSING_FILE"}), 400
        image = Image.open(io.BytesIO(request.files["file"].read())).convert("RGB").resize((width, height))
        batch = np.expand_dims(np.asarray(image, np.float32) / 255.0, 0)
        raw = float(model.predict(batch, verbose=0)[0][0])
        return jsonify({"prediction": "real" if raw >= 0.5 else "fake", "confidence": raw})

    @app.get("/metrics")
    def metrics() -> Any:  # http_load reads batch sizes here; the old service had none
        return "", 200

    return app


def serve(model_tag: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The gunicorn command line and environment for `model_tag` (from BENTOML_HOME's store)."""
    import bentoml

    stored = bentoml.models.get(model_tag)
    os.environ[MODEL_FILE_ENV] = stored.path_of("model.keras")
    return [
        sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--bind", f"{host}:{port}",
        "--chdir", str(ROOT), "--timeout", "120", "bench.legacy_stack:create_app()",
    ]  # fmt: skip


if __name__ == "__main__":
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model-tag", default="deepfake_classifier:latest")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    command = serve(args.model_tag, args.port)
    os.execv(command[0], command)
