"""Faster ways to run the served network, and the gate an optimized model must pass to be served.

    python -m modeling.optimized calibration-set PREPARED_OR_CROPS OUT [--calibration N --evaluation N]

Every precision the gate accepts is kept in the model store beside the fp32 Keras file
(`ModelSpec.precisions`); the model service picks one at start from its own CPU's flags
(`pick_precision`: bf16 where the CPU has native bf16, else int8 where it has VNNI, else fp32),
or the one the `precision` setting (DEEPFAKE_PRECISION) names, so that an image built on one
CPU kind serves the fastest passing precision on another. model_info says which one serves.

The default CLIP model (models/clip, 160 px; Intel Sapphire Rapids, 2 cores, with AVX512_BF16,
AMX and AVX512_VNNI, shared with other jobs: every timing is noisy; batch 32, 2 threads; drift:
the largest change of P(fake) over the gate's 160 evaluation crops and 11 fixtures):

* `fp32`: TensorFlow runs the Keras file (the reference). Its ONNX export
  (modeling/onnx_export.py) on ONNX Runtime in fp32 answers within 4e-6 of it.
* `bf16`: the blocks' matrix products in bf16 (`BF16Network`): drift 0.016, stored and served
  here. TensorFlow's whole-graph bf16 rewrite had moved it by 0.060.
* `int8` (ONNX Runtime static QDQ, `convert_onnx_int8`: weights per output channel,
  activations per tensor calibrated on the 128 `calibration/` crops, the head and attention's
  activation x activation products in float): refused by the gate on this model, whatever was
  kept in float. All 48 linear layers of the blocks in int8: drift 0.42 without smoothing,
  0.34 with SmoothQuant at alpha 0.5, 0.195 at alpha 0.8 (the default; mean 0.021, no fixture
  flipped), at 69.5 images/s against fp32 TensorFlow's 20.9 (3.3x) and bf16's 49.2 (2.35x),
  side by side in one `bench/precision.py --compare int8 --batch-sizes 32 --threads 2` run. The
  16 least sensitive layers (chosen on the calibration crops alone, each one's own drift, the
  longest prefix within 0.03 there): 0.033 on the evaluation crops, still refused, and about
  fp32's speed (48.7 ms an image against 14.0 with every layer in int8, one other run).
  Quantized ONNX Runtime's default QDQ way (the products' outputs, the attention's products
  and the head in int8 too) it moved by 0.88. Likely why (not measured further): the head
  reads the class tokens of blocks 4, 8 and 12 through a batch normalisation that scales
  low-variance channels up, so per-tensor activation noise reaches the logit amplified (as
  FaceNet's standardised features did). So its recipe's `precision_auto`
  leaves int8 out; a CPU with VNNI and no bf16 (not measured: only emulated here by forcing
  the pick's flags) serves fp32. A model whose int8 passes is stored with it.
* `fp16`: a LiteRT file with fp16 weights (any model LiteRT converts; XNNPACK computes in fp32 on
  x86): the speed of fp32 and no TensorFlow in the model process. Stored only when asked for.
* `int8` of a model the ONNX exporter cannot write (FaceNet, a legacy file): a LiteRT
  full-integer file. On the FaceNet model (2-core AMD EPYC, an earlier session): 11-12 core-ms
  against fp32's 29-33, but drift 0.39 (its head sums 2304 standardised features), and its
  int8 prewhitening divides by zero on a flat image: the gate refuses it there.

The gate (`accept`): the largest |change of P(fake)| over the evaluation crops against fp32 is
at most `MAX_P_FAKE_CHANGE`, no fixture's label (P(fake) >= threshold) flips, and flat images
run and give probabilities (an int8 per-image normalisation can divide by a zero point).

The calibration set (`models/calibration/`): face crops from the committed models' training
data (both cut by the same face crop at 160 px), `calibration/` for the int8 ranges and
`evaluation/` for the gate, never the same crop in both (a split's train and val/test parts,
or identity folds 1-4 and fold 0).
`build_calibration_set` remakes it from a prepared training folder (`python -m training
prepare`: crops + manifest.jsonl) or any folder of crops.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from artifacts import sha256_file
from modeling.spec import Acceptance, ModelSpec, Precision, StoredPrecision

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_SET = ROOT / "models" / "calibration"
# Crops with labels the fp32 model must keep (the default model's committed fixtures); only
# in a checkout, so the gate says how many it saw.
FIXTURES = ROOT / "tests" / "fixtures" / "clip_model"

MAX_P_FAKE_CHANGE = 0.03
# A model without an ONNX export (modeling/onnx_export.py: not a CLIP model) runs int8 on LiteRT.
RUNTIME_OF: dict[str, str] = {"fp32": "tensorflow", "bf16": "tensorflow", "fp16": "litert", "int8": "litert"}
OPTIMIZED_FILE: dict[str, str] = {"fp16": "model.fp16.tflite", "int8": "model.int8.tflite"}
ONNX_INT8_FILE = "model.int8.onnx"
NETWORK_FILE = "network.json"  # layer names and parameter count, for model info without Keras
# `auto` for a model without a recipe: each is built and gated, every one that passes is stored
# (the model service picks among them at start: pick_precision).
AUTO_ORDER: tuple[Precision, ...] = ("int8", "bf16")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BATCH = 32

Network = Callable[[np.ndarray], np.ndarray]  # normalised float32 (N, H, W, 3) -> raw (N,)


# ---- runtimes ------------------------------------------------------------------------------


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LiteRTNetwork:
    """A LiteRT (TensorFlow Lite) file on XNNPACK; imports no TensorFlow."""

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        self.threads = threads or default_threads()
        self._interpreter = Interpreter(num_threads=self.threads, **source)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch: int | None = None
        self._lock = threading.Lock()  # one interpreter: one call at a time

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._batch != len(x):  # XNNPACK re-plans for a new batch size (~ms)
                self._interpreter.resize_tensor_input(self._input, list(x.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(x)
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(x, np.float32))
            self._interpreter.invoke()
            return np.asarray(self._interpreter.get_tensor(self._output), np.float32).reshape(len(x))


class ONNXNetwork:
    """An ONNX file on ONNX Runtime's CPU provider (the int8 QDQ graph); imports no TensorFlow."""

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, np.float32).reshape(len(x))


_BF16_OPTION = "auto_mixed_precision_onednn_bfloat16"
_BF16_LOCK = threading.Lock()


@contextlib.contextmanager
def bf16_scope() -> Iterator[None]:
    """TensorFlow's bf16 rewrite is a process-wide optimizer option, read when a function runs
    (and specialises for a new batch shape): on for the call only, so that other models in the
    process stay fp32. Calls in the scope are serialised."""
    import tensorflow as tf

    with _BF16_LOCK:
        before = tf.config.optimizer.get_experimental_options().get(_BF16_OPTION, False)
        tf.config.optimizer.set_experimental_options({_BF16_OPTION: True})
        try:
            yield
        finally:
            tf.config.optimizer.set_experimental_options({_BF16_OPTION: before})


class BF16Network:
    """A Keras model run in bf16 by TensorFlow, the fp32 weights kept as the reference.

    A CLIP model (modeling/clip.py) runs its blocks' matrix products in bf16 and the rest in
    float32 (`with_bf16_matmuls`: a copy whose kernels are stored in bf16). Any other model
    runs under oneDNN's bf16 auto-mixed precision, a graph rewrite that also moves the adds,
    norms and activations next to a product into bf16: on FaceNet that stays within the gate,
    on CLIP's twelve residual blocks it does not (P(fake) moved by up to 0.06 there, 0.016
    with the products alone in bf16, both over the committed calibration set and fixtures).

    The rewrite casts the fp32 weights to bf16 on every call: ~15-20 core-ms a call on the
    FaceNet model, so bf16 loses to fp32 at batch 1 and wins from batch 8. Freezing the graph
    first (weights as constants, the casts folded once) halves batch 1, but measured +750 MB
    resident (2.4 GB while it folds) for that model: not worth it on this budget."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        from modeling.clip import with_bf16_matmuls

        explicit = with_bf16_matmuls(model)
        self._rewrite = explicit is None
        network = model if explicit is None else explicit
        shape = (None, *tuple(model.inputs[0].shape)[1:])
        # One traced function for every batch size; `model(x)` inside, not predict_on_batch,
        # so that the rewrite sees the whole graph.
        self._fn = tf.function(
            lambda x: network(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with bf16_scope() if self._rewrite else contextlib.nullcontext():
            out = self._fn(tf.constant(np.asarray(x, np.float32)))
        return np.asarray(out, np.float32).reshape(len(x))


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, arm64
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_native(flags: set[str] | None = None) -> bool:
    """bf16 arithmetic in hardware; without it oneDNN emulates bf16, slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def int8_native(flags: set[str] | None = None) -> bool:
    """8-bit dot products in hardware (VNNI: AVX512_VNNI, or AVX_VNNI on CPUs without AVX-512;
    AMX_INT8): where ONNX Runtime's int8 matrix products beat fp32 by a margin."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


# Which stored precision serves, fastest first, and what the CPU needs for it.
PICK_ORDER: tuple[tuple[Precision, Callable[[set[str]], bool]], ...] = (
    ("bf16", bf16_native),
    ("int8", int8_native),
    ("fp16", lambda flags: True),  # fp32's speed without TensorFlow (imported only when asked for)
)


def pick_precision(
    stored: tuple[StoredPrecision, ...], flags: set[str], forced: str | None = None
) -> StoredPrecision:
    """The stored precision to serve on a CPU with `flags`: bf16 where the CPU has bf16
    natively, else int8 where it has VNNI, else fp32 (the fastest the gate accepted that this
    CPU runs natively; an emulated bf16 is slower than fp32; fp16, when stored, anywhere).
    `forced` (the `precision` setting): that one, if the store holds it (ValueError if not),
    whatever the flags."""
    by_name = {entry.precision: entry for entry in stored}
    if forced and forced != "auto":
        if forced not in by_name:
            held = ", ".join(by_name) or "none"
            raise ValueError(f"precision {forced} is not in the model store for this model (it holds {held})")
        return by_name[forced]
    for precision, native in PICK_ORDER:
        if precision in by_name and native(flags):
            return by_name[precision]
    return by_name.get("fp32") or StoredPrecision(precision="fp32", runtime="tensorflow")


# ---- conversion (import time: needs TensorFlow) --------------------------------------------


def convert_litert(
    model: Any, precision: Precision, calibration: np.ndarray | None = None, saved_model: Path | None = None
) -> bytes:
    """The LiteRT file of a Keras model (or of `saved_model`, a SavedModel folder, if given).

    `calibration`: normalised float32 crops (N, H, W, 3), the activation ranges of `int8`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as workdir:
        if saved_model is None:
            saved_model = Path(workdir) / "saved_model"
            model.export(str(saved_model), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            if calibration is None or not len(calibration):
                raise ValueError("int8 needs calibration crops")
            samples = np.asarray(calibration, np.float32)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
        elif precision != "fp32":
            raise ValueError(f"no LiteRT conversion for {precision}")
        return converter.convert()


# int8 on ONNX Runtime (a model modeling/onnx_export.py writes: the CLIP classifier). The float
# graph is exported with SmoothQuant's factors at this alpha, then ONNX Runtime's static QDQ
# quantizer makes the blocks' weight products int8 (weights per output channel, activations
# per tensor, ranges from the calibration crops; their outputs stay float), every node whose
# name matches INT8_FLOAT_NODES kept in float, and attention's activation x activation
# products (`scores`, `mix`) always.
INT8_SMOOTHING_ALPHA = 0.8
INT8_FLOAT_NODES = r"(?!block_\d+/).*"  # the head: every node outside the blocks
CALIBRATION_BATCH = 16
ATTENTION_PRODUCTS = r"block_\d+/(scores|mix)"


def convert_onnx_int8(
    model: Any,
    calibration: np.ndarray,
    *,
    alpha: float | None = INT8_SMOOTHING_ALPHA,
    keep_float: str = INT8_FLOAT_NODES,
    method: str = "MinMax",
) -> bytes:
    """The int8 ONNX file of `model` (raises modeling.onnx_export.ExportUnsupported when the
    exporter cannot write it). `calibration`: normalised float32 crops (N, H, W, 3), the
    activation ranges (and the smoothing factors); `alpha` None: no smoothing."""
    import re

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from modeling.onnx_export import activation_maxima, export_onnx, smoothing_factors

    if calibration is None or not len(calibration):
        raise ValueError("int8 needs calibration crops")
    samples = np.asarray(calibration, np.float32)
    batches = [samples[i : i + CALIBRATION_BATCH] for i in range(0, len(samples), CALIBRATION_BATCH)]
    smoothing = None
    if alpha is not None:
        smoothing = smoothing_factors(model, activation_maxima(export_onnx(model), batches), alpha)
    graph = onnx.load_from_string(export_onnx(model, smoothing))
    input_name = graph.graph.input[0].name
    excluded = [
        node.name
        for node in graph.graph.node
        if re.fullmatch(keep_float, node.name) or re.fullmatch(ATTENTION_PRODUCTS, node.name)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as workdir:
        out = Path(workdir) / "model.int8.onnx"
        quantize_static(
            graph, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, method),
            # the quantizer's QDQ mode would quantize a product's output and the attention's
            # products too: the products' outputs stay float (their bias, the residual stream)
            extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"]},
            calibration_providers=["CPUExecutionProvider"],
        )  # fmt: skip
        return out.read_bytes()


# ---- crops ---------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_crops(paths: list[Path], input_size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) at the model's input size, resized as the service resizes."""
    from preprocessing.tensor import to_input_array

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(to_input_array(image.convert("RGB"), input_size))
    return np.stack(arrays) if arrays else np.zeros((0, *input_size, 3), np.uint8)


@dataclass(frozen=True)
class CropSet:
    """The crops an import calibrates and gates with."""

    calibration: list[Path]
    evaluation: list[Path]
    fixtures: list[Path]  # labels must not flip (judged on the fp32 model's scores)
    sha256: str  # of the calibration-set folder

    @classmethod
    def from_folder(cls, folder: Path = CALIBRATION_SET, fixtures: Path | None = FIXTURES) -> CropSet:
        folder = Path(folder)
        if not (folder / "calibration").is_dir() or not (folder / "evaluation").is_dir():
            raise ValueError(
                f"{folder}: expected calibration/ and evaluation/ (python -m modeling.optimized)"
            )
        fixture_files = sorted(Path(fixtures).glob("*.png")) if fixtures and Path(fixtures).is_dir() else []
        return cls(
            image_files(folder / "calibration"), image_files(folder / "evaluation"), fixture_files,
            sha256_file(folder),
        )  # fmt: skip


def build_calibration_set(
    source: Path,
    out: Path,
    *,
    calibration: int = 128,
    evaluation: int = 160,
    seed: int = 0,
    quality: int = 90,
    note: str = "",
) -> dict[str, Any]:
    """Pick crops from `source` into `out/calibration` and `out/evaluation` (JPEG); return the
    manifest (also written to `out/manifest.json`).

    `source` is a prepared training folder (`manifest.jsonl`: calibration from the train split,
    evaluation from val and test; with identity folds instead, evaluation from fold 0) or any
    folder of crops (split by a seeded hash). Each part is balanced over label/source (the first
    two folder levels), in a seeded order: the same source gives the same files."""
    source, out = Path(source), Path(out)
    pools = _pools(source)
    picked = {
        "calibration": _balanced(pools["train"], calibration, seed),
        "evaluation": _balanced(pools["held_out"], evaluation, seed),
    }
    if (out / "calibration").exists() or (out / "evaluation").exists():
        for old in image_files(out):
            old.unlink()
    files = []
    for role, rows in picked.items():
        (out / role).mkdir(parents=True, exist_ok=True)
        for index, row in enumerate(rows):
            name = f"{role}/{index:03d}_{row['label']}_{row['source']}.jpg"
            with Image.open(source / row["path"]) as image:
                image.convert("RGB").save(out / name, format="JPEG", quality=quality)
            files.append({"file": name, **row, "sha256": sha256_file(out / name)})
    manifest = {
        "source": source.name,
        "note": note,
        "seed": seed,
        "quality": quality,
        "counts": {role: len(rows) for role, rows in picked.items()},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _pools(source: Path) -> dict[str, list[dict[str, str]]]:
    manifest = source / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        keep = ("path", "label", "source", "split", "fold")
        rows = [{key: str(row.get(key, "")) for key in keep} for row in rows]
        # identity folds and no split (the out-of-fold protocol): fold 0 is the evaluation part
        folds = not any(row["split"] in ("val", "test") for row in rows)
        return _partition(rows, lambda row: row["fold"] == "0" if folds else row["split"] in ("val", "test"))
    rows = []
    for path in image_files(source):
        parts = path.relative_to(source).parts
        label = parts[0] if len(parts) > 1 else ""
        group = parts[1] if len(parts) > 2 else label
        rows.append({"path": str(path.relative_to(source)), "label": label, "source": group, "split": ""})
    if not rows:
        raise ValueError(f"{source}: no images")
    # a fifth held out for evaluation, by a hash of the path (stable across machines)
    return _partition(rows, lambda row: int(hashlib.sha256(row["path"].encode()).hexdigest(), 16) % 5 == 0)


def _partition(
    rows: list[dict[str, str]], held: Callable[[dict[str, str]], bool]
) -> dict[str, list[dict[str, str]]]:
    """Rows into the calibration pool ("train") and the evaluation pool ("held_out"), in order."""
    pools: dict[str, list[dict[str, str]]] = {"train": [], "held_out": []}
    for row in rows:
        pools["held_out" if held(row) else "train"].append(row)
    return pools


def _balanced(rows: list[dict[str, str]], count: int, seed: int) -> list[dict[str, str]]:
    """Round-robin over (label, source) strata, each in a seeded hash order."""
    strata: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r['path']}".encode()).hexdigest()):
        strata.setdefault((row["label"], row["source"]), []).append(row)
    queues = [strata[key] for key in sorted(strata)]
    picked: list[dict[str, str]] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


# ---- the gate ------------------------------------------------------------------------------


def predict(network: Network, images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Raw outputs of uint8 images, in batches."""
    from preprocessing.tensor import normalize

    outputs = [
        network(normalize(images[i : i + BATCH], spec.normalization)) for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)


def p_fake(raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    raw = np.clip(np.asarray(raw, np.float64), 0.0, 1.0)
    return raw if spec.labels[1] == "fake" else 1.0 - raw


def flat_images(input_size: tuple[int, int]) -> np.ndarray:
    """Black, grey and white: a per-image normalisation divides by zero variance on them."""
    return np.stack([np.full((*input_size, 3), value, np.uint8) for value in (0, 128, 255)])


def accept(
    reference: Network,
    candidate: Network,
    precision: Precision,
    spec: ModelSpec,
    crops: CropSet,
    *,
    limit: float = MAX_P_FAKE_CHANGE,
) -> Acceptance:
    """Score the evaluation crops and fixtures with both networks; the gate's verdict."""
    evaluation = load_crops(crops.evaluation, spec.input_size)
    fixtures = load_crops(crops.fixtures, spec.input_size)
    images = np.concatenate([evaluation, fixtures])
    before = p_fake(predict(reference, images, spec), spec)
    crashed = ""
    try:
        after = p_fake(predict(candidate, images, spec), spec)
    except Exception as exc:  # noqa: BLE001 - a runtime failure on valid input is a refusal
        after = np.full_like(before, np.nan)
        crashed = f"fails on the evaluation crops ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    change = np.nan_to_num(np.abs(after - before), nan=1.0)  # no answer: as far off as can be
    flipped = (before >= spec.threshold) != (after >= spec.threshold)
    fixture_flips = int(flipped[len(evaluation) :].sum())
    failures = [crashed] if crashed else []
    if not crashed and change.max(initial=0.0) > limit:
        failures.append(f"P(fake) changes by up to {change.max():.3f} (limit {limit})")
    if fixture_flips:
        failures.append(f"{fixture_flips} of {len(fixtures)} fixture labels flip")
    try:
        flat = p_fake(predict(candidate, flat_images(spec.input_size), spec), spec)
        if not np.all(np.isfinite(flat)):
            failures.append("flat images give no probability")
    except Exception as exc:  # noqa: BLE001 - a runtime failure on valid input is a refusal
        failures.append(f"fails on a flat image ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    return Acceptance(
        accepted=not failures,
        reason="; ".join(failures),
        max_p_fake_change=round(float(change.max(initial=0.0)), 6),
        p99_p_fake_change=round(float(np.quantile(change, 0.99)) if len(change) else 0.0, 6),
        mean_p_fake_change=round(float(change.mean()) if len(change) else 0.0, 6),
        limit=limit,
        crops=len(images),
        fixtures=len(fixtures),
        label_flips=int(flipped.sum()),
        fixture_flips=fixture_flips,
        calibration_crops=len(crops.calibration) if precision == "int8" else 0,
        calibration_sha256=crops.sha256,
        cpu=describe_cpu(),
    )


def describe_cpu() -> str:
    flags = cpu_flags()
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "",
        )  # fmt: skip
    wanted = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "bf16"})
    return f"{model or 'unknown CPU'} x{default_threads()} ({' '.join(wanted) or 'no AVX-512'})"


def network_summary(model: Any) -> dict[str, Any]:
    """What model info reports of the network, kept for runtimes that do not load Keras."""
    return {
        "input_shape": list(model.inputs[0].shape),
        "layers": [layer.name for layer in model.layers],
        "parameters": int(model.count_params()),
    }


# ---- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling.optimized", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("calibration-set", help="pick calibration and evaluation crops")
    build.add_argument(
        "source", type=Path, help="prepared training folder (manifest.jsonl) or folder of crops"
    )
    build.add_argument("out", type=Path, nargs="?", default=CALIBRATION_SET)
    build.add_argument("--calibration", type=int, default=128)
    build.add_argument("--evaluation", type=int, default=160)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--note", default="", help="where the crops came from, kept in manifest.json")
    args = parser.parse_args(argv)
    manifest = build_calibration_set(
        args.source,
        args.out,
        calibration=args.calibration,
        evaluation=args.evaluation,
        seed=args.seed,
        note=args.note,
    )
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{manifest['counts']} crops in {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
