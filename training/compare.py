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
