"""The project's default model: what `model_import.py` imports when given no file."""

from __future__ import annotations

from pathlib import Path

# Bump when the recipe below changes, so set-up re-imports instead of keeping a stale copy.
DEFAULT_MODEL_VERSION = "placeholder-1"


def build_default_model(workdir: Path) -> tuple[Path, dict[str, object]]:
    """Write the default model file into `workdir`; return it and its import options."""
    from modeling.placeholder import build_placeholder

    path = workdir / "placeholder.keras"
    build_placeholder().save(path)
    return path, {
        "output": "p_real",
        "placeholder": True,
        "description": (
            "UNTRAINED PLACEHOLDER: a small random-weight network with the legacy FaceNet "
            "layout. Its answers mean nothing; import a trained model (see README)."
        ),
    }
