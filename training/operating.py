"""The served operating point, from pooled out-of-fold scores: calibration, threshold, bands.

Every face gets its score from a model that never saw its identity fold; those scores, pooled,
are what the model will do on new people. From them:

1. Platt scaling of the head's logit (each class weighing the same: P(fake) for an even prior).
2. t*: the lowest threshold on that P(fake) at which real faces are called fake at most
   `max_false_accusation` of the time (real faces weighted as in training).
3. The served calibration: the same Platt fit with its offset moved so that t* maps to 0.5.
   The served P(fake) is then the posterior for a prior of fakes of 1 - t* (odds times
   (1 - t*) / t*), its decision point is 0.5 and the model's threshold is 0.5.
4. Verdict bands on the served P(fake) (rule in `choose_bands`).
5. `real_logit_std`: the spread of the served logit over real faces (the multi-face rule).

Scores here are the head's logit of P(real) (`z`, the legacy output), labels `y_real`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.metrics import fit_platt

LIKELY_FAKE_FALSE_ACCUSATION = 0.01  # likely_fake: at most 1 % of real faces
LIKELY_FAKE_FALSE_ACCUSATION_CAP = 0.025  # ... or 2.5 % if the uncertain band would be too wide
LIKELY_REAL_MISSED_FAKES = 0.05  # likely_real: at most 5 % of fakes
MAX_UNCERTAIN = 0.30


@dataclass(frozen=True)
class OperatingPoint:
    a: float  # Platt: P(real) = sigmoid(a * z + b), even prior
    b: float
    balanced_threshold: float  # t* on the even-prior P(fake)
    served_b: float  # the offset in the served network: b + logit(t*)
    prior_fake: float  # 1 - t*
    max_false_accusation: float
    false_accusation_at_threshold: float  # on the pooled scores, weighted
    fakes_caught_at_threshold: float

    def served_p_fake(self, z: np.ndarray) -> np.ndarray:
        return _sigmoid(-(self.a * np.asarray(z, np.float64) + self.served_b))

    def served_logit(self, z: np.ndarray) -> np.ndarray:
        """The logit of the served P(fake)."""
        return -(self.a * np.asarray(z, np.float64) + self.served_b)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_at_rate(p_fake_real: np.ndarray, weights: np.ndarray, rate: float) -> float:
    """The lowest threshold t with (weighted) share of `p_fake_real >= t` at most `rate`.

    Candidates are midpoints between neighbouring scores, so the threshold never sits on a
    face; kept inside (0.001, 0.999)."""
    s, w = np.asarray(p_fake_real, np.float64), np.asarray(weights, np.float64)
    order = np.argsort(-s)
    s, w = s[order], w[order] / w.sum()
    above = np.cumsum(w)  # share of real weight at or above s[i]
    # The largest i whose "at or above" share is still within the rate (ties: the whole tie).
    ok = np.flatnonzero((above <= rate + 1e-12) & np.r_[s[:-1] != s[1:], True])
    if len(ok) == 0:
        return float(min(0.999, s[0] + 1e-6)) if len(s) else 0.5
    i = ok[-1]
    below = s[i + 1] if i + 1 < len(s) else max(s[i] - 1e-3, 0.0)
    return float(np.clip((s[i] + below) / 2.0, 0.001, 0.999))


def fit_operating_point(
    z: np.ndarray, y_real: np.ndarray, weights: np.ndarray, *, max_false_accusation: float = 0.05
) -> OperatingPoint:
    z, y = np.asarray(z, np.float64), np.asarray(y_real, bool)
    a, b = fit_platt(z, y)
    p_fake = _sigmoid(-(a * z + b))
    t = threshold_at_rate(p_fake[y], weights[y], max_false_accusation)
    served_b = b + math.log(t / (1.0 - t))
    called = p_fake >= t
    return OperatingPoint(
        a=a,
        b=b,
        balanced_threshold=t,
        served_b=served_b,
        prior_fake=1.0 - t,
        max_false_accusation=max_false_accusation,
        false_accusation_at_threshold=float(np.average(called[y], weights=weights[y])),
        fakes_caught_at_threshold=float(np.average(called[~y], weights=weights[~y])),
    )


def choose_bands(p_served: np.ndarray, y_fake: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """Verdict bands on the served P(fake), from pooled out-of-fold scores. The rule:

    * `fake_from`: the lowest value at which at most 1 % of real faces reach likely_fake
      (never below 0.5);
    * `real_up_to`: the highest value at which at most 5 % of fakes fall to likely_real
      (never above 0.5);
    * if more than 30 % of faces (each class weighing half) are then uncertain, `real_up_to`
      rises towards 0.5 until 30 % are, and then `fake_from` falls, but not below the value at
      which 2.5 % of real faces would be likely_fake.
    """
    s, y, w = np.asarray(p_served, np.float64), np.asarray(y_fake, bool), np.asarray(weights, np.float64)
    balanced = np.where(y, 0.5 * w / w[y].sum(), 0.5 * w / w[~y].sum())
    fake_from = max(0.5, threshold_at_rate(s[~y], w[~y], LIKELY_FAKE_FALSE_ACCUSATION))
    floor = max(0.5, threshold_at_rate(s[~y], w[~y], LIKELY_FAKE_FALSE_ACCUSATION_CAP))
    # likely_real misses: fakes with s <= real_up_to; threshold_at_rate on 1 - s mirrors it.
    real_up_to = min(0.5, 1.0 - threshold_at_rate(1.0 - s[y], w[y], LIKELY_REAL_MISSED_FAKES))

    def uncertain(low: float, high: float) -> float:
        return float(balanced[(s > low) & (s < high)].sum())

    if uncertain(real_up_to, fake_from) > MAX_UNCERTAIN:
        real_up_to = _widen(s, balanced, real_up_to, 0.5, lambda v: uncertain(v, fake_from))
    if uncertain(real_up_to, fake_from) > MAX_UNCERTAIN:
        fake_from = _widen(s, balanced, fake_from, floor, lambda v: uncertain(real_up_to, v))
    return {
        "real_up_to": float(real_up_to),
        "fake_from": float(fake_from),
        "rule": (
            "fake_from: lowest served P(fake) with <= 1% of real faces at or above it (>= 0.5); "
            "real_up_to: highest with <= 5% of fakes at or below it (<= 0.5); if > 30% of faces "
            "(classes weighted equally) fall between, real_up_to rises to 0.5, then fake_from falls "
            "to no less than the 2.5%-of-real-faces point, until 30% do; on pooled out-of-fold scores"
        ),
        **band_shares(s, y, w, real_up_to, fake_from),
    }


def band_shares(
    p_served: np.ndarray, y_fake: np.ndarray, weights: np.ndarray, real_up_to: float, fake_from: float
) -> dict[str, float]:
    """Shares of real faces and of fakes in each verdict band (weighted)."""
    s, y, w = np.asarray(p_served, np.float64), np.asarray(y_fake, bool), np.asarray(weights, np.float64)
    likely_fake, likely_real = s >= fake_from, s <= real_up_to
    middle = ~likely_fake & ~likely_real
    out = {}
    for name, mask in (("real", ~y), ("fake", y)):
        if mask.any():
            out[f"{name}_likely_fake"] = float(np.average(likely_fake[mask], weights=w[mask]))
            out[f"{name}_uncertain"] = float(np.average(middle[mask], weights=w[mask]))
            out[f"{name}_likely_real"] = float(np.average(likely_real[mask], weights=w[mask]))
    if y.any() and (~y).any():
        out["uncertain_balanced"] = 0.5 * (out["real_uncertain"] + out["fake_uncertain"])
    return out


def real_logit_std(served_logit_real: np.ndarray, weights: np.ndarray) -> float:
    z, w = np.asarray(served_logit_real, np.float64), np.asarray(weights, np.float64)
    mean = np.average(z, weights=w)
    return float(math.sqrt(np.average((z - mean) ** 2, weights=w)))


def _widen(s: np.ndarray, balanced: np.ndarray, start: float, limit: float, share: Any) -> float:
    """Move a band edge from `start` towards `limit` until `share(edge)` <= MAX_UNCERTAIN."""
    lo, hi = sorted((start, limit))
    candidates = np.unique(np.r_[s[(s >= lo) & (s <= hi)], limit])
    candidates = candidates if limit > start else candidates[::-1]
    for value in candidates:
        if share(float(value)) <= MAX_UNCERTAIN:
            return float(value)
    return float(limit)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
