"""The seven test-time variants of the legacy `/detect/augmented` route, in its order."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageOps


def _grayscale(image: Image.Image) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _darker(image: Image.Image) -> Image.Image:
    return image.point(lambda value: int(value * 0.8))


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda image: image,
    "grayscale": _grayscale,
    "rotate_right": lambda image: image.rotate(-20),
    "rotate_left": lambda image: image.rotate(20),
    "brightness_up": lambda image: ImageOps.autocontrast(image, cutoff=10),
    "brightness_down": _darker,
    "flip_horizontal": ImageOps.mirror,
}


def tta_variants(image: Image.Image) -> list[tuple[str, Image.Image]]:
    """All seven variants of an RGB image, `original` first."""
    return [(name, transform(image)) for name, transform in VARIANTS.items()]
