"""int8 on ONNX Runtime: the import quantizes a CLIP-architecture classifier (static QDQ, weights
per channel, activations calibrated on the calibration set's `calibration/` crops), gates it and
keeps it beside every other precision that passed; the model service picks one at start from
the CPU's flags, or the one `DEEPFAKE_PRECISION` names; model_info says which serves.

The import and serving checks use a small classifier built from the CLIP layers
(modeling/clip.py: the same graph the exporter writes, two blocks at 32 px, seeded weights),
so that a real `bentoml serve` starts in seconds; the default model's own int8 gate is the last
test (the real committed CLIP model)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from modeling.optimized import (
    MAX_P_FAKE_CHANGE,
    ONNX_INT8_FILE,
    CropSet,
    bf16_native,
    int8_native,
    load_crops,
)
from modeling.spec import ModelSpec
from tests.helpers import ServerProcess

pytest.importorskip("onnxruntime")

SIZE = 32
VNNI_SKIP = "needs a CPU with VNNI (AVX512_VNNI or AVX_VNNI): the int8 gate's figures are this CPU's"
SAPPHIRE_RAPIDS = {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
CASCADE_LAKE = {"avx512f", "avx512_vnni"}
HASWELL = {"avx2", "fma"}


def build_small_clip_classifier(path: Path, seed: int = 3) -> Path:
    """CLIP's layers at a small size: patch embedding, class token and positions, two
    pre-LayerNorm blocks, the class token, a sigmoid; seeded weights."""
    import keras

    from modeling import clip

    keras.utils.set_random_seed(seed)
    width, grid = 64, SIZE // clip.PATCH
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = clip.ClipPreprocess(name="clip_preprocess")(inputs)
    x = keras.layers.Conv2D(width, clip.PATCH, strides=clip.PATCH, use_bias=False, name=clip.PATCH_LAYER)(x)
    x = clip.ClipEmbeddings(grid, width, name="embeddings")(x)
    x = keras.layers.LayerNormalization(epsilon=clip.LN_EPSILON, name="pre_layernorm")(x)
    for index in range(2):
        x = clip.ClipBlock(width, heads=4, mlp=4 * width, name=clip.block_name(index))(x)
    x = clip.ClassToken(name="class_token")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="p_real")(x))
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # zeros-initialised embeddings and norms get values too
        if "gamma" in variable.name:
            variable.assign(1.0 + 0.1 * rng.standard_normal(variable.shape).astype(np.float32))
        elif np.all(np.asarray(variable) == 0):
            variable.assign(0.02 * rng.standard_normal(variable.shape).astype(np.float32))
    model.save(path)
    return path


@pytest.fixture(scope="module")
def small_clip_tag(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Imported as the default model is: `auto` over bf16 and int8 (bf16 only where native)."""
    from model_import import import_model

    path = build_small_clip_classifier(tmp_path_factory.mktemp("int8") / "small_clip.keras")
    return import_model(path, name="small_clip", precision="auto", auto_order=("bf16", "int8"))


def _stored(tag: str) -> tuple[Path, ModelSpec]:
    import bentoml

    stored = bentoml.models.get(tag)
    return Path(stored.path), ModelSpec.from_metadata(stored.info.metadata)


def test_int8_is_stored_beside_every_precision_that_passed(small_clip_tag: str) -> None:
    from artifacts import sha256_file

    folder, spec = _stored(small_clip_tag)
    stored = {entry.precision: entry for entry in spec.stored_precisions()}
    assert list(stored) == ["fp32", "bf16", "int8"] if bf16_native() else ["fp32", "int8"]
    int8 = stored["int8"]
    assert (int8.runtime, int8.file) == ("onnxruntime", ONNX_INT8_FILE)
    assert sha256_file(folder / int8.file) == int8.sha256
    gate = int8.acceptance
    assert gate is not None and gate.accepted and gate.max_p_fake_change <= MAX_P_FAKE_CHANGE
    assert gate.calibration_crops == len(CropSet.from_folder().calibration)  # calibration/, never evaluation/
    assert (folder / "model.keras").is_file()  # the reference stays
    # the single fields: what the import's CPU picks (bf16 here when native, else int8 with VNNI)
    expected = "bf16" if bf16_native() else "int8" if int8_native() else "fp32"
    assert spec.precision == expected and spec.runtime == stored[expected].runtime


@pytest.mark.parametrize(
    ("flags", "expected"), [(SAPPHIRE_RAPIDS, "bf16"), (CASCADE_LAKE, "int8"), (HASWELL, "fp32")]
)
def test_the_model_service_picks_by_the_cpu_flags(
    small_clip_tag: str, flags: set[str], expected: str
) -> None:
    """The same stored model loaded as on three CPU kinds (the flags given, not read). bf16 is
    stored only where this CPU has it; elsewhere its kind falls to int8."""
    from modeling.inference import Classifier

    folder, spec = _stored(small_clip_tag)
    if expected == "bf16" and not bf16_native():
        expected = "int8"
    classifier = Classifier.load(folder, spec, flags=flags)
    served = classifier.describe()["served"]
    assert served["precision"] == expected and served["picked_by"] == "the CPU's flags"
    runtime = {"bf16": "tensorflow", "int8": "onnxruntime", "fp32": "tensorflow"}[expected]
    assert served["runtime"] == runtime
    crops = load_crops(CropSet.from_folder().evaluation[:8], (SIZE, SIZE))
    reference = Classifier.load(folder, spec, precision="fp32")(crops)
    assert np.abs(classifier(crops) - reference).max() <= MAX_P_FAKE_CHANGE


def test_a_precision_not_stored_is_refused_at_start(tmp_path: Path) -> None:
    from model_import import import_model
    from modeling.inference import Classifier

    path = build_small_clip_classifier(tmp_path / "fp32_only.keras")
    folder, spec = _stored(import_model(path, name="small_clip_fp32", precision="fp32"))
    with pytest.raises(ValueError, match="int8 is not in the model store"):
        Classifier.load(folder, spec, precision="int8")


def test_a_server_forced_to_int8_serves_int8_and_says_so(small_clip_tag: str) -> None:
    """A real `bentoml serve` with DEEPFAKE_PRECISION=int8: model_info names int8 on ONNX
    Runtime and its gate, and a crop's answer is the int8 file's."""
    from modeling.inference import Classifier
    from preprocessing.decode import DecodeLimits
    from preprocessing.detectors import load_detector
    from serving.pipeline import DetectionPipeline
    from tests.helpers import FIXTURES

    folder, spec = _stored(small_clip_tag)
    data = (FIXTURES / "astronaut.jpg").read_bytes()  # one face
    # the crop the server cuts (as the in-process app serves a model without `detector`)
    pipeline = DetectionPipeline(
        spec, small_clip_tag, DecodeLimits(), predict=None, detector=load_detector("blazeface")
    )  # type: ignore[arg-type]
    crops = np.stack(pipeline.prepare(data).crops)
    expected = Classifier.load(folder, spec, precision="int8")(crops)[0]
    env = {"DEEPFAKE_MODEL_TAG": small_clip_tag, "DEEPFAKE_PRECISION": "int8"}
    with ServerProcess(env=env) as server:
        info = httpx.get(f"{server.url}/api/v1/model/info", timeout=30).json()
        assert (info["precision"], info["runtime"]) == ("int8", "onnxruntime")
        int8 = next(entry for entry in spec.stored_precisions() if entry.precision == "int8")
        assert info["acceptance"] == json.loads(int8.acceptance.model_dump_json())  # type: ignore[union-attr]
        files = {"file": ("face.jpg", data, "image/jpeg")}
        body = httpx.post(f"{server.url}/api/v1/detect", files=files, timeout=60).json()
    assert body["debug_info"]["raw_prediction"] == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.skipif(not int8_native(), reason=VNNI_SKIP)
def test_default_model_int8_gate_agrees_with_its_recipe() -> None:
    """The default CLIP model quantized as the import does, gated here: int8 is in the recipe's
    `precision_auto` exactly when it passes (largest P(fake) change and flips in the verdict)."""
    from model_import import try_precision
    from modeling.default import read_recipe
    from tests.test_precision import committed_model

    model, spec = committed_model()
    gate, optimized, runtime = try_precision(model, spec, "int8", CropSet.from_folder())
    assert runtime == "onnxruntime" and optimized
    assert gate.accepted == ("int8" in read_recipe()["precision_auto"]), gate.reason
    assert gate.calibration_crops == len(CropSet.from_folder().calibration)
    if not gate.accepted:
        assert gate.max_p_fake_change > MAX_P_FAKE_CHANGE or gate.fixture_flips
