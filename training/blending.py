"""Pseudo-fakes made from real faces: self-blended images and Face X-ray style blends.

A face swap pastes a face region into another image and leaves a blending boundary and a
colour/texture mismatch inside it. Both generators below make that artefact from a real crop
alone, so the classifier learns the boundary rather than one generator's fingerprint; both
papers report better generalisation to unseen face-swap methods than training on one method.

* `self_blend` (Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images",
  CVPR 2022): the source is the same face, slightly recoloured, re-sharpened or blurred and
  shifted, blended back into itself through a soft, randomly deformed face mask.
* `xray_blend` (Li et al., "Face X-ray for More General Face Forgery Detection", CVPR 2020):
  the source is another real face, colour-matched to the target inside the mask.

Both expect centred face crops (as `crop_face` makes them: the face box fills the central
80 %); the mask is an ellipse around the inner face, since we keep only five landmarks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as SBI: often a full paste, sometimes partial


def face_mask(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft (H, W) float32 mask in [0, 1]: a deformed ellipse over the inner face."""
    width, height = size
    cx = width * (0.5 + rng.uniform(-0.03, 0.03))
    cy = height * (0.5 + rng.uniform(-0.03, 0.03))
    ax, ay = width * rng.uniform(0.21, 0.28), height * rng.uniform(0.26, 0.33)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = np.arctan2(ys - cy, xs - cx)
    radius = np.hypot((xs - cx) / ax, (ys - cy) / ay)
    # Low-frequency wobble of the outline, so the boundary is not always a clean ellipse.
    wobble = 1.0 + sum(
        rng.uniform(-0.06, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
    )
    hard = (radius < wobble).astype(np.uint8) * 255
    sigma = float(rng.uniform(0.02, 0.08)) * width
    soft = Image.fromarray(hard, "L").filter(ImageFilter.GaussianBlur(sigma))
    mask = np.asarray(soft, dtype=np.float32) / 255.0
    return mask * float(rng.choice(BLEND_RATIOS))


def self_blend(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An SBI pseudo-fake of a uint8 (H, W, 3) real crop."""
    source = frequency_jitter(_colour_jitter(target.astype(np.float32), rng), rng)
    source = _spatial_jitter(source, rng)
    return _blend(source, target, face_mask(_size(target), rng))


def xray_blend(target: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Face X-ray style pseudo-fake: `donor`'s inner face pasted into `target`."""
    mask = face_mask(_size(target), rng)
    source = _spatial_jitter(match_colours(donor.astype(np.float32), target.astype(np.float32), mask), rng)
    return _blend(source, target, mask)


def _blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = mask[..., None] * source + (1.0 - mask[..., None]) * target.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _size(pixels: np.ndarray) -> tuple[int, int]:
    return pixels.shape[1], pixels.shape[0]


def _colour_jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = rng.uniform(-20, 20, size=3).astype(np.float32)
    gain = np.float32(rng.uniform(0.9, 1.1))
    mean = x.mean()
    contrast = np.float32(rng.uniform(0.9, 1.1))
    return np.clip((x - mean) * contrast + mean * gain + shift, 0, 255)


def frequency_jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sharpen, or lose detail by a downscale-upscale, as a swap's generator would."""
    image = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), "RGB")
    choice = rng.integers(3)
    if choice == 0:
        image = image.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(50, 150))))
    elif choice == 1:
        factor = float(rng.uniform(0.4, 0.85))
        small = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _spatial_jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale by a few percent about the centre and shift by a few pixels."""
    height, width = x.shape[:2]
    image = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), "RGB")
    a = 1.0 / float(rng.uniform(0.95, 1.05))
    dx, dy = (float(rng.uniform(-0.03, 0.03)) * s for s in (width, height))
    cx, cy = width / 2.0, height / 2.0
    coefficients = (a, 0.0, cx - a * cx + dx, 0.0, a, cy - a * cy + dy)
    moved = image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    return np.asarray(moved, dtype=np.float32)


def match_colours(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean/std transfer inside the mask (Reinhard-style colour matching)."""
    inside = mask > 0.5 * mask.max() if mask.max() > 0 else np.ones(mask.shape, bool)
    src, tgt = source[inside], target[inside]
    scale = (tgt.std(axis=0) + 1.0) / (src.std(axis=0) + 1.0)
    return np.clip((source - src.mean(axis=0)) * scale + tgt.mean(axis=0), 0, 255)
