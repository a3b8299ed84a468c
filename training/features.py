"""Run the frozen part of the backbone once per image and keep its output.

Both training stages only change layers after `modeling.head.CUT_LAYER` (3x3x1792 at
160 px), so each crop, and each augmented copy of it, goes through the expensive bottom of
Inception-ResNet-v1 once; the epochs then run on the cached activations in seconds. The
cache is keyed by everything that could change the numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.tensor import normalize
from training.augment import AugmentConfig, augment
from training.dataset import Crop
from training.prepare import load_pixels


@dataclass(frozen=True)
class FeatureSet:
    cut: np.ndarray  # (N, ...) activations at the cut layer, float32
    crop_index: np.ndarray  # (N,) row -> index of its crop
    copy: np.ndarray  # (N,) 0 = the crop itself, k > 0 = its k-th augmented copy


def copies_per_crop(crops: list[Crop], *, target: int, max_copies: int) -> np.ndarray:
    """Augmented copies of each training crop: a small source gets more, up to `max_copies`.

    A source with n training crops gets ceil(target / n) copies of each, so every source
    brings roughly `target` augmented views; validation and test crops get none (they are
    judged as they are).
    """
    counts: dict[str, int] = {}
    for crop in crops:
        if crop.split == "train":
            counts[crop.source] = counts.get(crop.source, 0) + 1
    return np.array(
        [
            min(max_copies, max(1, math.ceil(target / counts[c.source]))) if c.split == "train" else 0
            for c in crops
        ],
        dtype=np.int64,
    )


def extract_features(
    features_model: Any,
    crops: list[Crop],
    root: Path,
    copies: np.ndarray,
    *,
    seed: int,
    augment_config: AugmentConfig | None = None,
    batch_size: int = 32,
    cache: Path | None = None,
    fingerprint: str = "",
    log: Any = print,
    size: tuple[int, int] | None = None,
) -> FeatureSet:
    """Cut-layer activations of every crop and its copies (from `cache` when it matches).

    A model with several outputs gives each row its outputs flattened and side by side.
    `size`: the crops' side (default: the model's input size)."""
    root = Path(root)
    augment_config = augment_config or AugmentConfig()
    size = size or tuple(int(d) for d in features_model.inputs[0].shape[1:3])
    jobs = [(i, k) for i, crop in enumerate(crops) for k in range(int(copies[i]) + 1)]
    key = _cache_key(crops, root, copies, seed, augment_config, f"{fingerprint}@{size[0]}x{size[1]}")
    if cache is not None:
        path = Path(cache) / f"features-{key[:16]}.npz"
        if path.is_file():
            with np.load(path) as stored:
                log(f"features: {len(jobs)} from cache {path.name}")
                return FeatureSet(stored["cut"], stored["crop_index"], stored["copy"])
    outputs = []
    done = 0
    for batch in _prefetch(_batches(jobs, crops, root, seed, augment_config, batch_size, size)):
        out = features_model.predict_on_batch(normalize(batch, "zero_one"))
        if isinstance(out, (list, tuple)):
            out = np.concatenate([np.asarray(o, np.float32).reshape(len(batch), -1) for o in out], axis=1)
        outputs.append(np.asarray(out, np.float32))
        done += len(batch)
        if done % (batch_size * 20) < batch_size or done == len(jobs):
            log(f"features: {done}/{len(jobs)}")
    result = FeatureSet(
        np.concatenate(outputs, axis=0),
        np.array([i for i, _ in jobs], np.int64),
        np.array([k for _, k in jobs], np.int64),
    )
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.savez(path, cut=result.cut, crop_index=result.crop_index, copy=result.copy)
    return result


def _batches(
    jobs: list[tuple[int, int]],
    crops: list[Crop],
    root: Path,
    seed: int,
    config: AugmentConfig,
    batch_size: int,
    size: tuple[int, int],
) -> Iterator[np.ndarray]:
    loaded: dict[int, np.ndarray] = {}
    for start in range(0, len(jobs), batch_size):
        batch = []
        for i, k in jobs[start : start + batch_size]:
            if i not in loaded:
                loaded.clear()  # jobs come grouped by crop: keep only the current one
                loaded[i] = load_pixels(root / crops[i].path, size)
            pixels = loaded[i]
            # Each copy has its own seed: the same copy whatever else is in the dataset.
            batch.append(pixels if k == 0 else augment(pixels, np.random.default_rng([seed, i, k]), config))
        yield np.stack(batch)


def _prefetch(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Augment the next batch in a thread while the model runs on this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, batches, None)
        while True:
            batch = future.result()
            if batch is None:
                return
            future = pool.submit(next, batches, None)
            yield batch


def _cache_key(
    crops: list[Crop], root: Path, copies: np.ndarray, seed: int, config: AugmentConfig, fingerprint: str
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([fingerprint, seed, asdict(config), copies.tolist()]).encode())
    for crop in crops:
        digest.update(crop.path.encode())
        digest.update(hashlib.sha256((root / crop.path).read_bytes()).digest())
    return digest.hexdigest()
