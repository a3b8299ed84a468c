"""How an image is judged from its faces, and a face from its seven test-time variants. Pure
functions over the model's raw outputs and its metadata (`ModelSpec`: decision point, verdict
bands, the group rule)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean, pstdev

from modeling.spec import Label, ModelSpec, Verdict, VerdictName

# Of seven variants, fewer than this on the consensus' side is a split vote: `uncertain`,
# whatever the mean says (the old majority, 4 of 7, still sets the legacy consensus).
AGREEMENT = 5


@dataclass(frozen=True)
class ImageJudgement:
    """An image by its faces: each face's own verdict, and the image's: its most-fake face
    against the bar for this many faces (ModelSpec.group_shift)."""

    image: Verdict
    faces: list[Verdict]
    deciding: int  # index of the most-fake face
    fake_faces: int  # faces whose own verdict is fake


def judge_faces(spec: ModelSpec, raw: Sequence[float]) -> ImageJudgement:
    logits = [spec.logit(r) for r in raw]
    faces = [spec.judge_logit(logit, float(r)) for logit, r in zip(logits, raw, strict=True)]
    deciding = max(range(len(logits)), key=logits.__getitem__)
    image = spec.judge_logit(logits[deciding] - spec.group_shift(len(logits)), float(raw[deciding]))
    return ImageJudgement(image, faces, deciding, sum(face.prediction == "fake" for face in faces))


@dataclass(frozen=True)
class VariantVote:
    """One face's seven test-time variants and what they say together."""

    variants: list[Verdict]  # original first, in preprocessing.augment.VARIANTS order
    consensus: Label  # the majority (4 of 7), as the old service voted
    average_confidence: float  # mean probability of the consensus label over the variants
    fake_probability: float  # mean served P(fake)
    fakes: int  # variants judged fake
    spread: float  # standard deviation of the variants' P(fake)
    verdict: VerdictName  # from the mean; `uncertain` when the variants split


def vote(spec: ModelSpec, raw: Sequence[float], shift: float = 0.0) -> VariantVote:
    """The vote of one face's variants; `shift` raises the bar (a face of a group photo)."""
    variants = [spec.judge_logit(spec.logit(r) - shift, float(r)) for r in raw]
    fakes = sum(v.prediction == "fake" for v in variants)
    consensus: Label = "fake" if fakes * 2 > len(variants) else "real"
    p_fake = fmean(v.fake_probability for v in variants)
    agreeing = fakes if consensus == "fake" else len(variants) - fakes
    verdict = spec.verdict_of(p_fake) if agreeing >= AGREEMENT else "uncertain"
    return VariantVote(
        variants=variants,
        consensus=consensus,
        average_confidence=p_fake if consensus == "fake" else 1.0 - p_fake,
        fake_probability=p_fake,
        fakes=fakes,
        spread=pstdev(v.fake_probability for v in variants),
        verdict=verdict,
    )
