"""Images to model input: a uint8 array per image (compact to send), normalised on the batch."""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

# The input scalings `normalize` knows; which one a model needs is in its metadata (ModelSpec).
Normalization = Literal["zero_one", "minus_one_one", "raw"]


def to_input_array(image: Image.Image, input_size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to the model's (height, width): a (H, W, 3) uint8 array."""
    height, width = input_size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def normalize(batch: np.ndarray, normalization: Normalization) -> np.ndarray:
    """uint8 (N, H, W, 3) to float32 in the range the model was trained on."""
    x = batch.astype(np.float32)
    if normalization == "zero_one":
        return x / 255.0
    if normalization == "minus_one_one":
        return x / 127.5 - 1.0
    if normalization == "raw":
        return x
    raise ValueError(f"unknown normalization {normalization!r}")
