"""Data set v2's recipe, frozen before any tuning: how its photos become crops and pseudo-fakes,
and how a model is trained and weighted on them. The FaceNet model's build
(`training.default_recipe`) and the comparison protocol (`training.protocol`) both read it."""

from __future__ import annotations

from training.augment import AugmentConfig
from training.prepare import PrepareConfig
from training.train import TrainConfig

# The source list is frozen here, before any tuning (training.sources.DATASETS["v2"]); the
# leave-a-source-out folds report on it and tune nothing.
V2_PREPARE = PrepareConfig(
    faces="all",
    sbi_per_real=1,
    xray_per_real=1,
    swap_per_real=2,
    morph_per_real=1,
    partial_per_real=1,
    keep_grey=True,
    val=0.0,
    test=0.0,
    folds=5,
)
V2_TRAIN = TrainConfig(weighting="mirror", loso_min_crops=3, inner_folds=3)
# The same augmentation for both classes, with sensor noise added.
V2_AUGMENT = AugmentConfig(noise=0.25)
