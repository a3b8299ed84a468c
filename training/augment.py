"""Training augmentations, drawn from one distribution whatever the label.

The offline sources differ in ways that have nothing to do with being fake: the DCGAN faces
are 64 px and the LFW faces 25 px grey, the photos are sharp JPEGs, openpeople images are
clean renders. Every crop of either class therefore goes through the same random
downscale-upscale, blur, JPEG re-encoding, colour jitter, grey conversion and small shifts,
so resolution, compression or colour alone cannot tell the classes apart (`training.probe`
measures that they do not).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

RESAMPLERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5
    geometric: float = 0.5
    max_shift: float = 0.04  # of the crop side: detector jitter
    zoom: tuple[float, float] = (0.95, 1.08)
    colour: float = 0.8
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.25)
    saturation: tuple[float, float] = (0.6, 1.4)
    grey: float = 0.15
    rescale: float = 0.5
    min_side: int = 24  # as small as the LFW faces
    blur: float = 0.3
    blur_radius: tuple[float, float] = (0.3, 2.0)
    jpeg: float = 0.6
    jpeg_quality: tuple[int, int] = (30, 95)
    noise: float = 0.0  # sensor noise (Gaussian, per pixel and channel); 0 for the v1 model
    noise_sigma: tuple[float, float] = (2.0, 8.0)


def augment(
    pixels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    info: dict[str, float] | None = None,
) -> np.ndarray:
    """One random variant of a uint8 (H, W, 3) crop, same size.

    `info`, if given, receives what was drawn that the trivial-feature probe needs: `side`
    (the short side it was shrunk to) and `jpeg` (the re-encoding quality)."""
    config = config or AugmentConfig()
    image = Image.fromarray(pixels, "RGB")
    size = image.size
    if rng.random() < config.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < config.geometric:
        image = _shift_zoom(image, rng, config)
    if rng.random() < config.colour:
        for enhancer, (low, high) in (
            (ImageEnhance.Brightness, config.brightness),
            (ImageEnhance.Contrast, config.contrast),
            (ImageEnhance.Color, config.saturation),
        ):
            image = enhancer(image).enhance(float(rng.uniform(low, high)))
    if rng.random() < config.grey:
        image = image.convert("L").convert("RGB")
    if rng.random() < config.rescale:
        side = int(rng.integers(config.min_side, max(config.min_side + 1, min(size))))
        small = (max(1, round(size[0] * side / min(size))), max(1, round(size[1] * side / min(size))))
        image = image.resize(small, RESAMPLERS[rng.integers(len(RESAMPLERS))], reducing_gap=2.0)
        image = image.resize(size, RESAMPLERS[rng.integers(len(RESAMPLERS))])
        if info is not None:
            info["side"] = float(side)
    if rng.random() < config.blur:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*config.blur_radius))))
    if config.noise and rng.random() < config.noise:  # no draw when off: v1 copies stay as they were
        sigma = float(rng.uniform(*config.noise_sigma))
        noisy = np.asarray(image, np.float32) + rng.normal(0.0, sigma, (size[1], size[0], 3)).astype(
            np.float32
        )
        image = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < config.jpeg:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        image = jpeg(image, quality)
        if info is not None:
            info["jpeg"] = float(quality)
    return np.asarray(image, dtype=np.uint8)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _shift_zoom(image: Image.Image, rng: np.random.Generator, config: AugmentConfig) -> Image.Image:
    width, height = image.size
    zoom = float(rng.uniform(*config.zoom))
    dx, dy = (float(rng.uniform(-config.max_shift, config.max_shift)) * s for s in (width, height))
    # Affine map from output to input pixels: scale about the centre, then shift.
    a = 1.0 / zoom
    cx, cy = width / 2.0, height / 2.0
    coefficients = (a, 0.0, cx - a * cx + dx, 0.0, a, cy - a * cy + dy)
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC)
