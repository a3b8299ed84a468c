"""Fuzzing the decode/validate path: whatever bytes arrive, `decode_upload` returns an upright
8-bit RGB image within the limits or raises `InputError` with a 4xx status; never anything
else, and never slowly. What decodes also goes through the tensor and test-time-variant steps.
Every input also goes through the provenance reader (serving/provenance.py: C2PA, XMP,
watermarks), which never raises and never trusts what is not intact: the seeds include files
signed with Content Credentials, and one test aims its edits at their manifests.

Inputs: arbitrary bytes, and valid images of every accepted format and mode mutated the way
broken or hostile files are (bit flips, truncations, overwrites, insertions, header fields set
to extreme values with the PNG checksums repaired so the change reaches the decoder).

A short, bounded run here (a few seconds); `bench/fuzz_decode.py` runs the same oracle for
minutes (atheris, coverage-guided) and reuses `SEEDS`, `mutate` and `check_upload`.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from preprocessing.augment import VARIANTS, tta_variants
from preprocessing.decode import DecodeLimits, decode_upload
from preprocessing.errors import InputError
from preprocessing.tensor import normalize, to_input_array
from serving.provenance import Provenance, ProvenanceOptions, ProvenanceReader
from tests.helpers import encode, noise_image
from tests.provenance_fixtures import actions, jpeg_segments, make_credential, sign

# Small limits: the oracle holds for any limits, and small ones keep every input cheap.
LIMITS = DecodeLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
INPUT_SIZE = (32, 32)
TIME_BUDGET_S = 2.0  # per input, decode + tensor + variants; typical cost is a few ms

# Pillow warns (UserWarning) about the corrupt EXIF blocks the mutations make; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---------------------------------------------------------------- seeds: one per format and mode
def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (12, 10), color) for color in ("red", "green", "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return encode(noise_image((20, 12)), "JPEG", exif=exif)


def _png16() -> bytes:
    values = (np.arange(16 * 12, dtype=np.uint32).reshape(12, 16) * 300).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


# Files signed with Content Credentials under a test CA the reader trusts (its trusted and
# AI-declaring path is reached too).
SIGNER = make_credential("Fuzz Root CA", "Fuzz Signer", "Fuzzing")
PROVENANCE = ProvenanceReader(ProvenanceOptions(trust_anchors=SIGNER.ca_pem.decode()))


def _signed(fmt: str, mime: str) -> bytes:
    data = encode(noise_image((24, 16), seed=3), fmt)
    return sign(data, mime, SIGNER, [actions(("c2pa.created", "trainedAlgorithmicMedia"))])


def manifest_span(data: bytes) -> tuple[int, int]:
    """Where the C2PA manifest lies in a signed seed: its APP11 segments (JPEG), its caBX chunk
    (PNG)."""
    if data.startswith(b"\xff\xd8"):
        spans = [(at, at + size) for marker, at, size in jpeg_segments(data) if marker == 0xEB]
        return spans[0][0], spans[-1][1]
    at = data.find(b"caBX") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    return at, at + 12 + length


def build_seeds() -> dict[str, bytes]:
    image = noise_image((24, 16))
    return {
        "jpeg_c2pa": _signed("JPEG", "image/jpeg"),
        "png_c2pa": _signed("PNG", "image/png"),
        "jpeg": encode(image, "JPEG", quality=80),
        "jpeg_progressive": encode(image, "JPEG", progressive=True),
        "jpeg_gray": encode(image.convert("L"), "JPEG"),
        "jpeg_cmyk": encode(image.convert("CMYK"), "JPEG"),
        "jpeg_exif": _exif_rotated(),
        "png": encode(image, "PNG"),
        "png_rgba": encode(image.convert("RGBA"), "PNG"),
        "png_palette": encode(image.convert("P"), "PNG"),
        "png_palette_transparent": encode(image.convert("P"), "PNG", transparency=0),
        "png_la": encode(image.convert("LA"), "PNG"),
        "png_1bit": encode(image.convert("1"), "PNG"),
        "png_16bit": _png16(),
        "png_optimized": encode(image, "PNG", optimize=True),
        "gif": encode(image, "GIF"),
        "gif_animated": _animated("GIF"),
        "webp": encode(image, "WEBP", quality=80),
        "webp_lossless_alpha": encode(image.convert("RGBA"), "WEBP", lossless=True),
        "webp_animated": _animated("WEBP"),
        "bmp": encode(image, "BMP"),
        "bmp_palette": encode(image.convert("P"), "BMP"),
    }


SEEDS = build_seeds()
SEED_NAMES = sorted(SEEDS)


# ---------------------------------------------------------------- mutations
INTERESTING = (0, 1, 2, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 65500, 0x10000)
INTERESTING += (0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 6325, 40_000_001)


@dataclass(frozen=True)
class Mutation:
    """One edit: kind in flip/truncate/overwrite/insert/delete/field; pos is taken modulo len."""

    kind: str
    pos: int
    value: int = 0
    data: bytes = b""
    width: int = 1
    big_endian: bool = True


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk checksum, so that an edit reaches the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            out += data[pos:]
            return bytes(out)
        body = data[pos + 4 : end]
        out += data[pos:end] + struct.pack(">I", zlib.crc32(body))
        pos = end + 4
    out += data[pos:]
    return bytes(out)


def apply(data: bytes, mutation: Mutation) -> bytes:
    if not data:
        return mutation.data
    pos = mutation.pos % len(data)
    buf = bytearray(data)
    if mutation.kind == "flip":
        buf[pos] ^= 1 << (mutation.value % 8)
    elif mutation.kind == "truncate":
        del buf[pos:]
    elif mutation.kind == "overwrite":
        buf[pos : pos + len(mutation.data)] = mutation.data
    elif mutation.kind == "insert":
        buf[pos:pos] = mutation.data
    elif mutation.kind == "delete":
        del buf[pos : pos + 1 + mutation.value % 64]
    elif mutation.kind == "field":  # a header field (first 64 bytes) set to an extreme value
        pos = mutation.pos % min(len(buf), 64)
        value = mutation.value % (1 << (8 * mutation.width))
        fmt = (">" if mutation.big_endian else "<") + {1: "B", 2: "H", 4: "I"}[mutation.width]
        buf[pos : pos + mutation.width] = struct.pack(fmt, value)
    return bytes(buf)


def mutate(data: bytes, mutations: list[Mutation], repair_png: bool = True) -> bytes:
    for mutation in mutations:
        data = apply(data, mutation)
    return fix_png_crcs(data) if repair_png else data


mutations = st.builds(
    Mutation,
    kind=st.sampled_from(["flip", "flip", "truncate", "overwrite", "insert", "delete", "field", "field"]),
    pos=st.integers(0, 1 << 16),
    value=st.one_of(st.sampled_from(INTERESTING), st.integers(0, 1 << 32)),
    data=st.binary(min_size=1, max_size=32),
    width=st.sampled_from([1, 2, 4]),
    big_endian=st.booleans(),
)


# ---------------------------------------------------------------- the oracle
@dataclass
class Outcome:
    decoded: bool
    status: int | None  # the InputError's status when refused
    seconds: float


def check_upload(
    data: bytes,
    limits: DecodeLimits = LIMITS,
    draft_size: tuple[int, int] | None = None,
    postprocess: bool = True,
) -> Outcome:
    """Run one input through decode -> tensor -> normalise -> variants, and the provenance
    reader, and check the contract.

    Raises AssertionError for a broken contract; any other exception escapes as found."""
    started = time.perf_counter()
    try:
        image = decode_upload(data, limits, draft_size=draft_size)
    except InputError as exc:
        check_provenance(data, None)  # the server reads it only from what decodes; this is stricter
        seconds = time.perf_counter() - started
        assert 400 <= exc.status < 500, f"InputError with status {exc.status}"
        assert exc.code and exc.code.isupper(), f"bad error code {exc.code!r}"
        assert seconds < TIME_BUDGET_S, f"refusal took {seconds:.2f}s"
        return Outcome(False, exc.status, seconds)
    check_provenance(data, image)
    assert isinstance(image, Image.Image), type(image)
    assert image.mode == "RGB", image.mode
    width, height = image.size
    assert width >= 1 and height >= 1, image.size
    assert width * height <= limits.max_pixels, image.size
    if postprocess:
        array = to_input_array(image, INPUT_SIZE)
        assert array.shape == (*INPUT_SIZE, 3) and array.dtype == np.uint8, array.shape
        batch = normalize(array[None], "zero_one")
        assert batch.dtype == np.float32 and np.isfinite(batch).all()
        assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
        variants = tta_variants(Image.fromarray(array))
        assert len(variants) == len(VARIANTS)
        for name, variant in variants:
            assert variant.mode == "RGB" and variant.size == INPUT_SIZE[::-1], (name, variant.mode)
    seconds = time.perf_counter() - started
    assert seconds < TIME_BUDGET_S, f"input took {seconds:.2f}s"
    return Outcome(True, None, seconds)


def check_provenance(data: bytes, image: Image.Image | None) -> Provenance:
    """The provenance reader's contract: it answers (never raises), in time, and trusts only an
    intact manifest (the library's "Trusted", no failure), deciding only on one."""
    started = time.perf_counter()
    provenance = PROVENANCE.read_image(data, image)
    seconds = time.perf_counter() - started
    assert isinstance(provenance, Provenance)
    assert seconds < TIME_BUDGET_S, f"provenance took {seconds:.2f}s"
    c2pa = provenance.c2pa
    if c2pa is not None and c2pa.trusted:
        assert c2pa.valid and c2pa.validation_state == "Trusted" and not c2pa.failures, c2pa
    if provenance.decides:
        assert c2pa is not None and c2pa.trusted and c2pa.ai == "generated", provenance
    return provenance


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=4000,  # ms; generous for a loaded 2-core machine, the oracle asserts its own budget
    database=None,  # no .hypothesis/ directory in the project
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096), draft=st.sampled_from([None, (32, 32), (640, 640)]))
def test_arbitrary_bytes(data: bytes, draft: tuple[int, int] | None) -> None:
    check_upload(data, draft_size=draft)


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(SEED_NAMES),
    edits=st.lists(mutations, min_size=1, max_size=6),
    repair_png=st.booleans(),
    draft=st.sampled_from([None, (32, 32)]),
)
def test_mutated_images(
    seed: str, edits: list[Mutation], repair_png: bool, draft: tuple[int, int] | None
) -> None:
    check_upload(mutate(SEEDS[seed], edits, repair_png), draft_size=draft)


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from([n for n in SEED_NAMES if n.startswith(("png", "gif", "bmp", "webp", "jpeg"))]),
    width=st.sampled_from([0, 1, 2, 255, 65535, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    height=st.sampled_from([0, 1, 2, 255, 65535, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1),
)
def test_declared_dimensions(seed: str, width: int, height: int) -> None:
    """Dimensions written into the header (each format's own field): bombs cost nothing."""
    data = set_dimensions(SEEDS[seed], width, height)
    outcome = check_upload(data)
    if not outcome.decoded and width * height > LIMITS.max_pixels:
        assert outcome.status in (400, 413, 415), outcome


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(["jpeg_c2pa", "png_c2pa"]),
    edits=st.lists(mutations, min_size=1, max_size=6),
    repair_png=st.booleans(),
)
def test_mutated_manifests(seed: str, edits: list[Mutation], repair_png: bool) -> None:
    """Edits aimed at the manifest's bytes (each position is taken inside its span)."""
    data = SEEDS[seed]
    start, end = manifest_span(data)
    aimed = [
        Mutation(
            e.kind if e.kind != "field" else "overwrite",
            start + e.pos % (end - start),
            e.value,
            e.data,
            e.width,
        )
        for e in edits
    ]
    check_upload(mutate(data, aimed, repair_png))


def test_signed_seeds_are_trusted_until_changed() -> None:
    """The seeds read as signed, trusted and AI-declaring; one changed byte of pixels breaks it."""
    for name in ("jpeg_c2pa", "png_c2pa"):
        provenance = check_provenance(SEEDS[name], None)
        assert provenance.decides, (name, provenance)
    data = bytearray(SEEDS["jpeg_c2pa"])
    data[-10] ^= 0x01  # in the entropy-coded pixels, before the end marker
    c2pa = check_provenance(bytes(data), None).c2pa
    assert c2pa is not None and c2pa.trusted is False and "assertion.dataHash.mismatch" in c2pa.failures


def set_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Write width x height into the format's header, clipped to the field's size."""
    buf = bytearray(data)
    if data.startswith(b"\x89PNG"):
        buf[16:24] = struct.pack(">II", width, height)
        return fix_png_crcs(bytes(buf))
    if data.startswith(b"GIF"):
        buf[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        return bytes(buf)
    if data.startswith(b"BM"):
        buf[18:26] = struct.pack("<ii", _signed32(width), _signed32(height))
        return bytes(buf)
    if data.startswith(b"RIFF"):
        at = data.find(b"VP8X")
        if at >= 0:
            buf[at + 12 : at + 18] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + (
                (height - 1) & 0xFFFFFF
            ).to_bytes(3, "little")
        return bytes(buf)
    for marker in (b"\xff\xc0", b"\xff\xc2"):  # JPEG baseline / progressive frame header
        at = data.find(marker)
        if at >= 0:
            buf[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            return bytes(buf)
    return bytes(buf)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# ---------------------------------------------------------------- sanity of the harness itself
def test_every_seed_decodes() -> None:
    """The seeds are valid images: the oracle accepts each of them."""
    for name, data in SEEDS.items():
        assert check_upload(data).decoded, name


def test_png_checksum_repair_reaches_the_decoder() -> None:
    """A PNG whose declared size is changed and checksum repaired is judged on its header."""
    bomb = set_dimensions(SEEDS["png"], 100_000, 100_000)
    outcome = check_upload(bomb)
    assert (outcome.decoded, outcome.status) == (False, 413)
