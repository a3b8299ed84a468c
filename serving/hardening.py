"""The multipart input policy of the public routes, patched into BentoML 1.4.39's parser.

BentoML's own multipart handling is too trusting for a public endpoint:
1. given text instead of a file in a file field, it downloads the text as a URL
   (`MultipartSerde.ensure_file`): a request on a client's behalf, whose guard against private
   addresses patches the event loop for every coroutine meanwhile. Here: a 400, nothing fetched;
2. a malformed body, or a binary part under an unknown field name, ends in a 500. Here: a 400,
   and a request without the file field is a validation error (legacy `MISSING_FILE`);
3. several files in one field: it silently keeps the first. Here: a 400;
4. it names each upload's temporary file after the client's filename (as the suffix): a long
   name fails with ENAMETOOLONG, a 500. Here: the filename is cut to a short extension;
5. a client that disconnects mid-upload ends in a 500 (and counts as one). Here: a 400,
   which nobody reads but the metrics do.

tests/test_http_errors.py checks each case against the running server, so an upgrade that
changes these internals fails loudly instead of silently re-opening them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def safe_filename(name: str | None) -> str:
    """'../../x/photo.JPG' -> 'upload.jpg': only a short, plain extension survives."""
    suffix = Path(name or "").suffix.lower()
    return "upload" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "")


def harden_multipart() -> None:
    from _bentoml_impl.serde import MultipartSerde
    from _bentoml_sdk.typing_utils import is_list_type
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import ClientDisconnect

    if getattr(MultipartSerde, "_hardened", False):
        return

    async def ensure_file(obj: Any) -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise BadInput("A file field must carry an uploaded file, not text (URLs are not fetched)")

    original_parse = MultipartSerde.parse_request

    async def parse_request(self: Any, request: Any, cls: Any) -> Any:
        try:
            form = await request.form()  # Starlette caches it for the parser below
        except (MultiPartException, HTTPException) as exc:
            raise BadInput(f"Malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        except ClientDisconnect:
            raise BadInput("The client disconnected before the upload was complete") from None
        for value in form.values():
            if isinstance(value, UploadFile):
                value.filename = safe_filename(value.filename)
        fields = cls.model_fields
        if any(f.is_required() and name not in form for name, f in fields.items()):
            cls.model_validate({})  # raises the "missing field" validation error
        if unknown := sorted(set(form) - set(fields)):
            raise BadInput(f"Unexpected form field(s) {unknown}; this route takes {sorted(fields)}")
        for name in cls.multipart_fields:
            if len(form.getlist(name)) > 1 and not is_list_type(fields[name].annotation):
                raise BadInput(f"Send one file per request in field '{name}'")
        return await original_parse(self, request, cls)

    MultipartSerde.ensure_file = staticmethod(ensure_file)
    MultipartSerde.parse_request = parse_request
    MultipartSerde._hardened = True
