"""The frozen comparison protocol of backbones and heads (v3): data, folds, degradations,
candidates, metrics and the selection rule, as constants. `training/PROTOCOL.md` says the
same in words; both were committed before the first candidate result. Changing anything
here after results exist makes a new protocol, not a tuned one.

`python -m training compare` runs every candidate under it (`training.compare`);
`python -m training build-default` then builds the chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from training.augment import AugmentConfig
from training.prepare import PrepareConfig
from training.recipes import V2_PREPARE, V2_TRAIN
from training.train import TrainConfig

PROTOCOL_VERSION = "v3"

# Data: data set v2 (training.sources.DATASETS["v2"]), cut by BlazeFace (the serving detector)
# with crop_face at each input size from the source photos; the same pseudo-fakes per real face.
DATASET = "v2"
DETECTOR = "blazeface"
SIZES = (224, 160, 112)  # input sizes tried for CLIP (224 is what it was trained on)
FACENET_SIZE = 160


def prepare_config(size: int) -> PrepareConfig:
    return replace(V2_PREPARE, detector=DETECTOR, crop_size=size)


# Folds and weighting: 5 identity folds (a person, photo or generated identity never in two
# folds; a manipulation in its real face's fold); leave-a-source-out with 3 inner identity
# folds; classes weigh half each, sources within a class as today ("mirror").
TRAIN = V2_TRAIN  # weighting "mirror", loso_min_crops 3, inner_folds 3, max_false_accusation 0.05

# Degradations, one distribution for both classes, on every training row (crops plus
# augmented copies; training.features.copies_per_crop): flip, shift/zoom, colour jitter
# (brightness, contrast, saturation), greyscale 15 %, down-then-up scaling (to 24 px .. the
# crop side), blur, sensor noise, JPEG quality 50-95.
AUGMENT = AugmentConfig(noise=0.25, jpeg_quality=(50, 95))

# CLIP features cached per row: the class token after each of the 12 blocks and the 512-d
# embedding (post-LayerNorm, projected).
CLIP_BLOCKS = (3, 7, 11)  # 0-based: the class tokens after blocks 4, 8 and 12 (the "blocks" probe)
L2_GRID = (0.1, 0.01, 0.001)  # the linear probes' L2 penalty (on standardised features; see training.linear)


@dataclass(frozen=True)
class Candidate:
    """One backbone + head + input size + regularisation to compare."""

    family: str  # "facenet-head", "clip-embedding", "clip-blocks", "clip+facenet"
    size: int
    l2: float | None = None  # the linear probe's penalty; None for the FaceNet head

    @property
    def name(self) -> str:
        return self.family if self.l2 is None else f"{self.family}-{self.size}-l2={self.l2:g}"

    @property
    def linear(self) -> bool:
        return self.l2 is not None

    @property
    def uses_clip(self) -> bool:
        return self.family.startswith("clip")

    @property
    def uses_facenet(self) -> bool:
        return "facenet" in self.family

    @property
    def head_parameters(self) -> int:
        """Trained parameters of the head (for the simplicity tie-break)."""
        dims = {"clip-embedding": 512, "clip-blocks": 768 * len(CLIP_BLOCKS), "clip+facenet": 512 + 2304}
        return dims[self.family] + 1 if self.linear else -1


def candidates() -> list[Candidate]:
    out = [Candidate("facenet-head", FACENET_SIZE)]
    for family in ("clip-embedding", "clip-blocks"):
        out += [Candidate(family, size, l2) for size in SIZES for l2 in L2_GRID]
    out += [Candidate("clip+facenet", FACENET_SIZE, l2) for l2 in L2_GRID]
    return out


# Selection: among candidates whose pooled out-of-fold false accusations (real faces called
# fake at the served threshold) are <= MAX_FALSE_ACCUSATION and whose served cost per face
# (in-process, batch 32, at the precision the import picks) is <= MAX_COST_RATIO x today's
# FaceNet fp32 measured in the same run: the highest pooled out-of-fold ROC AUC (point
# estimate). Candidates within TIE_MARGIN of that AUC count as close: among them the most
# regularised (largest L2), then the fewest head parameters, then the cheapest is chosen.
MAX_FALSE_ACCUSATION = 0.05
MAX_COST_RATIO = 3.0
TIE_MARGIN = 0.01
COST_BATCH = 32
MIN_LOSO_GROUPS = 20  # leave-a-source-out targets apply to sources with at least this many groups

# The targets (issue 20), reported beside every figure, never tuned for.
TARGETS = {
    "oof_auc": 0.85,
    "oof_false_accusation": 0.05,
    "oof_fakes_caught": 0.50,
    "oof_uncertain": 0.30,
    "loso_auc": 0.80,
}


def train_config() -> TrainConfig:
    return TRAIN
