"""A labelled image folder, the prepared crops' manifest, and splits by source and group.

The layout any user can fill (with FaceForensics++ or Celeb-DF frames, or ready crops):

    <root>/real/<source>/<group>/<image>     e.g. real/youtube/000/frame_0001.png
    <root>/fake/<source>/<group>/<image>     e.g. fake/Deepfakes/000_003/frame_0001.png

`<source>` is the dataset or generator (metrics are reported per source, and held out one at
a time); `<group>` is what must never be split between training and test: a video, an
identity, a photo. Deeper folders are allowed (they belong to the group). Shorter paths work
too: `real/<source>/<image>` makes each image its own group, `real/<image>` also puts it in
source `real` (or `fake`). Images: .jpg .jpeg .png .webp .bmp.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

LABELS = ("real", "fake")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class RawImage:
    path: Path
    label: str
    source: str
    group: str


@dataclass(frozen=True)
class Crop:
    """One face crop of a prepared dataset (a line of `manifest.jsonl`)."""

    path: str  # relative to the prepared folder
    label: str
    source: str
    group: str
    split: str = "train"
    origin: str = ""  # the raw image (or, for a pseudo-fake, the real crop) it came from
    parent_source: str = ""  # pseudo-fakes: the source of the real face they were made from
    box: tuple[int, int, int, int] | None = None  # face box in the origin image, if detected
    # Facial landmarks in the crop's own pixels (name -> (x, y)): what swaps are aligned on
    landmarks: dict[str, tuple[float, float]] | None = None
    face_side: float = (
        0.0  # the face's side in the origin's pixels (its resolution); pseudo-fakes: the parent's
    )
    fold: int = 0  # identity fold (k-fold by group, see `assign_folds`); pseudo-fakes: their parent's

    @property
    def y_real(self) -> int:
        """The training target: 1 for real (the legacy output is P(real))."""
        return int(self.label == "real")

    @property
    def key(self) -> str:
        """What a split keeps together: a pseudo-fake stays with the real face it came from."""
        return f"{self.parent_source or self.source}/{self.group}"


def scan_folder(root: Path) -> list[RawImage]:
    """Every image under `root/real` and `root/fake`, sorted; raises if neither exists."""
    root = Path(root)
    images = []
    for label in LABELS:
        base = root / label
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                parts = path.relative_to(base).parts
                source = parts[0] if len(parts) > 1 else label
                group = parts[1] if len(parts) > 2 else path.stem
                images.append(RawImage(path, label, source, group))
    if not images:
        raise ValueError(f"{root}: no images under real/ or fake/ (see training/dataset.py for the layout)")
    return images


def assign_splits(keys: list[str], *, val: float, test: float, seed: int) -> dict[str, str]:
    """Split groups (`source/group` keys), per source, into train/val/test.

    Each source is split on its own, so every source appears in every split when it has at
    least three groups (one or two groups stay in train). The order is a seeded hash, stable
    across machines and Python versions.
    """
    by_source: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        by_source.setdefault(key.split("/", 1)[0], []).append(key)
    splits = {}
    for groups in by_source.values():
        ordered = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
        n = len(ordered)
        n_test = max(1, round(test * n)) if n >= 3 and test > 0 else 0
        n_val = max(1, round(val * n)) if n >= 3 and val > 0 else 0
        for index, key in enumerate(ordered):
            splits[key] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return splits


def with_splits(crops: list[Crop], splits: dict[str, str]) -> list[Crop]:
    return [replace(crop, split=splits[crop.key]) for crop in crops]


def assign_folds(keys: list[str], *, folds: int, seed: int) -> dict[str, int]:
    """Deal groups (`source/group` keys) into `folds` folds, each source on its own.

    Within a source the groups are taken in a seeded-hash order and dealt round-robin, starting
    at a source-dependent fold, so every fold gets a share of every source with enough groups
    and the small sources do not all pile into fold 0.
    """
    by_source: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        by_source.setdefault(key.split("/", 1)[0], []).append(key)
    assigned = {}
    for source, groups in sorted(by_source.items()):
        ordered = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
        offset = int(hashlib.sha256(f"{seed}:{source}".encode()).hexdigest(), 16) % max(folds, 1)
        for index, key in enumerate(ordered):
            assigned[key] = (index + offset) % max(folds, 1)
    return assigned


def with_folds(crops: list[Crop], folds: dict[str, int]) -> list[Crop]:
    return [replace(crop, fold=folds[crop.key]) for crop in crops]


def write_manifest(crops: list[Crop], root: Path) -> Path:
    path = Path(root) / MANIFEST
    path.write_text("".join(json.dumps(asdict(crop)) + "\n" for crop in crops))
    return path


def read_manifest(root: Path) -> list[Crop]:
    crops = []
    for line in (Path(root) / MANIFEST).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            row["box"] = tuple(row["box"]) if row.get("box") else None
            if row.get("landmarks"):
                row["landmarks"] = {name: tuple(xy) for name, xy in row["landmarks"].items()}
            crops.append(Crop(**row))
    return crops


def summary(crops: list[Crop]) -> dict[str, dict[str, dict[str, int]]]:
    """`{label: {source: {split: count, "groups": n}}}`: the dataset sizes the card reports."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    groups: dict[tuple[str, str], set[str]] = {}
    for crop in crops:
        row = table.setdefault(crop.label, {}).setdefault(crop.source, dict.fromkeys(SPLITS, 0))
        row[crop.split] += 1
        groups.setdefault((crop.label, crop.source), set()).add(crop.key)
    for (label, source), keys in groups.items():
        table[label][source]["groups"] = len(keys)
    return table
