"""Labelled images to 160x160 face crops, split by group, plus pseudo-fakes from the reals.

Faces are found with the service's `FaceDetector` and cut with `crop_face`, the one crop
function serving uses too (imported, never re-implemented): a model trained here sees faces
framed exactly as it will see them in production. Small images are taken as ready crops
(MTCNN cannot find a face in a 25 px image) and only resized, through the same function.
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

from preprocessing.faces import CROP_SIZE, Face, crop_face
from training.blending import self_blend, xray_blend
from training.dataset import (
    Crop,
    RawImage,
    assign_splits,
    scan_folder,
    summary,
    with_splits,
    write_manifest,
)

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
    val: float = 0.2
    test: float = 0.2
    seed: int = 1337


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
    lazy = _LazyDetector(detector)
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
    crops += pseudo_fakes(crops, out_root, config)
    write_manifest(crops, out_root)
    report = {"config": asdict(config), "summary": summary(crops), "skipped": skipped}
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
        crop = crop_face(image, face) if margin is None else crop_face(image, face, margin=margin)
        name = raw.path.stem if len(faces) == 1 else f"{raw.path.stem}_face{index}"
        path = target_dir / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path)
        box = None if margin is not None else face.box
        crops.append(
            Crop(str(path.relative_to(out_root)), raw.label, raw.source, raw.group, origin=origin, box=box)
        )
    return crops


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
    """SBI and X-ray pseudo-fakes of every real crop, in the split of the real face."""
    reals = [crop for crop in crops if crop.label == "real"]
    made = []
    for index, crop in enumerate(reals):
        rng = np.random.default_rng([config.seed, index])
        target = load_pixels(out_root / crop.path)
        donors = _donors(crop, reals)
        jobs: list[tuple[str, Any]] = [("sbi", None)] * config.sbi_per_real
        if donors:
            jobs += [("xray", donors)] * config.xray_per_real
        for k, (kind, pool) in enumerate(jobs):
            if kind == "sbi":
                pixels = self_blend(target, rng)
            else:
                donor = pool[int(rng.integers(len(pool)))]
                pixels = xray_blend(target, load_pixels(out_root / donor.path), rng)
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
                )
            )
    return made


def _donors(crop: Crop, reals: Iterable[Crop]) -> list[Crop]:
    """Other real faces of the same split: same source and another group if possible."""
    same_split = [c for c in reals if c.split == crop.split and c.path != crop.path]
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


class _LazyDetector:
    """Builds MTCNN only if some image needs detection (ready crops do not)."""

    def __init__(self, detector: Detector | None) -> None:
        self._detector = detector

    def detect(self, image: Image.Image) -> list[Face]:
        if self._detector is None:
            from preprocessing.faces import FaceDetector

            self._detector = FaceDetector()
        return self._detector.detect(image)
