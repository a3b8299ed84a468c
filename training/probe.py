"""Can trivial image statistics tell the classes apart? A probe for shortcuts in the data.

A logistic regression on five features that say nothing about manipulation (the face's
resolution, colour saturation, sharpness, a JPEG blockiness estimate, mean brightness),
cross-validated by identity fold, scored by ROC AUC. It runs on exactly what the network
trains on: every crop and every augmented copy, with the training weights. An AUC near 0.5
means none of these differ between real and fake; the data is accepted at <= `MAX_PROBE_AUC`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from preprocessing.faces import CROP_SIZE
from training.augment import AugmentConfig, augment
from training.dataset import Crop
from training.metrics import weighted_roc_auc
from training.prepare import load_pixels

FEATURES = ("face_side", "saturation", "sharpness", "jpeg_blockiness", "brightness")
MAX_PROBE_AUC = 0.60
BLOCK = 8


def trivial_features(pixels: np.ndarray, face_side: float) -> np.ndarray:
    """The five features of one uint8 (H, W, 3) crop whose face had `face_side` pixels (counted
    up to the crop's own side: the network never sees more)."""
    x = pixels.astype(np.float32)
    high, low = x.max(axis=2), x.min(axis=2)
    saturation = float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)))
    grey = Image.fromarray(pixels, "RGB").convert("L")
    laplacian = np.asarray(
        grey.filter(ImageFilter.Kernel((3, 3), (0, 1, 0, 1, -4, 1, 0, 1, 0), 1, 128)), np.float32
    )
    sharpness = float(np.log1p(np.var(laplacian - 128.0)))
    y = np.asarray(grey, np.float32)
    return np.array(
        [
            np.log(max(min(face_side, pixels.shape[0]), 1.0)),
            saturation,
            sharpness,
            blockiness(y),
            float(y.mean() / 255.0),
        ]
    )


def blockiness(y: np.ndarray) -> float:
    """How much larger the steps across the 8x8 JPEG grid are than those inside it (log ratio):
    about 0 for an image never JPEG-encoded at this size, larger the lower the quality."""
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    on_x = (np.arange(dx.shape[1]) % BLOCK) == BLOCK - 1
    on_y = (np.arange(dy.shape[0]) % BLOCK) == BLOCK - 1
    across = dx[:, on_x].mean() + dy[on_y].mean()
    inside = dx[:, ~on_x].mean() + dy[~on_y].mean()
    return float(np.log((across + 1e-3) / (inside + 1e-3)))


@dataclass(frozen=True)
class ProbeResult:
    roc_auc: float  # cross-validated, weighted as training weighs the rows
    roc_auc_unweighted: float
    roc_auc_clean_crops: float  # the crops alone, before augmentation, each crop once
    n_rows: int
    n_crops: int
    folds: int
    coefficients: dict[str, float]  # of the standardised features, fitted on all rows
    class_means: dict[str, dict[str, float]]  # per feature, weighted

    @property
    def passed(self) -> bool:
        return self.roc_auc <= MAX_PROBE_AUC

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_auc": MAX_PROBE_AUC, "passed": self.passed}


def row_features(
    crops: list[Crop],
    root: Any,
    crop_index: np.ndarray,
    copy: np.ndarray,
    *,
    seed: int,
    augment_config: AugmentConfig,
    size: tuple[int, int] = CROP_SIZE,
) -> np.ndarray:
    """Features of every training row: the crop itself (copy 0) or its k-th augmented copy, drawn
    with the seeds `training.features` uses, so these are the very images the network saw
    (`size`: the crops' side, the model's input)."""
    out = np.zeros((len(crop_index), len(FEATURES)))
    loaded: dict[int, np.ndarray] = {}
    for row, (i, k) in enumerate(zip(crop_index.tolist(), copy.tolist(), strict=True)):
        if i not in loaded:
            loaded.clear()
            loaded[i] = load_pixels(root / crops[i].path, size)
        pixels, side = loaded[i], crops[i].face_side or float(size[0])
        if k:
            info: dict[str, float] = {}
            pixels = augment(pixels, np.random.default_rng([seed, i, k]), augment_config, info)
            side = min(side, info.get("side", side))
        out[row] = trivial_features(pixels, side)
    return out


def run_probe(
    features: np.ndarray,
    y_fake: np.ndarray,
    weights: np.ndarray,
    groups: np.ndarray,
    clean: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
) -> ProbeResult:
    """Logistic regression on `features` (rows x FEATURES), cross-validated by `groups`."""
    y = np.asarray(y_fake, bool)
    fold_of = np.array([int(hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), 16) % folds for g in groups])
    scores = np.zeros(len(y))
    for f in range(folds):
        test = fold_of == f
        if not test.any() or len(np.unique(y[~test])) < 2:
            continue
        model = fit_logistic(features[~test], y[~test], weights[~test])
        scores[test] = predict_logistic(model, features[test])
    model = fit_logistic(features, y, weights)
    means = {
        label: {
            name: float(np.average(features[mask, j], weights=weights[mask]))
            for j, name in enumerate(FEATURES)
        }
        for label, mask in (("real", ~y), ("fake", y))
    }
    return ProbeResult(
        roc_auc=weighted_roc_auc(y, scores, weights),
        roc_auc_unweighted=weighted_roc_auc(y, scores, np.ones(len(y))),
        roc_auc_clean_crops=weighted_roc_auc(y[clean], scores[clean], np.ones(int(clean.sum()))),
        n_rows=int(len(y)),
        n_crops=int(clean.sum()),
        folds=folds,
        coefficients={name: float(c) for name, c in zip(FEATURES, model[2][:-1], strict=True)},
        class_means=means,
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, *, l2: float = 1e-2, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted, L2-regularised logistic regression by Newton's method on standardised inputs;
    returns (mean, scale, coefficients with the intercept last)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.asarray(w, np.float64) / np.mean(w)
    beta = np.zeros(z.shape[1])
    penalty = l2 * np.eye(z.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        grad = z.T @ (w * (p - y)) / len(y) + penalty @ beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z / len(y) + penalty + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, scale, beta


def predict_logistic(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mean, scale, beta = model
    return np.hstack([(x - mean) / scale, np.ones((len(x), 1))]) @ beta
