"""Labelled images to 160x160 face crops, split by group, plus pseudo-fakes from the reals.

Faces are found with a detector of `preprocessing.faces` (`PrepareConfig.detector`: "mtcnn",
the service's `FaceDetector`, or any name `preprocessing.detectors.load_detector` knows) and cut
with `crop_face`, the one crop function serving uses too (imported, never re-implemented): a
model trained here sees faces framed exactly as it will see them in production. Small images
are taken as ready crops (MTCNN cannot find a face in a 25 px image) and only resized,
through the same function. The detector's name goes into `prepare.json`.

Pseudo-fakes are made from every real crop and stay in its group (so in its split and fold):
self-blends and X-ray blends (`training.blending`), and landmark-aligned face swaps, morphs
and eye/mouth swaps with another real face of the same source and fold
(`training.manipulations`). A grey real face gives grey pseudo-fakes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps

from preprocessing.faces import CROP_SIZE, DEFAULT_MARGIN, Face, crop_face
from training.blending import self_blend, xray_blend
from training.dataset import (
    Crop,
    RawImage,
    assign_folds,
    assign_splits,
    scan_folder,
    summary,
    with_folds,
    with_splits,
    write_manifest,
)
from training.manipulations import face_swap, morph, partial_swap, template_landmarks

CROPS = "crops"


class Detector(Protocol):
    def detect(self, image: Image.Image) -> list[Face]: ...


@dataclass(frozen=True)
class PrepareConfig:
    faces: str = "largest"  # "largest": one face per image (the swapped one); "all": every face
    cropped: str = "auto"  # "yes": images are ready crops; "no": always detect; "auto": by size
    min_crop_side: int = 128  # auto: an image whose short side is below this is a ready crop
    min_face: int = 40  # detected faces smaller than this (box side, px) are skipped
    sbi_per_real: int = 2  # self-blended pseudo-fakes per real crop
    xray_per_real: int = 1  # Face X-ray style pseudo-fakes per real crop
    swap_per_real: int = 0  # landmark-aligned face swaps (another real face onto this one)
    morph_per_real: int = 0  # morphs of this face and another
    partial_per_real: int = 0  # eyes-only or mouth-only swaps
    keep_grey: bool = False  # pseudo-fakes of a grey photo are grey too (off for the v1 data)
    val: float = 0.2
    test: float = 0.2
    folds: int = 0  # identity folds (k-fold by group) for out-of-fold training; 0: none
    seed: int = 1337
    detector: str = "mtcnn"  # a `preprocessing.faces` detector
    # The crops' side in pixels: the model's input size. Each size is cut from the source
    # photos (never a resize of another size's crops); pseudo-fakes are made at that size.
    crop_size: int = CROP_SIZE[0]

    @property
    def size(self) -> tuple[int, int]:
        return (self.crop_size, self.crop_size)


def prepare(
    raw_root: Path, out_root: Path, config: PrepareConfig = PrepareConfig(), detector: Detector | None = None
) -> list[Crop]:
    """Write `out_root/crops/...` and `out_root/manifest.jsonl`; return the crops."""
    raw_root, out_root = Path(raw_root), Path(out_root)
    if (out_root / CROPS).exists():
        shutil.rmtree(out_root / CROPS)
    out_root.mkdir(parents=True, exist_ok=True)
    crops: list[Crop] = []
    skipped: list[dict[str, str]] = []
    lazy = _LazyDetector(detector, config.detector)
    for raw in scan_folder(raw_root):
        try:
            made = crop_image(raw, raw_root, out_root, config, lazy)
        except OSError as exc:  # unreadable image: report it, keep going
            skipped.append({"path": str(raw.path.relative_to(raw_root)), "reason": f"unreadable: {exc}"})
            continue
        if not made:
            skipped.append({"path": str(raw.path.relative_to(raw_root)), "reason": "no face found"})
        crops.extend(made)
    crops = with_splits(
        crops, assign_splits([c.key for c in crops], val=config.val, test=config.test, seed=config.seed)
    )
    if config.folds > 1:
        crops = with_folds(crops, assign_folds([c.key for c in crops], folds=config.folds, seed=config.seed))
    if config.swap_per_real or config.morph_per_real or config.partial_per_real:
        crops = with_landmarks(crops, out_root, lazy, config.size)
    crops += pseudo_fakes(crops, out_root, config)
    write_manifest(crops, out_root)
    report = {
        "config": asdict(config),
        "detector": config.detector,
        "summary": summary(crops),
        "skipped": skipped,
    }
    (out_root / "prepare.json").write_text(json.dumps(report, indent=1) + "\n")
    return crops


def crop_image(
    raw: RawImage, raw_root: Path, out_root: Path, config: PrepareConfig, detector: Detector
) -> list[Crop]:
    """The face crops of one labelled image (saved as PNG), or none if no face is found."""
    with Image.open(raw.path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    origin = str(raw.path.relative_to(raw_root))
    target_dir = out_root / CROPS / raw.label / raw.source / raw.group
    if is_ready_crop(image, config):
        face = whole_image_face(image)
        faces: list[tuple[Face, float | None]] = [(face, 0.0)]
    else:
        detected = [f for f in detector.detect(image) if max(f.box[2], f.box[3]) >= config.min_face]
        faces = [(f, None) for f in (detected[:1] if config.faces == "largest" else detected)]
    crops = []
    for index, (face, margin) in enumerate(faces):
        # margin None: the service's default margin; 0 for ready crops (they are framed already)
        crop = crop_face(image, face, size=config.size, margin=DEFAULT_MARGIN if margin is None else margin)
        name = raw.path.stem if len(faces) == 1 else f"{raw.path.stem}_face{index}"
        path = target_dir / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path)
        box = None if margin is not None else face.box
        landmarks = (
            crop_landmarks(face, DEFAULT_MARGIN, config.size) if margin is None and face.landmarks else None
        )
        crops.append(
            Crop(
                str(path.relative_to(out_root)),
                raw.label,
                raw.source,
                raw.group,
                origin=origin,
                box=box,
                landmarks=landmarks,
                face_side=float(min(image.size) if margin is not None else max(face.box[2], face.box[3])),
            )
        )
    return crops


def crop_landmarks(
    face: Face, margin: float, size: tuple[int, int] = CROP_SIZE
) -> dict[str, tuple[float, float]]:
    """The face's landmarks in the pixels of `crop_face(image, face, margin=margin)` (unaligned)."""
    x, y, w, h = face.box
    side = max(1, round(max(w, h, 1) * (1.0 + margin)))
    left, top = round(x + w / 2.0 - side / 2.0), round(y + h / 2.0 - side / 2.0)
    sx, sy = size[0] / side, size[1] / side
    return {name: ((px - left) * sx, (py - top) * sy) for name, (px, py) in face.landmarks.items()}


def with_landmarks(
    crops: list[Crop], out_root: Path, detector: Detector, size: tuple[int, int] = CROP_SIZE
) -> list[Crop]:
    """Real crops without landmarks (ready crops) get them from the detector run on the crop
    itself, padded so the face is not cut by the border; failing that, the crop template."""
    done = []
    for crop in crops:
        if crop.label == "real" and crop.landmarks is None:
            pixels = load_pixels(out_root / crop.path, size)
            pad = size[0] // 2
            canvas = Image.new("RGB", (size[0] + 2 * pad, size[1] + 2 * pad), (0, 0, 0))
            canvas.paste(Image.fromarray(pixels, "RGB"), (pad, pad))
            found = [f for f in detector.detect(canvas) if _has_eyes(f.landmarks)]
            landmarks = (
                {n: (px - pad, py - pad) for n, (px, py) in found[0].landmarks.items()}
                if found
                else template_landmarks(size)
            )
            crop = replace(crop, landmarks=landmarks)
        done.append(crop)
    return done


def _has_eyes(landmarks: dict[str, tuple[float, float]]) -> bool:
    return "left_eye" in landmarks and "right_eye" in landmarks


def is_ready_crop(image: Image.Image, config: PrepareConfig) -> bool:
    if config.cropped == "yes":
        return True
    if config.cropped == "no":
        return False
    return min(image.size) < config.min_crop_side


def whole_image_face(image: Image.Image) -> Face:
    """The whole image as one face box: how a ready crop goes through `crop_face`."""
    return Face(box=(0, 0, image.width, image.height), score=1.0, landmarks={})


def pseudo_fakes(crops: list[Crop], out_root: Path, config: PrepareConfig) -> list[Crop]:
    """Pseudo-fakes of every real crop (SBI, X-ray, swap, morph, partial), in its group."""
    reals = [crop for crop in crops if crop.label == "real"]
    made = []
    for index, crop in enumerate(reals):
        rng = np.random.default_rng([config.seed, index])
        target = load_pixels(out_root / crop.path, config.size)
        grey = config.keep_grey and is_grey(target)
        donors = _donors(crop, reals)
        jobs: list[tuple[str, Any]] = [("sbi", None)] * config.sbi_per_real
        if donors:
            jobs += [("xray", donors)] * config.xray_per_real
        aligned = [d for d in donors if d.landmarks] if crop.landmarks else []
        if aligned:
            jobs += [("swap", aligned)] * config.swap_per_real
            jobs += [("morph", aligned)] * config.morph_per_real
            jobs += [("partial", aligned)] * config.partial_per_real
        for k, (kind, pool) in enumerate(jobs):
            if kind == "sbi":
                pixels = self_blend(target, rng)
            else:
                donor = pool[int(rng.integers(len(pool)))]
                donor_pixels = load_pixels(out_root / donor.path, config.size)
                if kind == "xray":
                    pixels = xray_blend(target, donor_pixels, rng)
                else:
                    make = {"swap": face_swap, "morph": morph, "partial": partial_swap}[kind]
                    pixels = make(target, crop.landmarks, donor_pixels, donor.landmarks, rng)
            if grey:  # a grey photo stays grey: colour must not tell its fakes apart
                pixels = np.repeat(
                    np.asarray(Image.fromarray(pixels, "RGB").convert("L"))[..., None], 3, axis=2
                )
            stem = Path(crop.path).stem
            path = out_root / CROPS / "fake" / kind / crop.source / crop.group / f"{stem}_{kind}{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "RGB").save(path)
            made.append(
                replace(
                    crop,
                    path=str(path.relative_to(out_root)),
                    label="fake",
                    source=kind,
                    origin=crop.path,
                    parent_source=crop.source,
                    box=None,
                    landmarks=None,
                )
            )
    return made


def is_grey(pixels: np.ndarray) -> bool:
    """All three channels equal (up to rounding): a grey photo stored as RGB."""
    p = pixels.astype(np.int16)
    return bool(np.abs(p[..., 0] - p[..., 1]).max() <= 2 and np.abs(p[..., 1] - p[..., 2]).max() <= 2)


def _donors(crop: Crop, reals: Iterable[Crop]) -> list[Crop]:
    """Other real faces of the same split and fold: same source and another group if possible."""
    same_split = [c for c in reals if c.split == crop.split and c.fold == crop.fold and c.path != crop.path]
    for pool in (
        [c for c in same_split if c.source == crop.source and c.group != crop.group],
        [c for c in same_split if c.source == crop.source],
        same_split,
    ):
        if pool:
            return pool
    return []


def load_pixels(path: Path, size: tuple[int, int] = CROP_SIZE) -> np.ndarray:
    """A crop as uint8 (H, W, 3); resized with the service's filter if it is not `size`."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_named_detector(name: str) -> Detector:
    """The serving detector of that name (`preprocessing.detectors.load_detector`)."""
    from preprocessing.detectors import load_detector

    return load_detector(name)


class _LazyDetector:
    """Builds the detector only if some image needs detection (ready crops do not)."""

    def __init__(self, detector: Detector | None, name: str = "mtcnn") -> None:
        self._detector = detector
        self._name = name

    def detect(self, image: Image.Image) -> list[Face]:
        if self._detector is None:
            self._detector = load_named_detector(self._name)
        return self._detector.detect(image)
