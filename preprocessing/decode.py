"""Decode and validate an upload into an upright RGB image, within named limits."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocessing import errors

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


@dataclass(frozen=True)
class DecodeLimits:
    """Upload limits. Pixels are checked from the header, before any pixel is decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000


def decode_upload(
    data: bytes, limits: DecodeLimits, *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Return the upload as an RGB image with EXIF orientation applied.

    Raises `InputError` for every fault of the upload. `draft_size` (width, height) lets
    JPEG decode straight to a reduced scale no smaller than that size, which is much cheaper
    than decoding full size and resizing.
    """
    if not data:
        raise errors.empty_file()
    if len(data) > limits.max_bytes:
        raise errors.file_too_large(limits.max_bytes)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is lower than Pillow's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise errors.unsupported_format(ALLOWED_FORMATS) from None
    except Image.DecompressionBombError:
        raise errors.image_too_large(limits.max_pixels) from None  # Pillow's own bomb guard
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise errors.invalid_image(str(exc) or type(exc).__name__) from None

    width, height = image.size
    if width < 1 or height < 1:
        raise errors.invalid_image(f"bad dimensions {width}x{height}")
    if width * height > limits.max_pixels:
        raise errors.image_too_large(limits.max_pixels, (width, height))
    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", draft_size)
        image.load()  # decodes the first frame of animated GIF/WebP only
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        # truncated or corrupt pixel data
        raise errors.invalid_image(str(exc) or type(exc).__name__) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float scaled, alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit values at 255, which turns most photos white.
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        top = max(float(values.max(initial=0)), 1e-12)
    scaled = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")
