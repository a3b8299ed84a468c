"""A linear probe on cached features, trained the way `training.oof` trains a head.

    x -> standardise (the training rows' mean and variance) -> w . x + b = logit of P(real)

fitted by L2-regularised logistic regression, weighted like the network's training rows
(objective: weighted mean log-loss + l2 / 2 * ||w||^2, weights of mean 1, no penalty on b),
by a damped Newton method (`fit_logistic_l2`). `LinearTrainer` has the `Trainer` methods `training.oof` calls
(`train_stages`, `logits`, `snapshot`, `restore`, `model` with a `Calibration` layer), so the
identity folds, the pooled operating point and the leave-a-source-out folds run unchanged.
Its `model` is the served head (`modeling.head.build_linear_head`): the standardisation is a
frozen batch norm (epsilon `NORMALIZE_EPSILON`), so the served logit is exactly this one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modeling.head import (
    LOGIT_LAYER,
    NORMALIZE_EPSILON,
    NORMALIZE_LAYER,
    build_linear_head,
    linear_head_weights,
    load_linear_head_weights,
)
from training.features import FeatureSet
from training.train import TrainConfig

MAX_ITERATIONS = 50
TOLERANCE = 1e-10  # on the Newton decrement (grad . step): the objective is within it of its minimum


def fit_logistic_l2(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, start: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """(coefficients, intercept, objective) of the weighted L2 logistic regression of y on x
    (already standardised). Newton's method: gradient and objective in float64, the Hessian (only
    the step's direction) in float32, which halves its cost; it stops when the Newton decrement
    is below TOLERANCE; a step that would raise the objective is halved. `start`:
    coefficients and intercept to start from (default zeros)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    w = w / w.mean()
    n, d = x.shape
    z = np.hstack([x, np.ones((n, 1))])
    z32 = z.astype(np.float32)
    beta = np.zeros(d + 1) if start is None or len(start) != d + 1 else np.array(start, np.float64)
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 0.0

    def objective_of(b: np.ndarray) -> float:
        margin = z @ b
        return float(np.mean(w * (np.logaddexp(0.0, margin) - y * margin)) + 0.5 * np.sum(penalty * b**2))

    objective = objective_of(beta)
    for _ in range(MAX_ITERATIONS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (z @ beta)))  # the logistic function, without overflow
        grad = z.T @ (w * (p - y)) / n + penalty * beta
        curvature = (w * p * (1.0 - p) / n).astype(np.float32)
        hessian = ((z32 * curvature[:, None]).T @ z32).astype(np.float64)
        hessian[np.diag_indices_from(hessian)] += penalty + 1e-10
        step = np.linalg.solve(hessian, grad)
        decrement = float(grad @ step)
        # Damped: halve the step until the objective does not rise (a far start can overshoot).
        scale = 1.0
        while True:
            trial = beta - scale * step
            value = objective_of(trial)
            if value <= objective + 1e-12 or scale < 1e-6:
                break
            scale *= 0.5
        beta, objective = trial, value
        if decrement < TOLERANCE:
            break
    return beta[:-1], float(beta[-1]), objective


class LinearTrainer:
    """Trains the linear head on `features.cut` (rows x features); see the module docstring."""

    def __init__(self, features_dim: int, config: TrainConfig, l2: float, log: Any = print) -> None:
        self.config = config
        self.l2 = float(l2)
        self.log = log
        self.model = build_linear_head(features_dim)
        self._mean = np.zeros(features_dim)
        self._var = np.ones(features_dim)
        self._w = np.zeros(features_dim)
        self._b = 0.0

    def train_stages(
        self,
        features: FeatureSet,
        y_real: np.ndarray,
        weights: np.ndarray,
        train: np.ndarray,
        *,
        val: np.ndarray | None = None,
    ) -> dict[str, list[float]]:
        x = np.asarray(features.cut[train], np.float64)
        mean, var = x.mean(axis=0), x.var(axis=0)
        # float32, as the served batch norm holds them: the logits here are the served ones
        self._mean, self._var = (v.astype(np.float32).astype(np.float64) for v in (mean, var))
        coef, intercept, objective = fit_logistic_l2(
            (x - self._mean) / self._scale, y_real[train], weights[train], self.l2
        )
        self._w = coef.astype(np.float32).astype(np.float64)
        self._b = float(np.float32(intercept))
        self._write()
        return {"stage1_loss": [objective], "stage2_loss": []}

    @property
    def _scale(self) -> np.ndarray:
        return np.sqrt(self._var + NORMALIZE_EPSILON)

    def logits(self, cut: np.ndarray) -> np.ndarray:
        x = np.asarray(cut, np.float64)
        return ((x - self._mean) / self._scale) @ self._w + self._b

    def snapshot(self) -> dict[str, np.ndarray]:
        return linear_head_weights(self.model)

    def restore(self, weights: dict[str, np.ndarray]) -> None:
        load_linear_head_weights(self.model, weights)
        normalize, logit = self.model.get_layer(NORMALIZE_LAYER), self.model.get_layer(LOGIT_LAYER)
        self._mean, self._var = (np.asarray(v, np.float64) for v in normalize.get_weights())
        kernel, bias = logit.get_weights()
        self._w, self._b = np.asarray(kernel, np.float64).reshape(-1), float(bias.reshape(()))

    def _write(self) -> None:
        normalize, logit = self.model.get_layer(NORMALIZE_LAYER), self.model.get_layer(LOGIT_LAYER)
        normalize.set_weights([self._mean.astype(np.float32), self._var.astype(np.float32)])
        logit.set_weights([self._w.astype(np.float32).reshape(-1, 1), np.array([self._b], np.float32)])
