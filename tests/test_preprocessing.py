"""Decode/validate, tensor and test-time variants: pure functions, no server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modeling.spec import ModelSpec
from preprocessing.augment import VARIANTS, tta_variants
from preprocessing.decode import DecodeLimits, decode_upload
from preprocessing.errors import InputError
from preprocessing.tensor import normalize, to_input_array
from tests.helpers import image_bytes, png_bomb

LIMITS = DecodeLimits(max_bytes=1_000_000, max_pixels=1_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_upload(image_bytes(fmt, size=(40, 30)), LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)


def _in_mode(mode: str) -> Image.Image:
    gray = (np.linspace(0, 1, 200).reshape(10, 20) * 255).astype(np.uint8)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    base = Image.open(io.BytesIO(image_bytes("PNG", size=(20, 10))))
    return Image.fromarray(gray).convert(mode) if mode in ("I", "F") else base.convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16", "I", "F"])
def test_every_pillow_mode_becomes_rgb(mode: str) -> None:
    from preprocessing.decode import to_rgb

    image = _in_mode(mode)
    assert image.mode == mode
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode in ("I;16", "I", "F"):
        assert np.asarray(out).max() == 255 and np.asarray(out).min() == 0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_uploads_in_other_modes(mode: str) -> None:
    buffer = io.BytesIO()
    _in_mode(mode).save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    out = decode_upload(buffer.getvalue(), LIMITS)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_png_keeps_its_range() -> None:
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    out = np.asarray(decode_upload(buffer.getvalue(), LIMITS))
    assert out.min() == 0 and out.max() == 255  # not clipped to white
    assert 100 < out.mean() < 155


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert np.asarray(decode_upload(buffer.getvalue(), LIMITS))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_upload(buffer.getvalue(), LIMITS).size == (20, 40)


def test_gif_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixel = np.asarray(decode_upload(buffer.getvalue(), LIMITS))[0, 0]
    assert pixel[0] > 200 and pixel[2] < 50


def _error(data: bytes, limits: DecodeLimits = LIMITS) -> InputError:
    with pytest.raises(InputError) as caught:
        decode_upload(data, limits)
    return caught.value


def test_empty_upload() -> None:
    assert (_error(b"").status, _error(b"").code) == (400, "EMPTY_FILE")


def test_upload_over_the_byte_limit() -> None:
    err = _error(image_bytes("PNG"), DecodeLimits(max_bytes=100, max_pixels=10**6))
    assert (err.status, err.code) == (413, "FILE_TOO_LARGE")


def test_not_an_image() -> None:
    for data in (
        b"hello world",
        b"%PDF-1.4\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        bytes(range(256)),
    ):
        err = _error(data)
        assert (err.status, err.code) == (415, "UNSUPPORTED_FORMAT")


def test_unsupported_image_format() -> None:
    err = _error(image_bytes("TIFF"))
    assert err.code == "UNSUPPORTED_FORMAT"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_image(fmt: str) -> None:
    data = image_bytes(fmt, size=(200, 200))
    err = _error(data[: len(data) // 2])
    assert (err.status, err.code) == (400, "INVALID_IMAGE")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # A PNG header that declares 100000 x 100000 pixels: refused before decoding anything.
    err = _error(png_bomb(100_000, 100_000))
    assert (err.status, err.code) == (413, "IMAGE_TOO_LARGE")


def test_pixel_limit() -> None:
    err = _error(png_bomb(2000, 600))
    assert (err.status, err.code) == (413, "IMAGE_TOO_LARGE")


def test_odd_but_valid_images() -> None:
    assert decode_upload(image_bytes("PNG", size=(1, 1)), LIMITS).size == (1, 1)
    assert decode_upload(image_bytes("PNG", size=(5000, 2)), LIMITS).size == (5000, 2)


def test_jpeg_draft_decodes_at_reduced_scale() -> None:
    data = image_bytes("JPEG", size=(1600, 1200))
    assert decode_upload(data, DecodeLimits(), draft_size=(160, 160)).size == (
        400,
        300,
    )  # smallest scale >= 160 on both sides


def test_tensor_and_normalisation() -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 128))
    array = to_input_array(image, (160, 120))
    assert array.shape == (160, 120, 3) and array.dtype == np.uint8
    batch = array[None]
    assert normalize(batch, "zero_one").max() == pytest.approx(1.0)
    assert normalize(batch, "minus_one_one").min() == pytest.approx(-1.0)
    assert normalize(batch, "raw").max() == 255.0
    with pytest.raises(ValueError):
        normalize(batch, "nope")  # type: ignore[arg-type]


def test_seven_test_time_variants() -> None:
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    variants = tta_variants(image)
    assert (
        [name for name, _ in variants]
        == list(VARIANTS)
        == [
            "original",
            "grayscale",
            "rotate_right",
            "rotate_left",
            "brightness_up",
            "brightness_down",
            "flip_horizontal",
        ]
    )
    arrays = {name: np.asarray(v) for name, v in variants}
    assert all(a.shape == (64, 64, 3) for a in arrays.values())
    assert np.array_equal(arrays["original"], np.asarray(image))
    assert np.array_equal(arrays["flip_horizontal"], np.asarray(image)[:, ::-1])
    gray = arrays["grayscale"]
    assert np.array_equal(gray[..., 0], gray[..., 1])
    assert arrays["brightness_down"].max() <= int(255 * 0.8)


def test_verdict_follows_the_metadata() -> None:
    legacy = ModelSpec(labels=("fake", "real"))  # output = P(real)
    fake = legacy.judge(0.05)
    assert (fake.prediction, round(fake.confidence, 6), round(fake.fake_probability, 6)) == (
        "fake",
        0.95,
        0.95,
    )
    real = legacy.judge(0.9)
    assert (real.prediction, round(real.confidence, 6)) == ("real", 0.9)
    p_fake_model = ModelSpec(labels=("real", "fake"), threshold=0.3)
    assert p_fake_model.judge(0.35).prediction == "fake"
    assert p_fake_model.judge(0.25).prediction == "real"
    assert legacy.output_meaning == "P(real)" and p_fake_model.output_meaning == "P(fake)"
    with pytest.raises(ValueError):
        ModelSpec(labels=("real", "real"))
