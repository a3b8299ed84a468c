"""The training pipeline: one crop function with serving, splits, metrics, pseudo-fakes, and an
end-to-end run (prepare -> features -> both stages -> calibration -> report -> import) that
must learn a small separable task. A tiny stand-in backbone with FaceNet's layer names keeps
it to seconds; the real backbone is exercised by tests/test_default_model.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import preprocessing.faces as faces  # noqa: E402 - the log level must be set before TF loads
from training import evaluate as evaluate_module  # noqa: E402
from training import prepare as prepare_module  # noqa: E402
from training.augment import augment  # noqa: E402
from training.blending import face_mask, self_blend, xray_blend  # noqa: E402
from training.dataset import Crop, assign_splits, read_manifest, scan_folder  # noqa: E402
from training.metrics import (  # noqa: E402
    calibration_table,
    choose_threshold,
    fit_platt,
    roc_auc,
)
from training.prepare import PrepareConfig, prepare, whole_image_face  # noqa: E402
from training.train import TrainConfig  # noqa: E402

# ---------------------------------------------------------------- one crop function


def test_training_crops_with_the_service_crop_function() -> None:
    from modeling.spec import ModelSpec

    assert prepare_module.crop_face is faces.crop_face
    # training calls it with its defaults; serving with the model's settings: the same values
    spec = ModelSpec()
    assert spec.face_margin == faces.DEFAULT_MARGIN and spec.face_align is False
    assert tuple(spec.input_size) == faces.CROP_SIZE[::-1]


class _StubDetector:
    """Returns fixed faces, so the test needs no MTCNN."""

    def __init__(self, found: list[faces.Face]) -> None:
        self.found = found

    def detect(self, image: Image.Image) -> list[faces.Face]:
        return list(self.found)


def _noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_prepared_crops_are_pixel_identical_to_crop_face(tmp_path: Path) -> None:
    photo = _noise_image((400, 300), 1)
    small = _noise_image((60, 70), 2)  # below min_crop_side: a ready crop
    (tmp_path / "raw/real/cam/g1").mkdir(parents=True)
    (tmp_path / "raw/fake/gen/g2").mkdir(parents=True)
    photo.save(tmp_path / "raw/real/cam/g1/photo.png")
    small.save(tmp_path / "raw/fake/gen/g2/small.png")
    face = faces.Face(box=(120, 80, 90, 110), score=0.99, landmarks={})
    config = PrepareConfig(sbi_per_real=0, xray_per_real=0, val=0, test=0)
    crops = prepare(tmp_path / "raw", tmp_path / "out", config, detector=_StubDetector([face]))

    by_label = {crop.label: crop for crop in crops}
    saved = np.asarray(Image.open(tmp_path / "out" / by_label["real"].path))
    assert np.array_equal(saved, np.asarray(faces.crop_face(photo, face)))
    assert by_label["real"].box == face.box
    saved = np.asarray(Image.open(tmp_path / "out" / by_label["fake"].path))
    assert np.array_equal(saved, np.asarray(faces.crop_face(small, whole_image_face(small), margin=0.0)))
    assert saved.shape == (*faces.CROP_SIZE[::-1], 3)


def test_images_without_a_face_are_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "raw/real/a/b").mkdir(parents=True)
    _noise_image((300, 300), 3).save(tmp_path / "raw/real/a/b/x.png")
    config = PrepareConfig(sbi_per_real=0, xray_per_real=0, val=0, test=0)
    assert prepare(tmp_path / "raw", tmp_path / "out", config, detector=_StubDetector([])) == []
    report = json.loads((tmp_path / "out/prepare.json").read_text())
    assert report["skipped"] == [{"path": "real/a/b/x.png", "reason": "no face found"}]


# ---------------------------------------------------------------- layout and splits


def test_folder_layout_gives_source_and_group(tmp_path: Path) -> None:
    for path in ("real/ffpp/000/f1.png", "real/ffpp/000/deep/f2.png", "fake/df/a.png", "fake/b.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        _noise_image((8, 8), 0).save(tmp_path / path)
    found = {str(i.path.relative_to(tmp_path)): (i.label, i.source, i.group) for i in scan_folder(tmp_path)}
    assert found == {
        "real/ffpp/000/f1.png": ("real", "ffpp", "000"),
        "real/ffpp/000/deep/f2.png": ("real", "ffpp", "000"),
        "fake/df/a.png": ("fake", "df", "a"),
        "fake/b.png": ("fake", "fake", "b"),
    }


def test_splits_are_by_group_per_source_and_stable() -> None:
    keys = [f"src{s}/g{g}" for s in range(2) for g in range(10)] + ["lonely/only"]
    splits = assign_splits(keys, val=0.2, test=0.2, seed=7)
    assert splits == assign_splits(list(reversed(keys)), val=0.2, test=0.2, seed=7)
    for s in range(2):
        counts = [
            sum(splits[f"src{s}/g{g}"] == split for g in range(10)) for split in ("train", "val", "test")
        ]
        assert counts == [6, 2, 2]
    assert splits["lonely/only"] == "train"
    # a pseudo-fake keeps the key, so the split, of the real face it was made from
    real = Crop("a.png", "real", "cam", "g1")
    fake = Crop("b.png", "fake", "sbi", "g1", parent_source="cam")
    assert real.key == fake.key


# ---------------------------------------------------------------- metrics


def test_auc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60), 1)  # many ties
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))


def test_platt_scaling_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z + 0.0)))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(0.0, abs=0.05)
    # perfectly separated logits stay finite (Platt's smoothed targets)
    a, b = fit_platt(np.r_[np.full(5, 4.0), np.full(5, -4.0)], np.r_[np.ones(5), np.zeros(5)])
    assert np.isfinite(a) and np.isfinite(b) and 0 < a < 5


def test_threshold_and_calibration_table() -> None:
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.35, 0.3, 0.2, 0.1])
    assert 0.3 < choose_threshold(y, s) < 0.35
    table = calibration_table(y, s)
    assert sum(row["count"] for row in table) == 6 and table[9]["fraction_fake"] == 1.0


# ---------------------------------------------------------------- augmentations and pseudo-fakes


def test_augment_and_blends_are_deterministic_and_keep_shape() -> None:
    face = np.asarray(_noise_image((160, 160), 4))
    donor = np.asarray(_noise_image((160, 160), 5))
    for make in (
        lambda rng: augment(face, rng),
        lambda rng: self_blend(face, rng),
        lambda rng: xray_blend(face, donor, rng),
    ):
        first, again = make(np.random.default_rng(9)), make(np.random.default_rng(9))
        assert first.shape == face.shape and first.dtype == np.uint8
        assert np.array_equal(first, again)


def test_blending_changes_the_face_not_the_border() -> None:
    face = np.asarray(_noise_image((160, 160), 6))
    donor = np.zeros_like(face)
    mask = face_mask((160, 160), np.random.default_rng(3))  # the mask xray_blend draws first
    assert mask[80, 80] > 0.2 and mask[:4].max() == 0.0 and mask[:, :4].max() == 0.0
    fake = xray_blend(face, donor, np.random.default_rng(3))
    assert np.array_equal(fake[mask == 0], face[mask == 0])
    assert not np.array_equal(fake[60:100, 60:100], face[60:100, 60:100])


def test_pseudo_fakes_follow_their_real_face(tmp_path: Path) -> None:
    write_stripes(tmp_path / "raw", seed=2, groups=5)
    config = PrepareConfig(sbi_per_real=2, xray_per_real=1, seed=4)
    crops = prepare(tmp_path / "raw", tmp_path / "prepared", config)
    reals = {c.path: c for c in crops if c.label == "real"}
    pseudo = [c for c in crops if c.source in ("sbi", "xray")]
    assert len(pseudo) == 3 * len(reals)
    for crop in pseudo:
        parent = reals[crop.origin]
        assert crop.label == "fake" and crop.parent_source == parent.source
        assert (crop.split, crop.key) == (parent.split, parent.key)
        assert (tmp_path / "prepared" / crop.path).is_file()


# ---------------------------------------------------------------- end to end


def stand_in_backbone() -> Any:
    """A tiny network with the FaceNet layer names training relies on (cut, fine-tuned, head)."""
    import keras

    from modeling.custom_objects import l2_normalize

    inputs = keras.Input(shape=(160, 160, 3), name="image")
    x = keras.layers.AveragePooling2D(8, name="Shrink")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = keras.layers.Activation("relu", name="Block8_5_Activation")(x)
    x = keras.layers.Conv2D(12, 1, name="Block8_6_Conv2d_1x1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = keras.layers.Dropout(0.2, name="Dropout")(x)
    x = keras.layers.Dense(8, use_bias=False, name="Bottleneck")(x)
    x = keras.layers.BatchNormalization(scale=False, name="Bottleneck_BatchNorm")(x)
    outputs = keras.layers.Lambda(l2_normalize, name="Embeddings")(x)
    return keras.Model(inputs, outputs, name="stand_in")


def write_stripes(root: Path, seed: int, per_group: int = 3, groups: int = 6) -> None:
    """Real = horizontal stripes, fake = vertical; two sources each, colours and phases random."""
    rng = np.random.default_rng(seed)
    ramp = np.arange(96, dtype=np.float32)
    for label, sources, vertical in (("real", ("alpha", "beta"), False), ("fake", ("gamma", "delta"), True)):
        for source in sources:
            for group in range(groups):
                folder = root / label / source / f"g{group}"
                folder.mkdir(parents=True)
                for index in range(per_group):
                    wave = 0.5 + 0.5 * np.sin(2 * np.pi * ramp / rng.uniform(24, 40) + rng.uniform(0, 6.3))
                    plane = np.tile(
                        wave[None, :] if vertical else wave[:, None], (96, 1) if vertical else (1, 96)
                    )
                    colour = rng.uniform(0.3, 1.0, 3)
                    pixels = (plane[..., None] * colour * 255).astype(np.uint8)
                    Image.fromarray(pixels, "RGB").save(folder / f"{index}.png")


def test_pipeline_learns_a_separable_task_end_to_end(tmp_path: Path) -> None:
    from modeling.loading import load_classifier
    from training.cli import main as cli_main
    from training.run import train_run

    write_stripes(tmp_path / "raw", seed=0, groups=10)
    crops = prepare(
        tmp_path / "raw", tmp_path / "prepared", PrepareConfig(sbi_per_real=0, xray_per_real=0, seed=3)
    )
    assert {c.split for c in crops} == {"train", "val", "test"}
    assert read_manifest(tmp_path / "prepared") == crops

    config = TrainConfig(
        seed=5,
        copies_target=30,
        max_copies=3,
        stage1_epochs=30,
        stage1_lr=3e-3,
        stage2_epochs=2,
        stage2_lr=1e-3,
        batch_size=32,
    )
    run = tmp_path / "run"
    recipe = train_run(
        tmp_path / "prepared",
        run,
        config,
        backbone=stand_in_backbone,
        fingerprint="stand-in",
        log=lambda message: None,
    )

    metrics = recipe["metrics"]
    assert metrics["test_split"]["roc_auc"] >= 0.9
    assert 0.0 < recipe["threshold"] < 1.0 and recipe["output"] == "p_real"
    assert set(metrics["leave_one_source_out"]) == {
        "alpha (real)",
        "beta (real)",
        "gamma (fake)",
        "delta (fake)",
    }
    for name in (
        "weights.npz",
        "model.keras",
        "recipe.json",
        "eval_report.txt",
        "eval_report.json",
        "roc.png",
    ):
        assert (run / name).is_file(), name
    assert "ROC AUC" in (run / "eval_report.txt").read_text()
    assert Image.open(run / "roc.png").size == (640, 640)

    # The saved file loads as the service loads it and gives the run's own test scores.
    model = load_classifier(run / "model.keras", safe_mode=True)
    loaded = evaluate_module.LoadedModel(model, "p_real", recipe["threshold"], "saved")
    test = [c for c in crops if c.split == "test"]
    expected = [row["p_fake"] for row in json.loads((run / "eval_report.json").read_text())["scores"]]
    assert evaluate_module.predict_p_fake(loaded, test, tmp_path / "prepared") == pytest.approx(
        expected, abs=1e-5
    )

    # The evaluation CLI on new, raw data the model never saw.
    write_stripes(tmp_path / "unseen", seed=1, groups=2)
    assert (
        cli_main(
            [
                "evaluate",
                "--model",
                str(run),
                "--data",
                str(tmp_path / "unseen"),
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report/eval_report.json").read_text())
    assert report["evaluations"][0]["metrics"]["roc_auc"] >= 0.9
    assert (tmp_path / "report/roc.png").is_file()

    # and it imports into the model store with model_import's defaults (+ its threshold)
    from model_import import import_model

    tag = import_model(run / "model.keras", threshold=recipe["threshold"], metrics=recipe["metrics"])
    assert tag.startswith("deepfake_classifier:")
