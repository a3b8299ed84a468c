"""`python -m training compare`: every candidate of the frozen protocol (`training.protocol`),
on cached features, into one comparison table.

For each input size the data set is prepared from the source photos at that size; every crop
and its augmented copies (the protocol's degradations, both classes alike) go through the
frozen backbones once, and the features are cached on disk (keyed by the crops' bytes, the
copies, the seed, the degradations and the backbone). Candidates then run the same identity
folds, pooled out-of-fold operating point and leave-a-source-out folds as the shipped model
(`training.oof`); linear probes train in seconds on the cached features, the FaceNet head as
today (both stages on its cut-layer activations).

The cost of each candidate (in-process ms per face) comes from `bench/model_cost.py`; the
selection (`select`) takes its table as input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import Crop, read_manifest
from training.features import FeatureSet, copies_per_crop, extract_features
from training.protocol import AUGMENT, FACENET_SIZE, TRAIN, prepare_config
from training.sources import DEFAULT_CACHE


def prepared_folder(cache: Path, size: int) -> Path:
    return Path(cache) / f"prepared-v2-{prepare_config(size).detector}-{size}"


def prepare_size(cache: Path, raw: Path, size: int, log: Callable[[str], None] = print) -> list[Crop]:
    """The data set cut at `size` (kept if its prepare.json says it was made the same way)."""
    from dataclasses import asdict

    from training.prepare import prepare

    folder = prepared_folder(cache, size)
    config = prepare_config(size)
    report = folder / "prepare.json"
    if report.is_file() and json.loads(report.read_text()).get("config") == json.loads(
        json.dumps(asdict(config))
    ):
        return read_manifest(folder)
    started = time.perf_counter()
    crops = prepare(raw, folder, config)
    log(f"prepared {len(crops)} crops at {size} px into {folder} ({time.perf_counter() - started:.0f} s)")
    return crops


def row_copies(crops: list[Crop]) -> np.ndarray:
    return copies_per_crop(crops, target=TRAIN.copies_target, max_copies=TRAIN.max_copies)


def clip_features(
    cache: Path, size: int, crops: list[Crop], log: Callable[[str], None] = print
) -> FeatureSet:
    """Per row: the class token after each of the 12 blocks (12 x 768) and the 512-d
    embedding, side by side (float32)."""
    from modeling.clip import ONNX_SHA256, feature_model, load_clip_encoder

    encoder = load_clip_encoder(size)
    return extract_features(
        feature_model(encoder),
        crops,
        prepared_folder(cache, size),
        row_copies(crops),
        seed=TRAIN.seed,
        augment_config=AUGMENT,
        cache=Path(cache) / "features",
        fingerprint=f"clip-vit-b16-{ONNX_SHA256[:16]}-cls12-embedding",
        log=log,
    )


def facenet_model_and_features(
    cache: Path, crops: list[Crop], log: Callable[[str], None] = print
) -> tuple[Any, FeatureSet]:
    """The FaceNet classifier (untrained head) and its cut-layer activations per row, as
    `training.run.model_and_features` makes them for the shipped FaceNet model."""
    from training.run import facenet_backbone, model_and_features

    timings: dict[str, float] = {}
    return model_and_features(
        prepared_folder(cache, FACENET_SIZE),
        crops,
        TRAIN,
        facenet_backbone,
        AUGMENT,
        Path(cache) / "features",
        "facenet-20180408-102900",
        log,
        timings,
    )


def main_features(
    cache: Path = DEFAULT_CACHE, sizes: tuple[int, ...] = (), log: Callable[[str], None] = print
) -> None:
    """Prepare every size and extract (or find cached) every backbone's features."""
    from training.protocol import SIZES
    from training.sources import fetch_default_data

    raw, _ = fetch_default_data(cache, "v2")
    for size in sizes or SIZES:
        crops = prepare_size(cache, raw, size, log)
        if size == FACENET_SIZE:
            started = time.perf_counter()
            facenet_model_and_features(cache, crops, log)
            log(f"facenet features at {size}: {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        features = clip_features(cache, size, crops, log)
        log(f"clip features at {size}: {features.cut.shape} ({time.perf_counter() - started:.0f} s)")


# ---- candidates ------------------------------------------------------------------------------


CLIP_WIDTH = 768
CLIP_TOKENS = 12  # class tokens cached per row, one per block, before the embedding


def clip_design(family: str, clip: np.ndarray, facenet: np.ndarray | None = None) -> np.ndarray:
    """A candidate's features per row from the cached CLIP (and FaceNet) features."""
    from training.protocol import CLIP_BLOCKS

    embedding = clip[:, CLIP_TOKENS * CLIP_WIDTH :]
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    if family == "clip-embedding":
        return embedding
    if family == "clip-blocks":
        return np.concatenate([clip[:, b * CLIP_WIDTH : (b + 1) * CLIP_WIDTH] for b in CLIP_BLOCKS], axis=1)
    if family == "clip+facenet":
        if facenet is None:
            raise ValueError("clip+facenet needs the FaceNet features")
        return np.concatenate([embedding, facenet], axis=1)
    raise ValueError(f"not a CLIP probe: {family!r}")


def facenet_head_input(model: Any, features: FeatureSet) -> np.ndarray:
    """FaceNet's pooled 1792-d features and 512-d embedding (pretrained, frozen) per row, from
    the cached cut-layer activations."""
    from modeling.head import sub_models

    head_input = sub_models(model)["head_input"]
    return np.concatenate(
        [
            np.asarray(head_input.predict_on_batch(features.cut[i : i + 256]))
            for i in range(0, len(features.cut), 256)
        ]
    )


def candidate_inputs(
    candidate: Any, cache: Path, log: Callable[[str], None] = print
) -> tuple[list[Crop], FeatureSet, Any]:
    """The crops, the training rows' features and the trainer of a candidate."""
    from training.linear import LinearTrainer
    from training.train import Trainer

    crops = read_manifest(prepared_folder(cache, candidate.size))
    if candidate.family == "facenet-head":
        model, features = facenet_model_and_features(cache, crops, log)
        return crops, features, Trainer(model, TRAIN, log=log)
    clip = clip_features(cache, candidate.size, crops, log)
    facenet = None
    if candidate.uses_facenet:
        model, fn = facenet_model_and_features(cache, crops, log)
        if not (np.array_equal(fn.crop_index, clip.crop_index) and np.array_equal(fn.copy, clip.copy)):
            raise ValueError("the FaceNet and CLIP feature rows differ")
        facenet = facenet_head_input(model, fn)
    x = clip_design(candidate.family, clip.cut, facenet)
    features = FeatureSet(x.astype(np.float32), clip.crop_index, clip.copy)
    return crops, features, LinearTrainer(x.shape[1], TRAIN, candidate.l2, log=log)


def run_candidate(
    candidate: Any, cache: Path = DEFAULT_CACHE, log: Callable[[str], None] = print, *, loso: bool = True
) -> dict[str, Any]:
    """One candidate through the identity folds and (`loso`) the leave-a-source-out folds; its
    summary (also written to `<cache>/compare/<name>.json`). The selection rule reads the
    out-of-fold figures only, so `loso=False` is enough to select; the report wants both."""
    from training.oof import run_oof_experiment

    out = Path(cache) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    crops, features, trainer = candidate_inputs(candidate, cache, log)
    started = time.perf_counter()
    experiment = run_oof_experiment(trainer, crops, features, loso=loso, log=log)
    summary = summarise(candidate, crops, features, experiment)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["loso_run"] = loso
    (out / f"{candidate.name}.json").write_text(json.dumps(_clean(summary), indent=1) + "\n")
    np.savez(
        out / f"{candidate.name}-scores.npz",
        oof_p_fake=experiment.oof.p_fake,
        row_logits=experiment.row_logits,
        crop_index=features.crop_index,
        copy=features.copy,
    )
    log(
        f"{candidate.name}: out-of-fold AUC {summary['oof']['roc_auc']:.3f}, false accusations "
        f"{summary['oof']['false_accusation']:.3f}, fakes caught {summary['oof']['fakes_caught']:.3f}, "
        f"min LOSO AUC (>= 20 groups) {summary['loso_min_auc']:.3f} ({summary['seconds']:.0f} s)"
    )
    return summary


def summarise(candidate: Any, crops: list[Crop], features: FeatureSet, experiment: Any) -> dict[str, Any]:
    """The protocol's figures of one candidate (see training/PROTOCOL.md)."""
    from training.metrics import (
        group_bootstrap_auc,
        group_bootstrap_weighted_auc,
        roc_auc,
        source_equal_weights,
        weighted_roc_auc,
    )
    from training.protocol import MIN_LOSO_GROUPS

    seed = TRAIN.seed
    oof, op, bands = experiment.oof, experiment.operating, experiment.bands
    labels = np.array([c.label for c in crops])
    sources = np.array([c.source for c in crops])
    groups = np.array([c.key for c in crops])
    y = labels == "fake"
    p = oof.p_fake
    equal = source_equal_weights(labels, sources)
    called = p >= 0.5
    m = oof.metrics
    summary: dict[str, Any] = {
        "candidate": candidate.name,
        "family": candidate.family,
        "size": candidate.size,
        "l2": candidate.l2,
        "head_parameters": candidate.head_parameters,
        "features": int(features.cut.shape[1]) if features.cut.ndim == 2 else list(features.cut.shape[1:]),
        "rows": int(len(features.crop_index)),
        "oof": {
            "roc_auc": m["roc_auc"],
            "roc_auc_95ci": m["roc_auc_95ci"],
            "false_accusation": m["false_accusation"],
            "fakes_caught": m["fakes_caught"],
            "uncertain": m["uncertain"],
            "bands": m["bands"],
            "n_groups": m["n_groups"],
        },
        "oof_source_equal": {
            "roc_auc": weighted_roc_auc(y, p, equal),
            "roc_auc_95ci": group_bootstrap_weighted_auc(y, p, equal, groups, seed=seed),
            "false_accusation": float(np.average(called[~y], weights=equal[~y])),
            "fakes_caught": float(np.average(called[y], weights=equal[y])),
        },
        "operating_point": op.as_dict(),
        "verdict_bands": {k: bands[k] for k in ("real_up_to", "fake_from")},
        "real_logit_std": experiment.real_logit_std,
        "per_source_oof": {
            s: {
                "label": str(labels[sources == s][0]),
                "n": int((sources == s).sum()),
                "called_fake": float(called[sources == s].mean()),
                "auc_vs_other_class": roc_auc(
                    y[(sources == s) | (y != y[sources == s][0])],
                    p[(sources == s) | (y != y[sources == s][0])],
                ),
            }
            for s in sorted(set(sources.tolist()))
        },
    }
    if experiment.row_logits is not None:
        copies = np.flatnonzero(features.copy > 0)
        crop_of = features.crop_index[copies]
        p_copies = op.served_p_fake(experiment.row_logits[copies])
        summary["oof_degraded_copies"] = {
            "n": int(len(copies)),
            "roc_auc": roc_auc(y[crop_of], p_copies),
            "roc_auc_95ci": group_bootstrap_auc(y[crop_of], p_copies, groups[crop_of], seed=seed),
            "false_accusation": float(np.mean(p_copies[~y[crop_of]] >= 0.5)),
            "fakes_caught": float(np.mean(p_copies[y[crop_of]] >= 0.5)),
        }
    folds = []
    for fold in experiment.loso:
        fm = fold.scored.metrics
        n_groups = len({c.key for c in crops if c.source == fold.source})
        folds.append(
            {
                "source": fold.source,
                "label": fold.label,
                "groups": n_groups,
                "roc_auc": fm["roc_auc"],
                "roc_auc_95ci": fm["roc_auc_95ci"],
                "false_accusation": fm["false_accusation"],
                "fakes_caught": fm["fakes_caught"],
                "uncertain": fm["uncertain"],
                "left_out_called_fake": fm["left_out"]["called_fake"],
                "t_star": fold.operating.balanced_threshold,
            }
        )
    summary["loso"] = folds
    big = [f["roc_auc"] for f in folds if f["groups"] >= MIN_LOSO_GROUPS]
    summary["loso_min_auc"] = float(min(big)) if big else float("nan")
    summary["loso_sources_meeting_auc"] = [
        f["source"] for f in folds if f["groups"] >= MIN_LOSO_GROUPS and f["roc_auc"] >= 0.80
    ]
    return summary


def _clean(value: Any) -> Any:
    from training.report import clean_json

    return clean_json(value)


def main_compare(
    cache: Path = DEFAULT_CACHE,
    *,
    only: list[str] | None = None,
    features_only: bool = False,
    costs: list[Path] | None = None,
    log: Callable[[str], None] = print,
    loso: bool = True,
) -> list[dict[str, Any]]:
    """Features for every size, then every candidate (or those named), then, given the cost
    table, the selection and the comparison table."""
    from training.protocol import candidates

    chosen = [c for c in candidates() if not only or c.name in only]
    unknown = set(only or ()) - {c.name for c in candidates()}
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; known: {[c.name for c in candidates()]}")
    main_features(cache, tuple(sorted({c.size for c in chosen}, reverse=True)), log)
    if features_only:
        return []
    summaries = [run_candidate(c, cache, log, loso=loso) for c in chosen]
    if costs:
        from training.selection import write_comparison

        write_comparison(cache, costs, log)
    return summaries
