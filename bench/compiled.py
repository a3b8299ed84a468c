"""Compiled inference, measured: the served model's batch time called four ways.

    BENTOML_HOME=.bentoml python bench/compiled.py
    BENTOML_HOME=.bentoml python bench/compiled.py --batch-sizes 1 7 32 --repeat 5

For each batch size, the median wall time of one batch (normalised float input, output back in
NumPy) through:

* `predict_on_batch`: what the service runs (`modeling/inference.Classifier`); Keras traces it
  into a tf.function once per input shape family;
* `tf.function`: one trace with a fixed input signature (batch dimension left open);
* `bucketed`: the same with every batch zero-padded to the next power of two (1, 2, 4 ... 64),
  so that a shape-specialising compiler sees at most seven shapes;
* `xla`: the bucketed tf.function with `jit_compile=True`;
* `predict`: `model.predict`, for the per-call overhead the legacy service paid.

Also prints the largest difference between each variant's outputs and `predict_on_batch`'s.
The last column is the CPU time of `predict_on_batch` per image, all threads together.
A script, not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages

BatchFn = Callable[[np.ndarray], np.ndarray]


def bucketed(fn: BatchFn) -> BatchFn:
    """Pad the batch with zeros to the next power of two; drop the padding's outputs."""

    def call(x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = 1 << (n - 1).bit_length()
        if size > n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        return np.asarray(fn(x))[:n]

    return call


def variants(model: object, input_shape: tuple[int, ...]) -> dict[str, BatchFn]:
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *input_shape), tf.float32)]
    plain = tf.function(lambda x: model(x, training=False), input_signature=signature)
    xla = tf.function(lambda x: model(x, training=False), input_signature=signature, jit_compile=True)
    return {
        "predict_on_batch": lambda x: np.asarray(model.predict_on_batch(x)),
        "tf.function": lambda x: np.asarray(plain(x)),
        "bucketed": bucketed(plain),
        "xla": bucketed(xla),
        "predict": lambda x: np.asarray(model.predict(x, verbose=0)),
    }


def median_ms(fn: BatchFn, x: np.ndarray, repeat: int) -> tuple[float, float]:
    """Median wall ms per call, and CPU ms per call (all threads of this process, mean)."""
    fn(x)  # trace / compile outside the timing
    times = []
    cpu_started = time.process_time()
    for _ in range(repeat):
        started = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, (time.process_time() - cpu_started) * 1000 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-tag", default="deepfake_classifier:latest")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 7, 8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=0, help="timed calls per batch (default: ~48 images)")
    args = parser.parse_args()

    import bentoml

    from modeling.inference import stored_file
    from modeling.loading import load_classifier
    from modeling.spec import ModelSpec
    from preprocessing.tensor import normalize

    stored = bentoml.models.get(args.model_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    model = load_classifier(Path(stored.path) / stored_file(spec), safe_mode=not spec.trusted_code)
    calls = variants(model, (*spec.input_size, 3))
    rng = np.random.default_rng(0)
    print(f"{stored.tag}: median ms per batch (ms per image)")
    print(f"{'batch':>5} " + " ".join(f"{name:>20}" for name in calls) + "   predict_on_batch CPU")
    for size in args.batch_sizes:
        images = rng.integers(0, 256, (size, *spec.input_size, 3), dtype=np.uint8)
        x = normalize(images, spec.normalization)
        repeat = args.repeat or max(3, 48 // size)
        reference = calls["predict_on_batch"](x).reshape(-1)
        cells, drift, cpu = [], [], {}
        for name, fn in calls.items():
            ms, cpu[name] = median_ms(fn, x, repeat)
            cells.append(f"{ms:8.1f} ({ms / size:6.1f})")
            drift.append(float(np.max(np.abs(fn(x).reshape(-1) - reference))))
        per_image = cpu["predict_on_batch"] / size
        row = " ".join(f"{cell:>20}" for cell in cells)
        print(f"{size:5d} {row}   {per_image:6.1f} core-ms/image")
        print(f"{'':5} " + " ".join(f"{'max diff ' + format(d, '.1e'):>20}" for d in drift))


if __name__ == "__main__":
    main()
