"""Evaluate a served-format model on any labelled folder: metrics, per source, calibration, ROC.

The model sees exactly what the service would give it: a 160x160 `crop_face` crop, uint8,
normalised by `preprocessing.tensor.normalize`. A raw folder (`real/`, `fake/`) is prepared
first (faces detected and cropped, no pseudo-fakes); a prepared folder (with `manifest.jsonl`)
is used as it is, optionally restricted to one split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.tensor import normalize
from training.dataset import MANIFEST, Crop, read_manifest
from training.metrics import summarise
from training.prepare import PrepareConfig, load_pixels, prepare
from training.report import clean_json, evaluation_dict, roc_png, text_report

BATCH = 32


@dataclass
class LoadedModel:
    model: Any
    output: str  # "p_real" or "p_fake": what the sigmoid means
    threshold: float  # fake when P(fake) >= threshold
    name: str
    normalization: str = "zero_one"


def load_for_evaluation(
    spec: str, *, output: str | None = None, threshold: float | None = None
) -> LoadedModel:
    """A committed model's name (`clip`, the default, or `facenet`: built from its wheel and its
    folder under models/), a training run folder (with
    `recipe.json`), or a `.keras`/`.h5` file or SavedModel folder (`output`/`threshold` given)."""
    from modeling.default import COMMITTED
    from modeling.loading import load_classifier

    if spec in COMMITTED:
        from modeling.default import build_default_classifier, read_recipe

        recipe = read_recipe(spec)
        model = build_default_classifier(spec)
        return LoadedModel(model, "p_real", recipe["threshold"], f"{spec} model ({recipe['version']})")
    path = Path(spec)
    if path.is_dir() and (path / "recipe.json").is_file():
        recipe = json.loads((path / "recipe.json").read_text())
        model = load_classifier(path / "model.keras")
        return LoadedModel(model, recipe["output"], threshold or recipe["threshold"], str(path))
    return LoadedModel(
        load_classifier(path), output or "p_real", 0.5 if threshold is None else threshold, path.name
    )


def load_crops(
    data: Path, workdir: Path, *, split: str = "all", config: PrepareConfig | None = None
) -> tuple[list[Crop], Path]:
    """The crops of `data` (preparing a raw folder into `workdir/prepared`), and their root."""
    data = Path(data)
    if (data / MANIFEST).is_file():
        crops, root = read_manifest(data), data
    else:
        root = Path(workdir) / "prepared"
        config = config or PrepareConfig(sbi_per_real=0, xray_per_real=0, val=0.0, test=0.0)
        crops = prepare(data, root, config)
    if split != "all":
        crops = [crop for crop in crops if crop.split == split]
    if not crops:
        raise ValueError(f"{data}: no crops in split {split!r}")
    return crops, root


def predict_p_fake(loaded: LoadedModel, crops: list[Crop], root: Path) -> np.ndarray:
    """P(fake) of every crop, in batches (one compiled call per batch)."""
    outputs = []
    size = tuple(int(d) for d in loaded.model.inputs[0].shape[1:3])
    for start in range(0, len(crops), BATCH):
        batch = np.stack([load_pixels(Path(root) / crop.path, size) for crop in crops[start : start + BATCH]])
        raw = np.asarray(loaded.model.predict_on_batch(normalize(batch, loaded.normalization)), np.float64)
        outputs.append(raw.reshape(-1))
    raw = np.concatenate(outputs)
    return raw if loaded.output == "p_fake" else 1.0 - raw


def evaluate(
    loaded: LoadedModel,
    crops: list[Crop],
    root: Path,
    out_dir: Path,
    *,
    title: str,
    notes: list[str] | None = None,
    extra: list[dict[str, Any]] | None = None,
    extra_curves: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Score `crops`, write `eval_report.txt`, `eval_report.json` and `roc.png` to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_fake = np.array([crop.label == "fake" for crop in crops])
    p_fake = predict_p_fake(loaded, crops, root)
    sources = np.array([crop.source for crop in crops])
    metrics = summarise(y_fake, p_fake, loaded.threshold, seed=seed)
    main = evaluation_dict(title, y_fake, p_fake, sources, metrics)
    evaluations = [main, *(extra or [])]
    lines = [
        f"model: {loaded.name}",
        f"threshold: fake when P(fake) >= {loaded.threshold:.4f}",
        *(notes or []),
    ]
    (out_dir / "eval_report.txt").write_text(text_report("Evaluation report", lines, evaluations))
    scores = [
        {"path": c.path, "source": c.source, "label": c.label, "p_fake": float(p)}
        for c, p in zip(crops, p_fake, strict=True)
    ]
    report = {
        "model": loaded.name,
        "threshold": loaded.threshold,
        "evaluations": evaluations,
        "scores": scores,
    }
    (out_dir / "eval_report.json").write_text(json.dumps(clean_json(report), indent=1) + "\n")
    curves = [(title, y_fake, p_fake), *(extra_curves or [])]
    roc_png(curves, f"ROC: {loaded.name}").save(out_dir / "roc.png")
    return report
