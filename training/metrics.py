"""Metrics on P(fake) scores: ROC AUC, accuracy at a threshold, calibration, and fitting both.

Scores are always P(fake) and labels 1 = fake here, whatever the model's output means: the
service's rule is "fake when P(fake) >= threshold".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

CALIBRATION_BINS = 10


def roc_auc(y_fake: np.ndarray, p_fake: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half); nan if only one class is present."""
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake, np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Average rank of each distinct value: ties share their ranks.
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def weighted_roc_auc(y_fake: np.ndarray, p_fake: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with each image counting `weights` (pairs weigh the product; ties half)."""
    y, s, w = np.asarray(y_fake, bool), np.asarray(p_fake, np.float64), np.asarray(weights, np.float64)
    if not y.any() or y.all():
        return float("nan")
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=w * y, minlength=len(values))
    neg = np.bincount(inverse, weights=w * ~y, minlength=len(values))
    below = np.cumsum(neg) - neg  # negative weight strictly below each value
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def roc_curve(y_fake: np.ndarray, p_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0)."""
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake, np.float64)
    thresholds = np.unique(s)[::-1]
    fpr = [0.0] + [float(np.mean(s[~y] >= t)) if (~y).any() else 0.0 for t in thresholds]
    tpr = [0.0] + [float(np.mean(s[y] >= t)) if y.any() else 0.0 for t in thresholds]
    return np.array(fpr), np.array(tpr)


def bootstrap_auc(
    y_fake: np.ndarray, p_fake: np.ndarray, *, rounds: int = 1000, seed: int = 0
) -> list[float]:
    """A 95 % percentile interval of the AUC, resampling images with replacement."""
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].any() and not y[idx].all():
            values.append(roc_auc(y[idx], s[idx]))
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def group_bootstrap_auc(
    y_fake: np.ndarray, p_fake: np.ndarray, groups: np.ndarray, *, rounds: int = 1000, seed: int = 0
) -> list[float]:
    """A 95 % percentile interval of the AUC, resampling whole groups (identities, photos) with
    replacement: faces of one person are not independent evidence."""
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake)
    return _group_bootstrap(lambda idx: roc_auc(y[idx], s[idx]), y, groups, rounds, seed)


def group_bootstrap_weighted_auc(
    y_fake: np.ndarray,
    p_fake: np.ndarray,
    weights: np.ndarray,
    groups: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int = 0,
) -> list[float]:
    """`group_bootstrap_auc` for a weighted AUC (`weighted_roc_auc`): whole groups resampled,
    each drawn face keeping its weight."""
    y, s, w = np.asarray(y_fake, bool), np.asarray(p_fake), np.asarray(weights)
    return _group_bootstrap(lambda idx: weighted_roc_auc(y[idx], s[idx], w[idx]), y, groups, rounds, seed)


def _group_bootstrap(
    statistic: Callable[[np.ndarray], float], y: np.ndarray, groups: np.ndarray, rounds: int, seed: int
) -> list[float]:
    """The 95 % percentile interval of `statistic(rows)` over `rounds` resamples of whole groups
    (rounds whose rows hold one class only are skipped)."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        if y[idx].any() and not y[idx].all():
            values.append(statistic(idx))
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def source_equal_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """One weight per face: within each class every source carries the same total weight."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    weights = np.zeros(len(labels))
    for label in np.unique(labels):
        in_class = labels == label
        class_sources = np.unique(sources[in_class])
        for source in class_sources:
            members = in_class & (sources == source)
            weights[members] = 1.0 / len(class_sources) / members.sum()
    return weights


def choose_threshold(y_fake: np.ndarray, p_fake: np.ndarray) -> float:
    """The P(fake) threshold with the best balanced accuracy; ties go to the one nearest 0.5.

    Candidates are midpoints between neighbouring distinct scores (and 0.5), kept inside
    (0.01, 0.99) so the threshold is a valid model setting.
    """
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake, np.float64)
    distinct = np.unique(s)
    candidates = np.concatenate([[0.5], (distinct[:-1] + distinct[1:]) / 2.0])
    candidates = np.clip(candidates, 0.01, 0.99)
    best, best_key = 0.5, (-1.0, 0.0)
    for t in candidates:
        key = (balanced_accuracy(y, s, float(t)), -abs(float(t) - 0.5))
        if key > best_key:
            best, best_key = float(t), key
    return best


def balanced_accuracy(y_fake: np.ndarray, p_fake: np.ndarray, threshold: float) -> float:
    y, pred = np.asarray(y_fake, bool), np.asarray(p_fake) >= threshold
    rates = [
        float(np.mean(pred[y])) if y.any() else np.nan,
        float(np.mean(~pred[~y])) if (~y).any() else np.nan,
    ]
    return float(np.nanmean(rates))


def fit_platt(logit_real: np.ndarray, y_real: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """Platt scaling: (a, b) with P(real) = sigmoid(a * logit + b), by Newton's method.

    The two classes weigh the same, so the probability is calibrated for an even prior of
    real and fake (as the training loss is), not for the validation split's class mix. Uses
    Platt's smoothed targets ((n+ + 1) / (n+ + 2) and 1 / (n- + 2)), which keep a tiny
    validation set from pushing the fit to infinite confidence.
    """
    z, y = np.asarray(logit_real, np.float64), np.asarray(y_real, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    c = np.where(y, 0.5 / n_pos, 0.5 / n_neg) * len(y)

    def loss(params: np.ndarray) -> float:
        s = params[0] * z + params[1]
        return float(np.sum(c * (np.logaddexp(0.0, s) - t * s)))  # cross-entropy, overflow-free

    params = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (params[0] * z + params[1])))  # a stable sigmoid
        w = c * p * (1.0 - p) + 1e-12
        grad = np.array([np.sum(c * (p - t) * z), np.sum(c * (p - t))])
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # Newton with backtracking: the loss is convex, so a short enough step always helps.
        scale, current = 1.0, loss(params)
        while scale > 1e-8 and loss(params - scale * step) > current:
            scale /= 2.0
        params = params - scale * step
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return float(params[0]), float(params[1])


def class_balanced_weights(y_fake: np.ndarray) -> np.ndarray:
    """Weights that make each class count the same (the prior the model is calibrated for)."""
    y = np.asarray(y_fake, bool)
    n_fake, n_real = int(y.sum()), int((~y).sum())
    return np.where(y, 0.5 / max(n_fake, 1), 0.5 / max(n_real, 1)) * len(y)


def calibration_table(
    y_fake: np.ndarray, p_fake: np.ndarray, bins: int = CALIBRATION_BINS, *, balanced: bool = False
) -> list[dict[str, Any]]:
    """Per P(fake) bin: count, mean predicted P(fake), observed fraction fake.

    `balanced`: the fraction fake is computed with each class weighing the same, i.e. as if
    the evaluation set had as many real images as fakes (the model's calibration target).
    """
    y, s = np.asarray(y_fake, bool), np.asarray(p_fake, np.float64)
    w = class_balanced_weights(y) if balanced else np.ones(len(y))
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        weight = float(w[inside].sum())
        rows.append(
            {
                "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
                "count": int(inside.sum()),
                "weight": weight,
                "mean_p_fake": float(np.average(s[inside], weights=w[inside])) if inside.any() else None,
                "fraction_fake": float(np.average(y[inside], weights=w[inside])) if inside.any() else None,
            }
        )
    return rows


def expected_calibration_error(
    y_fake: np.ndarray, p_fake: np.ndarray, bins: int = CALIBRATION_BINS, *, balanced: bool = False
) -> float:
    rows = calibration_table(y_fake, p_fake, bins, balanced=balanced)
    total = sum(row["weight"] for row in rows)
    gaps = [row["weight"] * abs(row["mean_p_fake"] - row["fraction_fake"]) for row in rows if row["count"]]
    return float(sum(gaps) / total)


def summarise(y_fake: np.ndarray, p_fake: np.ndarray, threshold: float, *, seed: int = 0) -> dict[str, Any]:
    """The headline numbers for one evaluation set."""
    y, s = np.asarray(y_fake, bool), np.clip(np.asarray(p_fake, np.float64), 1e-7, 1 - 1e-7)
    pred = s >= threshold
    return {
        "n": int(len(y)),
        "n_fake": int(y.sum()),
        "n_real": int((~y).sum()),
        "roc_auc": roc_auc(y, s),
        "roc_auc_95ci": bootstrap_auc(y, s, seed=seed),
        "threshold": float(threshold),
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": balanced_accuracy(y, s, threshold),
        "fake_recall": float(np.mean(pred[y])) if y.any() else None,
        "real_recall": float(np.mean(~pred[~y])) if (~y).any() else None,
        "log_loss": float(-np.mean(np.where(y, np.log(s), np.log(1 - s)))),
        "brier": float(np.mean((s - y) ** 2)),
        "ece": expected_calibration_error(y, s),
        "ece_class_balanced": expected_calibration_error(y, s, balanced=True),
    }
