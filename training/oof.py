"""Out-of-fold training (v2): the served operating point and leave-a-source-out evaluation.

* Identity folds: every crop has a fold (`training.dataset.assign_folds`, by group; a
  pseudo-fake has its real parent's). For each fold the model is trained on the others and
  scores that fold's crops; the pooled out-of-fold scores set the served calibration,
  threshold, verdict bands and `real_logit_std` (`training.operating`). The shipped model is
  then trained on every fold and given that calibration.
* Leave a source out (report only, never tuning): the source, and every pseudo-fake made from
  it, leaves training entirely; the rest is trained with `inner_folds` inner identity folds.
  Each crop is scored by the inner model that did not see its fold (so neither its source, nor,
  for the rest, its identity); the inner out-of-fold scores of the rest give that fold its own
  operating point, by the same rules as the shipped model. Reported: the left-out source's
  faces and, beside them, the other class's faces from the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeling.head import set_calibration
from training.dataset import Crop
from training.features import FeatureSet
from training.metrics import group_bootstrap_auc, summarise
from training.operating import (
    OperatingPoint,
    band_shares,
    choose_bands,
    fit_operating_point,
    real_logit_std,
)
from training.train import Trainer, crop_weights, sample_weights


@dataclass
class Scored:
    """Served P(fake) of a set of crops, and the numbers that describe them."""

    name: str
    rows: np.ndarray  # crop indices
    y_fake: np.ndarray
    p_fake: np.ndarray  # served P(fake): fake when >= 0.5
    sources: np.ndarray
    groups: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceFold:
    source: str
    label: str
    operating: OperatingPoint
    bands: dict[str, Any]
    scored: Scored
    seconds: float


@dataclass
class OofExperiment:
    operating: OperatingPoint
    bands: dict[str, Any]
    real_logit_std: float
    oof: Scored
    loso: list[SourceFold]
    weights: dict[str, np.ndarray]
    history: dict[str, list[float]]
    folds: int
    seconds: dict[str, float]
    # The head logit of every training row (crops and their augmented copies) from the identity
    # fold's model that did not train on it: the degraded copies' out-of-fold scores.
    row_logits: np.ndarray | None = None


def run_oof_experiment(
    trainer: Trainer, crops: list[Crop], features: FeatureSet, *, loso: bool, log: Any = print
) -> OofExperiment:
    cfg = trainer.config
    rows = _rows(crops, features)
    weights = sample_weights(crops, features, cfg.weighting)
    per_crop = crop_weights(crops, cfg.weighting)
    folds = sorted({c.fold for c in crops})
    if len(folds) < 2:
        raise ValueError("out-of-fold training needs crops in at least two folds (prepare with --folds 5)")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    row_logits = np.full(len(features.crop_index), np.nan)
    z = _out_of_fold(
        trainer, features, rows, weights, np.ones(len(crops), bool), rows["fold"], log, "oof", row_logits
    )
    seconds["oof_s"] = time.perf_counter() - started
    y_real = rows["crop_y_real"]
    op = fit_operating_point(z, y_real, per_crop, max_false_accusation=cfg.max_false_accusation)
    served = op.served_p_fake(z)
    bands = choose_bands(served, ~y_real.astype(bool), per_crop)
    std = real_logit_std(op.served_logit(z[y_real == 1]), per_crop[y_real == 1])
    oof = _scored(
        "pooled out-of-fold (identity folds)", np.arange(len(crops)), crops, served, bands, cfg.seed
    )
    log(
        f"out-of-fold: AUC {oof.metrics['roc_auc']:.3f}, t* {op.balanced_threshold:.3f}, bands "
        f"{bands['real_up_to']:.3f}/{bands['fake_from']:.3f}, real logit std {std:.3f}"
    )

    started = time.perf_counter()
    history = trainer.train_stages(features, rows["y_real"], weights, np.arange(len(rows["y_real"])))
    set_calibration(trainer.model, op.a, op.served_b)
    shipped = trainer.snapshot()
    seconds["final_fit_s"] = time.perf_counter() - started

    source_folds = []
    if loso:
        started = time.perf_counter()
        counts = {s: int(np.sum(rows["crop_source"] == s)) for s in np.unique(rows["crop_source"])}
        for source in sorted(s for s, n in counts.items() if n >= cfg.loso_min_crops):
            source_folds.append(_leave_out(trainer, crops, features, rows, weights, per_crop, source, log))
        seconds["loso_s"] = time.perf_counter() - started
        trainer.restore(shipped)  # the shipped model is the fit on every fold, not the last one
    return OofExperiment(op, bands, std, oof, source_folds, shipped, history, len(folds), seconds, row_logits)


def _leave_out(
    trainer: Trainer,
    crops: list[Crop],
    features: FeatureSet,
    rows: dict[str, np.ndarray],
    weights: np.ndarray,
    per_crop: np.ndarray,
    source: str,
    log: Any,
) -> SourceFold:
    started = time.perf_counter()
    cfg = trainer.config
    held = (rows["crop_source"] == source) | (rows["crop_parent"] == source)
    label = "real" if rows["crop_y_real"][np.flatnonzero(rows["crop_source"] == source)[0]] else "fake"
    inner = rows["fold"] % cfg.inner_folds
    z = _out_of_fold(trainer, features, rows, weights, ~held, inner, log, f"leave out {source}")
    y_real = rows["crop_y_real"]
    rest = ~held
    op = fit_operating_point(
        z[rest], y_real[rest], per_crop[rest], max_false_accusation=cfg.max_false_accusation
    )
    served = op.served_p_fake(z)
    bands = choose_bands(served[rest], y_real[rest] == 0, per_crop[rest])
    other = rest & ((y_real == 0) if label == "real" else (y_real == 1))
    chosen = np.flatnonzero(held | other)
    scored = _scored(f"leave out {source} ({label})", chosen, crops, served[chosen], bands, cfg.seed)
    left = rows["crop_source"][chosen] == source
    scored.metrics["left_out"] = {
        "n": int(left.sum()),
        "called_fake": float(np.mean(scored.p_fake[left] >= 0.5)),
        **band_shares(scored.p_fake[left], scored.y_fake[left], np.ones(int(left.sum())), **_edges(bands)),
    }
    seconds = time.perf_counter() - started
    m = scored.metrics
    log(
        f"leave out {source}: AUC {m['roc_auc']:.3f}, false accusations {m['false_accusation']:.3f}, "
        f"fakes caught {m['fakes_caught']:.3f}, uncertain {m['uncertain']:.3f} ({seconds:.0f} s)"
    )
    return SourceFold(source, label, op, bands, scored, seconds)


def _out_of_fold(
    trainer: Trainer,
    features: FeatureSet,
    rows: dict[str, np.ndarray],
    weights: np.ndarray,
    usable: np.ndarray,
    fold_of_crop: np.ndarray,
    log: Any,
    name: str,
    row_logits: np.ndarray | None = None,
) -> np.ndarray:
    """Head logit of every crop from the model trained on the usable crops of the other folds.
    Crops that are not usable (a left-out source) are scored by the model of their fold too.
    `row_logits`, if given, receives the logit of every row (augmented copies too)."""
    z = np.full(len(fold_of_crop), np.nan)
    row_crop = features.crop_index
    clean = features.copy == 0
    for fold in np.unique(fold_of_crop):
        train = np.flatnonzero(usable[row_crop] & (fold_of_crop[row_crop] != fold))
        if len(np.unique(rows["y_real"][train])) < 2:
            raise ValueError(f"{name}: fold {fold} leaves one class only in training")
        started = time.perf_counter()
        trainer.train_stages(features, rows["y_real"], weights, train)
        if row_logits is not None:
            held = np.flatnonzero(fold_of_crop[row_crop] == fold)
            row_logits[held] = trainer.logits(features.cut[held])
            scored = held[clean[held]]
            z[row_crop[scored]] = row_logits[scored]
        else:
            scored = np.flatnonzero(clean & (fold_of_crop[row_crop] == fold))
            z[row_crop[scored]] = trainer.logits(features.cut[scored])
        log(f"{name}: fold {fold} ({len(train)} rows, {time.perf_counter() - started:.0f} s)")
    return z


def _scored(
    name: str, chosen: np.ndarray, crops: list[Crop], p_fake: np.ndarray, bands: dict[str, Any], seed: int
) -> Scored:
    y = np.array([crops[i].label == "fake" for i in chosen])
    groups = np.array([crops[i].key for i in chosen])
    scored = Scored(name, chosen, y, p_fake, np.array([crops[i].source for i in chosen]), groups)
    metrics = summarise(y, p_fake, 0.5, seed=seed)
    metrics["roc_auc_95ci"] = group_bootstrap_auc(y, p_fake, groups, seed=seed)
    metrics["ci_method"] = "bootstrap over groups (identities, photos)"
    metrics["n_groups"] = len(set(groups.tolist()))
    shares = band_shares(p_fake, y, np.ones(len(y)), **_edges(bands))
    metrics["false_accusation"] = float(np.mean(p_fake[~y] >= 0.5)) if (~y).any() else None
    metrics["fakes_caught"] = float(np.mean(p_fake[y] >= 0.5)) if y.any() else None
    metrics["uncertain"] = float(np.mean((p_fake > bands["real_up_to"]) & (p_fake < bands["fake_from"])))
    metrics["bands"] = {**_edges(bands), **shares}
    scored.metrics = metrics
    return scored


def _edges(bands: dict[str, Any]) -> dict[str, float]:
    return {"real_up_to": bands["real_up_to"], "fake_from": bands["fake_from"]}


def _rows(crops: list[Crop], features: FeatureSet) -> dict[str, np.ndarray]:
    index = features.crop_index
    y_real = np.array([c.y_real for c in crops])
    return {
        "y_real": y_real[index],
        "crop_y_real": y_real,
        "fold": np.array([c.fold for c in crops]),
        "crop_source": np.array([c.source for c in crops]),
        "crop_parent": np.array([c.parent_source for c in crops]),
    }
