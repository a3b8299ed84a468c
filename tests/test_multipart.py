"""The upload policy's parser on its own (serving/multipart.py): bodies as real clients encode
them (werkzeug, i.e. Flask's test client; requests; httpx), and each rule of the policy."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from werkzeug.test import EnvironBuilder

from preprocessing.errors import InputError
from serving.multipart import FormPolicy, Upload, encode_form, parse_bool, read_empty_json, read_form

POLICY = FormPolicy(max_file_bytes=1000, fields=frozenset({"require_face"}))


def run(content_type: str | None, body: bytes, policy: FormPolicy = POLICY, chunk: int = 7) -> Upload:
    """Feed `body` in small chunks, as a slow network would."""
    messages = [
        {"type": "http.request", "body": body[i : i + chunk], "more_body": i + chunk < len(body)}
        for i in range(0, len(body), chunk)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [(b"content-type", content_type.encode())] if content_type else []
    return asyncio.run(read_form(headers, receive, policy))


def refused(content_type: str | None, body: bytes, policy: FormPolicy = POLICY) -> InputError:
    with pytest.raises(InputError) as caught:
        run(content_type, body, policy)
    return caught.value


def werkzeug(data: dict[str, Any]) -> tuple[str, bytes]:
    environ = EnvironBuilder(method="POST", data=data, content_type="multipart/form-data").get_environ()
    return environ["CONTENT_TYPE"], environ["wsgi.input"].read()


def requests_body(files: dict[str, Any], data: dict[str, str] | None = None) -> tuple[str, bytes]:
    prepared = requests.Request("POST", "http://x/", files=files, data=data).prepare()
    return prepared.headers["Content-Type"], prepared.body  # type: ignore[return-value]


def httpx_body(**kwargs: Any) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", **kwargs)
    return request.headers["content-type"], request.read()


def test_werkzeug_bodies_read_as_flask_read_them() -> None:
    upload = run(*werkzeug({"file": (io.BytesIO(b"abc"), "x.PNG"), "require_face": "true"}))
    assert (upload.data, upload.filename, upload.fields) == (b"abc", "upload.png", {"require_face": "true"})
    # The old backend's two error cases, exactly as its tests send them.
    assert refused(*werkzeug({})).code == "MISSING_FILE"
    empty = refused(*werkzeug({"file": (io.BytesIO(), "")}))  # an empty part, filename ""
    assert (empty.code, empty.message) == ("EMPTY_FILE", "No selected file")


def test_requests_and_httpx_bodies() -> None:
    upload = run(*requests_body({"file": ("a.jpg", b"xyz", "image/jpeg")}, {"require_face": "false"}))
    assert (upload.data, upload.content_type, upload.fields) == (
        b"xyz",
        "image/jpeg",
        {"require_face": "false"},
    )
    assert refused(*requests_body({"file": ("", b"")})).code == "EMPTY_FILE"
    assert run(*httpx_body(files={"file": ("a.jpg", b"q" * 1000)})).size == 1000
    assert refused(*httpx_body(files={"file": ("a.jpg", b"q" * 1001)})).code == "FILE_TOO_LARGE"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"files": {"image": ("a.jpg", b"x")}}, "MISSING_FILE"),  # misnamed: as the old backend
        ({"files": {"file": ("a.jpg", b"x"), "other": ("b.jpg", b"y")}}, "BAD_REQUEST"),
        ({"files": [("file", ("a.jpg", b"x")), ("file", ("b.jpg", b"y"))]}, "BAD_REQUEST"),
        ({"files": {"file": (None, b"http://127.0.0.1/x.jpg")}}, "BAD_REQUEST"),  # text, never fetched
        ({"files": {"file": ("a.jpg", b"x"), "require_face": ("r.txt", b"true")}}, "BAD_REQUEST"),
        ({"files": {"file": ("a.jpg", b"x"), "require_face": (None, b"t" * 2000)}}, "BAD_REQUEST"),
    ],
    ids=["misnamed", "extra-field", "two-files", "text-in-file-field", "field-as-file", "long-field"],
)
def test_the_policy(kwargs: dict[str, Any], code: str) -> None:
    assert refused(*httpx_body(**kwargs)).code == code


def test_bodies_that_are_not_a_form() -> None:
    assert refused(None, b"").code == "MISSING_FILE"  # nothing sent at all
    assert refused("application/json", b'{"file": "/etc/passwd"}').code == "BAD_REQUEST"
    assert refused("multipart/form-data", b"--x\r\n").code == "BAD_REQUEST"  # no boundary
    assert refused("multipart/form-data; boundary=zz", b"garbage").code == "BAD_REQUEST"
    cut = httpx_body(files={"file": ("a.jpg", b"abc")})
    assert refused(cut[0], cut[1][:-10]).code == "BAD_REQUEST"  # ends inside the part


def test_a_long_filename_is_metadata_not_a_path() -> None:
    upload = run(*httpx_body(files={"file": ("../../" + "a" * 5000 + ".JPG", b"abc")}))
    assert upload.filename == "upload.jpg" and upload.data == b"abc"
    assert refused(*httpx_body(files={"file": ("a" * 20_000 + ".jpg", b"abc")})).code == "BAD_REQUEST"


def test_spooled_uploads_go_to_a_file_and_away_on_refusal(tmp_path: Path) -> None:
    policy = FormPolicy(max_file_bytes=10_000, fields=frozenset({"frames"}), spool_dir=tmp_path)
    upload = run(*httpx_body(files={"file": ("v.mp4", b"v" * 5000)}, data={"frames": "8"}), policy, chunk=512)
    assert upload.data is None and upload.path and upload.path.read_bytes() == b"v" * 5000
    assert upload.read() == b"v" * 5000 and upload.fields == {"frames": "8"}
    upload.discard()
    assert list(tmp_path.iterdir()) == []
    assert refused(*httpx_body(files={"file": ("v.mp4", b"v" * 20_000)}), policy).code == "FILE_TOO_LARGE"
    assert list(tmp_path.iterdir()) == []  # the partial file went with the refusal


def test_re_encoded_form_parses_to_the_same_upload() -> None:
    first = run(
        *httpx_body(files={"file": ("x" * 300 + ".png", b"\x00\r\n--abc")}, data={"require_face": "1"})
    )
    again = run("multipart/form-data; boundary=bnd", encode_form(first, "bnd"))
    assert (again.data, again.filename, again.fields) == (first.data, "upload.png", {"require_face": "1"})


def test_json_routes_take_nothing_or_an_empty_object() -> None:
    def body(data: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        asyncio.run(read_empty_json([], receive))

    body(b"")
    body(b"{}")
    for bad in (b"{not json", b'{"x": 1}', b"[]"):
        with pytest.raises(InputError):
            body(bad)


def test_form_booleans() -> None:
    assert [parse_bool("f", v) for v in ("true", "False", "1", "0", "yes", "off", "", None)] == [
        True, False, True, False, True, False, None, None,
    ]  # fmt: skip
    with pytest.raises(InputError):
        parse_bool("f", "maybe")
