"""The served precision against fp32 TensorFlow: images/s, CPU per image and drift, in one run.

    BENTOML_HOME=.bentoml python bench/precision.py
    BENTOML_HOME=.bentoml python bench/precision.py --compare bf16 fp16 int8 --threads 1
    BENTOML_HOME=.bentoml python bench/precision.py --memory

The stored model (`--model-tag`) is run as the model service runs it (`Classifier.load`: its
metadata says runtime and precision) and, from the same store folder, as fp32 TensorFlow.
Every other precision the store holds is run too (as `DEEPFAKE_PRECISION` would serve it).
`--compare` adds precisions built on the spot from the stored Keras file (int8: ONNX Runtime
for the CLIP model, `modeling.optimized.convert_onnx_int8`, LiteRT for any other; fp16:
LiteRT), calibrated on the committed calibration set.

For each batch size the paths take turns (one timed call each, round after round), so that
what else runs on the machine slows them alike; the ratio column is images/s against fp32 at
the same batch size. Drift: the largest |change of P(fake)| against fp32 over the evaluation
crops and fixtures (the import gate's set), and how many labels flip. `--memory` loads each
path in a fresh process and reports load time and RSS after load (and whether TensorFlow was
imported). `--threads`: TensorFlow's intra-op threads and LiteRT's threads (default: all cores).
A script, not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages

Call = Callable[[np.ndarray], np.ndarray]


def set_threads(threads: int | None) -> None:
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def paths(stored_dir: Path, spec: Any, compare: list[str], threads: int | None) -> dict[str, Call]:
    """name -> uint8 batch to raw outputs; the first is fp32 TensorFlow, the second what this
    CPU serves (`auto`), then every other precision the store holds (forced, as the
    `precision` setting does), then the `compare` ones built on the spot."""
    from modeling.inference import Classifier, stored_file
    from modeling.loading import load_classifier
    from modeling.onnx_export import ExportUnsupported
    from modeling.optimized import (
        BF16Network,
        CropSet,
        LiteRTNetwork,
        ONNXNetwork,
        convert_litert,
        convert_onnx_int8,
        load_crops,
    )
    from preprocessing.tensor import normalize

    fp32 = Classifier.load(stored_dir, spec, precision="fp32")
    served = Classifier.load(stored_dir, spec, threads=threads)
    calls: dict[str, Call] = {"fp32 tensorflow": fp32}
    calls[f"served: {served.served['precision']} {served.served['runtime']}"] = served
    for entry in spec.stored_precisions():
        if entry.precision not in ("fp32", served.served["precision"]):
            calls[f"stored: {entry.precision} {entry.runtime}"] = Classifier.load(
                stored_dir, spec, threads=threads, precision=entry.precision
            )
    if compare:
        model = load_classifier(stored_dir / stored_file(spec), safe_mode=not spec.trusted_code)
        crops = CropSet.from_folder()
        calibration = normalize(load_crops(crops.calibration, spec.input_size), spec.normalization)
    for precision in compare:
        runtime = "tensorflow" if precision == "bf16" else "litert"
        if precision == "bf16":
            network: Call = BF16Network(model)
        elif precision == "int8":
            try:
                network, runtime = ONNXNetwork(convert_onnx_int8(model, calibration), threads), "onnxruntime"
            except ExportUnsupported:
                network = LiteRTNetwork(convert_litert(model, precision, calibration), threads)  # type: ignore[arg-type]
        else:
            network = LiteRTNetwork(convert_litert(model, precision, calibration), threads)  # type: ignore[arg-type]
        calls[f"{precision} {runtime}"] = _uint8(network, spec)
    return calls


def _uint8(network: Call, spec: Any) -> Call:
    from preprocessing.tensor import normalize

    return lambda images: np.asarray(network(normalize(images, spec.normalization)), np.float32).reshape(-1)


def timed_rounds(
    calls: dict[str, Call], images: np.ndarray, size: int, rounds: int
) -> dict[str, dict[str, float]]:
    x = np.resize(images, (size, *images.shape[1:]))  # real crops, cycled
    for call in calls.values():
        call(x)  # warm-up at this batch size
    walls: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, float] = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            cpu, wall = time.process_time(), time.perf_counter()
            call(x)
            walls[name].append(time.perf_counter() - wall)
            cpus[name] += time.process_time() - cpu
    return {
        name: {
            "images_per_s": size / float(np.median(walls[name])),
            "cpu_ms_per_image": cpus[name] * 1000 / rounds / size,
        }
        for name in calls
    }


def drift(calls: dict[str, Call], spec: Any) -> dict[str, tuple[float, int]]:
    from modeling.optimized import CropSet, load_crops, p_fake

    crops = CropSet.from_folder()
    images = np.concatenate(
        [load_crops(crops.evaluation, spec.input_size), load_crops(crops.fixtures, spec.input_size)]
    )

    def score(call: Call) -> np.ndarray:
        return p_fake(np.concatenate([call(images[i : i + 32]) for i in range(0, len(images), 32)]), spec)

    scores = {name: score(call) for name, call in calls.items()}
    reference = scores["fp32 tensorflow"]
    flips = {
        name: int(np.sum((s >= spec.threshold) != (reference >= spec.threshold)))
        for name, s in scores.items()
    }
    return {name: (float(np.abs(s - reference).max()), flips[name]) for name, s in scores.items()}


def memory_child(tag: str, precision: str, threads: int | None) -> dict[str, Any]:
    """In a fresh process: load the stored model as `precision` (fp32 or as stored), warm up."""

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0.0

    import bentoml

    from modeling.inference import Classifier
    from modeling.spec import ModelSpec

    stored = bentoml.models.get(tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    from modeling.optimized import cpu_flags, pick_precision

    runtime = "tensorflow" if precision == "fp32" else spec.runtime
    if precision != "fp32" and spec.precisions:
        runtime = pick_precision(spec.precisions, cpu_flags()).runtime
    before = rss_mb()
    started = time.perf_counter()
    if threads and runtime == "tensorflow":
        set_threads(threads)
    Classifier.load(
        Path(stored.path), spec, precision="fp32" if precision == "fp32" else "auto", threads=threads
    )
    return {
        "load_s": time.perf_counter() - started,
        "rss_before_mb": before,
        "rss_after_load_mb": rss_mb(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def memory(tag: str, threads: int | None) -> None:
    print("\nfresh process per path: load + warm-up time, RSS after load")
    for precision in ("fp32", "served"):
        command = [sys.executable, __file__, "--model-tag", tag, "--memory-child", precision]
        command += ["--threads", str(threads)] if threads else []
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
        if result.returncode != 0:
            print(f"{precision}: failed\n{result.stderr[-2000:]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{precision:>8}: load {row['load_s']:5.1f} s, RSS {row['rss_before_mb']:4.0f} -> "
            f"{row['rss_after_load_mb']:4.0f} MB, tensorflow imported: {row['tensorflow_imported']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-tag", default="deepfake_classifier:latest")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--compare", nargs="*", default=[], choices=("bf16", "fp16", "int8"))
    parser.add_argument("--threads", type=int, help="TensorFlow intra-op, LiteRT and ONNX Runtime threads")
    parser.add_argument("--images", type=int, default=96, help="timed images per path and batch size")
    parser.add_argument("--memory", action="store_true", help="also load time and RSS, fresh processes")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        print(json.dumps(memory_child(args.model_tag, args.memory_child, args.threads)))
        return
    set_threads(args.threads)
    import bentoml

    from modeling.optimized import CropSet, describe_cpu, load_crops
    from modeling.spec import ModelSpec

    stored = bentoml.models.get(args.model_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    calls = paths(Path(stored.path), spec, args.compare, args.threads)
    crops = CropSet.from_folder()
    images = load_crops(crops.evaluation, spec.input_size)
    print(
        f"{stored.tag} ({spec.precision} {spec.runtime} stored); {describe_cpu()}; "
        f"threads {args.threads or 'default'}"
    )
    drifted = drift(calls, spec)
    header = f"{'path':>22} {'batch':>5} {'images/s':>9} {'x fp32':>7} {'CPU ms/image':>13}"
    print(
        header + f"   drift: max |dP(fake)| over {len(crops.evaluation) + len(crops.fixtures)} crops, flips"
    )
    for size in args.batch_sizes:
        rows = timed_rounds(calls, images, size, max(3, args.images // size))
        base = rows["fp32 tensorflow"]["images_per_s"]
        for name, row in rows.items():
            change, flips = drifted[name]
            print(
                f"{name:>22} {size:5d} {row['images_per_s']:9.1f} {row['images_per_s'] / base:7.2f} "
                f"{row['cpu_ms_per_image']:13.1f}   {change:.4f}, {flips}"
            )
    if args.memory:
        memory(args.model_tag, args.threads)


if __name__ == "__main__":
    main()
