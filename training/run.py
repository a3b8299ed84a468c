"""One training run on a prepared folder: features, both stages, held-out evaluation, files.

Writes to the run folder: `weights.npz` (only the layers training changed), `model.keras` (the
full classifier, importable with `model_import.py` and its defaults), `recipe.json`
(threshold, calibration, metrics, data and settings), and the evaluation report
(`eval_report.txt`, `eval_report.json`, `roc.png`).

Two protocols: "split" (v1: the shipped fit on the train split, calibration and threshold on
validation, report on the test split and leave-one-source-out folds) and "oof" (v2: identity
folds, the operating point from pooled out-of-fold scores, the shipped fit on every fold,
leave-a-source-out folds and the trivial-feature probe in the report; see `training.oof`).
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
from training.evaluate import LoadedModel, evaluate, predict_p_fake
from training.features import copies_per_crop, extract_features
from training.report import clean_json, evaluation_dict, roc_png
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
    protocol: str = "split",
) -> dict[str, Any]:
    """Train on `prepared` (a `training.prepare` folder); write the run to `out`; return the recipe."""
    if protocol == "oof":
        return train_run_oof(
            prepared,
            out,
            config,
            loso=loso,
            backbone=backbone,
            fingerprint=fingerprint,
            feature_cache=feature_cache,
            augment_config=augment_config,
            model_name=model_name,
            log=log,
        )
    if protocol != "split":
        raise ValueError(f"unknown protocol {protocol!r}: 'split' or 'oof'")

    config = config or TrainConfig()
    augment_config = augment_config or AugmentConfig()
    prepared, out = Path(prepared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    crops = read_manifest(prepared)
    _check_splits(crops)

    model, features = model_and_features(
        prepared, crops, config, backbone, augment_config, feature_cache, fingerprint, log, timings
    )

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


def model_and_features(
    prepared: Path,
    crops: list[Crop],
    config: TrainConfig,
    backbone: Callable[[], Any],
    augment_config: AugmentConfig,
    feature_cache: Path | None,
    fingerprint: str,
    log: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[Any, Any]:
    """The untrained classifier (seeded) and the cached backbone activations of every crop and
    its augmented copies: what both protocols train on."""
    import keras

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
    return model, features


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


CHECK_CROPS = 64  # crops the run scores with its final network, for the rebuild check


def operating_recipe(experiment: Any, calibration: tuple[float, float]) -> dict[str, Any]:
    """The recipe's operating point from an out-of-fold experiment (`training.oof`): the served
    threshold 0.5 and why, the calibration (`calibration`: the model's served (a, b)), the verdict
    bands and the group rule; the same for every backbone."""
    a, served_b = calibration
    op = experiment.operating
    return {
        "output": "p_real",
        "threshold": 0.5,
        "threshold_choice": (
            f"served P(fake) >= 0.5, i.e. t* = {op.balanced_threshold:.4f} on the even-prior P(fake): the "
            f"lowest threshold at which at most {op.max_false_accusation:.0%} of real faces (weighted as in "
            f"training) are called fake, on pooled out-of-fold scores ({experiment.folds} identity folds)"
        ),
        "calibration": {
            "method": "Platt scaling on pooled out-of-fold logits (classes weighted equally), offset "
            "shifted so that t* maps to 0.5",
            "a": a,
            "b": served_b,
            "platt_b": op.b,
            "prior_fake": op.prior_fake,
            "balanced_threshold": op.balanced_threshold,
            "folds": experiment.folds,
            "false_accusation_at_threshold": op.false_accusation_at_threshold,
            "fakes_caught_at_threshold": op.fakes_caught_at_threshold,
        },
        "verdict_bands": {k: experiment.bands[k] for k in ("real_up_to", "fake_from")},
        "verdict_bands_rule": experiment.bands["rule"],
        "group": {"alpha": 0.05, "real_logit_std": experiment.real_logit_std},
    }


def train_run_oof(
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
    """The "oof" protocol (see `training.oof`); writes the same files as the split protocol."""

    from training.oof import run_oof_experiment
    from training.probe import row_features, run_probe
    from training.train import sample_weights

    config = config or TrainConfig()
    augment_config = augment_config or AugmentConfig()
    prepared, out = Path(prepared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    crops = read_manifest(prepared)
    detector = prepared_detector(prepared)

    model, features = model_and_features(
        prepared, crops, config, backbone, augment_config, feature_cache, fingerprint, log, timings
    )

    started = time.perf_counter()
    trivial = row_features(
        crops, prepared, features.crop_index, features.copy, seed=config.seed, augment_config=augment_config
    )
    keys = np.array([c.key for c in crops])[features.crop_index]
    probe = run_probe(
        trivial,
        np.array([c.label == "fake" for c in crops])[features.crop_index],
        sample_weights(crops, features, config.weighting),
        keys,
        features.copy == 0,
        seed=config.seed,
    )
    timings["probe_s"] = time.perf_counter() - started
    log(f"probe on trivial features: AUC {probe.roc_auc:.3f} (clean crops {probe.roc_auc_clean_crops:.3f})")

    started = time.perf_counter()
    experiment = run_oof_experiment(Trainer(model, config, log=log), crops, features, loso=loso, log=log)
    timings["training_s"] = time.perf_counter() - started
    timings.update({k: round(v, 1) for k, v in experiment.seconds.items()})

    weights_sha = save_trained_weights(model, out / "weights.npz")
    model.save(out / "model.keras")
    recipe: dict[str, Any] = {
        **operating_recipe(experiment, get_calibration(model)),
        "detector": detector,
        "weights_sha256": weights_sha,
        "weights_bytes": (out / "weights.npz").stat().st_size,
        "data": data_summary(crops, features),
        "training": {
            "protocol": "oof",
            "config": asdict(config),
            "augment": asdict(augment_config),
            "stage1_loss": experiment.history["stage1_loss"][-1],
            "stage2_loss": experiment.history["stage2_loss"],
            "frameworks": _frameworks(),
        },
    }
    started = time.perf_counter()
    check = _check_crops(crops)
    loaded = LoadedModel(model, "p_real", 0.5, model_name or str(out))
    check_scores = predict_p_fake(loaded, check, prepared)
    report = write_oof_report(
        out, loaded.name, crops, experiment, probe.as_dict(), detector, check, check_scores
    )
    timings["evaluate_s"] = time.perf_counter() - started
    recipe["training"]["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    recipe["metrics"] = oof_metrics_for_metadata(report)
    (out / "recipe.json").write_text(json.dumps(clean_json(recipe), indent=1) + "\n")
    return recipe


def prepared_detector(prepared: Path) -> str:
    """The face detector a prepared folder's crops came from (its prepare.json), "" if unknown."""
    path = Path(prepared) / "prepare.json"
    if not path.is_file():
        return ""
    report = json.loads(path.read_text())
    return str(report.get("detector") or report.get("config", {}).get("detector", ""))


def _check_crops(crops: list[Crop]) -> list[Crop]:
    """A fixed, spread sample of crops (every k-th, by path)."""
    ordered = sorted(crops, key=lambda c: c.path)
    step = max(1, len(ordered) // CHECK_CROPS)
    return ordered[::step][:CHECK_CROPS]


def write_oof_report(
    out: Path,
    name: str,
    crops: list[Crop],
    experiment: Any,
    probe: dict[str, Any],
    detector: str,
    check: list[Crop],
    check_scores: np.ndarray,
) -> dict[str, Any]:
    """eval_report.txt / .json and roc.png of an "oof" run."""
    from training.report import loso_target_table, probe_lines, text_report

    op, bands = experiment.operating, experiment.bands
    evaluations = [
        evaluation_dict(s.name, s.y_fake, s.p_fake, s.sources, s.metrics)
        for s in [experiment.oof, *(f.scored for f in experiment.loso)]
    ]
    lines = [
        f"model: {name}",
        f"face detector of the crops: {detector or 'unknown'}",
        "threshold: fake when served P(fake) >= 0.5",
        f"operating point (pooled out-of-fold scores, {experiment.folds} identity folds): t* = "
        f"{op.balanced_threshold:.4f} on the even-prior P(fake) (real faces called fake "
        f"{op.false_accusation_at_threshold:.3f}, fakes caught {op.fakes_caught_at_threshold:.3f}); served "
        f"calibration sigmoid({op.a:.4f} * logit + {op.served_b:.4f}) = P(real), prior of fakes "
        f"{op.prior_fake:.4f}",
        f"verdict bands on served P(fake): likely_real <= {bands['real_up_to']:.4f}, likely_fake >= "
        f"{bands['fake_from']:.4f}; out-of-fold shares: real faces likely_fake "
        f"{bands['real_likely_fake']:.3f}, "
        f"uncertain {bands['real_uncertain']:.3f}; fakes likely_real {bands['fake_likely_real']:.3f}, "
        f"uncertain {bands['fake_uncertain']:.3f}",
        f"  rule: {bands['rule']}",
        f"multi-face rule: alpha 0.05, real_logit_std {experiment.real_logit_std:.4f} (served logit, "
        "out-of-fold real faces)",
        "",
        *data_lines(crops),
        "",
        *probe_lines(probe),
        "",
        "held-out sets: 'pooled out-of-fold' = every face scored by the model of the identity fold that",
        "did not train on it; 'leave out S' = source S (and every pseudo-fake made from it) out of",
        "training entirely; each face is scored by the inner model that did not see its fold, with that",
        "fold's own operating point and bands (same rules, from its inner out-of-fold scores); the other",
        "class comes from the remaining sources. AUC intervals: bootstrap over groups (identities, photos).",
        "These folds report; nothing was tuned on them.",
        "",
        *loso_target_table(experiment.loso),
    ]
    (out / "eval_report.txt").write_text(text_report("Evaluation report", lines, evaluations))
    report = {
        "model": name,
        "threshold": 0.5,
        "detector": detector,
        "operating_point": op.as_dict(),
        "verdict_bands": bands,
        "real_logit_std": experiment.real_logit_std,
        "probe": probe,
        "evaluations": evaluations,
        "scores": [
            {"path": c.path, "source": c.source, "label": c.label, "p_fake": float(p)}
            for c, p in zip(check, check_scores, strict=True)
        ],
    }
    (out / "eval_report.json").write_text(json.dumps(clean_json(report), indent=1) + "\n")
    curves = [
        (s.name.split(" (")[0], s.y_fake, s.p_fake)
        for s in [experiment.oof, *(f.scored for f in experiment.loso)]
    ]
    roc_png(curves[:10], f"ROC: {name}").save(out / "roc.png")
    return report


def oof_metrics_for_metadata(report: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "n_real", "n_fake", "n_groups", "roc_auc", "roc_auc_95ci", "false_accusation", "fakes_caught",
        "uncertain", "ece_class_balanced", "brier",
    )  # fmt: skip
    oof, *folds = report["evaluations"]
    return _without_none(
        {
            "out_of_fold": {k: oof["metrics"].get(k) for k in keep},
            "leave_one_source_out": {
                ev["name"][len("leave out ") :]: {
                    **{k: ev["metrics"].get(k) for k in keep},
                    "left_out": ev["metrics"].get("left_out"),
                }
                for ev in folds
            },
            "probe_auc": report["probe"]["roc_auc"],
            "note": "served P(fake), fake when >= 0.5; intervals bootstrap over groups. Tiny offline data: "
            "see the model card.",
        }
    )


def _without_none(value: Any) -> Any:
    """The model store's metadata takes no None (nor NaN, which clean_json turns into None)."""
    value = clean_json(value)
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
