"""Fakes made by manipulating real photos: landmark-aligned face swaps, morphs, partial swaps.

Each one takes a real target crop and a donor crop of another real face (both as `crop_face`
makes them, with their five landmarks in crop pixels) and changes only the face, so the
fake keeps the target's background, framing, resolution and compression: what tells it from
a real photo is the manipulation, not the source.

* `face_swap`: the donor's face, warped onto the target's landmarks (a similarity transform
  on the five points), colour-matched inside the mask, sometimes re-sharpened or blurred, and
  blended in through a soft, deformed mask fitted to the target's landmarks.
* `morph`: the average of the target and the aligned donor (a weight around one half),
  pasted back into the target: the face-morphing attack on ID photos, without triangulation.
* `partial_swap`: only the eyes or only the mouth of the aligned donor, blended in.

The landmark names are mtcnn's (`preprocessing.faces.LANDMARK_NAMES`); anything with both
eyes works, the mouth corners and the nose are used when present.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageFilter

from training.blending import frequency_jitter, match_colours

Landmarks = Mapping[str, tuple[float, float]]

# Where the landmarks sit in a `crop_face` crop (margin 0.25: the box fills the middle 80 %),
# as fractions of the crop side; used when a crop has no detected landmarks.
TEMPLATE = {
    "left_eye": (0.355, 0.41),
    "right_eye": (0.645, 0.41),
    "nose": (0.5, 0.55),
    "mouth_left": (0.385, 0.7),
    "mouth_right": (0.615, 0.7),
}
REGIONS = ("eyes", "mouth")


def template_landmarks(size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    width, height = size
    return {name: (x * width, y * height) for name, (x, y) in TEMPLATE.items()}


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking points `src` to
    `dst` in the least-squares sense (Umeyama, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (s**2).sum() / len(src)
    scale = float((sigma * np.diag(sign)).sum() / variance) if variance > 0 else 1.0
    shift = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, shift[:, None]])


def align(donor: np.ndarray, donor_lm: Landmarks, target_lm: Landmarks) -> np.ndarray:
    """`donor` warped so that its landmarks land on `target_lm` (same size, bilinear)."""
    names = [name for name in target_lm if name in donor_lm]
    matrix = similarity(np.array([donor_lm[n] for n in names]), np.array([target_lm[n] for n in names]))
    # Pillow's affine transform maps output pixels to input pixels: the inverse map.
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    image = Image.fromarray(donor, "RGB")
    coefficients = tuple(float(v) for v in inverse.reshape(-1))
    return np.asarray(
        image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    )


def region_mask(
    landmarks: Landmarks, size: tuple[int, int], rng: np.random.Generator, region: str = "face"
) -> np.ndarray:
    """A soft (H, W) float32 mask in [0, 1] over the inner face, the eyes or the mouth."""
    (lx, ly), (rx, ry) = landmarks["left_eye"], landmarks["right_eye"]
    eyes = np.array([(lx + rx) / 2.0, (ly + ry) / 2.0])
    eye_distance = max(float(np.hypot(rx - lx, ry - ly)), 2.0)
    angle = float(np.arctan2(ry - ly, rx - lx))
    if "mouth_left" in landmarks and "mouth_right" in landmarks:
        corners = np.array([landmarks["mouth_left"], landmarks["mouth_right"]], np.float64)
        mouth, mouth_width = corners.mean(axis=0), float(np.hypot(*(corners[1] - corners[0])))
    else:  # no mouth corners: where it usually is below the eyes
        normal = np.array([-np.sin(angle), np.cos(angle)])
        mouth, mouth_width = eyes + 1.05 * eye_distance * normal, 0.6 * eye_distance
    if region == "face":
        centre = eyes + (mouth - eyes) * rng.uniform(0.35, 0.5)
        drop = float(np.hypot(*(mouth - eyes)))
        axes = (
            eye_distance * rng.uniform(0.95, 1.15),
            max(drop, 0.5 * eye_distance) * rng.uniform(1.05, 1.3),
        )
    elif region == "eyes":
        centre, axes = eyes, (eye_distance * rng.uniform(0.85, 1.0), eye_distance * rng.uniform(0.3, 0.4))
    elif region == "mouth":
        width = max(mouth_width, 0.6 * eye_distance)
        centre, axes = mouth, (width * rng.uniform(0.75, 0.95), width * rng.uniform(0.4, 0.55))
    else:
        raise ValueError(f"unknown region {region!r}")
    return _ellipse(size, centre, axes, angle, rng)


def face_swap(
    target: np.ndarray, target_lm: Landmarks, donor: np.ndarray, donor_lm: Landmarks, rng: np.random.Generator
) -> np.ndarray:
    """The donor's face on the target's head (uint8 (H, W, 3) crops of the same size)."""
    mask = region_mask(target_lm, _size(target), rng) * float(rng.uniform(0.85, 1.0))
    aligned = align(donor, donor_lm, target_lm).astype(np.float32)
    source = match_colours(aligned, target.astype(np.float32), mask)
    if rng.random() < 0.5:  # a swap's generator renders at its own resolution
        source = frequency_jitter(source, rng)
    return _blend(source, target, mask)


def morph(
    target: np.ndarray, target_lm: Landmarks, donor: np.ndarray, donor_lm: Landmarks, rng: np.random.Generator
) -> np.ndarray:
    """The average of the target's and the aligned donor's face, pasted back into the target."""
    mask = region_mask(target_lm, _size(target), rng)
    aligned = match_colours(
        align(donor, donor_lm, target_lm).astype(np.float32), target.astype(np.float32), mask
    )
    weight = float(rng.uniform(0.35, 0.65))
    average = weight * aligned + (1.0 - weight) * target.astype(np.float32)
    return _blend(average, target, mask)


def partial_swap(
    target: np.ndarray,
    target_lm: Landmarks,
    donor: np.ndarray,
    donor_lm: Landmarks,
    rng: np.random.Generator,
    region: str | None = None,
) -> np.ndarray:
    """Only the eyes or the mouth of the aligned donor (`region`, random if None)."""
    region = region or REGIONS[int(rng.integers(len(REGIONS)))]
    mask = region_mask(target_lm, _size(target), rng, region) * float(rng.uniform(0.8, 1.0))
    aligned = align(donor, donor_lm, target_lm).astype(np.float32)
    return _blend(match_colours(aligned, target.astype(np.float32), mask), target, mask)


def _ellipse(
    size: tuple[int, int],
    centre: np.ndarray,
    axes: tuple[float, float],
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs - float(centre[0]), ys - float(centre[1])
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dx * cos + dy * sin) / max(axes[0], 1.0), (-dx * sin + dy * cos) / max(axes[1], 1.0)
    theta = np.arctan2(v, u)
    # Low-frequency wobble of the outline, so the boundary is not always a clean ellipse.
    wobble = 1.0 + sum(
        rng.uniform(-0.06, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
    )
    hard = (np.hypot(u, v) < wobble).astype(np.uint8) * 255
    sigma = float(rng.uniform(0.08, 0.2)) * min(axes)
    soft = Image.fromarray(hard, "L").filter(ImageFilter.GaussianBlur(max(sigma, 0.5)))
    # Cut the blur's far tail: a blend that reaches the crop's border is no face swap.
    return np.clip((np.asarray(soft, dtype=np.float32) / 255.0 - 0.02) / 0.98, 0.0, 1.0)


def _blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = mask[..., None] * source + (1.0 - mask[..., None]) * target.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _size(pixels: np.ndarray) -> tuple[int, int]:
    return pixels.shape[1], pixels.shape[0]
