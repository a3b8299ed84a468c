"""The two training stages, calibration, the threshold, and held-out evaluation.

Stage 1 trains the head on fixed embeddings (the backbone frozen). Stage 2 fine-tunes the
last Inception-ResNet block and the bottleneck together with the head, at a low learning
rate. Both run on cut-layer activations cached by `training.features`. Then the fine-tuned
weights are rounded to the precision they are stored in, Platt scaling is fitted on the
validation split and written into the network's `Calibration` layer, and the threshold with
the best balanced accuracy on validation becomes the model's threshold.

Evaluation: the random split's test groups, and leave-one-source-out (each source in turn
left out of training and validation entirely, with the pseudo-fakes made from it, then its
unseen images judged against the other class's test groups).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeling.head import (
    FROZEN_HEAD_LAYERS,
    freeze_for_fine_tuning,
    load_weights_dict,
    round_to_stored_precision,
    set_calibration,
    set_normalization,
    sub_models,
    trained_layers,
    trained_weights,
)
from training.dataset import Crop
from training.features import FeatureSet
from training.metrics import choose_threshold, fit_platt, roc_auc, summarise

PREDICT_BATCH = 256


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1337
    copies_target: int = 300  # augmented views per source (see features.copies_per_crop)
    max_copies: int = 12
    stage1_epochs: int = 15
    stage1_lr: float = 1e-3
    stage2_epochs: int = 4
    stage2_lr: float = 3e-5
    batch_size: int = 32
    loso_min_crops: int = 5  # sources with fewer crops are not held out on their own
    # "sqrt": within a class a source weighs sqrt(its crops) (v1); "mirror": the same for real
    # sources and generators, and each pseudo-fake kind spreads its weight over the real sources
    # as the real class does, so pseudo-fakes have the real class's mix of sources (v2)
    weighting: str = "sqrt"
    inner_folds: int = 3  # out-of-fold training inside each leave-a-source-out fold (v2)
    max_false_accusation: float = 0.05  # t*: real faces called fake at most this often (v2)


@dataclass
class FitResult:
    threshold: float
    calibration: tuple[float, float]
    history: dict[str, list[float]]
    n_train: int
    n_val: int
    seconds: float


@dataclass
class Evaluation:
    """Scores of one held-out set and the numbers that describe them."""

    name: str
    y_fake: np.ndarray
    p_fake: np.ndarray
    sources: np.ndarray
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)


def crop_weights(crops: list[Crop], mode: str = "sqrt") -> np.ndarray:
    """One weight per crop: each class weighs half; within a class a source weighs sqrt(its
    crops), so neither one big source nor one single photo dominates. `mode="mirror"`: a
    pseudo-fake kind's weight goes to its crops in proportion to their real parent's weight."""
    labels = np.array([c.label for c in crops])
    sources = np.array([c.source for c in crops])
    per_crop = np.zeros(len(crops))
    for label in np.unique(labels):
        in_class = labels == label
        class_sources = np.unique(sources[in_class])
        source_weight = {s: np.sqrt(np.sum(in_class & (sources == s))) for s in class_sources}
        total = sum(source_weight.values())
        for s in class_sources:
            members = in_class & (sources == s)
            per_crop[members] = 0.5 * source_weight[s] / total / members.sum()
    if mode == "mirror":
        real_weight = {c.path: w for c, w in zip(crops, per_crop, strict=True) if c.label == "real"}
        for s in np.unique(sources[labels == "fake"]):
            members = np.flatnonzero((labels == "fake") & (sources == s))
            parents = np.array([real_weight.get(crops[i].origin, 0.0) for i in members])
            if crops[members[0]].parent_source and parents.sum() > 0:
                per_crop[members] = per_crop[members].sum() * parents / parents.sum()
    elif mode != "sqrt":
        raise ValueError(f"unknown weighting {mode!r}")
    return per_crop


def sample_weights(crops: list[Crop], features: FeatureSet, mode: str = "sqrt") -> np.ndarray:
    """Per training row: the crop's weight (`crop_weights`), shared by the crop's copies."""
    per_crop = crop_weights(crops, mode)
    copies = np.bincount(features.crop_index, minlength=len(crops))
    weights = per_crop[features.crop_index] / copies[features.crop_index]
    return weights * len(weights) / weights.sum()  # mean 1: keeps the loss scale familiar


class Trainer:
    """Trains `model` (built by `modeling.head.add_head`) on cached cut-layer activations."""

    def __init__(self, model: Any, config: TrainConfig, log: Any = print) -> None:
        self.model = model
        self.config = config
        self.log = log
        self.parts = sub_models(model)
        self._initial = {layer.name: layer.get_weights() for layer in trained_layers(model)}

    def reset(self) -> None:
        """Back to the pretrained backbone and a freshly initialised head."""
        import keras

        keras.utils.set_random_seed(self.config.seed)
        for layer in trained_layers(self.model):
            layer.set_weights(self._initial[layer.name])

    def fit(
        self,
        features: FeatureSet,
        y_real: np.ndarray,
        weights: np.ndarray,
        train: np.ndarray,
        val: np.ndarray,
    ) -> FitResult:
        """Both stages on rows `train`; calibration and threshold on rows `val`."""
        started = time.perf_counter()
        history = self.train_stages(features, y_real, weights, train, val=val)
        z_val = self.logits(features.cut[val])
        a, b = fit_platt(z_val, y_real[val])
        set_calibration(self.model, a, b)
        threshold = choose_threshold(1 - y_real[val], 1.0 - _sigmoid(a * z_val + b))
        history["val_auc_stage2"] = [roc_auc(1 - y_real[val], -z_val)]
        seconds = time.perf_counter() - started
        return FitResult(threshold, (a, b), history, int(len(train)), int(len(val)), seconds)

    def train_stages(
        self,
        features: FeatureSet,
        y_real: np.ndarray,
        weights: np.ndarray,
        train: np.ndarray,
        *,
        val: np.ndarray | None = None,
    ) -> dict[str, list[float]]:
        """From the pretrained backbone and a fresh head: both stages on rows `train`, then the
        weights rounded to their stored precision. Calibration is left to the caller; `val`:
        rows whose AUC after stage 1 goes into the history."""
        import keras

        cfg = self.config
        self.reset()
        x, y, w = features.cut[train], y_real[train].astype(np.float32), weights[train].astype(np.float32)
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        history: dict[str, list[float]] = {}

        # Stage 1: the head alone, on features of the frozen backbone.
        head_input = self._predict(self.parts["head_input"], x)
        set_normalization(self.model, head_input)
        head = self.parts["head"]
        for layer in head.layers:
            layer.trainable = layer.name not in FROZEN_HEAD_LAYERS
        head.compile(optimizer=keras.optimizers.Adam(cfg.stage1_lr), loss=loss)
        fitted = head.fit(
            head_input,
            y,
            sample_weight=w,
            epochs=cfg.stage1_epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            verbose=0,
        )
        history["stage1_loss"] = [float(v) for v in fitted.history["loss"]]
        if val is not None:
            history["val_auc_stage1"] = [roc_auc(1 - y_real[val], -self.logits(features.cut[val]))]

        # Stage 2: the top of the backbone and the head together, gently.
        freeze_for_fine_tuning(self.model)
        top = self.parts["top"]
        top.compile(optimizer=keras.optimizers.Adam(cfg.stage2_lr), loss=loss)
        fitted = top.fit(
            x,
            y,
            sample_weight=w,
            epochs=cfg.stage2_epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            verbose=0,
        )
        history["stage2_loss"] = [float(v) for v in fitted.history["loss"]]
        round_to_stored_precision(self.model)
        return history

    def logits(self, cut: np.ndarray) -> np.ndarray:
        return self._predict(self.parts["top"], cut).reshape(-1)

    def p_fake(self, cut: np.ndarray, calibration: tuple[float, float]) -> np.ndarray:
        a, b = calibration
        return 1.0 - _sigmoid(a * self.logits(cut) + b)

    def snapshot(self) -> dict[str, np.ndarray]:
        return trained_weights(self.model)

    def restore(self, weights: dict[str, np.ndarray]) -> None:
        load_weights_dict(self.model, weights)

    @staticmethod
    def _predict(model: Any, x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(model.predict_on_batch(x[i : i + PREDICT_BATCH]))
                for i in range(0, len(x), PREDICT_BATCH)
            ]
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


@dataclass
class Experiment:
    main: FitResult
    test: Evaluation
    loso: list[tuple[FitResult, Evaluation]]
    weights: dict[str, np.ndarray]


def run_experiment(
    trainer: Trainer, crops: list[Crop], features: FeatureSet, *, loso: bool, log: Any = print
) -> Experiment:
    """The shipped fit (random split) first, then the leave-one-source-out folds."""
    fields = _row_fields(crops, features)
    y_real = fields["y_real"]
    weights = sample_weights(crops, features)
    clean = fields["copy"] == 0
    train = np.flatnonzero(fields["split"] == "train")
    val = np.flatnonzero((fields["split"] == "val") & clean)
    test = np.flatnonzero((fields["split"] == "test") & clean)

    main = trainer.fit(features, y_real, weights, train, val)
    log(
        f"main fit: {main.n_train} train rows, {main.n_val} val, threshold {main.threshold:.3f}, "
        f"calibration a={main.calibration[0]:.3f} b={main.calibration[1]:.3f}, {main.seconds:.0f} s"
    )
    test_eval = _evaluate(trainer, features, fields, test, main, "random split: test groups")
    log(f"test AUC {test_eval.metrics['roc_auc']:.3f}, accuracy {test_eval.metrics['accuracy']:.3f}")
    shipped = trainer.snapshot()

    folds = []
    if loso:
        counts = {s: int(np.sum(fields["crop_source"] == s)) for s in np.unique(fields["crop_source"])}
        for source in sorted(s for s, n in counts.items() if n >= trainer.config.loso_min_crops):
            held = (fields["source"] == source) | (fields["parent_source"] == source)
            label = "real" if y_real[np.flatnonzero(fields["source"] == source)[0]] else "fake"
            f_train = np.flatnonzero((fields["split"] == "train") & ~held)
            f_val = np.flatnonzero((fields["split"] == "val") & clean & ~held)
            other = (fields["split"] == "test") & clean & ~held & (fields["label"] != label)
            # The left-out source's images whose group never reached training: all of them,
            # except pseudo-fakes whose real parent face was a training face.
            unseen = ~np.isin(fields["key"], np.unique(fields["key"][f_train]))
            f_test = np.flatnonzero(((fields["source"] == source) & clean & unseen) | other)
            fit = trainer.fit(features, y_real, weights, f_train, f_val)
            evaluation = _evaluate(trainer, features, fields, f_test, fit, f"leave out {source} ({label})")
            log(
                f"leave out {source}: AUC {evaluation.metrics['roc_auc']:.3f}, accuracy "
                f"{evaluation.metrics['accuracy']:.3f} at {fit.threshold:.3f} ({fit.seconds:.0f} s)"
            )
            folds.append((fit, evaluation))
        trainer.restore(shipped)  # the shipped model is the main fit, not the last fold
    return Experiment(main, test_eval, folds, shipped)


def _row_fields(crops: list[Crop], features: FeatureSet) -> dict[str, np.ndarray]:
    index = features.crop_index
    return {
        "y_real": np.array([c.y_real for c in crops])[index],
        "split": np.array([c.split for c in crops])[index],
        "source": np.array([c.source for c in crops])[index],
        "parent_source": np.array([c.parent_source for c in crops])[index],
        "label": np.array([c.label for c in crops])[index],
        "key": np.array([c.key for c in crops])[index],
        "copy": features.copy,
        "crop_source": np.array([c.source for c in crops]),
    }


def _evaluate(
    trainer: Trainer,
    features: FeatureSet,
    fields: dict[str, np.ndarray],
    rows: np.ndarray,
    fit: FitResult,
    name: str,
) -> Evaluation:
    y_fake = 1 - fields["y_real"][rows]
    p_fake = trainer.p_fake(features.cut[rows], fit.calibration)
    evaluation = Evaluation(name, y_fake, p_fake, fields["source"][rows], fit.threshold)
    evaluation.metrics = summarise(y_fake, p_fake, fit.threshold, seed=trainer.config.seed)
    return evaluation
