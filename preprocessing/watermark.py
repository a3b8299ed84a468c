"""Invisible watermarks that generators embed, read from the decoded pixels (numpy only).

One method is read: the DWT-DCT watermark of the `invisible-watermark` package (method
`dwtDct`), the one Stable Diffusion's reference scripts embed. Written here from the method
as published (that package itself needs OpenCV, PyWavelets and torch: too heavy to serve):

- the image's U plane (YUV, as OpenCV converts 8-bit BGR: U = 0.492 (B - Y) + 128);
- one level of the Haar wavelet transform; its approximation band (LL: each 2 x 2 pixel
  square's sum over 2);
- that band cut into 4 x 4 blocks, row by row; block k carries bit k mod n of an n-bit payload,
  in the block's largest-magnitude coefficient after the first: its magnitude modulo the step
  (36) in the upper half reads 1, in the lower half 0;
- each bit is the vote of all blocks that carry it (mean > 127/255 reads 1).

A payload is found when at least `MIN_AGREEMENT` of its bits read back. The payloads looked
for are the published ones (`PAYLOADS`). The mark is fragile by design of the method: PNG
output reads back; a JPEG re-encode, a resize or a crop that moves the 8-pixel grid erases it
(tests/test_provenance.py measures it). A watermark is an unsigned signal: reported, never a
verdict (serving/provenance.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP = 36.0  # the method's quantisation step on the U plane (its `scales=[0, 36, 36]`)
BLOCK = 4
MIN_SIDE_PIXELS = 256 * 256  # the method refuses smaller images; so do we
# The votes of about this many blocks (whole rows of them, spread over the image) decide: a
# 1024 x 1024 image has 16,384; reading them all costs ~4x the time and reads no better.
MAX_BLOCKS = 4096
# Of the payload's bits. Unmarked photos read 0.5-0.6 (the tests check); by chance alone (bits
# as coin flips) 0.8 of 48 bits is about 1 in 10^5 images, of 136 bits under 1 in 10^12.
MIN_AGREEMENT = 0.8


def _bits(value: int, length: int) -> tuple[int, ...]:
    return tuple(int(b) for b in format(value, f"0{length}b"))


def _bytes_bits(text: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(text, dtype=np.uint8)))


@dataclass(frozen=True)
class Payload:
    name: str
    source: str  # where the payload is published
    bits: tuple[int, ...]


PAYLOADS: tuple[Payload, ...] = (
    Payload(
        "stable_diffusion_v1",
        "Stable Diffusion 1.x reference scripts (txt2img.py): the bytes 'StableDiffusionV1'",
        _bytes_bits(b"StableDiffusionV1"),
    ),
    Payload(
        "stable_diffusion_xl",
        "Stable Diffusion XL (generative-models, diffusers' StableDiffusionXLWatermarker): "
        "a fixed 48-bit message",
        _bits(0b101100111110110010010000011110111011000110011110, 48),
    ),
)


@dataclass(frozen=True)
class Found:
    payload: Payload
    agreement: float  # share of the payload's bits that read back


def u_plane(rgb: np.ndarray) -> np.ndarray:
    """The U plane of 8-bit RGB as OpenCV's BGR2YUV makes it (rounded, clipped), float32."""
    pixels = rgb.astype(np.float32)
    luma = 0.299 * pixels[..., 0] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 2]
    return np.clip(np.rint(0.492 * (pixels[..., 2] - luma) + 128.0), 0.0, 255.0)


def block_bits(rgb: np.ndarray, max_blocks: int = MAX_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """(slot, bit): each read 4 x 4 block's index in the method's order and its bit (0.0 / 1.0).
    Past `max_blocks`, whole rows of blocks spread evenly over the image are read (a flat sky at
    the top reads poorly: the votes come from everywhere)."""
    height, width = rgb.shape[:2]
    height, width = height // 4 * 4, width // 4 * 4  # the method's crop
    per_row = width // (2 * BLOCK)  # LL is half as wide
    total_rows = height // (2 * BLOCK)
    if per_row == 0 or total_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    wanted = min(total_rows, -(-max_blocks // per_row))
    rows = np.unique(np.linspace(0, total_rows - 1, wanted).round().astype(np.int64))
    pixel_rows = (rows[:, None] * 2 * BLOCK + np.arange(2 * BLOCK)[None, :]).reshape(-1)
    u = u_plane(rgb[pixel_rows, : per_row * 2 * BLOCK])  # the blocks' columns; the method drops the rest
    ll = (u[0::2, 0::2] + u[1::2, 0::2] + u[0::2, 1::2] + u[1::2, 1::2]) / 2.0
    blocks = ll.reshape(len(rows), BLOCK, per_row, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)
    strongest = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    value = np.abs(blocks[np.arange(len(blocks)), strongest])
    slots = (rows[:, None] * per_row + np.arange(per_row)[None, :]).reshape(-1)
    return slots, (np.mod(value, STEP) > STEP / 2).astype(np.float32)


def read_payload(blocks: tuple[np.ndarray, np.ndarray], length: int) -> np.ndarray:
    """The n-bit payload the blocks vote for (block k carries bit k mod n)."""
    slots, bits = blocks
    slot = slots % length
    ones = np.bincount(slot, weights=bits, minlength=length)
    votes = np.bincount(slot, minlength=length)
    return (ones / np.maximum(votes, 1) * 255 > 127).astype(np.uint8)


def find_watermarks(rgb: np.ndarray, payloads: tuple[Payload, ...] = PAYLOADS) -> list[Found]:
    """The known payloads that read back from `rgb` (H, W, 3 uint8, at its original size)."""
    if rgb.ndim != 3 or rgb.shape[0] * rgb.shape[1] < MIN_SIDE_PIXELS:
        return []
    blocks = block_bits(rgb)
    found = []
    for payload in payloads:
        if len(blocks[0]) < 2 * len(payload.bits):  # too few votes per bit to say anything
            continue
        read = read_payload(blocks, len(payload.bits))
        agreement = float(np.mean(read == np.asarray(payload.bits, dtype=np.uint8)))
        if agreement >= MIN_AGREEMENT:
            found.append(Found(payload, agreement))
    return found
