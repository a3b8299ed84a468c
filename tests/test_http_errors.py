"""Every fault of the client's making answers a 4xx in the legacy error shape, and the service
keeps serving; a model that cannot serve answers 503, never a crash. In process (the service's
ASGI app, tests/inprocess.py): these are route and error-body checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
from starlette.testclient import TestClient

from serving.reports import NOT_READY
from tests.helpers import image_bytes, png_bomb
from tests.inprocess import service_app

JPEG = image_bytes("JPEG", size=(200, 150))
DETECT = "/api/v1/detect/"


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


# (case, request kwargs for POST /api/v1/detect/, expected status, expected error_code)
CASES = [
    ("no body", {}, 400, "MISSING_FILE"),
    ("wrong field name", {"files": {"image": ("a.jpg", JPEG, "image/jpeg")}}, 400, "MISSING_FILE"),
    ("empty file", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "EMPTY_FILE"),
    (
        "truncated jpeg",
        {"files": {"file": ("a.jpg", JPEG[: len(JPEG) // 2], "image/jpeg")}},
        400,
        "INVALID_IMAGE",
    ),
    ("text file", {"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "UNSUPPORTED_FORMAT"),
    (
        "html as jpeg",
        {"files": {"file": ("a.jpg", b"<html><body>x</body></html>", "image/jpeg")}},
        415,
        "UNSUPPORTED_FORMAT",
    ),
    ("tiff", {"files": {"file": ("a.tif", image_bytes("TIFF"), "image/tiff")}}, 415, "UNSUPPORTED_FORMAT"),
    ("pixel bomb", {"files": {"file": ("a.png", png_bomb(), "image/png")}}, 413, "IMAGE_TOO_LARGE"),
    (
        "over the byte limit",
        {"files": {"file": ("a.jpg", b"\xff" * (11 * 1024 * 1024), "image/jpeg")}},
        413,
        "FILE_TOO_LARGE",
    ),
    (
        "two files in one field",
        {"files": [("file", ("a.jpg", JPEG, "image/jpeg")), ("file", ("b.jpg", JPEG, "image/jpeg"))]},
        400,
        "BAD_REQUEST",
    ),
    (
        "extra field",
        {"files": {"file": ("a.jpg", JPEG, "image/jpeg"), "other": ("b.jpg", JPEG, "image/jpeg")}},
        400,
        "BAD_REQUEST",
    ),
    (
        "url instead of a file",
        {"data": {"file": "http://127.0.0.1:1/secret.jpg"}, "files": {"dummy": ("", b"", "")}},
        400,
        "BAD_REQUEST",
    ),
    (
        "malformed multipart",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        400,
        "BAD_REQUEST",
    ),
    (
        "multipart without boundary",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
        400,
        "BAD_REQUEST",
    ),
    ("raw jpeg body", {"content": JPEG, "headers": {"content-type": "image/jpeg"}}, 400, "BAD_REQUEST"),
    ("json body", {"json": {"file": "/etc/passwd"}}, 400, "BAD_REQUEST"),
]


# The old backend's exact strings, which its clients compare (CONTRACT.md).
LEGACY_ERRORS = {"MISSING_FILE": "No file provided", "EMPTY_FILE": "No selected file"}


@pytest.mark.parametrize(("case", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_client_faults_answer_4xx_in_the_legacy_shape(
    app: TestClient, case: str, kwargs: dict, status: int, code: str
) -> None:
    if case == "url instead of a file":  # a text part named `file`, no file part
        kwargs = {
            "content": _multipart("b0undary", [("file", None, b"http://127.0.0.1:1/secret.jpg")]),
            "headers": {"content-type": "multipart/form-data; boundary=b0undary"},
        }
    response = app.post(DETECT, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and body["error"] and body["timestamp"]
    if code in LEGACY_ERRORS:
        assert body["error"] == LEGACY_ERRORS[code] and body["details"]
    assert app.get("/api/v1/detect/health").status_code == 200  # still serving


def test_routes_and_methods(app: TestClient) -> None:
    for method, path, status, code in [
        ("GET", DETECT, 405, "METHOD_NOT_ALLOWED"),
        ("PUT", "/api/v1/detect/augmented", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/v2/nothing", 404, "NOT_FOUND"),
        ("GET", "/detect", 405, "METHOD_NOT_ALLOWED"),  # the Python client's route is POST
        ("POST", "/livez", 405, "METHOD_NOT_ALLOWED"),
    ]:
        response = app.request(method, path)
        assert response.status_code == status
        assert response.json()["error_code"] == code
        if status == 405:
            assert response.headers["allow"]


def test_augmented_route_refuses_the_same_way(app: TestClient) -> None:
    response = app.post("/api/v1/detect/augmented", files={"file": ("a.txt", b"hello", "text/plain")})
    assert (response.status_code, response.json()["error_code"]) == (415, "UNSUPPORTED_FORMAT")


def test_chunked_upload_over_the_limit(app: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(12):
            yield b"\xff" * (1024 * 1024)

    response = app.post(
        DETECT, content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert (response.status_code, response.json()["error_code"]) == (413, "FILE_TOO_LARGE")


def test_a_model_that_cannot_serve_answers_503(served_tag: str, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt model file: the service starts, says why in one line, is not ready, and answers
    503 (the model service runs in this process here, so its log is caplog's)."""
    stored = bentoml.models.get(served_tag)
    with bentoml.models.create("broken_model", metadata=stored.info.metadata) as broken:
        pass
    Path(bentoml.models.get(broken.tag).path_of("model.keras")).write_bytes(b"corrupt")
    with (
        caplog.at_level(logging.INFO, "deepfake"),
        service_app({"DEEPFAKE_MODEL_TAG": str(broken.tag)}) as app,
    ):
        health = app.get("/api/v1/detect/health")
        loading = [r for r in caplog.records if "failed to load" in r.getMessage()]
        assert len(loading) == 1 and not loading[0].exc_info  # one clear line, no traceback
        assert app.get("/readyz").status_code == 503
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and health.json()["model_loaded"] is False
        # Why is in the log; the answer says only that it cannot serve (no path, no exception text).
        assert health.json()["error"] == NOT_READY
        assert "ValueError" not in health.text and "/models/" not in health.text
        crop = image_bytes("JPEG", size=(100, 100))  # a face crop for this 64 px model: it goes to the model
        detect = app.post(DETECT, files={"file": ("a.jpg", crop, "image/jpeg")})
        assert (detect.status_code, detect.json()["error_code"]) == (503, "MODEL_UNAVAILABLE")
        assert detect.headers["retry-after"]
        info = app.get("/api/v1/model/info")
        assert (info.status_code, info.json()["error_code"]) == (503, "MODEL_UNAVAILABLE")
