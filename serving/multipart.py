"""The upload policy of the public routes: one multipart parser, ours, with explicit limits.

    read_form(headers, receive, policy) -> Upload     raises InputError (legacy codes)

One file part in the policy's file field, only the text fields the route declares, each part
with a form-data disposition, bounded header, part and field sizes. A text value in the file
field is refused, never fetched as a URL; the client's filename is metadata, never a path. The
upload is read once, into memory (images) or into a temp file as it streams (`spool_dir`,
videos). Built on python-multipart's streaming parser, the one Starlette uses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from preprocessing import errors
from preprocessing.errors import InputError
from serving.errors import ClientDisconnected, Receive, StorageFull

logger = logging.getLogger("deepfake")

# A 5000-character filename must still be served; a 100 KB part header is not a filename.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS_PER_PART = 8
MAX_FIELD_BYTES = 1024
MAX_JSON_BYTES = 64 * 1024


@dataclass(frozen=True)
class FormPolicy:
    """What one route accepts: the file field, its text fields and the file's byte limit."""

    max_file_bytes: int
    fields: frozenset[str] = frozenset()
    file_field: str = "file"
    spool_dir: Path | None = None  # stream the file to a temp file here instead of memory

    @property
    def max_parts(self) -> int:
        # A few unknown parts are read (and dropped) so that a misnamed file field can be
        # answered MISSING_FILE, as the old backend did; more than that is a malformed form.
        return 1 + len(self.fields) + 4


@dataclass
class Upload:
    filename: str  # safe_filename of the client's name: for logs and re-encoding only
    content_type: str
    size: int
    data: bytes | None  # the file, in memory; or
    path: Path | None  # spooled: the caller owns it and deletes it
    fields: dict[str, str] = field(default_factory=dict)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def safe_filename(name: str | None) -> str:
    """'../../x/photo.JPG' -> 'upload.jpg': only a short, plain extension survives."""
    suffix = Path((name or "").replace("\\", "/")).suffix.lower()
    return "upload" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "")


async def body_chunks(receive: Receive) -> Any:
    """The request body as it arrives; a client that goes away raises ClientDisconnected."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def check_plain_body(headers: Iterable[tuple[bytes, bytes]]) -> None:
    encoding = _header(headers, b"content-encoding").strip().lower()
    if encoding not in ("", "identity"):
        raise errors.bad_request(f"Content-Encoding {encoding!r} is not accepted; send the body as it is")


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.name = ""
        self.filename: str | None = None
        self.content_type = ""
        self.size = 0
        self.buffer = bytearray()
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        self.unknown = False  # not a field of this route: its bytes are dropped
        self.complete = False


class _FormReader:
    """python-multipart callbacks that apply the policy part by part, as the bytes arrive."""

    def __init__(self, policy: FormPolicy) -> None:
        self.policy = policy
        self.parts: list[_Part] = []
        self.current: _Part | None = None
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        if len(self.parts) >= self.policy.max_parts:
            raise self.unexpected_fields("more parts than this route takes")
        self.current = _Part()
        self.parts.append(self.current)

    def _header_end(self) -> None:
        assert self.current is not None
        name = bytes(self._field).decode("latin-1").strip().lower()
        self.current.headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        part = self.current
        assert part is not None
        kind, options = parse_options_header(part.headers.get("content-disposition", ""))
        if kind != b"form-data" or b"name" not in options:
            raise errors.bad_request("Malformed multipart body: a part without a form-data name")
        part.name = options[b"name"].decode("latin-1")
        part.filename = options[b"filename"].decode("latin-1") if b"filename" in options else None
        part.content_type = part.headers.get("content-type", "")
        policy = self.policy
        if part.name == policy.file_field:
            if sum(p.name == policy.file_field for p in self.parts) > 1:
                raise errors.bad_request(f"Send one file per request in field '{policy.file_field}'")
            if policy.spool_dir is not None:
                handle, path = tempfile.mkstemp(prefix="upload-", dir=policy.spool_dir)
                part.file, part.path = os.fdopen(handle, "wb"), Path(path)
        elif part.name in policy.fields:
            if part.filename is not None or sum(p.name == part.name for p in self.parts) > 1:
                raise errors.bad_request(f"Form field '{part.name}' takes one text value")
        else:
            part.unknown = True  # judged at the end: no file at all is MISSING_FILE

    def unexpected_fields(self, what: str) -> InputError:
        return errors.bad_request(f"Unexpected form field(s): {what}; this route takes {self.takes()}")

    def takes(self) -> list[str]:
        return sorted({self.policy.file_field, *self.policy.fields})

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        assert part is not None
        part.size += end - start
        if part.unknown:
            return
        if part.name == self.policy.file_field:
            if part.size > self.policy.max_file_bytes:
                raise errors.file_too_large(self.policy.max_file_bytes)
        elif part.size > MAX_FIELD_BYTES:
            raise errors.bad_request(f"Form field '{part.name}' is longer than {MAX_FIELD_BYTES} bytes")
        if part.file is not None:
            part.file.write(data[start:end])
        else:
            part.buffer.extend(data[start:end])

    def _part_end(self) -> None:
        assert self.current is not None
        self.current.complete = True
        if self.current.file is not None:
            self.current.file.close()

    def _end(self) -> None:
        self.ended = True

    def empty_last_part(self, boundary: bytes) -> bool:
        """Werkzeug (Flask's test client, the old backend's tests) writes an EMPTY last part
        with its closing delimiter missing the CRLF that begins it, so the parser reads the
        delimiter as the part's data. That is an empty part at the end of the body: say so."""
        part = self.current
        closing = b"--" + boundary + b"--"
        if self.ended or part is None or part.complete or part.size > len(closing) + 2:
            return False
        if part.file is not None:
            part.file.close()
            data = part.path.read_bytes() if part.path else b""
        else:
            data = bytes(part.buffer)
        if data.rstrip(b"\r\n") != closing:
            return False
        part.size, part.buffer = 0, bytearray()
        if part.path is not None:
            part.path.write_bytes(b"")
        part.complete = self.ended = True
        return True

    def discard(self) -> None:
        for part in self.parts:
            if part.file is not None:
                part.file.close()
            if part.path is not None:
                part.path.unlink(missing_ok=True)


async def read_form(headers: Iterable[tuple[bytes, bytes]], receive: Receive, policy: FormPolicy) -> Upload:
    """Read and check a multipart upload against `policy`. Raises InputError."""
    headers = list(headers)
    check_plain_body(headers)
    chunks = body_chunks(receive)
    first = await anext(chunks, b"")
    kind, options = parse_options_header(_header(headers, b"content-type"))
    if not first and kind in (b"", b"multipart/form-data", b"application/x-www-form-urlencoded"):
        raise errors.missing_file(policy.file_field)  # no body: nothing was sent
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        got = kind.decode("latin-1") or "no content type"
        raise errors.bad_request(
            f"Send multipart/form-data with the file in field '{policy.file_field}' (got {got})"
        )
    reader = _FormReader(policy)
    try:
        parser = MultipartParser(
            options[b"boundary"],
            reader.callbacks(),
            max_header_count=MAX_HEADERS_PER_PART,
            max_header_size=MAX_HEADER_BYTES,
        )
        parser.write(first)
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
        if not reader.ended and not reader.empty_last_part(options[b"boundary"]):
            raise errors.bad_request("Malformed multipart body: it ends before its closing boundary")
        return _upload(reader, policy)
    except FormParserError as exc:
        reader.discard()
        raise errors.bad_request(f"Malformed multipart body: {exc}") from None
    except OSError as exc:  # spooling to a full disk: the server's trouble, not the client's
        reader.discard()
        logger.error("an upload could not be spooled: %s: %s", type(exc).__name__, exc)
        raise StorageFull() from None
    except BaseException:
        reader.discard()
        raise


def _upload(reader: _FormReader, policy: FormPolicy) -> Upload:
    files = [p for p in reader.parts if p.name == policy.file_field]
    unknown = sorted({p.name for p in reader.parts if p.unknown})
    if not files:
        missing = errors.missing_file(policy.file_field)
        if unknown:
            missing.details = f"{missing.details}; got {unknown}"
        raise missing
    if unknown:
        raise reader.unexpected_fields(", ".join(map(repr, unknown)))
    part = files[0]
    if part.size == 0:
        raise errors.empty_file(
            "No file was selected: the file part is empty"
            if not part.filename
            else "The uploaded file is empty"
        )
    if part.filename is None:
        raise errors.bad_request(
            f"Field '{policy.file_field}' must carry an uploaded file, not text (URLs are not fetched)"
        )
    fields = {}
    for text in reader.parts:
        if text.name in policy.fields:
            try:
                fields[text.name] = bytes(text.buffer).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise errors.bad_request(f"Form field '{text.name}' is not UTF-8 text") from None
    return Upload(
        filename=safe_filename(part.filename),
        content_type=part.content_type,
        size=part.size,
        data=None if part.path else bytes(part.buffer),
        path=part.path,
        fields=fields,
    )


async def read_empty_json(headers: Iterable[tuple[bytes, bytes]], receive: Receive) -> None:
    """A route without inputs (health, model info) takes no body, or an empty JSON object."""
    check_plain_body(headers)
    body = bytearray()
    async for chunk in body_chunks(receive):
        body.extend(chunk)
        if len(body) > MAX_JSON_BYTES:
            raise errors.bad_request(f"This route takes no input (body over {MAX_JSON_BYTES} bytes)")
    if not body.strip():
        return
    try:
        value = json.loads(body)
    except ValueError:
        raise errors.bad_request("The body is not JSON; this route takes no input") from None
    if value != {}:
        raise errors.bad_request("This route takes no input: send nothing or {}")


def encode_form(upload: Upload, boundary: str) -> bytes:
    """The upload as a clean multipart body (safe filename, declared fields only)."""
    crlf = b"\r\n"
    out = bytearray()
    for name, value in upload.fields.items():
        out += b"--" + boundary.encode() + crlf
        out += f'Content-Disposition: form-data; name="{name}"'.encode() + crlf + crlf
        out += value.encode() + crlf
    out += b"--" + boundary.encode() + crlf
    out += f'Content-Disposition: form-data; name="file"; filename="{upload.filename}"'.encode() + crlf
    out += b"Content-Type: " + (upload.content_type or "application/octet-stream").encode("latin-1") + crlf
    out += crlf + upload.read() + crlf + b"--" + boundary.encode() + b"--" + crlf
    return bytes(out)


def parse_bool(name: str, value: str | None) -> bool | None:
    """A form field's true/false; absent: None."""
    if value is None or value == "":
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise errors.bad_request(f"Form field '{name}' must be true or false, not {value[:40]!r}")


def parse_number(
    name: str, value: str | None, kind: type[int] | type[float], low: float, high: float
) -> float | None:
    """A form field's number within [low, high]; absent: None."""
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise errors.bad_request(f"Form field '{name}' must be a number, not {value[:40]!r}") from None
    if not low <= number <= high:
        raise errors.bad_request(f"Form field '{name}' must be between {low:g} and {high:g}")
    return number
