"""A corpus of hostile and odd uploads, generated here (nothing large is committed).

Each case is one row: an id, the request, the expected status and, for a 4xx, the expected
`error_code`. Client faults answer a 4xx in the legacy JSON error shape; valid but odd images
(1x1, extreme aspect ratios, 16-bit, CMYK, palette, alpha, animated, EXIF-rotated, trailing
bytes, hostile filenames) answer 200 with a verdict. After every case the server still answers
its health check, no upload file is left in BentoML's request temp dirs, and hostile filenames
write nothing outside them. tests/test_http_errors.py keeps its own, smaller table; the cases
here are different files and requests, not copies of those.

In process (the service's ASGI app): these are error-body checks. The legacy routes read an
upload in memory and never write it to disk; the Python client's routes go through BentoML's
`$TMPDIR/bentoml-request-*/`, which the leak check watches. Bytes below HTTP parsing (malformed
requests) go to the shared real server, whose HTTP parser is the one that answers them.
"""

from __future__ import annotations

import functools
import socket
import struct
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from serving.pipeline import FACE_CROP_MAX_SIDE
from serving.settings import Settings
from tests.helpers import ROOT, ServerProcess, encode, noise_image, png_bomb

DETECT = "/api/v1/detect/"
AUGMENTED = "/api/v1/detect/augmented"
HEALTH = "/api/v1/detect/health"
BOUNDARY = b"hostile-corpus-boundary"
MAX_UPLOAD = Settings.model_fields["max_upload_bytes"].default  # the servers here keep the default
MARKER = uuid.uuid4().hex  # in every hostile filename that must not create a file


# ------------------------------------------------------------------------------ images
@functools.cache
def jpeg() -> bytes:
    return encode(noise_image((200, 150)), "JPEG", quality=85)


@functools.cache
def photo() -> bytes:
    """A noise JPEG too large to be a face crop: a photo, in which no face is found."""
    return encode(noise_image((FACE_CROP_MAX_SIDE + 80, FACE_CROP_MAX_SIDE)), "JPEG", quality=85)


@functools.cache
def png() -> bytes:
    return encode(noise_image((64, 48)), "PNG")


def gif() -> bytes:
    return encode(noise_image((64, 48)), "GIF")


def webp() -> bytes:
    return encode(noise_image((64, 48)), "WEBP")


def bmp() -> bytes:
    return encode(noise_image((64, 48)), "BMP")


def converted(mode: str, fmt: str = "PNG", size: tuple[int, int] = (64, 48), **options: Any) -> bytes:
    return encode(noise_image(size).convert(mode), fmt, **options)


def png16() -> bytes:
    values = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def png48() -> bytes:
    """16 bits per channel RGB, written chunk by chunk (Pillow does not save it)."""
    width, height = 16, 8
    rows = b"".join(b"\x00" + bytes((x * 37 + y) % 256 for x in range(width * 6)) for y in range(height))
    return _png_file(struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0), zlib.compress(rows))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_file(ihdr: bytes, idat: bytes, extra: bytes = b"") -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_text_bomb(kind: bytes) -> bytes:
    """A metadata chunk that inflates to 50 MiB (Pillow caps text chunks)."""
    payload = {b"zTXt": b"comment\x00\x00", b"iCCP": b"icc\x00\x00"}[kind]
    bomb = _chunk(kind, payload + zlib.compress(b"a" * (50 * 1024 * 1024), 9))
    data = png()
    return data[:33] + bomb + data[33:]


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 40), color) for color in ("red", "green", "blue", "white")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


def exif_rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise_image((60, 40)), "JPEG", exif=exif)


def with_byte_changes(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def jpeg_sof(height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0) declaring another size."""
    data = jpeg()
    at = data.find(b"\xff\xc0")
    return with_byte_changes(data, at + 5, struct.pack(">HH", height, width))


def jpeg_corrupt_scan() -> bytes:
    data = jpeg()
    middle = len(data) // 2
    noise = np.random.default_rng(7).integers(0, 256, 256, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    return with_byte_changes(data, middle, noise)


def png_bad_crc(chunk: bytes) -> bytes:
    data = png()
    at = data.find(chunk)
    (length,) = struct.unpack(">I", data[at - 4 : at])
    crc_at = at + 4 + length
    return with_byte_changes(data, crc_at, bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]))


def png_corrupt_idat() -> bytes:
    data = png()
    at = data.find(b"IDAT") + 4 + 10  # inside the deflate stream
    return with_byte_changes(data, at, bytes([data[at] ^ 0xFF]))


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00\x3b"


def webp_bomb() -> bytes:
    """An extended WebP header (VP8X) declaring a 16384 x 16384 canvas, and nothing else."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (16383).to_bytes(3, "little") * 2
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def bmp_header(width: int, height: int, pixels: bytes = b"") -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + info + pixels


def large_blank_png(side: int) -> bytes:
    """A side x side black PNG: a few hundred KB that declare side**2 real pixels."""
    return encode(Image.new("L", (side, side)), "PNG")


def random_bytes(n: int, seed: int = 3) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><image href="file:///etc/passwd"/></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
JSON_DOC = b'{"image": "data:image/jpeg;base64,/9j/4AAQ", "file": "/etc/passwd"}'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
ZIP = b"PK\x03\x04" + bytes(26) + b"evil.jpg" + bytes(64)
ELF = b"\x7fELF\x02\x01\x01" + bytes(120)


# ------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Part:
    name: bytes
    content: bytes
    filename: bytes | None = b"upload.jpg"
    content_type: bytes | None = b"image/jpeg"
    disposition: bytes | None = None  # the whole Content-Disposition value, when given


def multipart(*parts: Part, boundary: bytes = BOUNDARY, close: bool = True) -> dict[str, Any]:
    """A multipart body built byte by byte: any filename, any header, any damage."""
    body = b""
    for part in parts:
        disposition = part.disposition or (
            b'form-data; name="'
            + part.name
            + b'"'
            + (b'; filename="' + part.filename + b'"' if part.filename is not None else b"")
        )
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if part.content_type is not None:
            body += b"Content-Type: " + part.content_type + b"\r\n"
        body += b"\r\n" + part.content + b"\r\n"
    if close:
        body += b"--" + boundary + b"--\r\n"
    return {
        "content": body,
        "headers": {"content-type": f"multipart/form-data; boundary={boundary.decode()}"},
    }


def upload(
    data: bytes, filename: bytes | None = b"upload.jpg", content_type: bytes | None = b"image/jpeg"
) -> dict:
    return multipart(Part(b"file", data, filename, content_type))


def upload_photo(
    data: bytes, filename: bytes | None = b"upload.jpg", content_type: bytes | None = b"image/jpeg"
) -> dict:
    """`upload` of an image that is no face crop, asking for an answer when no face is found
    (require_face=false: the legacy routes' default is 422 NO_FACE)."""
    return multipart(Part(b"file", data, filename, content_type), Part(b"require_face", b"false", None, None))


def body(content: bytes, content_type: str | None) -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": content_type} if content_type else {}}


def nothing_outside_temp(*paths: Path) -> Callable[[], None]:
    """The upload's filename must not have created any of these, nor anything named with MARKER."""

    def check() -> None:
        for path in paths:
            assert not path.exists(), f"hostile filename created {path}"
        tmp = Path(tempfile.gettempdir())
        for where in (tmp, ROOT, Path.home()):
            found = [p for p in [*where.glob(f"*{MARKER}*"), *where.glob(f"*/*{MARKER}*")] if p.exists()]
            assert not found, f"hostile filename wrote {found}"

    return check


@dataclass(frozen=True)
class Case:
    id: str
    request: Callable[[], dict[str, Any]]  # httpx.request keyword arguments, built on demand
    status: int
    code: str | None = None  # the error_code of a 4xx
    method: str = "POST"
    path: str = DETECT
    after: Callable[[], None] | None = None  # an extra check once the answer has come
    xfail: str | None = None  # a known server bug: reason (strict, so a fix shows as XPASS)


def ok(case_id: str, request: Callable[[], dict[str, Any]], path: str = DETECT, **kw: Any) -> Case:
    """A valid (if odd) image: 200 and a verdict."""
    return Case(case_id, request, 200, None, path=path, **kw)


def fault(case_id: str, request: Callable[[], dict[str, Any]], status: int, code: str, **kw: Any) -> Case:
    return Case(case_id, request, status, code, **kw)


TRAVERSAL = f"../../../../tmp/pwned_{MARKER}.jpg"
ABSOLUTE = f"/tmp/pwned_abs_{MARKER}.jpg"
HOME_TRAVERSAL = f"../../../../../../../../root/pwned_home_{MARKER}.jpg"
BACKSLASH = f"..\\..\\..\\..\\tmp\\pwned_bs_{MARKER}.jpg"
SHELL = f"$(touch /tmp/pwned_shell_{MARKER}).jpg;rm -rf x`id`"

CASES: list[Case] = [
    # --- fields: missing, misnamed, extra, wrong kind
    fault(
        "no-fields-empty-multipart",
        lambda: body(b"--" + BOUNDARY + b"--\r\n", "multipart/form-data; boundary=" + BOUNDARY.decode()),
        400,
        "MISSING_FILE",
    ),
    fault("field-name-capitalised", lambda: multipart(Part(b"File", jpeg())), 400, "MISSING_FILE"),
    fault("field-name-files", lambda: multipart(Part(b"files", jpeg())), 400, "MISSING_FILE"),
    fault("field-name-with-space", lambda: multipart(Part(b"file ", jpeg())), 400, "MISSING_FILE"),
    fault(
        "file-field-is-local-path-text",
        lambda: multipart(Part(b"file", b"/etc/passwd", None, None)),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "file-field-is-file-url",
        lambda: multipart(Part(b"file", b"file:///etc/passwd", None, None)),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "unknown-text-field",
        lambda: multipart(Part(b"file", jpeg()), Part(b"debug", b"1", None, None)),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "three-files-in-one-field",
        lambda: multipart(Part(b"file", jpeg()), Part(b"file", png()), Part(b"file", gif())),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "require-face-not-a-bool",
        lambda: multipart(Part(b"file", jpeg()), Part(b"require_face", b"maybe", None, None)),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "require-face-true-no-face",
        lambda: multipart(Part(b"file", photo()), Part(b"require_face", b"true", None, None)),
        422,
        "NO_FACE",
    ),
    fault("no-face-photo-legacy-default", lambda: upload(photo()), 422, "NO_FACE"),
    fault("no-face-photo-augmented", lambda: upload(photo()), 422, "NO_FACE", path=AUGMENTED),
    fault(
        "thousand-unknown-fields",
        lambda: multipart(
            Part(b"file", jpeg()), *[Part(f"f{i}".encode(), b"x", None, None) for i in range(1000)]
        ),
        400,
        "BAD_REQUEST",
    ),
    # --- empty, truncated, corrupt
    fault("jpeg-magic-only", lambda: upload(b"\xff\xd8\xff"), 415, "UNSUPPORTED_FORMAT"),
    fault("jpeg-first-300-bytes", lambda: upload(jpeg()[:300]), 400, "INVALID_IMAGE"),
    fault("jpeg-zero-dimensions", lambda: upload(jpeg_sof(0, 0)), 415, "UNSUPPORTED_FORMAT"),
    fault(
        "png-truncated-half",
        lambda: upload(png()[: len(png()) // 2], b"a.png", b"image/png"),
        400,
        "INVALID_IMAGE",
    ),
    fault(
        "png-corrupt-deflate-stream",
        lambda: upload(png_corrupt_idat(), b"a.png", b"image/png"),
        400,
        "INVALID_IMAGE",
    ),
    fault(
        "png-bad-ihdr-checksum",
        lambda: upload(png_bad_crc(b"IHDR"), b"a.png", b"image/png"),
        415,
        "UNSUPPORTED_FORMAT",
    ),
    fault(
        "png-zero-width", lambda: upload(png_bomb(0, 10), b"a.png", b"image/png"), 415, "UNSUPPORTED_FORMAT"
    ),
    fault(
        "png-ztxt-metadata-bomb",
        lambda: upload(png_text_bomb(b"zTXt"), b"a.png", b"image/png"),
        400,
        "INVALID_IMAGE",
    ),
    fault(
        "png-iccp-metadata-bomb",
        lambda: upload(png_text_bomb(b"iCCP"), b"a.png", b"image/png"),
        400,
        "INVALID_IMAGE",
    ),
    fault(
        "gif-truncated-half",
        lambda: upload(gif()[: len(gif()) // 2], b"a.gif", b"image/gif"),
        400,
        "INVALID_IMAGE",
    ),
    fault("gif-header-only", lambda: upload(gif()[:20], b"a.gif", b"image/gif"), 415, "UNSUPPORTED_FORMAT"),
    fault(
        "webp-truncated-half",
        lambda: upload(webp()[: len(webp()) // 2], b"a.webp", b"image/webp"),
        400,
        "INVALID_IMAGE",
    ),
    fault(
        "webp-riff-header-only",
        lambda: upload(b"RIFF\x00\x00\x00\x00WEBP", b"a.webp", b"image/webp"),
        415,
        "UNSUPPORTED_FORMAT",
    ),
    fault(
        "bmp-truncated-half",
        lambda: upload(bmp()[: len(bmp()) // 2], b"a.bmp", b"image/bmp"),
        400,
        "INVALID_IMAGE",
    ),
    fault("random-bytes", lambda: upload(random_bytes(8192)), 415, "UNSUPPORTED_FORMAT"),
    fault("null-bytes", lambda: upload(bytes(8192)), 415, "UNSUPPORTED_FORMAT"),
    # --- decompression bombs: huge declared dimensions, tiny files
    fault(
        "png-bomb-4g-by-1",
        lambda: upload(png_bomb(2**32 - 1, 1), b"a.png", b"image/png"),
        413,
        "IMAGE_TOO_LARGE",
    ),
    fault(
        "png-bomb-thin-8-by-5m",
        lambda: upload(png_bomb(8, 5_000_001), b"a.png", b"image/png"),
        413,
        "IMAGE_TOO_LARGE",
    ),
    fault(
        "png-real-6400-squared",
        lambda: upload(large_blank_png(6400), b"a.png", b"image/png"),
        413,
        "IMAGE_TOO_LARGE",
    ),
    fault(
        "gif-bomb-65535-squared", lambda: upload(gif_bomb(), b"a.gif", b"image/gif"), 413, "IMAGE_TOO_LARGE"
    ),
    fault("jpeg-bomb-65500-squared", lambda: upload(jpeg_sof(65500, 65500)), 413, "IMAGE_TOO_LARGE"),
    fault(
        "webp-bomb-vp8x-16384-squared",
        lambda: upload(webp_bomb(), b"a.webp", b"image/webp"),
        413,
        "IMAGE_TOO_LARGE",
    ),
    fault(
        "bmp-bomb-100k-squared",
        lambda: upload(bmp_header(100_000, 100_000), b"a.bmp", b"image/bmp"),
        413,
        "IMAGE_TOO_LARGE",
    ),
    fault(
        "augmented-gif-bomb",
        lambda: upload(gif_bomb(), b"a.gif", b"image/gif"),
        413,
        "IMAGE_TOO_LARGE",
        path=AUGMENTED,
    ),
    # --- other formats, disguised as images
    fault("svg-as-jpeg", lambda: upload(SVG, b"a.jpg", b"image/jpeg"), 415, "UNSUPPORTED_FORMAT"),
    fault("svg-as-svg", lambda: upload(SVG, b"a.svg", b"image/svg+xml"), 415, "UNSUPPORTED_FORMAT"),
    fault("pdf-as-png", lambda: upload(PDF, b"a.png", b"image/png"), 415, "UNSUPPORTED_FORMAT"),
    fault("html-as-gif", lambda: upload(HTML, b"a.gif", b"image/gif"), 415, "UNSUPPORTED_FORMAT"),
    fault("json-as-jpeg", lambda: upload(JSON_DOC, b"a.jpg", b"image/jpeg"), 415, "UNSUPPORTED_FORMAT"),
    fault("zip-as-jpeg", lambda: upload(ZIP), 415, "UNSUPPORTED_FORMAT"),
    fault("elf-as-jpeg", lambda: upload(ELF), 415, "UNSUPPORTED_FORMAT"),
    fault("heic", lambda: upload(HEIC, b"a.heic", b"image/heic"), 415, "UNSUPPORTED_FORMAT"),
    fault(
        "ico", lambda: upload(converted("RGB", "ICO"), b"a.ico", b"image/x-icon"), 415, "UNSUPPORTED_FORMAT"
    ),
    fault(
        "tga", lambda: upload(converted("RGB", "TGA"), b"a.tga", b"image/x-tga"), 415, "UNSUPPORTED_FORMAT"
    ),
    fault(
        "ppm",
        lambda: upload(converted("RGB", "PPM"), b"a.ppm", b"image/x-portable-pixmap"),
        415,
        "UNSUPPORTED_FORMAT",
    ),
    fault(
        "augmented-pdf",
        lambda: upload(PDF, b"a.png", b"image/png"),
        415,
        "UNSUPPORTED_FORMAT",
        path=AUGMENTED,
    ),
    # --- size: the byte limit, exactly
    ok("jpeg-padded-to-exactly-the-limit", lambda: upload(jpeg() + bytes(MAX_UPLOAD - len(jpeg())))),
    fault(
        "jpeg-padded-one-byte-over",
        lambda: upload(jpeg() + bytes(MAX_UPLOAD + 1 - len(jpeg()))),
        413,
        "FILE_TOO_LARGE",
    ),
    # --- bodies that are not multipart, or broken multipart
    fault(
        "urlencoded-form",
        lambda: body(b"file=%2Fetc%2Fpasswd", "application/x-www-form-urlencoded"),
        400,
        "BAD_REQUEST",
    ),
    fault("text-plain-body", lambda: body(b"hello", "text/plain"), 400, "BAD_REQUEST"),
    fault("no-content-type", lambda: body(jpeg(), None), 400, "BAD_REQUEST"),
    fault(
        "multipart-mixed",
        lambda: {
            **multipart(Part(b"file", jpeg())),
            "headers": {"content-type": "multipart/mixed; boundary=" + BOUNDARY.decode()},
        },
        400,
        "BAD_REQUEST",
    ),
    # Media types are case-insensitive (RFC 9110): the upload policy reads them so.
    ok(
        "multipart-upper-case-media-type",
        lambda: {
            **multipart(Part(b"file", jpeg())),
            "headers": {"content-type": "MULTIPART/FORM-DATA; boundary=" + BOUNDARY.decode()},
        },
    ),
    fault(
        "json-deeply-nested",
        lambda: body(b"[" * 100_000 + b"]" * 100_000, "application/json"),
        400,
        "BAD_REQUEST",
    ),
    fault("json-null", lambda: body(b"null", "application/json"), 400, "BAD_REQUEST"),
    fault(
        "multipart-boundary-mismatch",
        lambda: {
            **multipart(Part(b"file", jpeg()), boundary=b"other"),
            "headers": {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()},
        },
        400,
        "BAD_REQUEST",
    ),
    # The file part began but the body ended inside it: a cut upload, not a missing file.
    fault(
        "multipart-no-closing-boundary",
        lambda: multipart(Part(b"file", jpeg()), close=False),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "multipart-part-without-disposition",
        lambda: body(
            b"--"
            + BOUNDARY
            + b"\r\nContent-Type: image/jpeg\r\n\r\n"
            + jpeg()
            + b"\r\n--"
            + BOUNDARY
            + b"--\r\n",
            "multipart/form-data; boundary=" + BOUNDARY.decode(),
        ),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "multipart-disposition-garbage",
        lambda: multipart(Part(b"file", jpeg(), disposition=b"\xff\xfe\x00garbage")),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "multipart-part-header-100kb",
        lambda: multipart(
            Part(
                b"file",
                jpeg(),
                disposition=b'form-data; name="file"; filename="a.jpg"; x="' + b"a" * 100_000 + b'"',
            )
        ),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "multipart-no-blank-line",
        lambda: body(
            b"--"
            + BOUNDARY
            + b'\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            + jpeg(),
            "multipart/form-data; boundary=" + BOUNDARY.decode(),
        ),
        400,
        "BAD_REQUEST",
    ),
    fault(
        "multipart-gzip-encoded",
        lambda: {
            "content": b"\x1f\x8b" + bytes(32),
            "headers": {
                "content-type": "multipart/form-data; boundary=" + BOUNDARY.decode(),
                "content-encoding": "gzip",
            },
        },
        400,
        "BAD_REQUEST",
    ),
    ok(
        "multipart-boundary-quoted",
        lambda: {
            **multipart(Part(b"file", jpeg())),
            "headers": {"content-type": f'multipart/form-data; boundary="{BOUNDARY.decode()}"'},
        },
    ),
    ok("multipart-boundary-70-chars", lambda: multipart(Part(b"file", jpeg()), boundary=b"b" * 70)),
    # --- wrong methods and routes
    fault("delete-detect", lambda: {}, 405, "METHOD_NOT_ALLOWED", method="DELETE"),
    fault("patch-augmented", lambda: {}, 405, "METHOD_NOT_ALLOWED", method="PATCH", path=AUGMENTED),
    fault(
        "put-detect-alias-no-slash",
        lambda: {},
        405,
        "METHOD_NOT_ALLOWED",
        method="PUT",
        path="/api/v1/detect",
    ),
    fault("get-augmented", lambda: {}, 405, "METHOD_NOT_ALLOWED", method="GET", path=AUGMENTED),
    fault("trace-detect", lambda: {}, 405, "METHOD_NOT_ALLOWED", method="TRACE"),
    fault("made-up-method", lambda: {}, 405, "METHOD_NOT_ALLOWED", method="BREW"),
    fault(
        "encoded-path-traversal-route",
        lambda: {},
        404,
        "NOT_FOUND",
        method="GET",
        path="/api/v1/detect/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ),
    fault(
        "static-path-traversal",
        lambda: {},
        404,
        "NOT_FOUND",
        method="GET",
        path="/static_content/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ),
    fault("double-slash-route", lambda: upload(jpeg()), 404, "NOT_FOUND", path="//api/v1/detect/"),
    fault(
        "post-health-broken-json",
        lambda: body(b"{not json", "application/json"),
        400,
        "BAD_REQUEST",
        path="/health",  # the Python client's health route (POST)
    ),
    fault(
        "post-legacy-health", lambda: body(b"{}", "application/json"), 405, "METHOD_NOT_ALLOWED", path=HEALTH
    ),
    # --- hostile filenames: the name is metadata, never a path
    ok(
        "filename-path-traversal",
        lambda: upload(jpeg(), TRAVERSAL.encode()),
        after=nothing_outside_temp(Path(f"/tmp/pwned_{MARKER}.jpg")),
    ),
    ok(
        "filename-absolute-path",
        lambda: upload(jpeg(), ABSOLUTE.encode()),
        after=nothing_outside_temp(Path(ABSOLUTE)),
    ),
    ok(
        "filename-traversal-to-home",
        lambda: upload(jpeg(), HOME_TRAVERSAL.encode()),
        after=nothing_outside_temp(Path.home() / f"pwned_home_{MARKER}.jpg"),
    ),
    ok(
        "filename-backslash-traversal",
        lambda: upload(jpeg(), BACKSLASH.encode()),
        after=nothing_outside_temp(),
    ),
    ok(
        "filename-shell-metacharacters",
        lambda: upload(jpeg(), SHELL.encode()),
        after=nothing_outside_temp(Path(f"/tmp/pwned_shell_{MARKER}")),
    ),
    ok("filename-non-utf8", lambda: upload(jpeg(), b"\xff\xfe\xc3(\x80.jpg")),
    ok("filename-unicode-rtl-override", lambda: upload(jpeg(), "\u202egpj.exe\u00fc\u20ac.jpg".encode())),
    ok("filename-empty", lambda: upload(jpeg(), b"")),
    # An HTML form, or werkzeug's test client, with no file chosen: an empty part, filename "".
    fault("no-file-selected", lambda: upload(b"", b"", b"application/octet-stream"), 400, "EMPTY_FILE"),
    # BentoML names its temp file after the filename (ENAMETOOLONG was a 500): the policy cuts it first.
    ok("client-route-filename-5000-chars", lambda: upload(jpeg(), b"a" * 5000 + b".jpg"), path="/detect"),
    ok("filename-dot-dot", lambda: upload(jpeg(), b"..")),
    ok("filename-trailing-slash", lambda: upload(jpeg(), b"dir/")),
    ok("filename-240-chars", lambda: upload(jpeg(), b"a" * 236 + b".jpg")),
    ok("filename-nul-byte", lambda: upload(jpeg(), b"a\x00b.jpg")),
    # The upload policy takes part headers up to 16 KiB (serving/multipart.py): a long name is served.
    ok("filename-5000-chars", lambda: upload(jpeg(), b"a" * 5000 + b".jpg")),
    ok("filename-300-chars", lambda: upload(jpeg(), b"a" * 296 + b".jpg")),
    ok("filename-80-emoji", lambda: upload(jpeg(), ("\U0001f600" * 80 + ".jpg").encode())),
    # --- content types that lie: the bytes decide
    ok("png-sent-as-text-plain", lambda: upload(png(), b"a.txt", b"text/plain")),
    ok("jpeg-sent-as-octet-stream", lambda: upload(jpeg(), b"a.bin", b"application/octet-stream")),
    ok("jpeg-part-content-type-garbage", lambda: upload(jpeg(), b"a.jpg", b"\xff\xfe;;;")),
    ok("jpeg-part-without-content-type", lambda: upload(jpeg(), b"a.jpg", None)),
    # --- valid but odd images
    ok("jpeg-1x1", lambda: upload(converted("RGB", "JPEG", (1, 1)))),
    ok("png-1x1", lambda: upload(converted("RGB", "PNG", (1, 1)), b"a.png", b"image/png")),
    ok("gif-1x1", lambda: upload(converted("RGB", "GIF", (1, 1)), b"a.gif", b"image/gif")),
    ok("png-10000x1", lambda: upload_photo(converted("RGB", "PNG", (10_000, 1)), b"a.png", b"image/png")),
    ok("png-1x10000", lambda: upload_photo(converted("RGB", "PNG", (1, 10_000)), b"a.png", b"image/png")),
    ok("jpeg-4000x2", lambda: upload_photo(converted("RGB", "JPEG", (4000, 2)))),
    ok("png-16-bit-grey", lambda: upload(png16(), b"a.png", b"image/png")),
    ok("png-16-bit-rgb", lambda: upload_photo(png48(), b"a.png", b"image/png")),
    ok("jpeg-cmyk", lambda: upload(converted("CMYK", "JPEG"))),
    ok("jpeg-greyscale", lambda: upload(converted("L", "JPEG"))),
    ok("jpeg-progressive", lambda: upload(converted("RGB", "JPEG", progressive=True))),
    ok("jpeg-exif-orientation-8", lambda: upload(exif_rotated(8))),
    ok("jpeg-exif-orientation-invalid-99", lambda: upload(exif_rotated(99))),
    ok(
        "jpeg-exif-garbage",
        lambda: upload(encode(noise_image((60, 40)), "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 40)),
    ),
    ok("jpeg-corrupt-scan-data", lambda: upload(jpeg_corrupt_scan())),
    ok("jpeg-trailing-garbage", lambda: upload(jpeg() + random_bytes(100_000))),
    ok("gif-with-zip-appended", lambda: upload(gif() + ZIP, b"a.gif", b"image/gif")),
    # Pillow checks the header's checksum but not those of pixel chunks: the pixels decode.
    ok("png-bad-idat-checksum", lambda: upload(png_bad_crc(b"IDAT"), b"a.png", b"image/png")),
    ok("png-palette", lambda: upload(converted("P"), b"a.png", b"image/png")),
    ok("png-palette-transparent", lambda: upload(converted("P", transparency=0), b"a.png", b"image/png")),
    ok("png-rgba", lambda: upload(converted("RGBA"), b"a.png", b"image/png")),
    ok("png-grey-alpha", lambda: upload(converted("LA"), b"a.png", b"image/png")),
    ok("png-1-bit", lambda: upload(converted("1"), b"a.png", b"image/png")),
    ok(
        "webp-lossless-alpha",
        lambda: upload(converted("RGBA", "WEBP", lossless=True), b"a.webp", b"image/webp"),
    ),
    ok("bmp-palette", lambda: upload(converted("P", "BMP"), b"a.bmp", b"image/bmp")),
    ok("bmp-top-down", lambda: upload(bmp_header(10, -10, bytes(32 * 10)), b"a.bmp", b"image/bmp")),
    ok("gif-animated", lambda: upload(animated("GIF"), b"a.gif", b"image/gif")),
    ok("webp-animated", lambda: upload(animated("WEBP"), b"a.webp", b"image/webp")),
    ok("png-animated-apng", lambda: upload(animated("PNG"), b"a.png", b"image/png")),
    ok(
        "augmented-png-1x1",
        lambda: upload(converted("RGB", "PNG", (1, 1)), b"a.png", b"image/png"),
        path=AUGMENTED,
    ),
    ok(
        "augmented-alias-trailing-slash-cmyk", lambda: upload(converted("CMYK", "JPEG")), path=AUGMENTED + "/"
    ),
    ok(
        "detect-alias-no-slash-palette",
        lambda: upload(converted("P"), b"a.png", b"image/png"),
        path="/api/v1/detect",
    ),
]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


# ------------------------------------------------------------------------------ checks
def upload_files() -> set[Path]:
    """Upload files on disk: BentoML's per-request temp dirs (the Python client's routes) and
    this service's own spooled uploads, under this process's temp dir."""
    tmp = Path(tempfile.gettempdir())
    return {
        *(path for folder in tmp.glob("bentoml-request-*") for path in folder.rglob("*")),
        *tmp.glob("upload-*"),
    }


def assert_no_upload_left(before: set[Path], wait_s: float = 5.0) -> None:
    """Nothing new stays behind (the request's own file may take a moment to go)."""
    deadline = time.monotonic() + wait_s
    while (left := upload_files() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"upload files left behind: {sorted(map(str, left))[:5]}"


def assert_healthy(client: TestClient | ServerProcess) -> None:
    health = client.get(HEALTH)
    assert health.status_code == 200, health.text
    assert health.json()["model_loaded"] is True


def assert_answer(case: Case, response: httpx.Response) -> None:
    assert response.status_code == case.status, f"{case.id}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    data = response.json()
    if case.status == 200:
        verdict = data["original_prediction"] if case.path.startswith(AUGMENTED) else data
        assert verdict["prediction"] in ("real", "fake"), data
        assert 0.0 <= verdict["confidence"] <= 1.0, data
        if case.path.startswith(AUGMENTED):
            assert data["consensus_prediction"] in ("REAL", "FAKE")
            assert data["consensus"] == data["consensus_prediction"].lower()
            assert len(data["augmented_predictions"]) in (0, 6)  # none when no face was judged
    else:
        assert 400 <= case.status < 500, "the corpus holds client faults and valid images only"
        assert set(data) >= {"error", "error_code", "timestamp"}, data
        assert data["error_code"] == case.code, f"{case.id}: {data}"
        assert isinstance(data["error"], str) and data["error"], data
        assert "Traceback" not in data["error"], data


def test_the_corpus_is_large_and_distinct() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30
    assert sum(case.status == 200 for case in CASES) >= 10
    assert sum(400 <= case.status < 500 for case in CASES) >= 30


@pytest.mark.parametrize("case", _params())
def test_hostile_input(app: TestClient, case: Case) -> None:
    before = upload_files()
    response = app.request(case.method, case.path, **case.request())
    try:
        assert_answer(case, response)
        if case.after:
            case.after()
    finally:
        assert_healthy(app)
        assert_no_upload_left(before)


def test_uploads_go_where_the_leak_check_looks(app: TestClient) -> None:
    """The leak check watches where uploads can land: the Python client's route goes through
    BentoML's request dirs (checked there), the legacy route never writes the upload at all."""
    assert app.post("/detect", **upload(jpeg(), f"probe_{MARKER}.jpg".encode())).status_code == 200
    # BentoML keeps a pool of these dirs for the life of the process: one exists now.
    assert list(Path(tempfile.gettempdir()).glob("bentoml-request-*")), "no request temp dir"
    files = upload_files()
    assert app.post(DETECT, **upload(jpeg(), f"probe_{MARKER}.jpg".encode())).status_code == 200
    assert upload_files() <= files


# ------------------------------------------------------------------------------ below HTTP parsing
RAW_CASES = [
    # (id, bytes on the wire, expected status). Uvicorn answers malformed HTTP itself, in plain
    # text (before any application code runs: the legacy JSON shape cannot apply there).
    (
        "content-length-not-a-number",
        b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        400,
    ),
    (
        "content-length-negative",
        b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    (
        "two-content-lengths",
        b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    (
        "header-200kb",
        b"GET /api/v1/detect/health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n",
        400,
    ),
    ("tls-handshake-on-plain-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100), 400),
    # These reach the application: JSON answers.
    (
        "content-length-and-chunked",
        b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "declared-50mb-body-never-sent",
        b"POST /api/v1/detect/ HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 50000000\r\n\r\n",
        413,
    ),
]


@pytest.mark.parametrize(("case", "wire", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_malformed_http(server: ServerProcess, case: str, wire: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(wire)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert_healthy(server)
