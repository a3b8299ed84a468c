"""One training run on a prepared folder: features, both stages, held-out evaluation, files.

Writes to the run folder: `weights.npz` (only the layers training changed), `model.keras` (the
full classifier, importable with `model_import.py` and its defaults), `recipe.json`
(threshold, calibration, metrics, data and settings), and the test split's evaluation report
(`eval_report.txt`, `eval_report.json`, `roc.png`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modeling.head import add_head, get_calibration, save_trained_weights, sub_models
from training.augment import AugmentConfig
from training.dataset import Crop, read_manifest, summary
from training.evaluate import LoadedModel, evaluate
from training.features import copies_per_crop, extract_features
from training.report import clean_json, evaluation_dict
from training.train import Evaluation, Experiment, TrainConfig, Trainer, run_experiment


def facenet_backbone() -> Any:
    from modeling.backbone import load_facenet_backbone

    return load_facenet_backbone()


def train_run(
    prepared: Path,
    out: Path,
    config: TrainConfig | None = None,
    *,
    loso: bool = True,
    backbone: Callable[[], Any] = facenet_backbone,
    fingerprint: str = "facenet-20180408-102900",
    feature_cache: Path | None = None,
    augment_config: AugmentConfig | None = None,
    model_name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on `prepared` (a `training.prepare` folder); write the run to `out`; return the recipe."""
    import keras

    config = config or TrainConfig()
    augment_config = augment_config or AugmentConfig()
    prepared, out = Path(prepared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    crops = read_manifest(prepared)
    _check_splits(crops)

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    model = add_head(backbone(), seed=config.seed)
    timings["build_model_s"] = time.perf_counter() - started

    started = time.perf_counter()
    copies = copies_per_crop(crops, target=config.copies_target, max_copies=config.max_copies)
    features = extract_features(
        sub_models(model)["features"],
        crops,
        prepared,
        copies,
        seed=config.seed,
        augment_config=augment_config,
        cache=feature_cache,
        fingerprint=fingerprint,
        log=log,
    )
    timings["features_s"] = time.perf_counter() - started

    started = time.perf_counter()
    experiment = run_experiment(Trainer(model, config, log=log), crops, features, loso=loso, log=log)
    timings["training_s"] = time.perf_counter() - started

    weights_sha = save_trained_weights(model, out / "weights.npz")
    model.save(out / "model.keras")
    a, b = get_calibration(model)
    recipe: dict[str, Any] = {
        "output": "p_real",
        "threshold": experiment.main.threshold,
        "threshold_choice": _threshold_choice(crops),
        "calibration": {"method": "Platt scaling on the validation split", "a": a, "b": b},
        "weights_sha256": weights_sha,
        "weights_bytes": (out / "weights.npz").stat().st_size,
        "data": data_summary(crops, features),
        "training": {
            "config": asdict(config),
            "augment": asdict(augment_config),
            "stage1_loss": experiment.main.history["stage1_loss"][-1],
            "stage2_loss": experiment.main.history["stage2_loss"],
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "frameworks": _frameworks(),
        },
    }
    started = time.perf_counter()
    loaded = LoadedModel(model, "p_real", experiment.main.threshold, model_name or str(out))
    report = write_test_report(loaded, crops, prepared, out, experiment, config.seed)
    timings["evaluate_s"] = time.perf_counter() - started
    recipe["training"]["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    recipe["metrics"] = metrics_for_metadata(report["evaluations"][0], experiment)
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    return recipe


def write_test_report(
    loaded: LoadedModel, crops: list[Crop], root: Path, out: Path, experiment: Experiment, seed: int
) -> dict[str, Any]:
    """The test split through the full network, plus the leave-one-source-out folds."""
    folds = [
        evaluation_dict(ev.name, ev.y_fake, ev.p_fake, ev.sources, ev.metrics) for _, ev in experiment.loso
    ]
    notes = [
        *data_lines(crops),
        "",
        "held-out sets: 'random split' = the test groups (photos, persons, seed blocks, images) of every",
        "source, never seen in training or calibration; 'leave out S' = source S entirely left out of",
        "training and validation (with the pseudo-fakes made from it); its images whose group never",
        "reached training (for sbi/xray: those made from validation and test faces) are judged against",
        "the other class's test groups, with that fold's own calibration and threshold.",
        "",
        *loso_table(experiment.loso),
    ]
    curves = [(f"leave out {ev.name.split()[2]}", ev.y_fake, ev.p_fake) for _, ev in experiment.loso]
    return evaluate(
        loaded,
        [c for c in crops if c.split == "test"],
        root,
        out,
        title="random split: test groups",
        notes=notes,
        extra=folds,
        extra_curves=curves,
        seed=seed,
    )


def data_lines(crops: list[Crop]) -> list[str]:
    """Face crops per source and split (augmented copies not counted)."""
    lines = [
        f"data (face crops): {'source':<12} {'label':<5} {'train':>6} {'val':>5} {'test':>5} {'groups':>7}"
    ]
    for label, sources in summary(crops).items():
        for source, row in sorted(sources.items()):
            lines.append(
                f"{'':<19}{source:<12} {label:<5} {row['train']:>6} {row['val']:>5} {row['test']:>5} "
                f"{row['groups']:>7}"
            )
    return lines


def loso_table(folds: list[tuple[Any, Evaluation]]) -> list[str]:
    if not folds:
        return []
    header = f"{'left out':<24} {'n real':>6} {'n fake':>6} {'AUC':>6} {'95% CI':>13}"
    lines = [f"{header} {'thresh':>7} {'acc':>6} {'bal acc':>7} {'ECE':>6}"]
    for fit, ev in folds:
        m = ev.metrics
        lo, hi = m["roc_auc_95ci"]
        lines.append(
            f"{ev.name[len('leave out ') :]:<24} {m['n_real']:>6} {m['n_fake']:>6} {m['roc_auc']:>6.3f} "
            f"{lo:>6.3f}-{hi:<6.3f} {fit.threshold:>7.3f} {m['accuracy']:>6.3f} "
            f"{m['balanced_accuracy']:>7.3f} {m['ece_class_balanced']:>6.3f}"
        )
    return lines


def metrics_for_metadata(test: dict[str, Any], experiment: Experiment) -> dict[str, Any]:
    """Compact held-out metrics for the model store (model_info shows them)."""
    keep = (
        "n_real",
        "n_fake",
        "roc_auc",
        "roc_auc_95ci",
        "threshold",
        "accuracy",
        "balanced_accuracy",
        "ece",
        "ece_class_balanced",
        "brier",
    )
    return {
        "test_split": {
            **{k: test["metrics"][k] for k in keep},
            "per_source": {
                r["source"]: {"n": r["n"], "accuracy": r["accuracy"], "mean_p_fake": r["mean_p_fake"]}
                for r in test["per_source"]
            },
        },
        "leave_one_source_out": {
            ev.name[len("leave out ") :]: {k: ev.metrics[k] for k in keep} for _, ev in experiment.loso
        },
        "validation": {
            "n": experiment.main.n_val,
            "val_auc_after_stage1": experiment.main.history["val_auc_stage1"][0],
            "val_auc_after_stage2": experiment.main.history["val_auc_stage2"][0],
        },
        "note": "P(fake) scores; fake when P(fake) >= threshold. Tiny offline data: see the model card.",
    }


def data_summary(crops: list[Crop], features: Any) -> dict[str, Any]:
    return {
        "crops": len(crops),
        "real": sum(c.label == "real" for c in crops),
        "fake": sum(c.label == "fake" for c in crops),
        "training_rows_with_augmented_copies": int(
            np.sum(np.isin(features.crop_index, [i for i, c in enumerate(crops) if c.split == "train"]))
        ),
        "by_label_source_split": summary(crops),
    }


def _threshold_choice(crops: list[Crop]) -> str:
    val = [c for c in crops if c.split == "val"]
    n_real = sum(c.label == "real" for c in val)
    return (
        f"best balanced accuracy of calibrated P(fake) on the validation split ({n_real} real, "
        f"{len(val) - n_real} fake crops); ties to the value nearest 0.5"
    )


def _check_splits(crops: list[Crop]) -> None:
    for split in ("train", "val"):
        labels = {c.label for c in crops if c.split == split}
        if labels != {"real", "fake"}:
            raise ValueError(
                f"the {split} split needs real and fake crops, has {sorted(labels)}: add data or groups"
            )


def _frameworks() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()}
