"""The verdict rules (modeling/spec.py, serving/verdicts.py) on their own: the decision point,
the bands, a group photo's raised bar, and the seven variants' vote."""

from __future__ import annotations

import math
import random

import pytest

from modeling.spec import GroupRule, ModelSpec, VerdictBands
from serving.verdicts import judge_faces, vote

LEGACY = ModelSpec(labels=("fake", "real"))  # output P(real), threshold 0.5


def raw_for(spec: ModelSpec, p_fake: float) -> float:
    """The raw output (P(real) for the legacy layout) of a model P(fake)."""
    return 1.0 - p_fake if spec.labels[1] == "real" else p_fake


def test_any_threshold_reads_as_0_5() -> None:
    """A model whose own threshold is 0.3: its served P(fake) puts that decision at 0.5, so a
    "real" never reads under 50 % and the legacy fields agree with each other."""
    spec = ModelSpec(labels=("real", "fake"), threshold=0.3)
    at = spec.judge(0.3)
    assert at.prediction == "fake" and at.fake_probability == pytest.approx(0.5)
    for p in (0.01, 0.2, 0.29, 0.31, 0.6, 0.99):
        verdict = spec.judge(p)
        assert verdict.prediction == ("fake" if p >= 0.3 else "real")
        assert verdict.confidence >= 0.5
        assert (verdict.fake_probability >= 0.5) == (verdict.prediction == "fake")
    assert spec.judge(0.9).raw == 0.9  # the raw output is kept as it came


def test_bands() -> None:
    spec = ModelSpec(verdict_bands=VerdictBands(real_up_to=0.2, fake_from=0.8))
    assert [spec.judge(raw_for(spec, p)).verdict for p in (0.1, 0.2, 0.5, 0.79, 0.8, 0.95)] == [
        "likely_real", "likely_real", "uncertain", "uncertain", "likely_fake", "likely_fake",
    ]  # fmt: skip


def test_a_real_group_photo_is_not_called_fake_for_one_face_in_twenty() -> None:
    """Real faces' served logits ~ N(mu, sd) with 5 % above 0: one face alone is called fake 5 %
    of the time; with the group rule, a photo of 20 such faces is too (Monte Carlo), where the
    plain most-fake-face rule would call it fake about 64 % of the time."""
    sd = 1.3
    mu = -1.6448536 * sd  # P(logit > 0) = 5 %
    spec = ModelSpec(labels=("real", "fake"), group=GroupRule(alpha=0.05, real_logit_std=sd))
    rng = random.Random(7)

    def p_fake(logit: float) -> float:
        return 1.0 / (1.0 + math.exp(-logit))

    trials, called, plain = 4000, 0, 0
    for _ in range(trials):
        raws = [p_fake(rng.gauss(mu, sd)) for _ in range(20)]
        judged = judge_faces(spec, raws)
        called += judged.image.prediction == "fake"
        plain += judged.faces[judged.deciding].prediction == "fake"
    assert abs(called / trials - 0.05) < 0.015, called / trials
    assert plain / trials > 0.5
    assert spec.group_shift(1) == 0.0 and spec.group_shift(20) > spec.group_shift(5) > 0


def test_the_image_says_how_many_faces_looked_fake() -> None:
    judged = judge_faces(LEGACY, [raw_for(LEGACY, p) for p in (0.9, 0.2, 0.7)])
    assert judged.deciding == 0 and judged.fake_faces == 2 and len(judged.faces) == 3
    assert judged.image.fake_probability == pytest.approx(judged.faces[0].fake_probability)  # no group rule


def test_variants_vote_and_split_into_uncertain() -> None:
    clear = vote(LEGACY, [raw_for(LEGACY, p) for p in (0.9, 0.95, 0.85, 0.9, 0.88, 0.92, 0.91)])
    assert (clear.consensus, clear.fakes, clear.verdict) == ("fake", 7, "likely_fake")
    assert clear.average_confidence == pytest.approx(clear.fake_probability)
    split = vote(LEGACY, [raw_for(LEGACY, p) for p in (0.9, 0.95, 0.85, 0.9, 0.1, 0.05, 0.1)])
    assert (split.consensus, split.fakes, split.verdict) == ("fake", 4, "uncertain")  # 4 of 7: a split
    assert split.spread > clear.spread
    real = vote(LEGACY, [raw_for(LEGACY, p) for p in (0.1,) * 7])
    assert (real.consensus, real.average_confidence) == ("real", pytest.approx(0.9))
