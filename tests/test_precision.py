"""Optimized precisions: import with each, the gate (and its refusals), the stored metadata, the
committed calibration set, and a LiteRT model served without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artifacts import sha256_file
from model_import import ImportRefused, import_model, main
from modeling.default import committed
from modeling.inference import Classifier
from modeling.optimized import (
    CALIBRATION_SET,
    FIXTURES,
    MAX_P_FAKE_CHANGE,
    NETWORK_FILE,
    RUNTIME_OF,
    CropSet,
    bf16_native,
    build_calibration_set,
    convert_litert,
    image_files,
    load_crops,
    p_fake,
)
from modeling.spec import ModelSpec
from preprocessing.tensor import normalize
from tests.helpers import ROOT, build_legacy_facenet_like

PRECISIONS = ("fp32", "bf16", "fp16", "int8") if bf16_native() else ("fp32", "fp16", "int8")
SIZE = 64


def _stored(tag: str) -> tuple[Path, ModelSpec]:
    import bentoml

    stored = bentoml.models.get(tag)
    return Path(stored.path), ModelSpec.from_metadata(stored.info.metadata)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("precision") / "small.keras"
    build_legacy_facenet_like(SIZE).save(path)
    return path


@pytest.fixture(scope="module")
def imported(small_model: Path) -> dict[str, str]:
    return {precision: import_model(small_model, precision=precision) for precision in PRECISIONS}


def committed_fixtures() -> list[str]:
    """The default model's fixture crops, as their folder lists them (expected.json: the label
    and the fp32 score of each)."""
    listed = sorted(row["file"] for row in json.loads((FIXTURES / "expected.json").read_text())["crops"])
    assert listed == sorted(p.name for p in FIXTURES.glob("*.png")) and listed
    return listed


def assert_gate_counted(gate: Any, crops: CropSet) -> None:
    """The gate's bookkeeping, the same whatever the precision: it scored every committed
    fixture and every evaluation crop, and no fixture's label flipped."""
    assert gate.fixtures == len(committed_fixtures())
    assert gate.crops == len(crops.evaluation) + gate.fixtures
    assert gate.fixture_flips == 0 and 0 <= gate.label_flips <= gate.crops


@pytest.fixture(scope="module")
def fixture_crops() -> np.ndarray:
    return load_crops(sorted(FIXTURES.glob("*.png")), (SIZE, SIZE))


def test_each_precision_is_stored_with_its_runtime_file_and_acceptance(imported: dict[str, str]) -> None:
    crops = CropSet.from_folder()
    for precision, tag in imported.items():
        folder, spec = _stored(tag)
        assert (spec.precision, spec.runtime) == (precision, RUNTIME_OF[precision])
        assert ModelSpec.from_metadata(spec.to_metadata()) == spec  # what the store keeps reads back
        assert (folder / "model.keras").is_file()  # the reference stays beside the optimized file
        if precision == "fp32":
            assert spec.acceptance is None and spec.optimized_file == ""
            continue
        gate = spec.acceptance
        assert gate is not None and gate.accepted and gate.reason == ""
        assert gate.max_p_fake_change <= MAX_P_FAKE_CHANGE and gate.fixture_flips == 0
        assert_gate_counted(gate, crops)
        assert gate.calibration_sha256 == sha256_file(CALIBRATION_SET)
        assert gate.calibration_crops == (len(crops.calibration) if precision == "int8" else 0)
        if spec.runtime == "litert":
            assert spec.optimized_file == f"model.{precision}.tflite"
            assert sha256_file(folder / spec.optimized_file) == spec.optimized_sha256
            assert json.loads((folder / NETWORK_FILE).read_text())["parameters"] > 0
        else:
            assert spec.optimized_file == ""  # bf16 runs the Keras file itself


def test_every_runtime_answers_like_fp32(imported: dict[str, str], fixture_crops: np.ndarray) -> None:
    folder, spec = _stored(imported["fp32"])
    reference = Classifier.load(folder, spec)
    expected = reference(fixture_crops)
    assert expected.dtype == np.float32 and expected.shape == (len(fixture_crops),)
    for precision, tag in imported.items():
        classifier = Classifier.load(*_stored(tag))
        out = classifier(fixture_crops)
        assert out.dtype == np.float32 and out.shape == expected.shape, precision
        assert np.abs(p_fake(out, spec) - p_fake(expected, spec)).max() <= MAX_P_FAKE_CHANGE, precision
        described = classifier.describe()
        served = described["served"]
        assert (served["precision"], served["runtime"]) == (precision, RUNTIME_OF[precision])
        for key in ("input_shape", "layers", "parameters"):  # model info, with or without Keras
            assert described[key] == reference.describe()[key], (precision, key)
        assert classifier(fixture_crops[:1]).shape == (1,)  # a new batch size after a larger one


def _serve_in_fresh_process(tag: str) -> dict[str, Any]:
    """What the model service process does: import service.py, construct FaceClassifier."""
    code = (
        "import json, sys, numpy as np, service\n"
        "worker = service.FaceClassifier.inner()\n"
        f"out = worker.classifier(np.zeros((3, {SIZE}, {SIZE}, 3), np.uint8))\n"
        "print(json.dumps({'error': worker.error, 'shape': list(out.shape), 'dtype': str(out.dtype),\n"
        "    'describe': worker.describe().served['precision'],\n"
        "    'tensorflow': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules}))\n"
    )
    env = {**os.environ, "DEEPFAKE_MODEL_TAG": tag}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_litert_model_service_never_imports_tensorflow(imported: dict[str, str]) -> None:
    served = _serve_in_fresh_process(imported["int8"])
    assert served["error"] is None and served["shape"] == [3] and served["dtype"] == "float32"
    assert served["describe"] == "int8"
    assert not served["tensorflow"] and not served["keras"]
    assert _serve_in_fresh_process(imported["fp32"])["tensorflow"]  # the check can fail


def _quantisation_breaker(path: Path) -> Path:
    """P(fake) from a narrow channel (the red mean) pooled with a 1000x wider one: int8 shares
    one scale per tensor, so the narrow channel rounds away; bf16 keeps it (relative precision)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(2, 1, name="wide_and_narrow")
    dense = keras.layers.Dense(1, activation="sigmoid", name="p_real")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(conv(inputs))))
    conv.set_weights(
        [np.array([[[[1000.0, 1.0], [1000.0, 0.0], [1000.0, 0.0]]]], np.float32), np.zeros(2, np.float32)]
    )
    dense.set_weights([np.array([[0.0], [10.0]], np.float32), np.array([-4.5], np.float32)])
    model.save(path)
    return path


def test_int8_that_drifts_is_refused_and_auto_falls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _quantisation_breaker(tmp_path / "breaker.keras")
    with pytest.raises(ImportRefused) as refused:
        import_model(path, precision="int8")
    message = str(refused.value)
    assert message.startswith("int8 refused by the gate: P(fake) changes by up to") and "\n" not in message
    assert main([str(path), "--precision", "int8"]) == 2  # the command line: exit 2, one line
    assert "model_import: refused: int8 refused by the gate" in capsys.readouterr().err

    _, spec = _stored(import_model(path, precision="auto"))
    assert spec.precision == ("bf16" if bf16_native() else "fp32")
    assert "WARNING: int8 refused by the gate" in capsys.readouterr().err


def test_int8_that_fails_on_flat_images_is_refused(tmp_path: Path) -> None:
    """Per-image prewhitening (as FaceNet's) in int8 divides by a quantised zero on a flat image."""
    import keras

    from modeling.custom_objects import prewhiten

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Lambda(prewhiten, name="Prewhiten")(inputs))
    keras.Model(
        inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    ).save(tmp_path / "prewhitened.keras")
    with pytest.raises(ImportRefused, match="fails on a flat image"):
        import_model(tmp_path / "prewhitened.keras", precision="int8")


def test_int8_conversion_is_deterministic(small_model: Path) -> None:
    from modeling.loading import load_classifier

    model = load_classifier(small_model)
    calibration = normalize(load_crops(CropSet.from_folder().calibration[:16], (SIZE, SIZE)), "zero_one")
    assert convert_litert(model, "int8", calibration) == convert_litert(model, "int8", calibration)


def test_committed_calibration_set_is_small_balanced_and_listed() -> None:
    manifest = json.loads((CALIBRATION_SET / "manifest.json").read_text())
    size = sum(p.stat().st_size for p in CALIBRATION_SET.rglob("*") if p.is_file())
    assert size <= 3 * 1024 * 1024
    crops = CropSet.from_folder()
    assert len(crops.calibration) == manifest["counts"]["calibration"] >= 100
    assert len(crops.evaluation) == manifest["counts"]["evaluation"] >= 100
    for row in manifest["files"]:
        assert sha256_file(CALIBRATION_SET / row["file"]) == row["sha256"], row["file"]
    parts = {role: [r for r in manifest["files"] if r["file"].startswith(role)] for role in ("cal", "eval")}
    # the gate never sees calibration crops: identity fold 0 is the evaluation part, the rest calibrates
    assert {r["fold"] for r in parts["eval"]} == {"0"} and "0" not in {r["fold"] for r in parts["cal"]}
    assert not {r["path"] for r in parts["eval"]} & {r["path"] for r in parts["cal"]}
    recipe = json.loads(committed().recipe.read_text())["data"]["by_label_source_split"]
    assert {r["source"] for r in manifest["files"]} == set().union(*recipe.values())  # every source


def _prepared_folder(root: Path) -> Path:
    """A prepared training folder (crops + manifest.jsonl), from the fixture crops."""
    rows = []
    for index, crop in enumerate(sorted(FIXTURES.glob("*.png")) * 3):
        label, source = crop.stem.split("_")[1:3]
        path = Path("crops") / label / source / f"{index:02d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(crop.read_bytes())
        split = ("train", "val", "test")[index % 3]
        rows.append(
            {"path": str(path), "label": label, "source": source, "group": str(index), "split": split}
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_calibration_set_rebuilds_the_same_from_a_prepared_folder_or_crops(tmp_path: Path) -> None:
    prepared = _prepared_folder(tmp_path / "prepared")
    first = build_calibration_set(prepared, tmp_path / "a", calibration=6, evaluation=4)
    second = build_calibration_set(prepared, tmp_path / "b", calibration=6, evaluation=4)
    assert first["files"] == second["files"]  # same picks, same bytes
    roles = {
        role: [r for r in first["files"] if r["file"].startswith(role)]
        for role in ("calibration", "evaluation")
    }
    assert {r["split"] for r in roles["calibration"]} == {"train"}
    assert {r["split"] for r in roles["evaluation"]} <= {"val", "test"} and len(roles["evaluation"]) == 4
    # balanced: every source before a second (the fixtures have more sources than 6)
    assert len({r["source"] for r in roles["calibration"]}) == len(roles["calibration"]) == 6
    assert len(CropSet.from_folder(tmp_path / "a").calibration) == 6

    # identity folds instead of a split (the default model's protocol): fold 0 evaluates
    rows = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    folded = [{**row, "split": "train", "fold": index % 3} for index, row in enumerate(rows)]
    (prepared / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in folded))
    by_fold = build_calibration_set(prepared, tmp_path / "f", calibration=6, evaluation=4)
    evaluation = [r for r in by_fold["files"] if r["file"].startswith("evaluation")]
    assert {r["fold"] for r in evaluation} == {"0"} and len(evaluation) == 4
    assert "0" not in {r["fold"] for r in by_fold["files"] if r["file"].startswith("calibration")}

    plain = build_calibration_set(prepared / "crops", tmp_path / "c", calibration=10, evaluation=3)
    assert plain["counts"] == {"calibration": 10, "evaluation": 3}
    assert len(image_files(tmp_path / "c")) == 13
    # a refused calibration folder is a clear error, not a crash later
    with pytest.raises(ValueError, match="calibration/ and evaluation/"):
        CropSet.from_folder(prepared)


def committed_model(which: str | None = None) -> tuple[Any, ModelSpec]:
    """A committed model (Keras, fp32; the default when `which` is None) and the spec its gate
    reads, built in memory."""
    from modeling.default import DEFAULT, build_default_classifier, read_recipe

    recipe = read_recipe(which or DEFAULT)
    size = int(recipe.get("backbone", {}).get("input_size", 160))
    model = build_default_classifier(which or DEFAULT)
    return model, ModelSpec(labels=("fake", "real"), threshold=recipe["threshold"], input_size=(size, size))


@pytest.fixture(scope="module")
def facenet_model() -> tuple[Any, ModelSpec]:
    return committed_model("facenet")


def test_gate_bookkeeping_on_every_cpu(facenet_model: tuple[Any, ModelSpec]) -> None:
    """A committed model through the gate in fp16 (LiteRT: every CPU runs it; the FaceNet model,
    whose conversion is the quicker), gated in memory: what the gate shares with every precision
    (the crops and fixtures it scores and counts, the flips) is checked here on any CPU; the bf16
    test below adds only what depends on bf16."""
    from model_import import try_precision

    model, spec = facenet_model
    crops = CropSet.from_folder()
    gate, optimized, _ = try_precision(model, spec, "fp16", crops)
    assert gate.accepted and gate.reason == "" and optimized
    assert gate.max_p_fake_change <= MAX_P_FAKE_CHANGE
    assert_gate_counted(gate, crops)


@pytest.mark.skipif(
    not bf16_native(),
    reason="needs a CPU with native bf16 (AVX512_BF16 or AMX_BF16): elsewhere the import refuses bf16",
)
def test_default_model_passes_the_gate_in_bf16() -> None:
    """The default model's choice where the CPU has bf16 (its recipe's `precision_auto`), gated
    in memory: the CLIP blocks' matrix products in bf16, the rest in float32
    (modeling.clip.with_bf16_matmuls). The import around the gate is the small model's above;
    what the gate counts is bf16's as any precision's: test_gate_bookkeeping_on_every_cpu."""
    from model_import import try_precision
    from modeling.default import read_recipe

    assert "bf16" in read_recipe()["precision_auto"]
    model, spec = committed_model()
    gate, optimized, _ = try_precision(model, spec, "bf16", CropSet.from_folder())
    assert gate.accepted and optimized is None  # bf16 runs the Keras file itself
    assert gate.max_p_fake_change <= MAX_P_FAKE_CHANGE and gate.fixture_flips == 0


def test_bf16_needs_native_bf16_and_is_refused_without_it(
    facenet_model: tuple[Any, ModelSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every CPU: bf16 is chosen by the CPU's flags, and on a CPU without them (made so
    here) the import refuses it with one line that names the features."""
    import modeling.optimized
    from model_import import try_precision

    assert bf16_native({"avx512_bf16"}) and bf16_native({"amx_bf16"}) and not bf16_native({"avx512f", "avx2"})
    monkeypatch.setattr(modeling.optimized, "bf16_native", lambda flags=None: False)
    model, spec = facenet_model
    with pytest.raises(ImportRefused, match="AVX512_BF16 or AMX"):
        try_precision(model, spec, "bf16", CropSet.from_folder())
